using System.Runtime.InteropServices;

// s390x uapi structs (<asm/kvm.h> of arch/s390), kept under their C names. s390x is big-endian:
// every field is in the host's (the kernel's) byte order, so native loads and stores are right on
// the machine that runs the code. Bit-fields are the one place where byte order changes the
// layout itself; see kvm_sync_regs.BpbcBit.
#pragma warning disable IDE1006, CS1591
// SAFETY: `unsafe` on these structs only declares fixed-size buffers (the C arrays, inline). Indexing
// one needs an unsafe context, which only code in this folder has; each such use says why it is in bounds.
namespace KvmSharp.Interop.S390x;

[Uapi("kvm_run"), StructLayout(LayoutKind.Explicit, Size = 2368)]
internal unsafe struct kvm_run
{
    public const int ExitUnionOffset = 48;
    [FieldOffset(0)] public byte request_interrupt_window;
    [FieldOffset(1)] public byte immediate_exit;
    [FieldOffset(2)] public fixed byte padding1[6];
    [FieldOffset(8)] public uint exit_reason;
    [FieldOffset(12)] public byte ready_for_interrupt_injection;
    [FieldOffset(13)] public byte if_flag;
    [FieldOffset(14)] public ushort flags;
    [FieldOffset(16)] public ulong cr8;
    [FieldOffset(24)] public ulong apic_base;
    [FieldOffset(32)] public ulong psw_mask;
    [FieldOffset(40)] public ulong psw_addr;
    [FieldOffset(48)] public fixed byte padding[256];
    [FieldOffset(48), UapiField("debug.arch")] public kvm_debug_exit_arch debug;
    [FieldOffset(48)] public ulong s390_reset_flags;
    [FieldOffset(304)] public ulong kvm_valid_regs;
    [FieldOffset(312)] public ulong kvm_dirty_regs;
    [FieldOffset(320), UapiField("s.regs")] public kvm_sync_regs s;
    [FieldOffset(320), UapiField("s.padding")] public fixed byte s_padding[2048];
}

[Uapi("kvm_regs"), StructLayout(LayoutKind.Explicit, Size = 128)]
internal unsafe struct kvm_regs
{
    [FieldOffset(0)] public fixed ulong gprs[16];
}

[Uapi("kvm_sregs"), StructLayout(LayoutKind.Explicit, Size = 192)]
internal unsafe struct kvm_sregs
{
    [FieldOffset(0)] public fixed uint acrs[16];
    [FieldOffset(64)] public fixed ulong crs[16];
}

[Uapi("kvm_fpu"), StructLayout(LayoutKind.Explicit, Size = 136)]
internal unsafe struct kvm_fpu
{
    [FieldOffset(0)] public uint fpc;
    [FieldOffset(8)] public fixed ulong fprs[16];
}

[Uapi("kvm_sync_regs"), StructLayout(LayoutKind.Explicit, Size = 1984)]
internal unsafe struct kvm_sync_regs
{
    public const ulong KVM_SYNC_PREFIX = 1 << 0, KVM_SYNC_GPRS = 1 << 1, KVM_SYNC_ACRS = 1 << 2, KVM_SYNC_CRS = 1 << 3,
        KVM_SYNC_ARCH0 = 1 << 4, KVM_SYNC_PFAULT = 1 << 5, KVM_SYNC_VRS = 1 << 6, KVM_SYNC_RICCB = 1 << 7,
        KVM_SYNC_FPRS = 1 << 8, KVM_SYNC_GSCB = 1 << 9, KVM_SYNC_BPBC = 1 << 10, KVM_SYNC_ETOKEN = 1 << 11,
        KVM_SYNC_DIAG318 = 1 << 12;

    /// <summary>Byte holding the <c>bpbc : 1</c> bit-field (right after <c>fpc</c>).</summary>
    public const int BpbcByteOffset = 1420;

    /// <summary>
    /// The <c>bpbc</c> bit within <see cref="BpbcByteOffset"/>. GCC allocates bit-fields from the
    /// most significant bit on big-endian s390x, so the first 1-bit field is 0x80, not 0x01. This is
    /// a property of the s390x ABI, independent of the byte order of the machine running the code.
    /// </summary>
    public const byte BpbcBit = 0x80;

    [FieldOffset(0)] public ulong prefix;
    [FieldOffset(8)] public fixed ulong gprs[16];
    [FieldOffset(136)] public fixed uint acrs[16];
    [FieldOffset(200)] public fixed ulong crs[16];
    [FieldOffset(328)] public ulong todpr;
    [FieldOffset(336)] public ulong cputm;
    [FieldOffset(344)] public ulong ckc;
    [FieldOffset(352)] public ulong pp;
    [FieldOffset(360)] public ulong gbea;
    [FieldOffset(368)] public ulong pft;
    [FieldOffset(376)] public ulong pfs;
    [FieldOffset(384)] public ulong pfc;
    [FieldOffset(392)] public fixed ulong vrs[64];
    [FieldOffset(392)] public fixed ulong fprs[16];
    [FieldOffset(904)] public fixed byte reserved[512];
    [FieldOffset(1416)] public uint fpc;
    [FieldOffset(1420), UapiField(null)] public byte bpbc_byte;
    [FieldOffset(1421)] public fixed byte padding1[51];
    [FieldOffset(1472)] public fixed byte riccb[64];
    [FieldOffset(1536)] public ulong diag318;
    [FieldOffset(1544)] public fixed byte padding2[184];
    [FieldOffset(1728)] public fixed byte sdnx[256];
    [FieldOffset(1744)] public fixed ulong gscb[4];
    [FieldOffset(1776)] public ulong etoken;
    [FieldOffset(1784)] public ulong etoken_extension;
}

[Uapi("kvm_debug_exit_arch"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal unsafe struct kvm_debug_exit_arch
{
    [FieldOffset(0)] public ulong addr;
    [FieldOffset(8)] public byte type;
    [FieldOffset(9)] public fixed byte pad[7];
}

[Uapi("kvm_guest_debug_arch"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_guest_debug_arch
{
    [FieldOffset(0)] public uint nr_hw_bp;
    [FieldOffset(4)] public uint pad;
    [FieldOffset(8)] public ulong hw_bp;
}

[Uapi("kvm_guest_debug"), StructLayout(LayoutKind.Explicit, Size = 24)]
internal struct kvm_guest_debug
{
    [FieldOffset(0)] public uint control;
    [FieldOffset(4)] public uint pad;
    [FieldOffset(8)] public kvm_guest_debug_arch arch;
}

[Uapi("kvm_s390_psw"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_s390_psw
{
    [FieldOffset(0)] public ulong mask;
    [FieldOffset(8)] public ulong addr;
}

[Uapi("kvm_s390_irq_state"), StructLayout(LayoutKind.Explicit, Size = 32)]
internal unsafe struct kvm_s390_irq_state
{
    [FieldOffset(0)] public ulong buf;
    [FieldOffset(8)] public uint flags;
    [FieldOffset(12)] public uint len;
    [FieldOffset(16)] public fixed uint reserved[4];
}
