namespace KvmSharp.Registers;

/// <summary>A vCPU's multiprocessing state (<c>KVM_MP_STATE_*</c>).</summary>
public enum MpState : uint
{
    /// <summary>KVM_MP_STATE_RUNNABLE.</summary>
    Runnable = 0,
    /// <summary>KVM_MP_STATE_UNINITIALIZED (x86 AP waiting for INIT).</summary>
    Uninitialized = 1,
    /// <summary>KVM_MP_STATE_INIT_RECEIVED.</summary>
    InitReceived = 2,
    /// <summary>KVM_MP_STATE_HALTED.</summary>
    Halted = 3,
    /// <summary>KVM_MP_STATE_SIPI_RECEIVED.</summary>
    SipiReceived = 4,
    /// <summary>KVM_MP_STATE_STOPPED (arm64, s390x).</summary>
    Stopped = 5,
    /// <summary>KVM_MP_STATE_CHECK_STOP (s390x).</summary>
    CheckStop = 6,
    /// <summary>KVM_MP_STATE_OPERATING (s390x).</summary>
    Operating = 7,
    /// <summary>KVM_MP_STATE_LOAD (s390x).</summary>
    Load = 8,
    /// <summary>KVM_MP_STATE_AP_RESET_HOLD.</summary>
    ApResetHold = 9,
    /// <summary>KVM_MP_STATE_SUSPENDED (arm64).</summary>
    Suspended = 10,
}
