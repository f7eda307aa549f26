using KvmSharp.Interop.X86;

namespace KvmSharp;

/// <summary>
/// A reading of an x86 VM's KVM clock (kvmclock): the nanoseconds its guests see, taken by
/// <see cref="VirtualMachine.GetClock"/> (KVM_GET_CLOCK). Where the host allows it, KVM also gives
/// the host's wall-clock time and TSC at the same instant, so that a VMM can carry the clock across a
/// migration (api.rst, KVM_GET_CLOCK); each is present only when its flag says so.
/// </summary>
/// <param name="Nanoseconds">The clock's value in nanoseconds; it starts near 0 when the VM is created.</param>
/// <param name="Flags">What KVM filled in, and whether the value is the same for every vCPU.</param>
/// <param name="RealtimeNanoseconds">The host's CLOCK_REALTIME (nanoseconds since 1970) at the reading, when <see cref="KvmClockFlags.Realtime"/> is set; otherwise null.</param>
/// <param name="HostTsc">The host's TSC at the reading, when <see cref="KvmClockFlags.HostTsc"/> is set; otherwise null.</param>
public readonly record struct KvmClock(ulong Nanoseconds, KvmClockFlags Flags, ulong? RealtimeNanoseconds, ulong? HostTsc)
{
    internal static KvmClock From(in kvm_clock_data data)
    {
        var flags = (KvmClockFlags)data.flags;
        return new KvmClock(
            data.clock,
            flags,
            flags.HasFlag(KvmClockFlags.Realtime) ? data.realtime : null,
            flags.HasFlag(KvmClockFlags.HostTsc) ? data.host_tsc : null);
    }
}
