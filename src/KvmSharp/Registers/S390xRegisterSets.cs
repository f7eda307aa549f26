namespace KvmSharp.Registers;

/// <summary>
/// The register sets the s390x strategy caches and moves as a unit. The low bits are exactly the
/// <c>KVM_SYNC_*</c> bits of the <c>kvm_run</c> sync area (<c>kvm_valid_regs</c> / <c>kvm_dirty_regs</c>);
/// the bits from 32 up name state that has no sync block. The values are also the keys of a
/// <see cref="RegisterState"/> captured on s390x.
/// </summary>
[Flags]
public enum S390xRegisterSets : ulong
{
    /// <summary>No set.</summary>
    None = 0,

    /// <summary>The prefix register (KVM_SYNC_PREFIX; no ioctl). Level Reset.</summary>
    Prefix = 1 << 0,

    /// <summary>General registers R0–R15 (KVM_SYNC_GPRS; else KVM_GET/SET_REGS). Level Runtime.</summary>
    Gprs = 1 << 1,

    /// <summary>Access registers A0–A15 (KVM_SYNC_ACRS; else KVM_GET/SET_SREGS). Level Reset.</summary>
    Acrs = 1 << 2,

    /// <summary>Control registers C0–C15 (KVM_SYNC_CRS; before the first exit KVM_GET_SREGS). Level Reset.</summary>
    Crs = 1 << 3,

    /// <summary>
    /// TOD programmable register, CPU timer, clock comparator, program parameter, breaking-event
    /// address (KVM_SYNC_ARCH0; else ONE_REG TODPR, CPU_TIMER, CLOCK_COMP, PP, GBEA). Level Reset.
    /// </summary>
    Arch0 = 1 << 4,

    /// <summary>Pfault token, select and compare (KVM_SYNC_PFAULT; else ONE_REG PFTOKEN, PFSELECT, PFCOMPARE). Level Reset.</summary>
    Pfault = 1 << 5,

    /// <summary>Vector registers V0–V31 and the floating-point control register (KVM_SYNC_VRS; no ioctl). Level Runtime.</summary>
    Vrs = 1 << 6,

    /// <summary>Runtime-instrumentation controls block (KVM_SYNC_RICCB; no ioctl). Level Reset.</summary>
    Riccb = 1 << 7,

    /// <summary>
    /// Floating-point registers F0–F15 and the floating-point control register, on a machine without
    /// vector registers (KVM_SYNC_FPRS; else KVM_GET/SET_FPU). Level Runtime.
    /// </summary>
    Fprs = 1 << 8,

    /// <summary>Guarded-storage control block (KVM_SYNC_GSCB; no ioctl). Level Reset.</summary>
    Gscb = 1 << 9,

    /// <summary>Branch-prediction blocking, one bit (KVM_SYNC_BPBC; no ioctl). Level Reset.</summary>
    Bpbc = 1 << 10,

    /// <summary>The etoken and its extension (KVM_SYNC_ETOKEN; no ioctl). Level Reset.</summary>
    Etoken = 1 << 11,

    /// <summary>The DIAGNOSE 0x318 information (KVM_SYNC_DIAG318; no ioctl). Level Reset.</summary>
    Diag318 = 1 << 12,

    /// <summary>
    /// The PSW, mask and address (<c>kvm_run.psw_mask</c> / <c>psw_addr</c>). KVM loads it at every entry
    /// and stores it at every exit, so it needs no dirty bit and no ioctl. Level Runtime.
    /// </summary>
    Psw = 1UL << 32,

    /// <summary>The difference between the guest's and the host's TOD clock (ONE_REG EPOCHDIFF). Level Full.</summary>
    EpochDifference = 1UL << 33,

    /// <summary>The MP state: stopped or operating (KVM_GET/SET_MP_STATE). Level Full.</summary>
    MpState = 1UL << 34,
}
