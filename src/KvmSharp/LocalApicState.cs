using System.Buffers.Binary;

namespace KvmSharp;

/// <summary>
/// A vCPU's local APIC: its 1 KiB register page (<c>struct kvm_lapic_state</c>) as KVM_GET_LAPIC gives
/// it and KVM_SET_LAPIC takes it (<see cref="Vcpu.GetLapic"/>, <see cref="Vcpu.SetLapic"/>). Each 32-bit
/// register sits at its xAPIC MMIO offset (a multiple of 16); the indexer reads and writes any of them,
/// the properties name the ones a VMM uses most. A copy: changes reach KVM only through
/// <see cref="Vcpu.SetLapic"/>.
/// </summary>
/// <remarks>
/// KVM gives the ID register in xAPIC format (the APIC id in bits 24–31) also in x2APIC mode, and reads
/// it back the same way (KvmSharp does not enable KVM_CAP_X2APIC_API's 32-bit format). The current-count
/// register is the timer's remaining count at the read; KVM_SET_LAPIC restarts the timer from it.
/// </remarks>
public sealed class LocalApicState
{
    /// <summary>The size of the register page in bytes: 1024 (KVM_APIC_REG_SIZE).</summary>
    public const int Size = 0x400;

    private const int IdOffset = 0x20, VersionOffset = 0x30, TprOffset = 0x80, SvrOffset = 0xF0;
    private const int IsrOffset = 0x100, TmrOffset = 0x180, IrrOffset = 0x200;
    private const int LvtTimerOffset = 0x320, InitialCountOffset = 0x380, CurrentCountOffset = 0x390, DivideOffset = 0x3E0;

    private readonly byte[] _page;

    /// <summary>A state holding a copy of <paramref name="registers"/> (e.g. saved by <see cref="ToArray"/>).</summary>
    /// <param name="registers">The 1024-byte register page.</param>
    /// <exception cref="ArgumentException"><paramref name="registers"/> is not 1024 bytes.</exception>
    public LocalApicState(ReadOnlySpan<byte> registers)
    {
        if (registers.Length != Size)
            throw new ArgumentException($"A local APIC's register page (struct kvm_lapic_state) is {Size} bytes; got {registers.Length}.", nameof(registers));
        _page = registers.ToArray();
    }

    /// <summary>The 32-bit register at <paramref name="offset"/> (its xAPIC MMIO offset, e.g. 0x80 for the TPR).</summary>
    /// <param name="offset">A multiple of 16 below 0x400.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> is not a multiple of 16 below 0x400.</exception>
    public uint this[int offset]
    {
        get => BinaryPrimitives.ReadUInt32LittleEndian(_page.AsSpan(CheckOffset(offset)));
        set => BinaryPrimitives.WriteUInt32LittleEndian(_page.AsSpan(CheckOffset(offset)), value);
    }

    /// <summary>The ID register (0x20): the APIC id in bits 24–31.</summary>
    public uint Id
    {
        get => this[IdOffset];
        set => this[IdOffset] = value;
    }

    /// <summary>The version register (0x30): the version in bits 0–7, the highest LVT entry's index in bits 16–23.</summary>
    public uint Version => this[VersionOffset];

    /// <summary>The task priority (TPR, 0x80, bits 0–7). The guest's CR8 is its bits 4–7: KVM keeps the two as one.</summary>
    public byte TaskPriority
    {
        get => (byte)this[TprOffset];
        set => this[TprOffset] = value;
    }

    /// <summary>The spurious-interrupt vector register (0xF0): the vector in bits 0–7, the APIC software-enabled by bit 8.</summary>
    public uint SpuriousInterruptVector
    {
        get => this[SvrOffset];
        set => this[SvrOffset] = value;
    }

    /// <summary>The LVT timer register (0x320): vector (bits 0–7), masked (bit 16), mode (bits 17–18: 0 one-shot, 1 periodic, 2 TSC deadline).</summary>
    public uint LvtTimer
    {
        get => this[LvtTimerOffset];
        set => this[LvtTimerOffset] = value;
    }

    /// <summary>The timer's initial count (0x380).</summary>
    public uint TimerInitialCount
    {
        get => this[InitialCountOffset];
        set => this[InitialCountOffset] = value;
    }

    /// <summary>The timer's current count (0x390): what remained at the read; KVM_SET_LAPIC restarts the timer from it (at most the initial count).</summary>
    public uint TimerCurrentCount
    {
        get => this[CurrentCountOffset];
        set => this[CurrentCountOffset] = value;
    }

    /// <summary>The timer's divide configuration (0x3E0): 0xB divides by 1, 0 by 2, 1 by 4 … 0xA by 128.</summary>
    public uint TimerDivideConfiguration
    {
        get => this[DivideOffset];
        set => this[DivideOffset] = value;
    }

    /// <summary>Whether <paramref name="vector"/> is requested (its bit in the IRR, 0x200–0x270): pending, not yet delivered.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="vector"/> is not 0–255.</exception>
    public bool IsRequested(int vector) => VectorBit(IrrOffset, vector);

    /// <summary>Whether <paramref name="vector"/> is in service (its bit in the ISR, 0x100–0x170): delivered, its EOI not yet written.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="vector"/> is not 0–255.</exception>
    public bool IsInService(int vector) => VectorBit(IsrOffset, vector);

    /// <summary>Whether <paramref name="vector"/> was accepted as level-triggered (its bit in the TMR, 0x180–0x1F0).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="vector"/> is not 0–255.</exception>
    public bool IsLevelTriggered(int vector) => VectorBit(TmrOffset, vector);

    /// <summary>A copy of the 1024-byte register page.</summary>
    public byte[] ToArray() => (byte[])_page.Clone();

    internal ReadOnlySpan<byte> Page => _page;

    private bool VectorBit(int bank, int vector)
    {
        if ((uint)vector > 255) throw new ArgumentOutOfRangeException(nameof(vector), vector, "A vector is 0–255.");
        return (this[bank + vector / 32 * 16] >> (vector % 32) & 1) != 0;
    }

    private static int CheckOffset(int offset) =>
        offset is >= 0 and < Size && offset % 16 == 0
            ? offset
            : throw new ArgumentOutOfRangeException(nameof(offset), offset, "A local APIC register's offset is a multiple of 16 (0x10) below 0x400.");
}
