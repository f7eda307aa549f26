using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>An MMIO exit (<c>kvm_run.mmio</c>): an access to guest-physical memory that no writable slot backs.</summary>
public readonly ref struct MmioExit
{
    private static readonly int DataOffset = (int)Marshal.OffsetOf<kvm_run_mmio>(nameof(kvm_run_mmio.data));
    private readonly RunBytes _bytes;

    internal MmioExit(RunBytes mmio) => _bytes = mmio;

    /// <summary>The guest-physical address.</summary>
    public ulong Address => Fields.phys_addr;

    /// <summary>The access width in bytes (1–8).</summary>
    public int Length => (int)Math.Min(Fields.len, 8u);

    /// <summary>True for a guest write.</summary>
    public bool IsWrite => Fields.is_write != 0;

    /// <summary>The data (<see cref="Length"/> bytes, guest byte order): what the guest wrote, or for a read what it will get.</summary>
    public Span<byte> Data => _bytes.Span.Slice(DataOffset, Length);

    private ref kvm_run_mmio Fields => ref _bytes.As<kvm_run_mmio>();
}
