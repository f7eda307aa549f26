using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>An arm64 data abort without a valid instruction syndrome (<c>kvm_run.arm_nisv</c>).</summary>
public readonly ref struct ArmNisvExit
{
    private readonly RunBytes _bytes;

    internal ArmNisvExit(RunBytes e) => _bytes = e;

    /// <summary>ESR_EL2 with the ISS bits the kernel may expose.</summary>
    public ulong EsrIss => Fields.esr_iss;

    /// <summary>The faulting intermediate physical address.</summary>
    public ulong FaultIpa => Fields.fault_ipa;

    private ref kvm_run_arm_nisv Fields => ref _bytes.As<kvm_run_arm_nisv>();
}
