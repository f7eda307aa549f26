using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>An s390x SIE intercept (<c>kvm_run.s390_sieic</c>).</summary>
public readonly ref struct S390SieicExit
{
    private readonly RunBytes _bytes;

    internal S390SieicExit(RunBytes e) => _bytes = e;

    /// <summary>The intercept code.</summary>
    public byte InterceptCode => Bytes[0];

    /// <summary>The first halfword of the intercepted instruction (IPA).</summary>
    public ushort Ipa => MemoryMarshal.Read<ushort>(Bytes.Slice(2));

    /// <summary>The remaining instruction bytes (IPB).</summary>
    public uint Ipb => MemoryMarshal.Read<uint>(Bytes.Slice(4));

    private Span<byte> Bytes => _bytes.Span;
}
