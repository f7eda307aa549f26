using System.Runtime.InteropServices;
using KvmSharp.Interop;
using KvmSharp.Interop.Arm64;

namespace KvmSharp.Registers;

/// <summary>
/// arm64 KVM_GET/SET_ONE_REG register ids (<c>KVM_REG_ARM64 | size | coprocessor | index</c>), as
/// in the arm64 <c>asm/kvm.h</c> and <c>Documentation/virt/kvm/api.rst</c> ("ARM64 registers").
/// Core register ids are <c>offsetof(struct kvm_regs, field) / 4</c>, computed here from KvmSharp's
/// copy of <c>struct kvm_regs</c>, whose layout the uapi layout tests check against the headers.
/// The layout tests also compare every id and constant here with the header macro its
/// <see cref="UapiValueAttribute"/> names.
/// </summary>
public static class Arm64RegisterIds
{
    // The uapi expressions of the core register ids, completed by a kvm_regs member path.
    private const string Core32 = "KVM_REG_ARM64 | KVM_REG_SIZE_U32 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG";
    private const string Core64 = "KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG";
    private const string Core128 = "KVM_REG_ARM64 | KVM_REG_SIZE_U128 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG";

    /// <summary><c>KVM_REG_ARM64</c>: the architecture bits of every arm64 id.</summary>
    [UapiValue("KVM_REG_ARM64")]
    public const ulong Arch = 0x6000_0000_0000_0000;

    /// <summary><c>KVM_REG_ARCH_MASK</c>.</summary>
    [UapiValue("KVM_REG_ARCH_MASK")]
    public const ulong ArchMask = 0xFF00_0000_0000_0000;

    /// <summary><c>KVM_REG_SIZE_MASK</c>: log2 of the register's size in bytes, at bits 52–55.</summary>
    [UapiValue("KVM_REG_SIZE_MASK")]
    public const ulong SizeMask = 0x00F0_0000_0000_0000;

    /// <summary><c>KVM_REG_SIZE_U32</c>.</summary>
    [UapiValue("KVM_REG_SIZE_U32")]
    public const ulong SizeU32 = 0x0020_0000_0000_0000;

    /// <summary><c>KVM_REG_SIZE_U64</c>.</summary>
    [UapiValue("KVM_REG_SIZE_U64")]
    public const ulong SizeU64 = 0x0030_0000_0000_0000;

    /// <summary><c>KVM_REG_SIZE_U128</c>.</summary>
    [UapiValue("KVM_REG_SIZE_U128")]
    public const ulong SizeU128 = 0x0040_0000_0000_0000;

    /// <summary><c>KVM_REG_ARM_COPROC_MASK</c>: which register group an id belongs to.</summary>
    [UapiValue("KVM_REG_ARM_COPROC_MASK")]
    public const ulong CoprocessorMask = 0x0000_0000_0FFF_0000;

    /// <summary><c>KVM_REG_ARM_CORE</c>: a field of <c>struct kvm_regs</c>.</summary>
    [UapiValue("KVM_REG_ARM_CORE")]
    public const ulong Core = 0x0010_0000;

    /// <summary><c>KVM_REG_ARM_DEMUX</c>: multiplexed registers (CCSIDR).</summary>
    [UapiValue("KVM_REG_ARM_DEMUX")]
    public const ulong Demux = 0x0011_0000;

    /// <summary><c>KVM_REG_ARM64_SYSREG</c>: a system register by its MRS/MSR encoding.</summary>
    [UapiValue("KVM_REG_ARM64_SYSREG")]
    public const ulong SystemRegisterGroup = 0x0013_0000;

    /// <summary><c>KVM_REG_ARM_FW</c>: firmware pseudo-registers (PSCI version, SMCCC workarounds).</summary>
    [UapiValue("KVM_REG_ARM_FW")]
    public const ulong Firmware = 0x0014_0000;

    /// <summary><c>KVM_REG_ARM64_SVE</c>: SVE Z/P/FFR slices and the vector-length pseudo-register.</summary>
    [UapiValue("KVM_REG_ARM64_SVE")]
    public const ulong Sve = 0x0015_0000;

    /// <summary>Key of the MP state in a <see cref="RegisterState"/> (not a ONE_REG id; KVM_GET/SET_MP_STATE).</summary>
    public const ulong MpStateKey = 1;

    /// <summary>Key of the pending events in a <see cref="RegisterState"/> (not a ONE_REG id; KVM_GET/SET_VCPU_EVENTS).</summary>
    public const ulong EventsKey = 2;

    private static readonly int RegsOffset = Offset(nameof(kvm_regs.regs));
    private static readonly int SpsrOffset = Offset(nameof(kvm_regs.spsr));
    private static readonly int VregsOffset = Offset(nameof(kvm_regs.vregs));

