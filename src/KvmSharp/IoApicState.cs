using KvmSharp.Interop.X86;

namespace KvmSharp;

/// <summary>
/// The state of the in-kernel IOAPIC: <c>struct kvm_ioapic_state</c> as KVM_GET_IRQCHIP gives it
/// and KVM_SET_IRQCHIP takes it (<see cref="VirtualMachine.GetIoApic"/>, <see cref="VirtualMachine.SetIoApic"/>):
/// its MMIO base, its ID, the register select, the pending pins and the 24-entry redirection table,
/// read and written by pin through the indexer. A copy: changes reach KVM only through
/// <see cref="VirtualMachine.SetIoApic"/>.
/// </summary>
public sealed class IoApicState
{
    /// <summary>The IOAPIC's pins: 24, GSIs 0–23 (KVM_IOAPIC_NUM_PINS).</summary>
    public const int PinCount = kvm_ioapic_state.KVM_IOAPIC_NUM_PINS;

    private readonly ulong[] _table = new ulong[PinCount];

    /// <summary>The guest-physical address of its MMIO registers (KVM: 0xFEC00000).</summary>
    public ulong BaseAddress { get; set; }

    /// <summary>The index register (IOREGSEL): which register the window at base + 0x10 reads or writes.</summary>
    public uint RegisterSelect { get; set; }

    /// <summary>The IOAPIC's ID (its ID register's bits 24–27, kept by KVM as a number).</summary>
    public uint Id { get; set; }

    /// <summary>The pins whose interrupt is pending: bit n = pin n. Loading a state delivers the pending pins again (KVM re-injects them).</summary>
    public uint Irr { get; set; }

    /// <summary>The redirection-table entry of pin <paramref name="pin"/>.</summary>
    /// <param name="pin">The pin, 0–23.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="pin"/> is not 0–23.</exception>
    public IoApicRedirectionEntry this[int pin]
    {
        get => new(_table[CheckPin(pin)]);
        set => _table[CheckPin(pin)] = value.Bits;
    }

    private static int CheckPin(int pin) =>
        (uint)pin < PinCount ? pin : throw new ArgumentOutOfRangeException(nameof(pin), pin, $"The IOAPIC has pins 0–{PinCount - 1}.");

    internal static IoApicState From(in kvm_ioapic_state s)
    {
        var state = new IoApicState { BaseAddress = s.base_address, RegisterSelect = s.ioregsel, Id = s.id, Irr = s.irr };
        for (int pin = 0; pin < PinCount; pin++) state._table[pin] = s.Entry(pin);
        return state;
    }

    internal kvm_ioapic_state ToNative()
    {
        var s = new kvm_ioapic_state { base_address = BaseAddress, ioregsel = RegisterSelect, id = Id, irr = Irr };
        for (int pin = 0; pin < PinCount; pin++) s.SetEntry(pin, _table[pin]);
        return s;
    }
}
