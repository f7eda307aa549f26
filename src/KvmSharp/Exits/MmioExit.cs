using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>An MMIO exit (<c>kvm_run.mmio</c>): an access to guest-physical memory that no writable slot backs.</summary>
public readonly ref struct MmioExit
{
    private readonly RunBytes _bytes;

    internal MmioExit(RunBytes mmio) => _bytes = mmio;

    /// <summary>The guest-physical address.</summary>
    public ulong Address => MemoryMarshal.Read<ulong>(Bytes);

    /// <summary>The access width in bytes (1–8).</summary>
    public int Length => (int)Math.Min(MemoryMarshal.Read<uint>(Bytes.Slice(16)), 8u);

    /// <summary>True for a guest write.</summary>
    public bool IsWrite => Bytes[20] != 0;

    /// <summary>The data (<see cref="Length"/> bytes, guest byte order): what the guest wrote, or for a read what it will get.</summary>
    public Span<byte> Data => Bytes.Slice(8, Length);

    private Span<byte> Bytes => _bytes.Span;
}
