using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>A system event exit (<c>kvm_run.system_event</c>).</summary>
public readonly ref struct SystemEventExit
{
    private static readonly int DataOffset = (int)Marshal.OffsetOf<kvm_run_system_event>(nameof(kvm_run_system_event.data));
    private readonly RunBytes _bytes;

    internal SystemEventExit(RunBytes e) => _bytes = e;

    /// <summary>The event type.</summary>
    public SystemEventType Type => (SystemEventType)Fields.type;

    /// <summary>The event's data words (<c>ndata</c> of them, at most 16; the first is the legacy <c>flags</c>).</summary>
    public ReadOnlySpan<ulong> Data =>
        MemoryMarshal.Cast<byte, ulong>(_bytes.Span.Slice(DataOffset, kvm_run_system_event.MaxData * sizeof(ulong)))
            .Slice(0, (int)Math.Min(Fields.ndata, (uint)kvm_run_system_event.MaxData));

    /// <summary>The legacy <c>flags</c> word (aliases <c>data[0]</c>).</summary>
    public ulong Flags => Fields.flags;

    private ref kvm_run_system_event Fields => ref _bytes.As<kvm_run_system_event>();
}
