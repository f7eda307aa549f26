using KvmSharp.Interop.X86;

namespace KvmSharp;

/// <summary>
/// The state of one in-kernel 8259 PIC: <c>struct kvm_pic_state</c>, field by field, as
/// KVM_GET_IRQCHIP gives it and KVM_SET_IRQCHIP takes it (<see cref="VirtualMachine.GetPic"/>,
/// <see cref="VirtualMachine.SetPic"/>). Change a field with <c>with</c>, e.g.
/// <c>pic with { Imr = 0xFF }</c> to mask every input. The fields KVM keeps as 0 or 1 are booleans.
/// </summary>
public readonly record struct PicState
{
    /// <summary>The input levels at the last edge check (<c>last_irr</c>): an edge-triggered input interrupts on a 0→1 change against this.</summary>
    public byte LastIrr { get; init; }

    /// <summary>The interrupt request register: bit n set = IRQ n of this chip is pending.</summary>
    public byte Irr { get; init; }

    /// <summary>The interrupt mask register (OCW1): bit n set = IRQ n is masked.</summary>
    public byte Imr { get; init; }

    /// <summary>The in-service register: bit n set = IRQ n is being served (until its EOI).</summary>
    public byte Isr { get; init; }

    /// <summary>The priority rotation: the IRQ with the highest priority (<c>priority_add</c>; 0 after initialisation).</summary>
    public byte PriorityAdd { get; init; }

    /// <summary>The vector of IRQ 0 of this chip (ICW2, a multiple of 8): IRQ n raises vector <c>IrqBase + n</c>.</summary>
    public byte IrqBase { get; init; }

    /// <summary>Which register a read of the command port returns (OCW3): false the IRR, true the ISR.</summary>
    public bool ReadRegisterSelect { get; init; }

    /// <summary>Poll mode (OCW3 bit 2): the next read of the command port acknowledges and returns the highest pending IRQ.</summary>
    public bool Poll { get; init; }

    /// <summary>Special mask mode (OCW3).</summary>
    public bool SpecialMask { get; init; }

    /// <summary>Which initialisation word the chip expects next (<c>init_state</c>): 0 when initialised, 1–3 while ICW2–ICW4 are due.</summary>
    public byte InitState { get; init; }

    /// <summary>Automatic EOI (ICW4 bit 1).</summary>
    public bool AutoEoi { get; init; }

    /// <summary>Rotate on automatic EOI (OCW2).</summary>
    public bool RotateOnAutoEoi { get; init; }

    /// <summary>Special fully nested mode (ICW4 bit 4).</summary>
    public bool SpecialFullyNestedMode { get; init; }

    /// <summary>Whether ICW4 follows ICW1 (ICW1 bit 0).</summary>
    public bool Init4 { get; init; }

    /// <summary>The edge/level control register (ports 0x4D0/0x4D1): bit n set = IRQ n is level-triggered.</summary>
    public byte Elcr { get; init; }

    /// <summary>The bits of <see cref="Elcr"/> that may be changed (KVM: 0xF8 on the master, 0xDE on the slave: IRQ 0, 1, 2, 8 and 13 stay edge-triggered).</summary>
    public byte ElcrMask { get; init; }

    internal static PicState From(in kvm_pic_state s) => new()
    {
        LastIrr = s.last_irr, Irr = s.irr, Imr = s.imr, Isr = s.isr, PriorityAdd = s.priority_add, IrqBase = s.irq_base,
        ReadRegisterSelect = s.read_reg_select != 0, Poll = s.poll != 0, SpecialMask = s.special_mask != 0, InitState = s.init_state,
        AutoEoi = s.auto_eoi != 0, RotateOnAutoEoi = s.rotate_on_auto_eoi != 0, SpecialFullyNestedMode = s.special_fully_nested_mode != 0,
        Init4 = s.init4 != 0, Elcr = s.elcr, ElcrMask = s.elcr_mask,
    };

    internal kvm_pic_state ToNative() => new()
    {
        last_irr = LastIrr, irr = Irr, imr = Imr, isr = Isr, priority_add = PriorityAdd, irq_base = IrqBase,
        read_reg_select = Bit(ReadRegisterSelect), poll = Bit(Poll), special_mask = Bit(SpecialMask), init_state = InitState,
        auto_eoi = Bit(AutoEoi), rotate_on_auto_eoi = Bit(RotateOnAutoEoi), special_fully_nested_mode = Bit(SpecialFullyNestedMode),
        init4 = Bit(Init4), elcr = Elcr, elcr_mask = ElcrMask,
    };

    private static byte Bit(bool b) => b ? (byte)1 : (byte)0;
}
