using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

// Native structs keep their uapi names; they are internal and mirror <linux/kvm.h> exactly.
#pragma warning disable IDE1006, CS1591
// SAFETY: `unsafe` on these structs only declares fixed-size buffers (the C arrays, inline). Indexing
// one needs an unsafe context, which only code in this folder has; each such use says why it is in bounds.
namespace KvmSharp.Interop;

[Uapi("kvm_userspace_memory_region"), StructLayout(LayoutKind.Explicit, Size = 32)]
internal struct kvm_userspace_memory_region
{
    [FieldOffset(0)] public uint slot;
    [FieldOffset(4)] public uint flags;
    [FieldOffset(8)] public ulong guest_phys_addr;
    [FieldOffset(16)] public ulong memory_size;
    [FieldOffset(24)] public ulong userspace_addr;
}

[Uapi("kvm_one_reg"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_one_reg
{
    [FieldOffset(0)] public ulong id;
    [FieldOffset(8)] public ulong addr;
}

/// <summary>Header of <c>struct kvm_reg_list</c>; <c>n</c> u64 ids follow it.</summary>
[Uapi("kvm_reg_list"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_reg_list
{
    [FieldOffset(0)] public ulong n;
}

[Uapi("kvm_mp_state"), StructLayout(LayoutKind.Explicit, Size = 4)]
internal struct kvm_mp_state
{
    [FieldOffset(0)] public uint mp_state;
}

[Uapi("kvm_enable_cap"), StructLayout(LayoutKind.Explicit, Size = 104)]
internal unsafe struct kvm_enable_cap
{
    public const ulong KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1;

    [FieldOffset(0)] public uint cap;
    [FieldOffset(4)] public uint flags;
    [FieldOffset(8)] public fixed ulong args[4];
    [FieldOffset(40)] public fixed byte pad[64];

    /// <summary>A request to enable <paramref name="capability"/> with up to four arguments (the others 0).</summary>
    public static kvm_enable_cap With(uint capability, ulong arg0, ulong arg1 = 0, ulong arg2 = 0, ulong arg3 = 0)
    {
        var enable = new kvm_enable_cap { cap = capability };
        // SAFETY: indices 0–3 lie inside the 4-element fixed buffer of this local.
        enable.args[0] = arg0;
        enable.args[1] = arg1;
        enable.args[2] = arg2;
        enable.args[3] = arg3;
        return enable;
    }
}

[Uapi("kvm_dirty_log"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_dirty_log
{
    [FieldOffset(0)] public uint slot;
    [FieldOffset(4)] public uint padding1;
    [FieldOffset(8)] public ulong dirty_bitmap;
}

[Uapi("kvm_clear_dirty_log"), StructLayout(LayoutKind.Explicit, Size = 24)]
internal struct kvm_clear_dirty_log
{
    [FieldOffset(0)] public uint slot;
    [FieldOffset(4)] public uint num_pages;
    [FieldOffset(8)] public ulong first_page;
    [FieldOffset(16)] public ulong dirty_bitmap;
}

/// <summary>One entry of the dirty ring (<c>KVM_CAP_DIRTY_LOG_RING</c>).</summary>
[Uapi("kvm_dirty_gfn"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_dirty_gfn
{
    public const uint KVM_DIRTY_GFN_F_DIRTY = 1, KVM_DIRTY_GFN_F_RESET = 2;

    [FieldOffset(0)] public uint flags;
    [FieldOffset(4)] public uint slot;
    [FieldOffset(8)] public ulong offset;
}

/// <summary>Header of <c>struct kvm_signal_mask</c>; <c>len</c> bytes of sigset follow.</summary>
[Uapi("kvm_signal_mask"), StructLayout(LayoutKind.Explicit, Size = 4)]
internal struct kvm_signal_mask
{
    [FieldOffset(0)] public uint len;

    /// <summary>The offset of the sigset that follows the header.</summary>
    public static int SigsetOffset => Unsafe.SizeOf<kvm_signal_mask>();
}

[Uapi("kvm_irq_level"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_irq_level
{
    [FieldOffset(0)] public uint irq;
    [FieldOffset(0)] public int status;
    [FieldOffset(4)] public uint level;
}

[Uapi("kvm_hyperv_exit"), StructLayout(LayoutKind.Explicit, Size = 56)]
internal unsafe struct kvm_hyperv_exit
{
    [FieldOffset(0)] public uint type;
    [FieldOffset(4)] public uint pad1;
    [FieldOffset(8), UapiField("u.synic.msr")] public uint synic_msr;
    [FieldOffset(16), UapiField("u.synic.control")] public ulong synic_control;
    [FieldOffset(24), UapiField("u.synic.evt_page")] public ulong synic_evt_page;
    [FieldOffset(32), UapiField("u.synic.msg_page")] public ulong synic_msg_page;
    [FieldOffset(8), UapiField("u.hcall.input")] public ulong hcall_input;
    [FieldOffset(16), UapiField("u.hcall.result")] public ulong hcall_result;
    [FieldOffset(24), UapiField("u.hcall.params")] public fixed ulong hcall_params[2];
    [FieldOffset(16), UapiField("u.syndbg.control")] public ulong syndbg_control;
    [FieldOffset(24), UapiField("u.syndbg.status")] public ulong syndbg_status;
    [FieldOffset(32), UapiField("u.syndbg.send_page")] public ulong syndbg_send_page;
    [FieldOffset(40), UapiField("u.syndbg.recv_page")] public ulong syndbg_recv_page;
    [FieldOffset(48), UapiField("u.syndbg.pending_page")] public ulong syndbg_pending_page;
}

[Uapi("kvm_xen_exit"), StructLayout(LayoutKind.Explicit, Size = 80)]
internal unsafe struct kvm_xen_exit
{
    [FieldOffset(0)] public uint type;
    [FieldOffset(8), UapiField("u.hcall.longmode")] public uint hcall_longmode;
    [FieldOffset(12), UapiField("u.hcall.cpl")] public uint hcall_cpl;
    [FieldOffset(16), UapiField("u.hcall.input")] public ulong hcall_input;
    [FieldOffset(24), UapiField("u.hcall.result")] public ulong hcall_result;
    [FieldOffset(32), UapiField("u.hcall.params")] public fixed ulong hcall_params[6];
}

[Uapi("kvm_irqfd"), StructLayout(LayoutKind.Explicit, Size = 32)]
internal struct kvm_irqfd
{
    public const uint KVM_IRQFD_FLAG_DEASSIGN = 1 << 0, KVM_IRQFD_FLAG_RESAMPLE = 1 << 1;

    [FieldOffset(0)] public uint fd;
    [FieldOffset(4)] public uint gsi;
    [FieldOffset(8)] public uint flags;
    [FieldOffset(12)] public uint resamplefd;
}

[Uapi("kvm_ioeventfd"), StructLayout(LayoutKind.Explicit, Size = 64)]
internal struct kvm_ioeventfd
{
    public const uint KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0, KVM_IOEVENTFD_FLAG_PIO = 1 << 1, KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2;

    [FieldOffset(0)] public ulong datamatch;
    [FieldOffset(8)] public ulong addr;
    [FieldOffset(16)] public uint len;
    [FieldOffset(20)] public int fd;
    [FieldOffset(24)] public uint flags;
}

[Uapi("kvm_msi"), StructLayout(LayoutKind.Explicit, Size = 32)]
internal struct kvm_msi
{
    [FieldOffset(0)] public uint address_lo;
    [FieldOffset(4)] public uint address_hi;
    [FieldOffset(8)] public uint data;
    [FieldOffset(12)] public uint flags;
    [FieldOffset(16)] public uint devid;
}

/// <summary>The header of <c>struct kvm_irq_routing</c>; <c>nr</c> entries follow it.</summary>
[Uapi("kvm_irq_routing"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_irq_routing
{
    [FieldOffset(0)] public uint nr;
    [FieldOffset(4)] public uint flags;
}

[Uapi("kvm_irq_routing_entry"), StructLayout(LayoutKind.Explicit, Size = 48)]
internal struct kvm_irq_routing_entry
{
    public const uint KVM_IRQ_ROUTING_IRQCHIP = 1, KVM_IRQ_ROUTING_MSI = 2;

    [FieldOffset(0)] public uint gsi;
    [FieldOffset(4)] public uint type;
    [FieldOffset(8)] public uint flags;
    /// <summary><c>u.irqchip.irqchip</c> / <c>u.msi.address_lo</c>.</summary>
    [FieldOffset(16), UapiField("u.irqchip.irqchip")] public uint u0;
    /// <summary><c>u.irqchip.pin</c> / <c>u.msi.address_hi</c>.</summary>
    [FieldOffset(20), UapiField("u.irqchip.pin")] public uint u1;
    /// <summary><c>u.msi.data</c>.</summary>
    [FieldOffset(24), UapiField("u.msi.data")] public uint u2;
}

/// <summary>The argument of <c>KVM_CREATE_DEVICE</c>: the device type in, its new fd out.</summary>
[Uapi("kvm_create_device"), StructLayout(LayoutKind.Explicit, Size = 12)]
internal struct kvm_create_device
{
    public const uint KVM_CREATE_DEVICE_TEST = 1;
    /// <summary>A value of <c>enum kvm_device_type</c> (the header defines a macro of the same name).</summary>
    public const uint KVM_DEV_TYPE_ARM_VGIC_V3 = 7;

    [FieldOffset(0)] public uint type;
    [FieldOffset(4)] public uint fd;
    [FieldOffset(8)] public uint flags;
}

/// <summary>The argument of <c>KVM_SET/GET/HAS_DEVICE_ATTR</c>; <c>addr</c> points at the attribute's value.</summary>
[Uapi("kvm_device_attr"), StructLayout(LayoutKind.Explicit, Size = 24)]
internal struct kvm_device_attr
{
    [FieldOffset(0)] public uint flags;
    [FieldOffset(4)] public uint group;
    [FieldOffset(8)] public ulong attr;
    [FieldOffset(16)] public ulong addr;
}

[Uapi("kvm_coalesced_mmio_zone"), StructLayout(LayoutKind.Explicit, Size = 16)]
internal struct kvm_coalesced_mmio_zone
{
    [FieldOffset(0)] public ulong addr;
    [FieldOffset(8)] public uint size;
    [FieldOffset(12)] public uint pio;
}

/// <summary>One entry of the coalesced MMIO ring.</summary>
[Uapi("kvm_coalesced_mmio"), StructLayout(LayoutKind.Explicit, Size = 24)]
internal unsafe struct kvm_coalesced_mmio
{
    [FieldOffset(0)] public ulong phys_addr;
    [FieldOffset(8)] public uint len;
    [FieldOffset(12)] public uint pio;
    [FieldOffset(16)] public fixed byte data[8];
}

/// <summary>The header of the coalesced MMIO ring page; its entries follow.</summary>
[Uapi("kvm_coalesced_mmio_ring"), StructLayout(LayoutKind.Explicit, Size = 8)]
internal struct kvm_coalesced_mmio_ring
{
    [FieldOffset(0)] public uint first;
    [FieldOffset(4)] public uint last;
}
