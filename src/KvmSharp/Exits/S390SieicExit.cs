using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>An s390x SIE intercept (<c>kvm_run.s390_sieic</c>).</summary>
public readonly ref struct S390SieicExit
{
    private readonly RunBytes _bytes;

    internal S390SieicExit(RunBytes e) => _bytes = e;

    /// <summary>The intercept code.</summary>
    public byte InterceptCode => Fields.icptcode;

    /// <summary>The first halfword of the intercepted instruction (IPA).</summary>
    public ushort Ipa => Fields.ipa;

    /// <summary>The remaining instruction bytes (IPB).</summary>
    public uint Ipb => Fields.ipb;

    private ref kvm_run_s390_sieic Fields => ref _bytes.As<kvm_run_s390_sieic>();
}
