using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>An s390x user-controlled VM translation fault (<c>kvm_run.s390_ucontrol</c>).</summary>
public readonly ref struct S390UcontrolExit
{
    private readonly RunBytes _bytes;

    internal S390UcontrolExit(RunBytes e) => _bytes = e;

    /// <summary>The translation-exception code.</summary>
    public ulong TranslationExceptionCode => Fields.trans_exc_code;

    /// <summary>The program-interruption code.</summary>
    public uint ProgramCode => Fields.pgm_code;

    private ref kvm_run_s390_ucontrol Fields => ref _bytes.As<kvm_run_s390_ucontrol>();
}
