using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>An arm64 data abort without a valid instruction syndrome (<c>kvm_run.arm_nisv</c>).</summary>
public readonly ref struct ArmNisvExit
{
    private readonly RunBytes _bytes;

    internal ArmNisvExit(RunBytes e) => _bytes = e;

    /// <summary>ESR_EL2 with the ISS bits the kernel may expose.</summary>
    public ulong EsrIss => MemoryMarshal.Read<ulong>(Bytes);

    /// <summary>The faulting intermediate physical address.</summary>
    public ulong FaultIpa => MemoryMarshal.Read<ulong>(Bytes.Slice(8));

    private Span<byte> Bytes => _bytes.Span;
}
