namespace KvmSharp.Registers;

/// <summary>
/// How much register state a write-back pushes to KVM. The levels are cumulative:
/// Runtime ⊂ Reset ⊂ Full (QEMU's KVM_PUT_RUNTIME_STATE / RESET_STATE / FULL_STATE).
/// </summary>
public enum SyncLevel
{
    /// <summary>State the vCPU itself changes while it runs (GPRs, special registers, FPU, runtime MSRs).</summary>
    Runtime = 1,

    /// <summary>Runtime state plus what a system reset changes (MP state, TSC and other reset-time MSRs).</summary>
    Reset = 2,

    /// <summary>Everything, as after creating a vCPU or loading a snapshot.</summary>
    Full = 3,
}
