namespace KvmSharp;

/// <summary>How KVM reports the pages the guest wrote.</summary>
public enum DirtyLogBackend
{
    /// <summary>The best the kernel offers: the dirty ring if no vCPU exists yet, else manual protect, else the plain log.</summary>
    Auto,

    /// <summary>KVM_GET_DIRTY_LOG: a bitmap per slot; fetching it also re-arms tracking.</summary>
    GetDirtyLog,

    /// <summary>KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: re-arms only the pages reported.</summary>
    ManualProtect,

    /// <summary>KVM_CAP_DIRTY_LOG_RING: per-vCPU rings of dirty pages (enabled before vCPUs exist), reset with KVM_RESET_DIRTY_RINGS.</summary>
    DirtyRing,
}
