using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp;

// x86: the VM's time base, typed: the KVM clock (kvmclock) and the default TSC frequency of the vCPUs
// created afterwards. The vCPU's own TSC frequency: Vcpu.Tsc.cs.
public sealed partial class VirtualMachine
{
    /// <summary>
    /// Reads the KVM clock, the nanosecond clock the VM's guests see through kvmclock, with what KVM
    /// tells about it (stable on every vCPU; the host's wall-clock time and TSC at the same instant,
    /// when the host clock source allows). Wraps KVM_GET_CLOCK (x86); needs KVM_CAP_ADJUST_CLOCK.
    /// May be called from any thread.
    /// </summary>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_ADJUST_CLOCK.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public KvmClock GetClock()
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(GetClock));
        RequireCapability(KvmCapability.AdjustClock, "KVM_CAP_ADJUST_CLOCK", nameof(GetClock));
        return KvmClock.From(StructBytes.Read<kvm_clock_data>(GetClockState(), "kvm_clock_data"));
    }

    /// <summary>
    /// Sets the KVM clock to <paramref name="nanoseconds"/>; it runs on from there, and every vCPU's
    /// kvmclock follows at its next entry. Only the value is passed, with flags 0: KVM_CLOCK_REALTIME
    /// would make KVM add the wall-clock time elapsed since a <see cref="KvmClock.RealtimeNanoseconds"/>
    /// (what a live migration wants, not a plain set), and kernels before 5.16 reject any flag. Wraps
    /// KVM_SET_CLOCK (x86); needs KVM_CAP_ADJUST_CLOCK. May be called from any thread.
    /// </summary>
    /// <param name="nanoseconds">The clock's new value.</param>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_ADJUST_CLOCK.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void SetClock(ulong nanoseconds)
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SetClock));
        RequireCapability(KvmCapability.AdjustClock, "KVM_CAP_ADJUST_CLOCK", nameof(SetClock));
        SetClockNanoseconds(nanoseconds);
    }

    /// <summary>
    /// Sets the TSC frequency, in kHz, of the vCPUs this VM creates from now on (each can still be
    /// changed with <see cref="Vcpu.SetTscKhz"/>). Call it before the first vCPU: newer kernels refuse it
    /// afterwards, and on older ones it would not change the vCPUs that exist. Wraps KVM_SET_TSC_KHZ on
    /// the VM fd (x86); needs KVM_CAP_VM_TSC_CONTROL (Linux 5.18+), which KVM offers only where the CPU
    /// can scale a guest's TSC (Intel TSC scaling, AMD TscRateMsr).
    /// </summary>
    /// <remarks>Without TSC scaling KVM would take any value here, then fail silently when it creates a
    /// vCPU whose rate is below the host's: the vCPU would report the rate asked for
    /// (<see cref="Vcpu.GetTscKhz"/>) while its TSC runs at the host's. The capability check prevents that.</remarks>
    /// <param name="khz">The frequency in kHz; KVM refuses one past what the CPU's scaling ratio can reach.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="khz"/> is 0.</exception>
    /// <exception cref="InvalidOperationException">A vCPU has been created in this VM already.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_VM_TSC_CONTROL (or reports 0 for it: no TSC scaling).</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed (EINVAL for a rate past the CPU's scaling range).</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void SetTscKhz(uint khz)
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SetTscKhz));
        ArgumentOutOfRangeException.ThrowIfZero(khz);
        lock (_lock)
        {
            if (_vcpusCreated > 0)
                throw new InvalidOperationException(
                    $"The VM's TSC frequency is the default of vCPUs created later; {_vcpusCreated} vCPU(s) were created already. Set it right after creating the VM, or use Vcpu.SetTscKhz.");
            RequireCapability(KvmCapability.VmTscControl, "KVM_CAP_VM_TSC_CONTROL (TSC scaling)", nameof(SetTscKhz));
            int r = Kernel.Ioctl(Fd, KvmIoctls.X86.KVM_SET_TSC_KHZ, (nint)khz);
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.X86.KVM_SET_TSC_KHZ, r, $"VM, {khz} kHz");
        }
    }
}
