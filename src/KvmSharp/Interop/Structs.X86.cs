using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

// x86_64 uapi structs (<asm/kvm.h> of arch/x86), kept under their C names.
#pragma warning disable IDE1006, CS1591
// SAFETY: `unsafe` on these structs only declares fixed-size buffers (the C arrays, inline). Indexing
// one needs an unsafe context, which only code in this folder has; each such use says why it is in bounds.
namespace KvmSharp.Interop.X86;

[Uapi("kvm_run"), StructLayout(LayoutKind.Explicit, Size = 2352)]
internal unsafe struct kvm_run
{
    public const int ExitUnionOffset = 32;
    /// <summary>Offset of <c>kvm_dirty_regs</c>, for the hot path's fixed-offset access (a test checks it against the field).</summary>
    public const int DirtyRegsOffset = 296;
    /// <summary>Page offset of the dirty ring in a vCPU fd's mapping (x86 defines it; arm64 from 6.2).</summary>
    public const int KVM_DIRTY_LOG_PAGE_OFFSET = 64;
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

[Uapi("kvm_regs"), StructLayout(LayoutKind.Explicit, Size = 144)]
internal struct kvm_regs
{
    [FieldOffset(0)] public ulong rax;
    [FieldOffset(8)] public ulong rbx;
    [FieldOffset(16)] public ulong rcx;
    [FieldOffset(24)] public ulong rdx;
    [FieldOffset(32)] public ulong rsi;
    [FieldOffset(40)] public ulong rdi;
    [FieldOffset(48)] public ulong rsp;
    [FieldOffset(56)] public ulong rbp;
    [FieldOffset(64)] public ulong r8;
    [FieldOffset(72)] public ulong r9;
    [FieldOffset(80)] public ulong r10;
    [FieldOffset(88)] public ulong r11;
    [FieldOffset(96)] public ulong r12;
    [FieldOffset(104)] public ulong r13;
    [FieldOffset(112)] public ulong r14;
    [FieldOffset(120)] public ulong r15;
    [FieldOffset(128)] public ulong rip;
    [FieldOffset(136)] public ulong rflags;
}

[Uapi("kvm_segment"), StructLayout(LayoutKind.Explicit, Size = 24)]
internal struct kvm_segment
{
    [FieldOffset(0)] public ulong @base;
    [FieldOffset(8)] public uint limit;
    [FieldOffset(12)] public ushort selector;
    [FieldOffset(14)] public byte type;
    [FieldOffset(15)] public byte present;
    [FieldOffset(16)] public byte dpl;
    [FieldOffset(17)] public byte db;
    [FieldOffset(18)] public byte s;
    [FieldOffset(19)] public byte l;
    [FieldOffset(20)] public byte g;
    [FieldOffset(21)] public byte avl;
    [FieldOffset(22)] public byte unusable;
    [FieldOffset(23)] public byte padding;
}

[Uapi("kvm_dtable"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal unsafe struct kvm_dtable
{
    [FieldOffset(0)] public ulong @base;
    [FieldOffset(8)] public ushort limit;
    [FieldOffset(10)] public fixed ushort padding[3];
}

[Uapi("kvm_sregs"), StructLayout(LayoutKind.Explicit, Size = 312)]
internal unsafe struct kvm_sregs
{
    [FieldOffset(0)] public kvm_segment cs;
    [FieldOffset(24)] public kvm_segment ds;
    [FieldOffset(48)] public kvm_segment es;
    [FieldOffset(72)] public kvm_segment fs;
    [FieldOffset(96)] public kvm_segment gs;
    [FieldOffset(120)] public kvm_segment ss;
    [FieldOffset(144)] public kvm_segment tr;
    [FieldOffset(168)] public kvm_segment ldt;
    [FieldOffset(192)] public kvm_dtable gdt;
    [FieldOffset(208)] public kvm_dtable idt;
    [FieldOffset(224)] public ulong cr0;
    [FieldOffset(232)] public ulong cr2;
    [FieldOffset(240)] public ulong cr3;
    [FieldOffset(248)] public ulong cr4;
    [FieldOffset(256)] public ulong cr8;
    [FieldOffset(264)] public ulong efer;
    [FieldOffset(272)] public ulong apic_base;
    [FieldOffset(280)] public fixed ulong interrupt_bitmap[4];
}

[Uapi("kvm_fpu"), StructLayout(LayoutKind.Explicit, Size = 416)]
internal unsafe struct kvm_fpu
{
    [FieldOffset(0)] public fixed byte fpr[128];
    [FieldOffset(128)] public ushort fcw;
    [FieldOffset(130)] public ushort fsw;
    [FieldOffset(132)] public byte ftwx;
    [FieldOffset(133)] public byte pad1;
    [FieldOffset(134)] public ushort last_opcode;
    [FieldOffset(136)] public ulong last_ip;
    [FieldOffset(144)] public ulong last_dp;
    [FieldOffset(152)] public fixed byte xmm[256];
    [FieldOffset(408)] public uint mxcsr;
    [FieldOffset(412)] public uint pad2;
}

[Uapi("kvm_msr_entry"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_msr_entry
{
    [FieldOffset(0)] public uint index;
    [FieldOffset(4)] public uint reserved;
    [FieldOffset(8)] public ulong data;
}

/// <summary>Header of <c>struct kvm_msrs</c>; <c>nmsrs</c> <see cref="kvm_msr_entry"/> follow.</summary>
[Uapi("kvm_msrs"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_msrs
{
    [FieldOffset(0)] public uint nmsrs;
    [FieldOffset(4)] public uint pad;
}

/// <summary>Header of <c>struct kvm_msr_list</c>; <c>nmsrs</c> u32 indices follow.</summary>
[Uapi("kvm_msr_list"), StructLayout(LayoutKind.Explicit, Size = 4)]
internal struct kvm_msr_list
{
    [FieldOffset(0)] public uint nmsrs;

    /// <summary>The offset of index <paramref name="i"/> from the header's start.</summary>
    public static int IndexOffset(int i) => Unsafe.SizeOf<kvm_msr_list>() + i * sizeof(uint);
}

[Uapi("kvm_cpuid_entry2"), StructLayout(LayoutKind.Explicit, Size = 40)]
internal unsafe struct kvm_cpuid_entry2
{
    [FieldOffset(0)] public uint function;
    [FieldOffset(4)] public uint index;
    [FieldOffset(8)] public uint flags;
    [FieldOffset(12)] public uint eax;
    [FieldOffset(16)] public uint ebx;
    [FieldOffset(20)] public uint ecx;
    [FieldOffset(24)] public uint edx;
    [FieldOffset(28)] public fixed uint padding[3];
}

/// <summary>Header of <c>struct kvm_cpuid2</c>; <c>nent</c> <see cref="kvm_cpuid_entry2"/> follow.</summary>
[Uapi("kvm_cpuid2"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_cpuid2
{
    [FieldOffset(0)] public uint nent;
    [FieldOffset(4)] public uint padding;

    /// <summary>The offset of entry <paramref name="i"/> from the header's start; for i = nent, the whole struct's size.</summary>
    public static int EntryOffset(int i) => Unsafe.SizeOf<kvm_cpuid2>() + i * Unsafe.SizeOf<kvm_cpuid_entry2>();
}

/// <summary>The fixed 4 KiB of <c>struct kvm_xsave</c>; <c>KVM_GET_XSAVE2</c> may use more (KVM_CAP_XSAVE2).</summary>
[Uapi("kvm_xsave"), StructLayout(LayoutKind.Explicit, Size = 4096)]
internal unsafe struct kvm_xsave
{
    [FieldOffset(0)] public fixed uint region[1024];
}

[Uapi("kvm_xcr"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_xcr
{
    [FieldOffset(0)] public uint xcr;
    [FieldOffset(4)] public uint reserved;
    [FieldOffset(8)] public ulong value;
}

[Uapi("kvm_xcrs"), StructLayout(LayoutKind.Explicit, Size = 392)]
internal unsafe struct kvm_xcrs
{
    public const int KVM_MAX_XCRS = 16;
    [FieldOffset(0)] public uint nr_xcrs;
    [FieldOffset(4)] public uint flags;
    [FieldOffset(8)] public fixed byte xcrs[16 * 16];
    [FieldOffset(264)] public fixed ulong padding[16];
}

[Uapi("kvm_lapic_state"), StructLayout(LayoutKind.Explicit, Size = 1024)]
internal unsafe struct kvm_lapic_state
{
    public const int KVM_APIC_REG_SIZE = 0x400;
    [FieldOffset(0)] public fixed byte regs[1024];
}

[Uapi("kvm_debugregs"), StructLayout(LayoutKind.Explicit, Size = 128)]
internal unsafe struct kvm_debugregs
{
    [FieldOffset(0)] public fixed ulong db[4];
    [FieldOffset(32)] public ulong dr6;
    [FieldOffset(40)] public ulong dr7;
    [FieldOffset(48)] public ulong flags;
    [FieldOffset(56)] public fixed ulong reserved[9];
}

[Uapi("kvm_vcpu_events"), StructLayout(LayoutKind.Explicit, Size = 64)]
internal unsafe struct kvm_vcpu_events
{
    [FieldOffset(0), UapiField("exception.injected")] public byte exception_injected;
    [FieldOffset(1), UapiField("exception.nr")] public byte exception_nr;
    [FieldOffset(2), UapiField("exception.has_error_code")] public byte exception_has_error_code;
    [FieldOffset(3), UapiField("exception.pending")] public byte exception_pending;
    [FieldOffset(4), UapiField("exception.error_code")] public uint exception_error_code;
    [FieldOffset(8), UapiField("interrupt.injected")] public byte interrupt_injected;
    [FieldOffset(9), UapiField("interrupt.nr")] public byte interrupt_nr;
    [FieldOffset(10), UapiField("interrupt.soft")] public byte interrupt_soft;
    [FieldOffset(11), UapiField("interrupt.shadow")] public byte interrupt_shadow;
    [FieldOffset(12), UapiField("nmi.injected")] public byte nmi_injected;
    [FieldOffset(13), UapiField("nmi.pending")] public byte nmi_pending;
    [FieldOffset(14), UapiField("nmi.masked")] public byte nmi_masked;
    [FieldOffset(15), UapiField("nmi.pad")] public byte nmi_pad;
    [FieldOffset(16)] public uint sipi_vector;
    [FieldOffset(20)] public uint flags;
    [FieldOffset(24), UapiField("smi.smm")] public byte smi_smm;
    [FieldOffset(25), UapiField("smi.pending")] public byte smi_pending;
    [FieldOffset(26), UapiField("smi.smm_inside_nmi")] public byte smi_smm_inside_nmi;
    [FieldOffset(27), UapiField("smi.latched_init")] public byte smi_latched_init;
    [FieldOffset(28), UapiField("triple_fault.pending")] public byte triple_fault_pending;
    [FieldOffset(29)] public fixed byte reserved[26];
    [FieldOffset(55)] public byte exception_has_payload;
    [FieldOffset(56)] public ulong exception_payload;
}

[Uapi("kvm_sync_regs"), StructLayout(LayoutKind.Explicit, Size = 520)]
internal struct kvm_sync_regs
{
    public const ulong KVM_SYNC_X86_REGS = 1, KVM_SYNC_X86_SREGS = 2, KVM_SYNC_X86_EVENTS = 4;
    public const ulong KVM_SYNC_X86_VALID_FIELDS = 7;
    [FieldOffset(0)] public kvm_regs regs;
    [FieldOffset(144)] public kvm_sregs sregs;
    [FieldOffset(456)] public kvm_vcpu_events events;
}

[Uapi("kvm_debug_exit_arch"), StructLayout(LayoutKind.Explicit, Size = 32)]
internal struct kvm_debug_exit_arch
{
    [FieldOffset(0)] public uint exception;
    [FieldOffset(4)] public uint pad;
    [FieldOffset(8)] public ulong pc;
    [FieldOffset(16)] public ulong dr6;
    [FieldOffset(24)] public ulong dr7;
}

[Uapi("kvm_guest_debug_arch"), StructLayout(LayoutKind.Explicit, Size = 64)]
internal unsafe struct kvm_guest_debug_arch
{
    [FieldOffset(0)] public fixed ulong debugreg[8];
}

[Uapi("kvm_guest_debug"), StructLayout(LayoutKind.Explicit, Size = 72)]
internal struct kvm_guest_debug
{
    [FieldOffset(0)] public uint control;
    [FieldOffset(4)] public uint pad;
    [FieldOffset(8)] public kvm_guest_debug_arch arch;
}

[Uapi("kvm_clock_data"), StructLayout(LayoutKind.Explicit, Size = 48)]
internal unsafe struct kvm_clock_data
{
    /// <summary>KVM_GET_CLOCK: the value is the one every vCPU sees (a stable host TSC, the master clock).</summary>
    public const uint KVM_CLOCK_TSC_STABLE = 2;
    /// <summary>KVM_GET_CLOCK: <c>realtime</c> is filled; KVM_SET_CLOCK: advance the clock by the realtime elapsed since then.</summary>
    public const uint KVM_CLOCK_REALTIME = 1 << 2;
    /// <summary>KVM_GET_CLOCK: <c>host_tsc</c> is filled.</summary>
    public const uint KVM_CLOCK_HOST_TSC = 1 << 3;
    [FieldOffset(0)] public ulong clock;
    [FieldOffset(8)] public uint flags;
    [FieldOffset(12)] public uint pad0;
    [FieldOffset(16)] public ulong realtime;
    [FieldOffset(24)] public ulong host_tsc;
    [FieldOffset(32)] public fixed uint pad[4];
}

// The in-kernel interrupt controller and PIT (KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2). kvm_irqchip and
// kvm_pit_config are declared in <linux/kvm.h> for every architecture, but only x86 has the chips
// their unions hold and the ioctls that take them.

[Uapi("kvm_pic_state"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_pic_state
{
    [FieldOffset(0)] public byte last_irr;
    [FieldOffset(1)] public byte irr;
    [FieldOffset(2)] public byte imr;
    [FieldOffset(3)] public byte isr;
    [FieldOffset(4)] public byte priority_add;
    [FieldOffset(5)] public byte irq_base;
    [FieldOffset(6)] public byte read_reg_select;
    [FieldOffset(7)] public byte poll;
    [FieldOffset(8)] public byte special_mask;
    [FieldOffset(9)] public byte init_state;
    [FieldOffset(10)] public byte auto_eoi;
    [FieldOffset(11)] public byte rotate_on_auto_eoi;
    [FieldOffset(12)] public byte special_fully_nested_mode;
    [FieldOffset(13)] public byte init4;
    [FieldOffset(14)] public byte elcr;
    [FieldOffset(15)] public byte elcr_mask;
}

/// <summary>The IOAPIC; each redirection-table entry is kept as its 64 raw bits (the union's <c>bits</c>).</summary>
[Uapi("kvm_ioapic_state"), StructLayout(LayoutKind.Explicit, Size = 216)]
internal unsafe struct kvm_ioapic_state
{
    public const int KVM_IOAPIC_NUM_PINS = 24;
    [FieldOffset(0)] public ulong base_address;
    [FieldOffset(8)] public uint ioregsel;
    [FieldOffset(12)] public uint id;
    [FieldOffset(16)] public uint irr;
    [FieldOffset(20)] public uint pad;
    [FieldOffset(24)] public fixed ulong redirtbl[24];

    /// <summary>The 64 bits of redirection-table entry <paramref name="pin"/>.</summary>
    public readonly ulong Entry(int pin) => redirtbl[Pin(pin)];

    /// <summary>Sets the 64 bits of redirection-table entry <paramref name="pin"/>.</summary>
    public void SetEntry(int pin, ulong bits) => redirtbl[Pin(pin)] = bits;

    // SAFETY: the fixed buffer has KVM_IOAPIC_NUM_PINS elements; nothing outside it is ever indexed.
    private static int Pin(int pin) => (uint)pin < KVM_IOAPIC_NUM_PINS ? pin : throw new ArgumentOutOfRangeException(nameof(pin), pin, "The IOAPIC has pins 0–23.");
}

[Uapi("kvm_irqchip"), StructLayout(LayoutKind.Explicit, Size = 520)]
internal unsafe struct kvm_irqchip
{
    public const uint KVM_IRQCHIP_PIC_MASTER = 0, KVM_IRQCHIP_PIC_SLAVE = 1, KVM_IRQCHIP_IOAPIC = 2;
    [FieldOffset(0)] public uint chip_id;
    [FieldOffset(4)] public uint pad;
    [FieldOffset(8), UapiField("chip.dummy")] public fixed byte dummy[512];
    [FieldOffset(8), UapiField("chip.pic")] public kvm_pic_state pic;
    [FieldOffset(8), UapiField("chip.ioapic")] public kvm_ioapic_state ioapic;
}

[Uapi("kvm_pit_config"), StructLayout(LayoutKind.Explicit, Size = 64)]
internal unsafe struct kvm_pit_config
{
    public const uint KVM_PIT_SPEAKER_DUMMY = 1;
    [FieldOffset(0)] public uint flags;
    [FieldOffset(4)] public fixed uint pad[15];
}

[Uapi("kvm_pit_channel_state"), StructLayout(LayoutKind.Explicit, Size = 24)]
internal struct kvm_pit_channel_state
{
    [FieldOffset(0)] public uint count;
    [FieldOffset(4)] public ushort latched_count;
    [FieldOffset(6)] public byte count_latched;
    [FieldOffset(7)] public byte status_latched;
    [FieldOffset(8)] public byte status;
    [FieldOffset(9)] public byte read_state;
    [FieldOffset(10)] public byte write_state;
    [FieldOffset(11)] public byte write_latch;
    [FieldOffset(12)] public byte rw_mode;
    [FieldOffset(13)] public byte mode;
    [FieldOffset(14)] public byte bcd;
    [FieldOffset(15)] public byte gate;
    [FieldOffset(16)] public long count_load_time;
}

/// <summary>The PIT's three channels (C# has no fixed buffers of structs: one field each) and its flags.</summary>
[Uapi("kvm_pit_state2"), StructLayout(LayoutKind.Explicit, Size = 112)]
internal unsafe struct kvm_pit_state2
{
    public const uint KVM_PIT_FLAGS_HPET_LEGACY = 1, KVM_PIT_FLAGS_SPEAKER_DATA_ON = 2;
    [FieldOffset(0), UapiField("channels[0]")] public kvm_pit_channel_state channel0;
    [FieldOffset(24), UapiField("channels[1]")] public kvm_pit_channel_state channel1;
    [FieldOffset(48), UapiField("channels[2]")] public kvm_pit_channel_state channel2;
    [FieldOffset(72)] public uint flags;
    [FieldOffset(76)] public fixed uint reserved[9];
}
