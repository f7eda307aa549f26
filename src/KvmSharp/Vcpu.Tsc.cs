using KvmSharp.Interop;

namespace KvmSharp;

// x86: the vCPU's TSC frequency (KVM_GET/SET_TSC_KHZ). The VM-wide default for vCPUs created later:
// VirtualMachine.SetTscKhz (VirtualMachine.Clock.cs).
public sealed partial class Vcpu
{
    /// <summary>
    /// The frequency, in kHz, of the TSC the guest sees: the host's unless it was set
    /// (<see cref="SetTscKhz"/>, <see cref="VirtualMachine.SetTscKhz"/>). Wraps KVM_GET_TSC_KHZ (x86);
    /// needs KVM_CAP_GET_TSC_KHZ.
    /// </summary>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_GET_TSC_KHZ.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed (EIO when the host's TSC frequency is unknown).</exception>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public uint GetTscKhz()
    {
        VirtualMachine.Kvm.RequireArch(KvmArchitecture.X86_64, nameof(GetTscKhz));
        CheckAccess();
        VirtualMachine.RequireCapability(KvmCapability.GetTscKhz, "KVM_CAP_GET_TSC_KHZ", nameof(GetTscKhz));
        return TscKhzIoctl(KvmIoctls.X86.KVM_GET_TSC_KHZ, 0);
    }

    /// <summary>
    /// Sets the frequency, in kHz, of the TSC the guest sees, scaled by the CPU (Intel TSC scaling, AMD
    /// TscRateMsr). Set it before the guest runs and before writing the TSC MSR, as QEMU does: KVM
    /// changes the scaling ratio, not the TSC's offset, and a guest that calibrated its clocks against
    /// the old rate would keep using it. Wraps KVM_SET_TSC_KHZ (x86);
    /// needs KVM_CAP_TSC_CONTROL.
    /// </summary>
    /// <remarks>
    /// <para>Where KVM reports no TSC scaling (KVM_CAP_TSC_CONTROL is 0, e.g. on an AMD CPU without
    /// TscRateMsr), asking for the rate the vCPU has already does nothing and any other rate is refused
    /// here, as QEMU refuses it: KVM itself would fail for a lower rate (leaving KVM_GET_TSC_KHZ reporting
    /// that rate all the same) and run a higher one in "catch-up" mode, stepping the guest's TSC forward
    /// at each entry instead of scaling it.</para>
    /// <para>Dirty registers are written back and the register cache invalidated first (the cache's rule
    /// for ioctls that act behind it): a TSC value written through the cache reaches KVM before the rate changes.</para>
    /// </remarks>
    /// <param name="khz">The frequency in kHz; KVM refuses one past what the CPU's scaling ratio can reach.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="khz"/> is 0.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU.</exception>
    /// <exception cref="NotSupportedException">KVM has no TSC scaling (KVM_CAP_TSC_CONTROL is 0) and <paramref name="khz"/> is not the vCPU's rate already.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed (EINVAL for a rate KVM cannot scale to).</exception>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public void SetTscKhz(uint khz)
    {
        VirtualMachine.Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SetTscKhz));
        ArgumentOutOfRangeException.ThrowIfZero(khz);
        CheckAccess();
        if (VirtualMachine.CheckExtension(KvmCapability.TscControl) <= 0)
        {
            uint current = GetTscKhz();
            if (khz == current) return;
            throw new NotSupportedException(
                $"SetTscKhz({khz}) needs TSC scaling, which this KVM lacks (KVM_CAP_TSC_CONTROL is 0: the CPU has no TSC scaling, e.g. an AMD CPU without TscRateMsr); vCPU {Id}'s TSC runs at {current} kHz.");
        }
        Registers.Invalidate();
        TscKhzIoctl(KvmIoctls.X86.KVM_SET_TSC_KHZ, khz);
    }

    /// <summary>KVM_GET_TSC_KHZ (returns the rate) or KVM_SET_TSC_KHZ (takes it as the argument) as they are, without checks: the kernel's own behaviour.</summary>
    internal uint TscKhzIoctl(KvmIoctl ioctl, uint khz)
    {
        int r = Kernel.Ioctl(Fd, ioctl, (nint)khz);
        if (r < 0) ThrowHelper.ThrowKvm(ioctl, r, ioctl == KvmIoctls.X86.KVM_SET_TSC_KHZ ? $"vcpu {Id}, {khz} kHz" : $"vcpu {Id}");
        return (uint)r;
    }
}
