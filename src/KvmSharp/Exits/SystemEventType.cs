namespace KvmSharp;

/// <summary>Kinds of <see cref="VcpuExitReason.SystemEvent"/> (<c>KVM_SYSTEM_EVENT_*</c>).</summary>
public enum SystemEventType : uint
{
    /// <summary>KVM_SYSTEM_EVENT_SHUTDOWN.</summary>
    Shutdown = 1,
    /// <summary>KVM_SYSTEM_EVENT_RESET.</summary>
    Reset = 2,
    /// <summary>KVM_SYSTEM_EVENT_CRASH.</summary>
    Crash = 3,
    /// <summary>KVM_SYSTEM_EVENT_WAKEUP.</summary>
    Wakeup = 4,
    /// <summary>KVM_SYSTEM_EVENT_SUSPEND.</summary>
    Suspend = 5,
    /// <summary>KVM_SYSTEM_EVENT_SEV_TERM.</summary>
    SevTerm = 6,
}
