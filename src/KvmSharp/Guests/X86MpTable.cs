using System.Buffers.Binary;

namespace KvmSharp.Guests;

/// <summary>
/// An Intel MultiProcessor Specification 1.4 table: the floating pointer ("_MP_") and the
/// configuration table ("PCMP") listing each vCPU's local APIC, the ISA bus, KVM's IOAPIC (24 pins
/// at 0xFEC00000) with ISA IRQ n on pin n (KVM's default GSI routing), and the local interrupts
/// (ExtINT on LINT0, NMI on LINT1). Without ACPI this is how Linux learns that there is an IOAPIC and
/// more than one CPU: it then runs in symmetric I/O mode with x2APIC where the CPU has it, and starts
/// the other vCPUs with INIT/SIPI (KVM's local APICs do that in the kernel).
/// </summary>
internal static class X86MpTable
{
    /// <summary>Where it goes: the last KiB of base memory (0x9FC00, the start of the EBDA), which Linux scans.</summary>
    public const ulong Address = 0x9FC00;

    /// <summary>Bytes available there.</summary>
    public const int MaxSize = 0x400;

    private const uint LocalApicAddress = 0xFEE0_0000;
    private const byte LocalApicVersion = 0x14, IoApicVersion = 0x11;
    private const int IsaIrqs = 16;
    private const int FloatingSize = 16, HeaderSize = 44, ProcessorSize = 20, EntrySize = 8;

    /// <summary>The largest number of vCPUs whose table fits in <see cref="MaxSize"/>.</summary>
    public static int MaxCpus => (MaxSize - FloatingSize - HeaderSize - 2 * EntrySize - IsaIrqs * EntrySize - 2 * EntrySize) / ProcessorSize;

    /// <summary>The table for vCPUs with APIC ids <paramref name="apicIds"/> (the first is the boot processor).</summary>
    /// <param name="apicIds">Each vCPU's APIC id (its vCPU id), the boot processor first.</param>
    /// <param name="cpuSignature">CPUID 1 EAX (family, model, stepping).</param>
    /// <param name="featureFlags">CPUID 1 EDX.</param>
    public static byte[] Build(IReadOnlyList<int> apicIds, uint cpuSignature, uint featureFlags)
    {
        int entries = apicIds.Count + 1 /* bus */ + 1 /* IOAPIC */ + IsaIrqs + 2 /* LINT0, LINT1 */;
        int tableLength = HeaderSize + apicIds.Count * ProcessorSize + (entries - apicIds.Count) * EntrySize;
        var bytes = new byte[FloatingSize + tableLength];
        var floating = bytes.AsSpan(0, FloatingSize);
        var table = bytes.AsSpan(FloatingSize);
        byte ioApicId = (byte)(apicIds.Max() + 1);

        "_MP_"u8.CopyTo(floating);
        BinaryPrimitives.WriteUInt32LittleEndian(floating[4..], (uint)(Address + FloatingSize));
        floating[8] = 1;     // length in 16-byte units
        floating[9] = 4;     // spec revision 1.4
        // Feature bytes 0: the configuration table is present, and no IMCR (virtual wire mode).

        "PCMP"u8.CopyTo(table);
        BinaryPrimitives.WriteUInt16LittleEndian(table[4..], (ushort)tableLength);
        table[6] = 4;
        "KVMSHARP"u8.CopyTo(table[8..]);
        "KVMSHARP VM "u8.CopyTo(table[16..]);
        BinaryPrimitives.WriteUInt16LittleEndian(table[34..], (ushort)entries);
        BinaryPrimitives.WriteUInt32LittleEndian(table[36..], LocalApicAddress);

        int at = HeaderSize;
        for (int i = 0; i < apicIds.Count; i++)
        {
            var p = table.Slice(at, ProcessorSize);
            p[0] = 0;                                  // processor
            p[1] = (byte)apicIds[i];
            p[2] = LocalApicVersion;
            p[3] = (byte)(1 | (i == 0 ? 2 : 0));       // enabled; the first is the boot processor
            BinaryPrimitives.WriteUInt32LittleEndian(p[4..], cpuSignature);
            BinaryPrimitives.WriteUInt32LittleEndian(p[8..], featureFlags);
            at += ProcessorSize;
        }
        Entry(table, ref at, [1, 0, .. "ISA   "u8]);                                    // bus 0: ISA
        Entry(table, ref at, [2, ioApicId, IoApicVersion, 1, 0, 0, 0xC0, 0xFE]);          // IOAPIC at 0xFEC00000, enabled
        for (byte irq = 0; irq < IsaIrqs; irq++)
            Entry(table, ref at, [3, 0 /* INT */, 0, 0 /* polarity, trigger: as the bus */, 0, irq, ioApicId, irq]);
        Entry(table, ref at, [4, 3 /* ExtINT */, 0, 0, 0, 0, 0xFF, 0]);                 // the PIC on every LINT0
        Entry(table, ref at, [4, 1 /* NMI */, 0, 0, 0, 0, 0xFF, 1]);                    // NMI on every LINT1

        table[7] = Checksum(table);
        floating[10] = Checksum(floating);
        return bytes;
    }

    private static void Entry(Span<byte> table, ref int at, ReadOnlySpan<byte> entry)
    {
        entry.CopyTo(table[at..]);
        at += EntrySize;
    }

    private static byte Checksum(ReadOnlySpan<byte> bytes)
    {
        byte sum = 0;
        foreach (byte b in bytes) sum += b;
        return (byte)-sum;
    }
}
