using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>An x86 user-space MSR exit (<c>kvm_run.msr</c>, KVM_CAP_X86_USER_SPACE_MSR).</summary>
public readonly ref struct X86MsrExit
{
    private readonly RunBytes _bytes;

    internal X86MsrExit(RunBytes e) => _bytes = e;

    /// <summary>The MSR index.</summary>
    public uint Index => Fields.index;

    /// <summary>Why the access exited (KVM_MSR_EXIT_REASON_* bits: 1 invalid, 2 unknown, 4 filter).</summary>
    public uint ExitReasonFlags => Fields.reason;

    /// <summary>For WRMSR the value the guest wrote; for RDMSR set the value the guest reads (before the next run).</summary>
    public ulong Data
    {
        get => Fields.data;
        set => Fields.data = value;
    }

    /// <summary>
    /// Whether the guest's access fails: set it to make the RDMSR/WRMSR raise #GP in the guest at
    /// the next run (<c>kvm_run.msr.error</c>). False when the exit arrives.
    /// </summary>
    public bool Error
    {
        get => Fields.error != 0;
        set => Fields.error = value ? (byte)1 : (byte)0;
    }

    private ref kvm_run_msr Fields => ref _bytes.As<kvm_run_msr>();
}
