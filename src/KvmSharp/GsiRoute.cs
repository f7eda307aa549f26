namespace KvmSharp;

/// <summary>
/// One entry of a VM's GSI routing table (<see cref="VirtualMachine.SetGsiRouting"/>): where an
/// interrupt raised on a GSI — by <see cref="VirtualMachine.SetIrqLine"/> or an irqfd — goes: a
/// pin of the in-kernel interrupt controller, or an MSI message to the local APICs.
/// </summary>
public readonly record struct GsiRoute
{
    private GsiRoute(int gsi, GsiRouteKind kind, uint chipOrAddressLow, uint pinOrAddressHigh, uint data)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(gsi);
        Gsi = gsi;
        Kind = kind;
        _a = chipOrAddressLow;
        _b = pinOrAddressHigh;
        _data = data;
    }

    private readonly uint _a, _b, _data;

    /// <summary>The GSI this entry routes.</summary>
    public int Gsi { get; }

    /// <summary>Where it goes.</summary>
    public GsiRouteKind Kind { get; }

    /// <summary>For <see cref="GsiRouteKind.IrqChip"/>: the controller (KVM_IRQCHIP_PIC_MASTER 0, PIC_SLAVE 1, IOAPIC 2).</summary>
    public int IrqChip => Kind == GsiRouteKind.IrqChip ? (int)_a : -1;

    /// <summary>For <see cref="GsiRouteKind.IrqChip"/>: the controller's input pin.</summary>
    public int Pin => Kind == GsiRouteKind.IrqChip ? (int)_b : -1;

    /// <summary>For <see cref="GsiRouteKind.Msi"/>: the message address (x86: 0xFEE00000 | destination APIC id &lt;&lt; 12 | mode bits).</summary>
    public ulong MsiAddress => Kind == GsiRouteKind.Msi ? (ulong)_b << 32 | _a : 0;

    /// <summary>For <see cref="GsiRouteKind.Msi"/>: the message data (x86: the vector in bits 0–7, the delivery mode above).</summary>
    public uint MsiData => Kind == GsiRouteKind.Msi ? _data : 0;

    /// <summary>Routes <paramref name="gsi"/> to input <paramref name="pin"/> of an in-kernel controller (x86: 0 PIC master, pins 0–7; 1 PIC slave, 0–7; 2 IOAPIC, 0–23).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative GSI, or a controller or pin out of those ranges.</exception>
    public static GsiRoute ToIrqChip(int gsi, int irqChip, int pin)
    {
        int pins = irqChip switch
        {
            0 or 1 => 8,
            2 => 24,
            _ => throw new ArgumentOutOfRangeException(nameof(irqChip), irqChip, "x86 controllers: 0 PIC master, 1 PIC slave, 2 IOAPIC."),
        };
        if (pin < 0 || pin >= pins) throw new ArgumentOutOfRangeException(nameof(pin), pin, $"Controller {irqChip} has pins 0–{pins - 1}.");
        return new GsiRoute(gsi, GsiRouteKind.IrqChip, (uint)irqChip, (uint)pin, 0);
    }

    /// <summary>Routes <paramref name="gsi"/> to an MSI message: raising the GSI sends <paramref name="data"/> to <paramref name="address"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative GSI.</exception>
    public static GsiRoute ToMsi(int gsi, ulong address, uint data) =>
        new(gsi, GsiRouteKind.Msi, (uint)address, (uint)(address >> 32), data);

    /// <summary>
    /// The table KVM starts an x86 VM's irqchip with (<c>kvm_setup_default_irq_routing</c>): GSI 0–7
    /// to the master PIC and 8–15 to the slave, each also to the IOAPIC pin of the same number, and
    /// GSI 16–23 to the IOAPIC only. <see cref="VirtualMachine.SetGsiRouting"/> replaces the whole
    /// table, so start from this one to keep the legacy lines working.
    /// </summary>
    public static IReadOnlyList<GsiRoute> X86Defaults { get; } = BuildX86Defaults();

    private static GsiRoute[] BuildX86Defaults()
    {
        var routes = new List<GsiRoute>();
        for (int gsi = 0; gsi < 24; gsi++)
        {
            if (gsi < 16) routes.Add(ToIrqChip(gsi, gsi < 8 ? 0 : 1, gsi % 8));
            routes.Add(ToIrqChip(gsi, 2, gsi));
        }
        return [.. routes];
    }
}
