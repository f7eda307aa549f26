namespace KvmSharp;

/// <summary>Why <see cref="Vcpu.Run()"/> returned: <c>kvm_run.exit_reason</c> (<c>KVM_EXIT_*</c>).</summary>
/// <remarks>Reasons the kernel adds later arrive as their raw number, which need not be a named member.</remarks>
public enum VcpuExitReason : uint
{
    /// <summary>KVM_EXIT_UNKNOWN: see <see cref="VcpuExit.HardwareExitReason"/>.</summary>
    Unknown = 0,
    /// <summary>KVM_EXIT_EXCEPTION (x86): see <see cref="VcpuExit.Exception"/>.</summary>
    Exception = 1,
    /// <summary>KVM_EXIT_IO: port I/O; see <see cref="VcpuExit.Io"/>.</summary>
    Io = 2,
    /// <summary>KVM_EXIT_HYPERCALL.</summary>
    Hypercall = 3,
    /// <summary>KVM_EXIT_DEBUG: see <see cref="VcpuExit.Debug"/>.</summary>
    Debug = 4,
    /// <summary>KVM_EXIT_HLT: the guest halted with no in-kernel irqchip to wait on.</summary>
    Hlt = 5,
    /// <summary>KVM_EXIT_MMIO: an access to guest-physical memory no writable slot backs; see <see cref="VcpuExit.Mmio"/>.</summary>
    Mmio = 6,
    /// <summary>KVM_EXIT_IRQ_WINDOW_OPEN.</summary>
    IrqWindowOpen = 7,
    /// <summary>KVM_EXIT_SHUTDOWN (x86): a triple fault or similar; the vCPU cannot continue without a reset.</summary>
    Shutdown = 8,
    /// <summary>KVM_EXIT_FAIL_ENTRY: see <see cref="VcpuExit.FailEntry"/>.</summary>
    FailEntry = 9,
    /// <summary>KVM_EXIT_INTR: the run was interrupted (a signal or <c>immediate_exit</c>); KVM_RUN returned EINTR.</summary>
    Interrupted = 10,
    /// <summary>KVM_EXIT_SET_TPR.</summary>
    SetTpr = 11,
    /// <summary>KVM_EXIT_TPR_ACCESS.</summary>
    TprAccess = 12,
    /// <summary>KVM_EXIT_S390_SIEIC: an s390x intercept; see <see cref="VcpuExit.S390Sieic"/>.</summary>
    S390Sieic = 13,
    /// <summary>KVM_EXIT_S390_RESET.</summary>
    S390Reset = 14,
    /// <summary>KVM_EXIT_DCR.</summary>
    Dcr = 15,
    /// <summary>KVM_EXIT_NMI.</summary>
    Nmi = 16,
    /// <summary>KVM_EXIT_INTERNAL_ERROR: see <see cref="VcpuExit.InternalError"/>.</summary>
    InternalError = 17,
    /// <summary>KVM_EXIT_OSI.</summary>
    Osi = 18,
    /// <summary>KVM_EXIT_PAPR_HCALL.</summary>
    PaprHcall = 19,
    /// <summary>KVM_EXIT_S390_UCONTROL: see <see cref="VcpuExit.S390Ucontrol"/>.</summary>
    S390Ucontrol = 20,
    /// <summary>KVM_EXIT_WATCHDOG.</summary>
    Watchdog = 21,
    /// <summary>KVM_EXIT_S390_TSCH.</summary>
    S390Tsch = 22,
    /// <summary>KVM_EXIT_EPR.</summary>
    Epr = 23,
    /// <summary>KVM_EXIT_SYSTEM_EVENT: see <see cref="VcpuExit.SystemEvent"/>.</summary>
    SystemEvent = 24,
    /// <summary>KVM_EXIT_S390_STSI.</summary>
    S390Stsi = 25,
    /// <summary>KVM_EXIT_IOAPIC_EOI.</summary>
    IoapicEoi = 26,
    /// <summary>KVM_EXIT_HYPERV.</summary>
    HyperV = 27,
    /// <summary>KVM_EXIT_ARM_NISV: see <see cref="VcpuExit.ArmNisv"/>.</summary>
    ArmNisv = 28,
    /// <summary>KVM_EXIT_X86_RDMSR: see <see cref="VcpuExit.X86Msr"/>.</summary>
    X86Rdmsr = 29,
    /// <summary>KVM_EXIT_X86_WRMSR: see <see cref="VcpuExit.X86Msr"/>.</summary>
    X86Wrmsr = 30,
    /// <summary>KVM_EXIT_DIRTY_RING_FULL.</summary>
    DirtyRingFull = 31,
    /// <summary>KVM_EXIT_AP_RESET_HOLD.</summary>
    ApResetHold = 32,
    /// <summary>KVM_EXIT_X86_BUS_LOCK.</summary>
    X86BusLock = 33,
    /// <summary>KVM_EXIT_XEN.</summary>
    Xen = 34,
    /// <summary>KVM_EXIT_RISCV_SBI.</summary>
    RiscvSbi = 35,
    /// <summary>KVM_EXIT_RISCV_CSR.</summary>
    RiscvCsr = 36,
    /// <summary>KVM_EXIT_NOTIFY.</summary>
    Notify = 37,
    /// <summary>KVM_EXIT_LOONGARCH_IOCSR.</summary>
    LoongArchIocsr = 38,
    /// <summary>KVM_EXIT_MEMORY_FAULT.</summary>
    MemoryFault = 39,
}
