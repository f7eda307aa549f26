using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp;

// x86: the vCPU's in-kernel local APIC (KVM_GET/SET_LAPIC) and single MSRs read or written straight
// through KVM_GET/SET_MSRS, for the APIC state a snapshot keeps (VirtualMachine.DeviceState.cs).
// These go behind the register cache: callers flush and invalidate it around them.
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
