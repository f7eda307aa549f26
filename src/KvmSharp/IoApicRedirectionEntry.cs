namespace KvmSharp;

/// <summary>
/// One entry of the IOAPIC's redirection table (<see cref="IoApicState"/>): where and how the
/// interrupt of one IOAPIC pin is delivered. Its 64 bits are <see cref="Bits"/> (the uapi union's
/// <c>bits</c>); the properties read and (with <c>with</c>) change its fields, e.g.
/// <c>entry with { Vector = 0x41, Masked = false }</c>.
/// </summary>
/// <param name="Bits">The entry's 64 bits, as the IOAPIC's registers hold them.</param>
public readonly record struct IoApicRedirectionEntry(ulong Bits)
{
    /// <summary>The vector delivered (bits 0–7).</summary>
    public byte Vector
    {
        get => (byte)Bits;
        init => Bits = With(0, 8, value);
    }

    /// <summary>The delivery mode (bits 8–10): 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Set to more than 7.</exception>
    public byte DeliveryMode
    {
        get => (byte)Field(8, 3);
        init => Bits = With(8, 3, value <= 7 ? value : throw new ArgumentOutOfRangeException(nameof(DeliveryMode), value, "The delivery mode is a 3-bit field: 0–7."));
    }

    /// <summary>The destination mode (bit 11): false physical (<see cref="Destination"/> is an APIC id), true logical.</summary>
    public bool LogicalDestination
    {
        get => Flag(11);
        init => Bits = With(11, 1, value ? 1u : 0u);
    }

    /// <summary>The delivery status (bit 12, read-only in hardware): a delivery is pending.</summary>
    public bool DeliveryPending
    {
        get => Flag(12);
        init => Bits = With(12, 1, value ? 1u : 0u);
    }

    /// <summary>The pin's polarity (bit 13): false active high, true active low.</summary>
    public bool ActiveLow
    {
        get => Flag(13);
        init => Bits = With(13, 1, value ? 1u : 0u);
    }

    /// <summary>Remote IRR (bit 14, level-triggered pins): the interrupt was accepted and awaits its EOI.</summary>
    public bool RemoteIrr
    {
        get => Flag(14);
        init => Bits = With(14, 1, value ? 1u : 0u);
    }

    /// <summary>The trigger mode (bit 15): false edge, true level.</summary>
    public bool LevelTriggered
    {
        get => Flag(15);
        init => Bits = With(15, 1, value ? 1u : 0u);
    }

    /// <summary>The mask (bit 16): a masked pin delivers nothing. KVM creates every entry masked.</summary>
    public bool Masked
    {
        get => Flag(16);
        init => Bits = With(16, 1, value ? 1u : 0u);
    }

    /// <summary>The destination (bits 56–63): an APIC id (physical mode) or a set of logical APICs.</summary>
    public byte Destination
    {
        get => (byte)(Bits >> 56);
        init => Bits = With(56, 8, value);
    }

    private bool Flag(int bit) => (Bits >> bit & 1) != 0;

    private uint Field(int shift, int width) => (uint)(Bits >> shift) & ((1u << width) - 1);

    private ulong With(int shift, int width, uint value)
    {
        ulong mask = ((1UL << width) - 1) << shift;
        return (Bits & ~mask) | (((ulong)value << shift) & mask);
    }
}
