using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>A system event exit (<c>kvm_run.system_event</c>).</summary>
public readonly ref struct SystemEventExit
{
    private readonly RunBytes _bytes;

    internal SystemEventExit(RunBytes e) => _bytes = e;

    /// <summary>The event type.</summary>
    public SystemEventType Type => (SystemEventType)MemoryMarshal.Read<uint>(Bytes);

    /// <summary>The event's data words (<c>ndata</c> of them, at most 16; the first is the legacy <c>flags</c>).</summary>
    public ReadOnlySpan<ulong> Data =>
        MemoryMarshal.Cast<byte, ulong>(Bytes.Slice(8, 128)).Slice(0, (int)Math.Min(MemoryMarshal.Read<uint>(Bytes.Slice(4)), 16u));

    /// <summary>The legacy <c>flags</c> word (aliases <c>data[0]</c>).</summary>
    public ulong Flags => MemoryMarshal.Read<ulong>(Bytes.Slice(8));

    private Span<byte> Bytes => _bytes.Span;
}