    /// <summary>SP (SP_EL0), <c>regs.sp</c>.</summary>
    [UapiValue(Core64 + "(regs.sp)")]
    public static readonly ulong Sp = CoreId(Offset(nameof(kvm_regs.sp)), SizeU64);

    /// <summary>PC, <c>regs.pc</c>.</summary>
    [UapiValue(Core64 + "(regs.pc)")]
    public static readonly ulong Pc = CoreId(Offset(nameof(kvm_regs.pc)), SizeU64);

    /// <summary>PSTATE, <c>regs.pstate</c>.</summary>
    [UapiValue(Core64 + "(regs.pstate)")]
    public static readonly ulong Pstate = CoreId(Offset(nameof(kvm_regs.pstate)), SizeU64);

    /// <summary>SP_EL1.</summary>
    [UapiValue(Core64 + "(sp_el1)")]
    public static readonly ulong SpEl1 = CoreId(Offset(nameof(kvm_regs.sp_el1)), SizeU64);

    /// <summary>ELR_EL1.</summary>
    [UapiValue(Core64 + "(elr_el1)")]
    public static readonly ulong ElrEl1 = CoreId(Offset(nameof(kvm_regs.elr_el1)), SizeU64);

    /// <summary>FPSR (32 bits), <c>fp_regs.fpsr</c>.</summary>
    [UapiValue(Core32 + "(fp_regs.fpsr)")]
    public static readonly ulong Fpsr = CoreId(Offset(nameof(kvm_regs.fpsr)), SizeU32);

    /// <summary>FPCR (32 bits), <c>fp_regs.fpcr</c>.</summary>
    [UapiValue(Core32 + "(fp_regs.fpcr)")]
    public static readonly ulong Fpcr = CoreId(Offset(nameof(kvm_regs.fpcr)), SizeU32);

    /// <summary><c>KVM_REG_ARM_TIMER_CTL</c>: CNTV_CTL_EL0.</summary>
    [UapiValue("KVM_REG_ARM_TIMER_CTL")]
    public static readonly ulong TimerCtl = SystemRegister(3, 3, 14, 3, 1);

    /// <summary>
    /// <c>KVM_REG_ARM_TIMER_CNT</c>: the virtual counter (CNTVCT_EL0). Writing it moves the guest's
    /// virtual time (it sets the counter offset), so it is written only at <see cref="SyncLevel.Full"/>.
    /// The uapi header warns that the CNT and CVAL encodings are swapped by accident; these values follow the macros.
    /// </summary>
    [UapiValue("KVM_REG_ARM_TIMER_CNT")]
    public static readonly ulong TimerCnt = SystemRegister(3, 3, 14, 3, 2);

    /// <summary><c>KVM_REG_ARM_TIMER_CVAL</c>: CNTV_CVAL_EL0.</summary>
    [UapiValue("KVM_REG_ARM_TIMER_CVAL")]
    public static readonly ulong TimerCval = SystemRegister(3, 3, 14, 0, 2);

    /// <summary><c>KVM_REG_ARM_PTIMER_CTL</c>: CNTP_CTL_EL0.</summary>
    [UapiValue("KVM_REG_ARM_PTIMER_CTL")]
    public static readonly ulong PtimerCtl = SystemRegister(3, 3, 14, 2, 1);

    /// <summary><c>KVM_REG_ARM_PTIMER_CNT</c>: the physical counter (CNTPCT_EL0); level Full like <see cref="TimerCnt"/>.</summary>
    [UapiValue("KVM_REG_ARM_PTIMER_CNT")]
    public static readonly ulong PtimerCnt = SystemRegister(3, 3, 14, 0, 1);

    /// <summary><c>KVM_REG_ARM_PTIMER_CVAL</c>: CNTP_CVAL_EL0.</summary>
    [UapiValue("KVM_REG_ARM_PTIMER_CVAL")]
    public static readonly ulong PtimerCval = SystemRegister(3, 3, 14, 2, 2);

    /// <summary><c>KVM_REG_ARM_PSCI_VERSION</c>: the PSCI version KVM offers the guest.</summary>
    [UapiValue("KVM_REG_ARM_PSCI_VERSION")]
    public const ulong PsciVersion = Arch | SizeU64 | Firmware | 0;

    private static int Offset(string field) => (int)Marshal.OffsetOf<kvm_regs>(field);

    private static ulong CoreId(int offset, ulong size) => Arch | size | Core | (uint)offset / sizeof(uint);

