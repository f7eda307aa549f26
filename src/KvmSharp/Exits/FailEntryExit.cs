using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>A failed VM entry (<c>kvm_run.fail_entry</c>).</summary>
public readonly ref struct FailEntryExit
{
    private readonly RunBytes _bytes;

    internal FailEntryExit(RunBytes e) => _bytes = e;

    /// <summary>The hardware's entry failure reason (VMX exit qualification / SVM code).</summary>
    public ulong HardwareEntryFailureReason => Fields.hardware_entry_failure_reason;

    /// <summary>The host CPU the entry failed on.</summary>
    public uint Cpu => Fields.cpu;

    private ref kvm_run_fail_entry Fields => ref _bytes.As<kvm_run_fail_entry>();
}
