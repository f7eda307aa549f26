using System.Runtime.InteropServices;

// The members of kvm_run's exit union that are the same on every architecture. Field offsets
// are relative to the union, which starts at KvmRunLayout.ExitUnionOffset (32, or 48 on s390x).
#pragma warning disable IDE1006, CS1591
// SAFETY: `unsafe` on these structs only declares fixed-size buffers (the C arrays, inline). Indexing
// one needs an unsafe context, which only code in this folder has; each such use says why it is in bounds.
namespace KvmSharp.Interop;

[Uapi("kvm_run", "hw"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_run_hw { [FieldOffset(0)] public ulong hardware_exit_reason; }

[Uapi("kvm_run", "fail_entry"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_run_fail_entry
{
    [FieldOffset(0)] public ulong hardware_entry_failure_reason;
    [FieldOffset(8)] public uint cpu;
}

[Uapi("kvm_run", "ex"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_run_ex
{
    [FieldOffset(0)] public uint exception;
    [FieldOffset(4)] public uint error_code;
}

[Uapi("kvm_run", "io"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_run_io
{
    public const byte KVM_EXIT_IO_IN = 0;
    public const byte KVM_EXIT_IO_OUT = 1;
    [FieldOffset(0)] public byte direction;
    [FieldOffset(1)] public byte size;
    [FieldOffset(2)] public ushort port;
    [FieldOffset(4)] public uint count;
    [FieldOffset(8)] public ulong data_offset;
}

[Uapi("kvm_run", "mmio"), StructLayout(LayoutKind.Explicit, Size = 24)]
internal unsafe struct kvm_run_mmio
{
    [FieldOffset(0)] public ulong phys_addr;
    [FieldOffset(8)] public fixed byte data[8];
    [FieldOffset(16)] public uint len;
    [FieldOffset(20)] public byte is_write;
}

[Uapi("kvm_run", "hypercall"), StructLayout(LayoutKind.Explicit, Size = 72)]
internal unsafe struct kvm_run_hypercall
{
    [FieldOffset(0)] public ulong nr;
    [FieldOffset(8)] public fixed ulong args[6];
    [FieldOffset(56)] public ulong ret;
    [FieldOffset(64)] public uint longmode;
    [FieldOffset(68)] public uint pad;
}

[Uapi("kvm_run", "tpr_access"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_run_tpr_access
{
    [FieldOffset(0)] public ulong rip;
    [FieldOffset(8)] public uint is_write;
    [FieldOffset(12)] public uint pad;
}

[Uapi("kvm_run", "s390_sieic"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_run_s390_sieic
{
    [FieldOffset(0)] public byte icptcode;
    [FieldOffset(2)] public ushort ipa;
    [FieldOffset(4)] public uint ipb;
}

[Uapi("kvm_run", "s390_ucontrol"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_run_s390_ucontrol
{
    [FieldOffset(0)] public ulong trans_exc_code;
    [FieldOffset(8)] public uint pgm_code;
}

[Uapi("kvm_run", "dcr"), StructLayout(LayoutKind.Explicit, Size = 12)]
internal struct kvm_run_dcr
{
    [FieldOffset(0)] public uint dcrn;
    [FieldOffset(4)] public uint data;
    [FieldOffset(8)] public byte is_write;
}

[Uapi("kvm_run", "internal"), StructLayout(LayoutKind.Explicit, Size = 136)]
internal unsafe struct kvm_run_internal
{
    public const int MaxData = 16;
    [FieldOffset(0)] public uint suberror;
    [FieldOffset(4)] public uint ndata;
    [FieldOffset(8)] public fixed ulong data[16];
}

[Uapi("kvm_run", "emulation_failure"), StructLayout(LayoutKind.Explicit, Size = 32)]
internal unsafe struct kvm_run_emulation_failure
{
    [FieldOffset(0)] public uint suberror;
    [FieldOffset(4)] public uint ndata;
    [FieldOffset(8)] public ulong flags;
    [FieldOffset(16)] public byte insn_size;
    [FieldOffset(17)] public fixed byte insn_bytes[15];
}

[Uapi("kvm_run", "osi"), StructLayout(LayoutKind.Explicit, Size = 256)]
internal unsafe struct kvm_run_osi { [FieldOffset(0)] public fixed ulong gprs[32]; }

[Uapi("kvm_run", "papr_hcall"), StructLayout(LayoutKind.Explicit, Size = 88)]
internal unsafe struct kvm_run_papr_hcall
{
    [FieldOffset(0)] public ulong nr;
    [FieldOffset(8)] public ulong ret;
    [FieldOffset(16)] public fixed ulong args[9];
}

[Uapi("kvm_run", "s390_tsch"), StructLayout(LayoutKind.Explicit, Size = 20)]
internal struct kvm_run_s390_tsch
{
    [FieldOffset(0)] public ushort subchannel_id;
    [FieldOffset(2)] public ushort subchannel_nr;
    [FieldOffset(4)] public uint io_int_parm;
    [FieldOffset(8)] public uint io_int_word;
    [FieldOffset(12)] public uint ipb;
    [FieldOffset(16)] public byte dequeued;
}

[Uapi("kvm_run", "epr"), StructLayout(LayoutKind.Explicit, Size = 4)]
internal struct kvm_run_epr { [FieldOffset(0)] public uint epr; }

[Uapi("kvm_run", "system_event"), StructLayout(LayoutKind.Explicit, Size = 136)]
internal unsafe struct kvm_run_system_event
{
    public const int MaxData = 16;
    [FieldOffset(0)] public uint type;
    [FieldOffset(4)] public uint ndata;
    [FieldOffset(8)] public ulong flags;
    [FieldOffset(8)] public fixed ulong data[16];
}

[Uapi("kvm_run", "s390_stsi"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_run_s390_stsi
{
    [FieldOffset(0)] public ulong addr;
    [FieldOffset(8)] public byte ar;
    [FieldOffset(9)] public byte reserved;
    [FieldOffset(10)] public byte fc;
    [FieldOffset(11)] public byte sel1;
    [FieldOffset(12)] public ushort sel2;
}

[Uapi("kvm_run", "eoi"), StructLayout(LayoutKind.Explicit, Size = 1)]
internal struct kvm_run_eoi { [FieldOffset(0)] public byte vector; }

[Uapi("kvm_run", "arm_nisv"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_run_arm_nisv
{
    [FieldOffset(0)] public ulong esr_iss;
    [FieldOffset(8)] public ulong fault_ipa;
}

[Uapi("kvm_run", "msr"), StructLayout(LayoutKind.Explicit, Size = 24)]
internal unsafe struct kvm_run_msr
{
    [FieldOffset(0)] public byte error;
    [FieldOffset(1)] public fixed byte pad[7];
    [FieldOffset(8)] public uint reason;
    [FieldOffset(12)] public uint index;
    [FieldOffset(16)] public ulong data;
}

[Uapi("kvm_run", "riscv_sbi"), StructLayout(LayoutKind.Explicit, Size = 80)]
internal unsafe struct kvm_run_riscv_sbi
{
    [FieldOffset(0)] public ulong extension_id;
    [FieldOffset(8)] public ulong function_id;
    [FieldOffset(16)] public fixed ulong args[6];
    [FieldOffset(64)] public fixed ulong ret[2];
}

[Uapi("kvm_run", "riscv_csr"), StructLayout(LayoutKind.Explicit, Size = 32)]
internal struct kvm_run_riscv_csr
{
    [FieldOffset(0)] public ulong csr_num;
    [FieldOffset(8)] public ulong new_value;
    [FieldOffset(16)] public ulong write_mask;
    [FieldOffset(24)] public ulong ret_value;
}

[Uapi("kvm_run", "notify"), StructLayout(LayoutKind.Explicit, Size = 4)]
internal struct kvm_run_notify { [FieldOffset(0)] public uint flags; }
