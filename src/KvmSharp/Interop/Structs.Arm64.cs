using System.Runtime.InteropServices;

// arm64 uapi structs (<asm/kvm.h> of arch/arm64), kept under their C names.
#pragma warning disable IDE1006, CS1591
// SAFETY: `unsafe` on these structs only declares fixed-size buffers (the C arrays, inline). Indexing
// one needs an unsafe context, which only code in this folder has; each such use says why it is in bounds.
namespace KvmSharp.Interop.Arm64;

[Uapi("kvm_run"), StructLayout(LayoutKind.Explicit, Size = 2352)]
internal unsafe struct kvm_run
{
    public const int ExitUnionOffset = 32;
    [FieldOffset(0)] public byte request_interrupt_window;
    [FieldOffset(1)] public byte immediate_exit;
    [FieldOffset(2)] public fixed byte padding1[6];
    [FieldOffset(8)] public uint exit_reason;
    [FieldOffset(12)] public byte ready_for_interrupt_injection;
    [FieldOffset(13)] public byte if_flag;
    [FieldOffset(14)] public ushort flags;
    [FieldOffset(16)] public ulong cr8;
    [FieldOffset(24)] public ulong apic_base;
    [FieldOffset(32)] public fixed byte padding[256];
    [FieldOffset(32), UapiField("debug.arch")] public kvm_debug_exit_arch debug;
    [FieldOffset(288)] public ulong kvm_valid_regs;
    [FieldOffset(296)] public ulong kvm_dirty_regs;
    [FieldOffset(304), UapiField("s.regs")] public kvm_sync_regs s;
    [FieldOffset(304), UapiField("s.padding")] public fixed byte s_padding[2048];
}

/// <summary><c>struct kvm_regs</c> with its nested <c>user_pt_regs</c> and <c>user_fpsimd_state</c> flattened.</summary>
[Uapi("kvm_regs"), StructLayout(LayoutKind.Explicit, Size = 864)]
internal unsafe struct kvm_regs
{
    public const int KVM_NR_SPSR = 5;
    [FieldOffset(0), UapiField("regs.regs")] public fixed ulong regs[31];
    [FieldOffset(248), UapiField("regs.sp")] public ulong sp;
    [FieldOffset(256), UapiField("regs.pc")] public ulong pc;
    [FieldOffset(264), UapiField("regs.pstate")] public ulong pstate;
    [FieldOffset(272)] public ulong sp_el1;
    [FieldOffset(280)] public ulong elr_el1;
    [FieldOffset(288)] public fixed ulong spsr[5];
    /// <summary>32 × <c>__uint128_t</c>, host byte order.</summary>
    [FieldOffset(336), UapiField("fp_regs.vregs")] public fixed byte vregs[512];
    [FieldOffset(848), UapiField("fp_regs.fpsr")] public uint fpsr;
    [FieldOffset(852), UapiField("fp_regs.fpcr")] public uint fpcr;
}

[Uapi("kvm_vcpu_init"), StructLayout(LayoutKind.Explicit, Size = 32)]
internal unsafe struct kvm_vcpu_init
{
    public const int KVM_ARM_VCPU_POWER_OFF = 0, KVM_ARM_VCPU_EL1_32BIT = 1, KVM_ARM_VCPU_PSCI_0_2 = 2,
        KVM_ARM_VCPU_PMU_V3 = 3, KVM_ARM_VCPU_SVE = 4, KVM_ARM_VCPU_PTRAUTH_ADDRESS = 5, KVM_ARM_VCPU_PTRAUTH_GENERIC = 6;
    [FieldOffset(0)] public uint target;
    [FieldOffset(4)] public fixed uint features[7];
}

[Uapi("kvm_vcpu_events"), StructLayout(LayoutKind.Explicit, Size = 64)]
internal unsafe struct kvm_vcpu_events
{
    [FieldOffset(0), UapiField("exception.serror_pending")] public byte serror_pending;
    [FieldOffset(1), UapiField("exception.serror_has_esr")] public byte serror_has_esr;
    [FieldOffset(2), UapiField("exception.ext_dabt_pending")] public byte ext_dabt_pending;
    [FieldOffset(3), UapiField("exception.pad")] public fixed byte pad[5];
    [FieldOffset(8), UapiField("exception.serror_esr")] public ulong serror_esr;
    [FieldOffset(16)] public fixed uint reserved[12];
}

/// <summary>arm64 has no register sync regs: this only carries KVM_CAP_ARM_USER_IRQ line levels.</summary>
[Uapi("kvm_sync_regs"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_sync_regs
{
    [FieldOffset(0)] public ulong device_irq_level;
}

[Uapi("kvm_debug_exit_arch"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_debug_exit_arch
{
    [FieldOffset(0)] public uint hsr;
    [FieldOffset(4)] public uint hsr_high;
    [FieldOffset(8)] public ulong far;
}

[Uapi("kvm_guest_debug_arch"), StructLayout(LayoutKind.Explicit, Size = 512)]
internal unsafe struct kvm_guest_debug_arch
{
    public const int KVM_ARM_MAX_DBG_REGS = 16;
    [FieldOffset(0)] public fixed ulong dbg_bcr[16];
    [FieldOffset(128)] public fixed ulong dbg_bvr[16];
    [FieldOffset(256)] public fixed ulong dbg_wcr[16];
    [FieldOffset(384)] public fixed ulong dbg_wvr[16];
}

[Uapi("kvm_guest_debug"), StructLayout(LayoutKind.Explicit, Size = 520)]
internal struct kvm_guest_debug
{
    [FieldOffset(0)] public uint control;
    [FieldOffset(4)] public uint pad;
    [FieldOffset(8)] public kvm_guest_debug_arch arch;
}
