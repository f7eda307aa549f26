using KvmSharp.Interop.X86;

namespace KvmSharp;

/// <summary>
/// The state of one channel of the in-kernel 8254 PIT: <c>struct kvm_pit_channel_state</c>, field by
/// field (<see cref="PitState"/>). Change a field with <c>with</c>, e.g.
/// <c>channel with { Mode = 2, Count = 1193 }</c>. KVM keeps the fields it stores as 0 or 1 as
/// booleans here; the counting state (<see cref="ReadState"/>, <see cref="WriteState"/>,
/// <see cref="CountLatched"/>) uses KVM's numbers: 1 low byte, 2 high byte, 3 low then high byte
/// (the low byte next), 4 the high byte of a word next.
/// </summary>
public readonly record struct PitChannelState
{
    /// <summary>
    /// The initial count loaded last, 1–65536 (a count of 0 written by the guest means 65536, which
    /// KVM stores as such). Loading a state restarts the channel from this count.
    /// </summary>
    public uint Count { get; init; }

    /// <summary>The count latched by a counter-latch command, until the guest has read it.</summary>
    public ushort LatchedCount { get; init; }

    /// <summary>Whether a latched count awaits reading, and how it is read (0 none; else as <see cref="ReadState"/>).</summary>
    public byte CountLatched { get; init; }

    /// <summary>Whether a status byte latched by a read-back command awaits reading.</summary>
    public bool StatusLatched { get; init; }

    /// <summary>The latched status byte: output (bit 7), null count (bit 6), access mode (bits 4–5), mode (bits 1–3), BCD (bit 0).</summary>
    public byte Status { get; init; }

    /// <summary>Which byte a read of the channel's port returns next (1–4, see the type's remarks).</summary>
    public byte ReadState { get; init; }

    /// <summary>Which byte a write to the channel's port loads next (1–4, see the type's remarks).</summary>
    public byte WriteState { get; init; }

    /// <summary>The low byte of a count being written as two bytes, kept until the high byte comes.</summary>
    public byte WriteLatch { get; init; }

    /// <summary>The access mode from the control word (<c>rw_mode</c>): 1 low byte only, 2 high byte only, 3 low then high byte; 0 before the first control word.</summary>
    public byte ReadWriteMode { get; init; }

    /// <summary>The counting mode 0–5 from the control word (6 and 7 are stored as 2 and 3); KVM gives 0xFF for a channel never programmed, which runs no timer.</summary>
    public byte Mode { get; init; }

    /// <summary>BCD counting (control word bit 0) instead of binary.</summary>
    public bool Bcd { get; init; }

    /// <summary>The gate input: channels 0 and 1 have it high; channel 2's follows port 0x61 bit 0.</summary>
    public bool Gate { get; init; }

    /// <summary>When the count was loaded, in the host kernel's monotonic nanoseconds (<c>ktime</c>); for channels 1 and 2 (channel 0 counts on its timer instead). Informational: KVM_SET_PIT2 does not use it, it restarts each count now.</summary>
    public long CountLoadTime { get; init; }

    internal static PitChannelState From(in kvm_pit_channel_state c) => new()
    {
        Count = c.count, LatchedCount = c.latched_count, CountLatched = c.count_latched, StatusLatched = c.status_latched != 0,
        Status = c.status, ReadState = c.read_state, WriteState = c.write_state, WriteLatch = c.write_latch,
        ReadWriteMode = c.rw_mode, Mode = c.mode, Bcd = c.bcd != 0, Gate = c.gate != 0, CountLoadTime = c.count_load_time,
    };

    internal kvm_pit_channel_state ToNative() => new()
    {
        count = Count, latched_count = LatchedCount, count_latched = CountLatched, status_latched = StatusLatched ? (byte)1 : (byte)0,
        status = Status, read_state = ReadState, write_state = WriteState, write_latch = WriteLatch,
        rw_mode = ReadWriteMode, mode = Mode, bcd = Bcd ? (byte)1 : (byte)0, gate = Gate ? (byte)1 : (byte)0, count_load_time = CountLoadTime,
    };
}
