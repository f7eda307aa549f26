namespace KvmSharp;

/// <summary>
/// One of the two cascaded 8259 PICs of KVM's in-kernel interrupt controller, by its KVM chip id
/// (<c>KVM_IRQCHIP_PIC_MASTER</c>, <c>KVM_IRQCHIP_PIC_SLAVE</c>), for <see cref="VirtualMachine.GetPic"/>
/// and <see cref="VirtualMachine.SetPic"/>.
/// </summary>
public enum PicChip
{
    /// <summary>The master PIC (ports 0x20–0x21): IRQs 0–7, the slave cascaded on IRQ 2.</summary>
    Master = 0,

    /// <summary>The slave PIC (ports 0xA0–0xA1): IRQs 8–15.</summary>
    Slave = 1,
}
