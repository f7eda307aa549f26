using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>A failed VM entry (<c>kvm_run.fail_entry</c>).</summary>
public readonly ref struct FailEntryExit
{
    private readonly RunBytes _bytes;

    internal FailEntryExit(RunBytes e) => _bytes = e;

    /// <summary>The hardware's entry failure reason (VMX exit qualification / SVM code).</summary>
    public ulong HardwareEntryFailureReason => MemoryMarshal.Read<ulong>(Bytes);

    /// <summary>The host CPU the entry failed on.</summary>
    public uint Cpu => MemoryMarshal.Read<uint>(Bytes.Slice(8));

    private Span<byte> Bytes => _bytes.Span;
}
