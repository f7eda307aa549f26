namespace KvmSharp;

/// <summary>
/// What KVM_GET_CLOCK says about a <see cref="KvmClock"/> reading: the <c>flags</c> of
/// <c>struct kvm_clock_data</c>, with the kernel's values (api.rst, KVM_GET_CLOCK).
/// </summary>
[Flags]
#pragma warning disable CA1711 // the name says what it is: the flags of a KVM clock reading
public enum KvmClockFlags : uint
#pragma warning restore CA1711
{
    /// <summary>No flag.</summary>
    None = 0,

    /// <summary>KVM_CLOCK_TSC_STABLE: every vCPU sees this same value (KVM uses its master clock, on a stable host TSC).</summary>
    TscStable = 1 << 1,

    /// <summary>KVM_CLOCK_REALTIME: <see cref="KvmClock.RealtimeNanoseconds"/> holds the host's CLOCK_REALTIME at the reading.</summary>
    Realtime = 1 << 2,

    /// <summary>KVM_CLOCK_HOST_TSC: <see cref="KvmClock.HostTsc"/> holds the host's TSC at the reading.</summary>
    HostTsc = 1 << 3,
}
