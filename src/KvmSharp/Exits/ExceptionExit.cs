using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>An x86 exception exit (<c>kvm_run.ex</c>).</summary>
public readonly ref struct ExceptionExit
{
    private readonly RunBytes _bytes;

    internal ExceptionExit(RunBytes e) => _bytes = e;

    /// <summary>The exception vector.</summary>
    public uint Vector => MemoryMarshal.Read<uint>(Bytes);

    /// <summary>The error code.</summary>
    public uint ErrorCode => MemoryMarshal.Read<uint>(Bytes.Slice(4));

    private Span<byte> Bytes => _bytes.Span;
}
