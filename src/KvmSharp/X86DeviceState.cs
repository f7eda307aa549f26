namespace KvmSharp;

/// <summary>
/// The state of an x86 VM's in-kernel devices, as the kernel's uapi structs, byte for byte: what a
/// whole-VM snapshot needs besides registers and memory. Captured by
/// <see cref="VirtualMachine.CaptureDeviceState"/>, loaded by <see cref="VirtualMachine.RestoreDeviceState"/>.
/// Internal until typed public state APIs exist; the snapshot format stores these blobs.
/// </summary>
/// <param name="Clock"><c>struct kvm_clock_data</c> (48 bytes) from KVM_GET_CLOCK; every x86 VM has it.</param>
/// <param name="PicMaster"><c>struct kvm_irqchip</c> (520 bytes, chip 0), or null when the VM has no in-kernel interrupt controller.</param>
/// <param name="PicSlave"><c>struct kvm_irqchip</c> (chip 1), or null likewise.</param>
/// <param name="IoApic"><c>struct kvm_irqchip</c> (chip 2), or null likewise.</param>
/// <param name="Pit"><c>struct kvm_pit_state2</c> (112 bytes), or null when the VM has no in-kernel PIT.</param>
/// <param name="Lapics">One entry per vCPU, in vCPU id order; empty without an in-kernel interrupt controller.</param>
internal sealed record X86DeviceState(
    byte[] Clock,
    byte[]? PicMaster,
    byte[]? PicSlave,
    byte[]? IoApic,
    byte[]? Pit,
    IReadOnlyList<X86DeviceState.Lapic> Lapics)
{
    /// <summary>MSR index of IA32_APIC_BASE: the APIC's base address, enable and x2APIC bits.</summary>
    public const uint MsrApicBase = 0x1B;

    /// <summary>MSR index of IA32_TSC_DEADLINE: the APIC timer's deadline in TSC-deadline mode.</summary>
    public const uint MsrTscDeadline = 0x6E0;

    /// <summary>One vCPU's local APIC.</summary>
    /// <param name="VcpuId">The vCPU (= initial APIC) id.</param>
    /// <param name="ApicBase">IA32_APIC_BASE: KVM_SET_LAPIC interprets the page in the mode this sets, so it is restored first.</param>
    /// <param name="Registers"><c>struct kvm_lapic_state</c> (1024 bytes) from KVM_GET_LAPIC.</param>
    /// <param name="TscDeadline">IA32_TSC_DEADLINE, or null when KVM does not list it. Restored after the
    /// page: KVM ignores the MSR unless the timer is in TSC-deadline mode, and zeroes it when KVM_SET_LAPIC
    /// switches the timer into that mode; and after the registers, because KVM arms the timer against
    /// the vCPU's TSC at the write (<see cref="VirtualMachine.RestoreTscDeadlines"/>).</param>
    internal sealed record Lapic(int VcpuId, ulong ApicBase, byte[] Registers, ulong? TscDeadline);
}
