namespace KvmSharp;

/// <summary>
/// KVM capabilities (<c>KVM_CAP_*</c>) that KvmSharp uses or reports. Any other capability can be
/// queried by number with <see cref="Kvm.CheckExtension(int)"/>.
/// </summary>
#pragma warning disable CA1707 // names keep the kernel's spelling after the prefix
public enum KvmCapability
{
    /// <summary>KVM_CAP_IRQCHIP: an in-kernel interrupt controller (<c>KVM_CREATE_IRQCHIP</c>, <c>KVM_IRQ_LINE</c>, <c>KVM_GET/SET_IRQCHIP</c>).</summary>
    IrqChip = 0,
    /// <summary>KVM_CAP_HLT.</summary>
    Hlt = 1,
    /// <summary>KVM_CAP_USER_MEMORY: <c>KVM_SET_USER_MEMORY_REGION</c>.</summary>
    UserMemory = 3,
    /// <summary>KVM_CAP_SET_TSS_ADDR (x86).</summary>
    SetTssAddr = 4,
    /// <summary>KVM_CAP_EXT_CPUID (x86): <c>KVM_GET_SUPPORTED_CPUID</c>.</summary>
    ExtCpuid = 7,
    /// <summary>KVM_CAP_NR_VCPUS: the recommended maximum number of vCPUs.</summary>
    NrVcpus = 9,
    /// <summary>KVM_CAP_NR_MEMSLOTS: the number of memory slots.</summary>
    NrMemSlots = 10,
    /// <summary>KVM_CAP_PIT.</summary>
    Pit = 11,
    /// <summary>KVM_CAP_MP_STATE: <c>KVM_GET/SET_MP_STATE</c>.</summary>
    MpState = 14,
    /// <summary>KVM_CAP_COALESCED_MMIO: the page offset of the coalesced MMIO ring.</summary>
    CoalescedMmio = 15,
    /// <summary>KVM_CAP_SET_GUEST_DEBUG.</summary>
    SetGuestDebug = 23,
    /// <summary>KVM_CAP_IRQ_ROUTING: <c>KVM_SET_GSI_ROUTING</c>.</summary>
    IrqRouting = 25,
    /// <summary>KVM_CAP_IRQFD.</summary>
    IrqFd = 32,
    /// <summary>KVM_CAP_PIT2 (x86): <c>KVM_CREATE_PIT2</c>.</summary>
    Pit2 = 33,
    /// <summary>KVM_CAP_PIT_STATE2 (x86): <c>KVM_GET/SET_PIT2</c>.</summary>
    PitState2 = 35,
    /// <summary>KVM_CAP_IOEVENTFD.</summary>
    IoEventFd = 36,
    /// <summary>KVM_CAP_SET_IDENTITY_MAP_ADDR (x86).</summary>
    SetIdentityMapAddr = 37,
    /// <summary>KVM_CAP_ADJUST_CLOCK (x86): <c>KVM_GET/SET_CLOCK</c>.</summary>
    AdjustClock = 39,
    /// <summary>KVM_CAP_INTERNAL_ERROR_DATA: internal-error exits carry data words.</summary>
    InternalErrorData = 40,
    /// <summary>KVM_CAP_VCPU_EVENTS: <c>KVM_GET/SET_VCPU_EVENTS</c>.</summary>
    VcpuEvents = 41,
    /// <summary>KVM_CAP_S390_PSW.</summary>
    S390Psw = 42,
    /// <summary>KVM_CAP_DEBUGREGS (x86).</summary>
    DebugRegs = 50,
    /// <summary>KVM_CAP_ENABLE_CAP: <c>KVM_ENABLE_CAP</c> on vCPUs.</summary>
    EnableCap = 54,
    /// <summary>KVM_CAP_XSAVE (x86).</summary>
    Xsave = 55,
    /// <summary>KVM_CAP_XCRS (x86).</summary>
    Xcrs = 56,
    /// <summary>KVM_CAP_TSC_CONTROL (x86): <c>KVM_SET_TSC_KHZ</c> on a vCPU can scale its TSC (nonzero only where the CPU has TSC scaling).</summary>
    TscControl = 60,
    /// <summary>KVM_CAP_GET_TSC_KHZ (x86): <c>KVM_GET_TSC_KHZ</c> on a vCPU.</summary>
    GetTscKhz = 61,
    /// <summary>KVM_CAP_MAX_VCPUS.</summary>
    MaxVcpus = 66,
    /// <summary>KVM_CAP_ONE_REG: <c>KVM_GET/SET_ONE_REG</c>.</summary>
    OneReg = 70,
    /// <summary>KVM_CAP_TSC_DEADLINE_TIMER (x86): the local APIC emulates the TSC-deadline timer mode; KVM_GET_SUPPORTED_CPUID does not
    /// report it, so a VMM that wants the guest to use it sets CPUID 1 ECX bit 24 itself.</summary>
    TscDeadlineTimer = 72,
    /// <summary>KVM_CAP_SYNC_REGS: register sets that travel in <c>kvm_run</c> (a bit mask of them).</summary>
    SyncRegs = 74,
    /// <summary>KVM_CAP_SIGNAL_MSI: <c>KVM_SIGNAL_MSI</c>.</summary>
    SignalMsi = 77,
    /// <summary>KVM_CAP_READONLY_MEM: read-only memory slots.</summary>
    ReadOnlyMem = 81,
    /// <summary>KVM_CAP_ARM_PSCI.</summary>
    ArmPsci = 87,
    /// <summary>KVM_CAP_DEVICE_CTRL.</summary>
    DeviceCtrl = 89,
    /// <summary>KVM_CAP_ENABLE_CAP_VM: <c>KVM_ENABLE_CAP</c> on VMs.</summary>
    EnableCapVm = 98,
    /// <summary>KVM_CAP_CHECK_EXTENSION_VM.</summary>
    CheckExtensionVm = 105,
    /// <summary>KVM_CAP_S390_VECTOR_REGISTERS.</summary>
    S390VectorRegisters = 107,
    /// <summary>KVM_CAP_MULTI_ADDRESS_SPACE.</summary>
    MultiAddressSpace = 118,
    /// <summary>KVM_CAP_GUEST_DEBUG_HW_BPS.</summary>
    GuestDebugHwBps = 119,
    /// <summary>KVM_CAP_GUEST_DEBUG_HW_WPS.</summary>
    GuestDebugHwWps = 120,
    /// <summary>KVM_CAP_IOEVENTFD_ANY_LENGTH: an MMIO ioeventfd of length 0 matches writes of any size.</summary>
    IoEventFdAnyLength = 122,
    /// <summary>KVM_CAP_MAX_VCPU_ID.</summary>
    MaxVcpuId = 128,
    /// <summary>KVM_CAP_IMMEDIATE_EXIT: <c>kvm_run.immediate_exit</c>.</summary>
    ImmediateExit = 136,
    /// <summary>KVM_CAP_NESTED_STATE (x86).</summary>
    NestedState = 157,
    /// <summary>KVM_CAP_COALESCED_PIO: coalesced zones of I/O ports.</summary>
    CoalescedPio = 162,
    /// <summary>KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: <c>KVM_CLEAR_DIRTY_LOG</c>.</summary>
    ManualDirtyLogProtect2 = 168,
    /// <summary>KVM_CAP_ARM_SVE.</summary>
    ArmSve = 170,
    /// <summary>KVM_CAP_ARM_NISV_TO_USER.</summary>
    ArmNisvToUser = 177,
    /// <summary>KVM_CAP_S390_VCPU_RESETS: normal and clear resets.</summary>
    S390VcpuResets = 179,
    /// <summary>KVM_CAP_X86_USER_SPACE_MSR: RDMSR/WRMSR exits to user space.</summary>
    X86UserSpaceMsr = 188,
    /// <summary>KVM_CAP_X86_MSR_FILTER.</summary>
    X86MsrFilter = 189,
    /// <summary>KVM_CAP_HYPERV_ENFORCE_CPUID: a vCPU capability; with arg0 = 1 the guest may use only the Hyper-V features its CPUID shows.</summary>
    HypervEnforceCpuid = 199,
    /// <summary>KVM_CAP_DIRTY_LOG_RING: the per-vCPU dirty ring (value: maximum ring size in bytes).</summary>
    DirtyLogRing = 192,
    /// <summary>KVM_CAP_SREGS2 (x86).</summary>
    Sregs2 = 200,
    /// <summary>KVM_CAP_EXIT_ON_EMULATION_FAILURE (x86).</summary>
    ExitOnEmulationFailure = 204,
    /// <summary>KVM_CAP_XSAVE2 (x86): the size <c>KVM_GET_XSAVE2</c> needs.</summary>
    Xsave2 = 208,
    /// <summary>
    /// KVM_CAP_DISABLE_QUIRKS2 (x86): the mask of KVM's quirks (<c>KVM_X86_QUIRK_*</c>) a VM may turn
    /// off. The quirks are on by default; e.g. bit 3, <c>KVM_X86_QUIRK_OUT_7E_INC_RIP</c>, advances RIP
    /// past an <c>out</c> to port 0x7E before the exit.
    /// </summary>
    DisableQuirks2 = 213,
    /// <summary>KVM_CAP_VM_TSC_CONTROL (x86): <c>KVM_SET_TSC_KHZ</c> on the VM sets the default of vCPUs created later (nonzero only where the CPU has TSC scaling).</summary>
    VmTscControl = 214,
    /// <summary>KVM_CAP_SYSTEM_EVENT_DATA.</summary>
    SystemEventData = 215,
    /// <summary>KVM_CAP_DIRTY_LOG_RING_ACQ_REL.</summary>
    DirtyLogRingAcqRel = 223,
}
