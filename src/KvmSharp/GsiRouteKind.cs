namespace KvmSharp;

/// <summary>Where a <see cref="GsiRoute"/> sends its GSI.</summary>
public enum GsiRouteKind
{
    /// <summary>A pin of the in-kernel interrupt controller (KVM_IRQ_ROUTING_IRQCHIP).</summary>
    IrqChip = 1,

    /// <summary>An MSI message (KVM_IRQ_ROUTING_MSI).</summary>
    Msi = 2,
}