    /// <summary>General register Xn (0–30), <c>regs.regs[n]</c>: <c>0x6030000000100000 + 2n</c>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> is not in 0–30.</exception>
    [UapiValue(Core64 + "(regs.regs[{0}])")]
    public static ulong X(int n)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)n, 30u, nameof(n));
        return CoreId(RegsOffset + 8 * n, SizeU64);
    }

    /// <summary>Banked SPSR <paramref name="index"/> (0 EL1/SVC, 1 ABT, 2 UND, 3 IRQ, 4 FIQ).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not in 0–4.</exception>
    [UapiValue(Core64 + "(spsr[{0}])")]
    public static ulong Spsr(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, (uint)kvm_regs.KVM_NR_SPSR - 1, nameof(index));
        return CoreId(SpsrOffset + 8 * index, SizeU64);
    }

    /// <summary>SIMD/FP register Vn (0–31), 128 bits, <c>fp_regs.vregs[n]</c>: <c>0x6040000000100054 + 4n</c>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> is not in 0–31.</exception>
    [UapiValue(Core128 + "(fp_regs.vregs[{0}])")]
    public static ulong V(int n)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)n, 31u, nameof(n));
        return CoreId(VregsOffset + 16 * n, SizeU128);
    }

    /// <summary>
    /// A system register by its encoding (<c>ARM64_SYS_REG</c>): 64 bits,
    /// <c>0x6030000000130000 | op0&lt;&lt;14 | op1&lt;&lt;11 | CRn&lt;&lt;7 | CRm&lt;&lt;3 | op2</c>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A field does not fit its bits (op0 2, op1 3, CRn 4, CRm 4, op2 3).</exception>
    [UapiValue("ARM64_SYS_REG({0}, {1}, {2}, {3}, {4})")]
    public static ulong SystemRegister(int op0, int op1, int crn, int crm, int op2)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)op0, 3u, nameof(op0));
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)op1, 7u, nameof(op1));
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)crn, 15u, nameof(crn));
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)crm, 15u, nameof(crm));
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)op2, 7u, nameof(op2));
        return Arch | SizeU64 | SystemRegisterGroup | (uint)(op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2);
    }

    /// <summary>The register's size in bytes, from its size bits (<c>KVM_REG_SIZE</c>).</summary>
    public static int SizeOf(ulong id) => 1 << (int)((id & SizeMask) >> 52);

    /// <summary>The coprocessor group of an id (<see cref="Core"/>, <see cref="SystemRegisterGroup"/>, …).</summary>
    public static ulong GroupOf(ulong id) => id & CoprocessorMask;

    /// <summary>True for an arm64 core register id (a field of <c>struct kvm_regs</c>).</summary>
    public static bool IsCore(ulong id) => (id & ArchMask) == Arch && GroupOf(id) == Core;

    /// <summary>
    /// The level at which KvmSharp writes a register back (QEMU's <c>kvm_arm_cpreg_level</c>): the
    /// timer counters <see cref="TimerCnt"/> and <see cref="PtimerCnt"/> are <see cref="SyncLevel.Full"/>
    /// (writing them moves guest time); every other register is <see cref="SyncLevel.Runtime"/>.
    /// </summary>
    public static SyncLevel LevelOf(ulong id) => id == TimerCnt || id == PtimerCnt ? SyncLevel.Full : SyncLevel.Runtime;

    /// <summary>A readable name for diagnostics: <c>X3</c>, <c>PC</c>, <c>V31</c>, <c>S3_3_C14_C3_2</c>, or the hex id.</summary>
    public static string Name(ulong id)
    {
        if (id == MpStateKey) return "MP_STATE";
        if (id == EventsKey) return "VCPU_EVENTS";
        if ((id & ArchMask) != Arch) return $"0x{id:X16}";
        ulong group = GroupOf(id);
        if (group == Core)
        {
            int offset = (int)(id & 0xFFFF) * sizeof(uint);
            if (offset < RegsOffset + 31 * 8 && offset % 8 == 0) return $"X{(offset - RegsOffset) / 8}";
            if (id == Sp) return "SP";
            if (id == Pc) return "PC";
            if (id == Pstate) return "PSTATE";
            if (id == SpEl1) return "SP_EL1";
            if (id == ElrEl1) return "ELR_EL1";
            if (offset >= SpsrOffset && offset < SpsrOffset + 8 * kvm_regs.KVM_NR_SPSR) return $"SPSR[{(offset - SpsrOffset) / 8}]";
            if (offset >= VregsOffset && offset < VregsOffset + 16 * 32) return $"V{(offset - VregsOffset) / 16}";
            if (id == Fpsr) return "FPSR";
            if (id == Fpcr) return "FPCR";
            return $"CORE+0x{offset:X}";
        }
        if (id == TimerCnt) return "TIMER_CNT";
        if (id == TimerCval) return "TIMER_CVAL";
        if (id == TimerCtl) return "TIMER_CTL";
        if (id == PtimerCnt) return "PTIMER_CNT";
        if (id == PsciVersion) return "PSCI_VERSION";
        if (group == SystemRegisterGroup)
        {
            uint e = (uint)(id & 0xFFFF);
            return $"S{e >> 14 & 3}_{e >> 11 & 7}_C{e >> 7 & 15}_C{e >> 3 & 15}_{e & 7}";
        }
        return $"0x{id:X16}";
    }
}
