namespace KvmSharp.Registers;

/// <summary>The register sets the x86 strategy caches and moves as a unit.</summary>
[Flags]
public enum X86RegisterSets
{
    /// <summary>No set.</summary>
    None = 0,
    /// <summary>GPRs, RIP, RFLAGS (KVM_GET/SET_REGS, or <c>kvm_run</c> sync regs bit KVM_SYNC_X86_REGS). Level Runtime.</summary>
    Gprs = 1,
    /// <summary>Segments, descriptor tables, CR0–CR8, EFER, APIC base (KVM_GET/SET_SREGS, or sync regs bit KVM_SYNC_X86_SREGS). Level Runtime.</summary>
    Sregs = 2,
    /// <summary>Pending exceptions, interrupts, NMI, SMI (KVM_GET/SET_VCPU_EVENTS, or sync regs bit KVM_SYNC_X86_EVENTS). Level Runtime.</summary>
    Events = 4,
    /// <summary>Extended control registers, XCR0 (KVM_GET/SET_XCRS). Level Runtime.</summary>
    Xcrs = 8,
    /// <summary>MP state (KVM_GET/SET_MP_STATE). Level Reset.</summary>
    MpState = 16,
    /// <summary>x87, SSE, AVX… state (KVM_GET_XSAVE2/KVM_SET_XSAVE). Level Runtime.</summary>
    Xsave = 32,
    /// <summary>DR0–DR3, DR6, DR7 (KVM_GET/SET_DEBUGREGS). Level Runtime.</summary>
    DebugRegs = 64,
    /// <summary>MSRs the vCPU itself changes: SYSENTER, PAT, STAR/LSTAR/CSTAR/FMASK, KERNEL_GS_BASE, TSC_AUX, … (KVM_GET/SET_MSRS). Level Runtime.</summary>
    RuntimeMsrs = 128,
    /// <summary>MSRs with side effects, written only at reset or init: TSC, kvmclock, async PF, steal time, PV EOI (KVM_GET/SET_MSRS). Level Reset.</summary>
    ResetMsrs = 256,
    /// <summary>Every set.</summary>
    All = Gprs | Sregs | Events | Xcrs | MpState | Xsave | DebugRegs | RuntimeMsrs | ResetMsrs,
}
