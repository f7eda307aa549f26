using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp;

// x86: the vCPU's in-kernel local APIC (KVM_GET/SET_LAPIC) and single MSRs read or written straight
// through KVM_GET/SET_MSRS, for the APIC state a snapshot keeps (VirtualMachine.DeviceState.cs).
// These go behind the register cache: the internal ones leave it to their callers to flush and
// invalidate it around them; the public GetLapic/SetLapic do it themselves.
public sealed partial class Vcpu
{
    /// <summary>
    /// The local APIC's register page: <c>struct kvm_lapic_state</c> (1024 bytes; the ID register in
    /// the format of the APIC's current mode, the current-count register as of now). Wraps
    /// KVM_GET_LAPIC (x86); needs KVM_CAP_IRQCHIP and <see cref="VirtualMachine.CreateIrqChip"/>.
    /// </summary>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU, or the VM has no in-kernel interrupt controller.</exception>
    internal byte[] GetLapicState()
    {
        RequireLapic();
        return Kernel.IoctlGet(Fd, KvmIoctls.X86.KVM_GET_LAPIC, default(kvm_lapic_state), $"vcpu {Id}");
    }

    /// <summary>
    /// Loads a register page from <see cref="GetLapicState"/>. KVM interprets it in the APIC mode the
    /// vCPU's APIC base MSR sets now (so that MSR goes first), recomputes its interrupt state and
    /// restarts the APIC timer from the page's current count. Wraps KVM_SET_LAPIC (x86).
    /// </summary>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU, or the VM has no in-kernel interrupt controller.</exception>
    internal void SetLapicState(ReadOnlySpan<byte> state)
    {
        RequireLapic();
        Kernel.IoctlSet(Fd, KvmIoctls.X86.KVM_SET_LAPIC, StructBytes.Read<kvm_lapic_state>(state, "kvm_lapic_state"), $"vcpu {Id}");
    }

    /// <summary>
    /// Reads the vCPU's in-kernel local APIC: its register page (TPR, IRR/ISR/TMR, LVT, timer …). Wraps
    /// KVM_GET_LAPIC (x86); needs KVM_CAP_IRQCHIP and <see cref="VirtualMachine.CreateIrqChip"/>.
    /// </summary>
    /// <remarks>Dirty registers are written back and the register cache invalidated first (the cache's rule
    /// for ioctls that act behind it): a CR8 written through the cache is the TPR read here.</remarks>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU, or the VM has no in-kernel interrupt controller.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public LocalApicState GetLapic()
    {
        RequireLapic();
        Registers.Invalidate();
        return new LocalApicState(GetLapicState());
    }

    /// <summary>
    /// Loads the vCPU's in-kernel local APIC from a register page. KVM interprets it in the mode the
    /// vCPU's APIC base MSR sets now (xAPIC or x2APIC; so restore that MSR first), recomputes which
    /// interrupt to deliver (a requested vector the guest may take is delivered at its next entry), and
    /// restarts the APIC timer from <see cref="LocalApicState.TimerCurrentCount"/>. Wraps KVM_SET_LAPIC
    /// (x86); needs KVM_CAP_IRQCHIP and <see cref="VirtualMachine.CreateIrqChip"/>.
    /// </summary>
    /// <remarks>Dirty registers are written back and the register cache invalidated first, so the guest's CR8
    /// (the page's TPR) and APIC base are fetched anew at the next read and not overwritten by the cache.</remarks>
    /// <param name="state">The register page, e.g. from <see cref="GetLapic"/> changed.</param>
    /// <exception cref="ArgumentNullException"><paramref name="state"/> is null.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU, or the VM has no in-kernel interrupt controller.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed (EINVAL, e.g. for an x2APIC ID that is not the vCPU's).</exception>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public void SetLapic(LocalApicState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        RequireLapic();
        Registers.Invalidate();
        SetLapicState(state.Page);
    }

    private void RequireLapic()
    {
        VirtualMachine.Kvm.RequireArch(KvmArchitecture.X86_64, "KVM_GET/SET_LAPIC");
        CheckAccess();
        if (!VirtualMachine.HasIrqChip)
            throw new InvalidOperationException($"vCPU {Id} has no in-kernel local APIC: the VM has no in-kernel interrupt controller (CreateIrqChip).");
    }

    /// <summary>Reads one MSR with KVM_GET_MSRS, bypassing the register cache.</summary>
    /// <exception cref="KvmException">The ioctl failed, or KVM does not know the MSR.</exception>
    internal ulong ReadMsrDirect(uint index) => MoveMsr(KvmIoctls.X86.KVM_GET_MSRS, index, 0);

    /// <summary>Writes one MSR with KVM_SET_MSRS, bypassing the register cache (host-initiated: KVM applies its host rules).</summary>
    /// <exception cref="KvmException">The ioctl failed, or KVM refused the value.</exception>
    internal void WriteMsrDirect(uint index, ulong value) => MoveMsr(KvmIoctls.X86.KVM_SET_MSRS, index, value);

    private ulong MoveMsr(KvmIoctl ioctl, uint index, ulong value)
    {
        VirtualMachine.Kvm.RequireArch(KvmArchitecture.X86_64, ioctl.Name);
        CheckAccess();
        const int Size = 8 + 16; // struct kvm_msrs with one struct kvm_msr_entry
        using var buffer = new NativeBuffer(Size);
        var view = new StructView(buffer, 0, Size);
        view.At<kvm_msrs>(0).nmsrs = 1;
        ref var entry = ref view.At<kvm_msr_entry>(8);
        entry.index = index;
        entry.data = value;
        int r = Kernel.Ioctl(Fd, ioctl, view.Address);
        if (r < 0) ThrowHelper.ThrowKvm(ioctl, r, $"vcpu {Id}, MSR 0x{index:X}");
        if (r != 1) // the count of entries KVM handled: 0 means it refused this one
            throw new KvmException(ioctl.Name, Errno.EINVAL, $"vcpu {Id}: KVM refused MSR 0x{index:X}" + (ioctl == KvmIoctls.X86.KVM_SET_MSRS ? $" (value 0x{value:X})" : ""));
        return entry.data;
    }
}
