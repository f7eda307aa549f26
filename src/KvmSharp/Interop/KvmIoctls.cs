using KvmSharp.Interop.X86;

#pragma warning disable IDE1006, CA1707
namespace KvmSharp.Interop;

/// <summary>
/// Every KVM ioctl KvmSharp issues, listed once, under its C name. Those whose number is the same
/// on every architecture are here; those that depend on an arch's struct sizes are in the nested
/// per-arch classes. The layout tests compile a <c>static_assert</c> for each against the uapi headers.
/// </summary>
internal static partial class KvmIoctls
{
    // system (/dev/kvm) fd
    public static readonly KvmIoctl KVM_GET_API_VERSION = KvmIoctl.IO(nameof(KVM_GET_API_VERSION), 0x00);
    public static readonly KvmIoctl KVM_CREATE_VM = KvmIoctl.IO(nameof(KVM_CREATE_VM), 0x01);
    public static readonly KvmIoctl KVM_CHECK_EXTENSION = KvmIoctl.IO(nameof(KVM_CHECK_EXTENSION), 0x03);
    public static readonly KvmIoctl KVM_GET_VCPU_MMAP_SIZE = KvmIoctl.IO(nameof(KVM_GET_VCPU_MMAP_SIZE), 0x04);

    // VM fd
    public static readonly KvmIoctl KVM_CREATE_VCPU = KvmIoctl.IO(nameof(KVM_CREATE_VCPU), 0x41);
    public static readonly KvmIoctl KVM_GET_DIRTY_LOG = KvmIoctl.IOW<kvm_dirty_log>(nameof(KVM_GET_DIRTY_LOG), 0x42);
    public static readonly KvmIoctl KVM_SET_USER_MEMORY_REGION = KvmIoctl.IOW<kvm_userspace_memory_region>(nameof(KVM_SET_USER_MEMORY_REGION), 0x46);
    public static readonly KvmIoctl KVM_CLEAR_DIRTY_LOG = KvmIoctl.IOWR<kvm_clear_dirty_log>(nameof(KVM_CLEAR_DIRTY_LOG), 0xC0);
    public static readonly KvmIoctl KVM_RESET_DIRTY_RINGS = KvmIoctl.IO(nameof(KVM_RESET_DIRTY_RINGS), 0xC7);
    public static readonly KvmIoctl KVM_CREATE_IRQCHIP = KvmIoctl.IO(nameof(KVM_CREATE_IRQCHIP), 0x60);
    public static readonly KvmIoctl KVM_IRQ_LINE = KvmIoctl.IOW<kvm_irq_level>(nameof(KVM_IRQ_LINE), 0x61);
    public static readonly KvmIoctl KVM_IRQFD = KvmIoctl.IOW<kvm_irqfd>(nameof(KVM_IRQFD), 0x76);
    public static readonly KvmIoctl KVM_IOEVENTFD = KvmIoctl.IOW<kvm_ioeventfd>(nameof(KVM_IOEVENTFD), 0x79);
    public static readonly KvmIoctl KVM_REGISTER_COALESCED_MMIO = KvmIoctl.IOW<kvm_coalesced_mmio_zone>(nameof(KVM_REGISTER_COALESCED_MMIO), 0x67);
    public static readonly KvmIoctl KVM_UNREGISTER_COALESCED_MMIO = KvmIoctl.IOW<kvm_coalesced_mmio_zone>(nameof(KVM_UNREGISTER_COALESCED_MMIO), 0x68);
    public static readonly KvmIoctl KVM_SIGNAL_MSI = KvmIoctl.IOW<kvm_msi>(nameof(KVM_SIGNAL_MSI), 0xA5);
    public static readonly KvmIoctl KVM_SET_GSI_ROUTING = KvmIoctl.IOW<kvm_irq_routing>(nameof(KVM_SET_GSI_ROUTING), 0x6A);
    public static readonly KvmIoctl KVM_CREATE_DEVICE = KvmIoctl.IOWR<kvm_create_device>(nameof(KVM_CREATE_DEVICE), 0xE0);

    // device fd (from KVM_CREATE_DEVICE)
    public static readonly KvmIoctl KVM_SET_DEVICE_ATTR = KvmIoctl.IOW<kvm_device_attr>(nameof(KVM_SET_DEVICE_ATTR), 0xE1);
    public static readonly KvmIoctl KVM_GET_DEVICE_ATTR = KvmIoctl.IOW<kvm_device_attr>(nameof(KVM_GET_DEVICE_ATTR), 0xE2);
    public static readonly KvmIoctl KVM_HAS_DEVICE_ATTR = KvmIoctl.IOW<kvm_device_attr>(nameof(KVM_HAS_DEVICE_ATTR), 0xE3);

    // VM or vCPU fd
    public static readonly KvmIoctl KVM_ENABLE_CAP = KvmIoctl.IOW<kvm_enable_cap>(nameof(KVM_ENABLE_CAP), 0xA3);

    // vCPU fd
    public static readonly KvmIoctl KVM_RUN = KvmIoctl.IO(nameof(KVM_RUN), 0x80);

    /// <summary>KVM_RUN's number, _IO(KVMIO, 0x80), the same on every architecture (a test checks it against <see cref="KVM_RUN"/>).</summary>
    public const uint KvmRunNumber = 0xAE80;
    public static readonly KvmIoctl KVM_SET_SIGNAL_MASK = KvmIoctl.IOW<kvm_signal_mask>(nameof(KVM_SET_SIGNAL_MASK), 0x8B);
    public static readonly KvmIoctl KVM_GET_MP_STATE = KvmIoctl.IOR<kvm_mp_state>(nameof(KVM_GET_MP_STATE), 0x98);
    public static readonly KvmIoctl KVM_SET_MP_STATE = KvmIoctl.IOW<kvm_mp_state>(nameof(KVM_SET_MP_STATE), 0x99);
    public static readonly KvmIoctl KVM_GET_ONE_REG = KvmIoctl.IOW<kvm_one_reg>(nameof(KVM_GET_ONE_REG), 0xAB);
    public static readonly KvmIoctl KVM_SET_ONE_REG = KvmIoctl.IOW<kvm_one_reg>(nameof(KVM_SET_ONE_REG), 0xAC);

    /// <summary>KVM_GET_ONE_REG's number, _IOW(KVMIO, 0xab, struct kvm_one_reg) (a test checks it against <see cref="KVM_GET_ONE_REG"/>).</summary>
    public const uint GetOneRegNumber = 0x4010AEAB;

    /// <summary>KVM_SET_ONE_REG's number, _IOW(KVMIO, 0xac, struct kvm_one_reg) (a test checks it against <see cref="KVM_SET_ONE_REG"/>).</summary>
    public const uint SetOneRegNumber = 0x4010AEAC;
    public static readonly KvmIoctl KVM_GET_REG_LIST = KvmIoctl.IOWR<kvm_reg_list>(nameof(KVM_GET_REG_LIST), 0xB0);

    /// <summary>x86_64 ioctls and those whose number depends on x86 struct sizes.</summary>
    internal static class X86
    {
        public static readonly KvmIoctl KVM_GET_MSR_INDEX_LIST = KvmIoctl.IOWR<kvm_msr_list>(nameof(KVM_GET_MSR_INDEX_LIST), 0x02);
        public static readonly KvmIoctl KVM_GET_SUPPORTED_CPUID = KvmIoctl.IOWR<kvm_cpuid2>(nameof(KVM_GET_SUPPORTED_CPUID), 0x05);
        public static readonly KvmIoctl KVM_SET_TSS_ADDR = KvmIoctl.IO(nameof(KVM_SET_TSS_ADDR), 0x47);
        public static readonly KvmIoctl KVM_SET_IDENTITY_MAP_ADDR = KvmIoctl.IOC(nameof(KVM_SET_IDENTITY_MAP_ADDR), read: false, write: true, 0x48, sizeof(ulong));
        public static readonly KvmIoctl KVM_GET_IRQCHIP = KvmIoctl.IOWR<kvm_irqchip>(nameof(KVM_GET_IRQCHIP), 0x62);
        public static readonly KvmIoctl KVM_SET_IRQCHIP = KvmIoctl.IOR<kvm_irqchip>(nameof(KVM_SET_IRQCHIP), 0x63); // _IOR, as the header has it
        public static readonly KvmIoctl KVM_CREATE_PIT2 = KvmIoctl.IOW<kvm_pit_config>(nameof(KVM_CREATE_PIT2), 0x77);
        public static readonly KvmIoctl KVM_SET_CLOCK = KvmIoctl.IOW<kvm_clock_data>(nameof(KVM_SET_CLOCK), 0x7B);
        public static readonly KvmIoctl KVM_GET_CLOCK = KvmIoctl.IOR<kvm_clock_data>(nameof(KVM_GET_CLOCK), 0x7C);
        public static readonly KvmIoctl KVM_GET_REGS = KvmIoctl.IOR<kvm_regs>(nameof(KVM_GET_REGS), 0x81);
        public static readonly KvmIoctl KVM_SET_REGS = KvmIoctl.IOW<kvm_regs>(nameof(KVM_SET_REGS), 0x82);
        public static readonly KvmIoctl KVM_GET_SREGS = KvmIoctl.IOR<kvm_sregs>(nameof(KVM_GET_SREGS), 0x83);
        public static readonly KvmIoctl KVM_SET_SREGS = KvmIoctl.IOW<kvm_sregs>(nameof(KVM_SET_SREGS), 0x84);
        public static readonly KvmIoctl KVM_GET_MSRS = KvmIoctl.IOWR<kvm_msrs>(nameof(KVM_GET_MSRS), 0x88);
        public static readonly KvmIoctl KVM_SET_MSRS = KvmIoctl.IOW<kvm_msrs>(nameof(KVM_SET_MSRS), 0x89);
        public static readonly KvmIoctl KVM_GET_FPU = KvmIoctl.IOR<kvm_fpu>(nameof(KVM_GET_FPU), 0x8C);
        public static readonly KvmIoctl KVM_SET_FPU = KvmIoctl.IOW<kvm_fpu>(nameof(KVM_SET_FPU), 0x8D);
        public static readonly KvmIoctl KVM_GET_LAPIC = KvmIoctl.IOR<kvm_lapic_state>(nameof(KVM_GET_LAPIC), 0x8E);
        public static readonly KvmIoctl KVM_SET_LAPIC = KvmIoctl.IOW<kvm_lapic_state>(nameof(KVM_SET_LAPIC), 0x8F);
        public static readonly KvmIoctl KVM_SET_CPUID2 = KvmIoctl.IOW<kvm_cpuid2>(nameof(KVM_SET_CPUID2), 0x90);
        public static readonly KvmIoctl KVM_GET_CPUID2 = KvmIoctl.IOWR<kvm_cpuid2>(nameof(KVM_GET_CPUID2), 0x91);
        public static readonly KvmIoctl KVM_NMI = KvmIoctl.IO(nameof(KVM_NMI), 0x9A);
        public static readonly KvmIoctl KVM_SET_GUEST_DEBUG = KvmIoctl.IOW<kvm_guest_debug>(nameof(KVM_SET_GUEST_DEBUG), 0x9B);
        public static readonly KvmIoctl KVM_GET_VCPU_EVENTS = KvmIoctl.IOR<kvm_vcpu_events>(nameof(KVM_GET_VCPU_EVENTS), 0x9F);
        public static readonly KvmIoctl KVM_SET_VCPU_EVENTS = KvmIoctl.IOW<kvm_vcpu_events>(nameof(KVM_SET_VCPU_EVENTS), 0xA0);
        public static readonly KvmIoctl KVM_GET_PIT2 = KvmIoctl.IOR<kvm_pit_state2>(nameof(KVM_GET_PIT2), 0x9F);
        public static readonly KvmIoctl KVM_SET_PIT2 = KvmIoctl.IOW<kvm_pit_state2>(nameof(KVM_SET_PIT2), 0xA0);
        public static readonly KvmIoctl KVM_GET_DEBUGREGS = KvmIoctl.IOR<kvm_debugregs>(nameof(KVM_GET_DEBUGREGS), 0xA1);
        public static readonly KvmIoctl KVM_SET_DEBUGREGS = KvmIoctl.IOW<kvm_debugregs>(nameof(KVM_SET_DEBUGREGS), 0xA2);
        public static readonly KvmIoctl KVM_SET_TSC_KHZ = KvmIoctl.IO(nameof(KVM_SET_TSC_KHZ), 0xA2);
        public static readonly KvmIoctl KVM_GET_TSC_KHZ = KvmIoctl.IO(nameof(KVM_GET_TSC_KHZ), 0xA3);
        public static readonly KvmIoctl KVM_GET_XSAVE = KvmIoctl.IOR<kvm_xsave>(nameof(KVM_GET_XSAVE), 0xA4);
        public static readonly KvmIoctl KVM_SET_XSAVE = KvmIoctl.IOW<kvm_xsave>(nameof(KVM_SET_XSAVE), 0xA5);
        public static readonly KvmIoctl KVM_GET_XCRS = KvmIoctl.IOR<kvm_xcrs>(nameof(KVM_GET_XCRS), 0xA6);
        public static readonly KvmIoctl KVM_SET_XCRS = KvmIoctl.IOW<kvm_xcrs>(nameof(KVM_SET_XCRS), 0xA7);
        public static readonly KvmIoctl KVM_GET_XSAVE2 = KvmIoctl.IOR<kvm_xsave>(nameof(KVM_GET_XSAVE2), 0xCF);
    }

    /// <summary>arm64 ioctls and those whose number depends on arm64 struct sizes.</summary>
    internal static class Arm64
    {
        public static readonly KvmIoctl KVM_GET_REGS = KvmIoctl.IOR<Interop.Arm64.kvm_regs>(nameof(KVM_GET_REGS), 0x81);
        public static readonly KvmIoctl KVM_SET_REGS = KvmIoctl.IOW<Interop.Arm64.kvm_regs>(nameof(KVM_SET_REGS), 0x82);
        public static readonly KvmIoctl KVM_SET_GUEST_DEBUG = KvmIoctl.IOW<Interop.Arm64.kvm_guest_debug>(nameof(KVM_SET_GUEST_DEBUG), 0x9B);
        public static readonly KvmIoctl KVM_GET_VCPU_EVENTS = KvmIoctl.IOR<Interop.Arm64.kvm_vcpu_events>(nameof(KVM_GET_VCPU_EVENTS), 0x9F);
        public static readonly KvmIoctl KVM_SET_VCPU_EVENTS = KvmIoctl.IOW<Interop.Arm64.kvm_vcpu_events>(nameof(KVM_SET_VCPU_EVENTS), 0xA0);
        public static readonly KvmIoctl KVM_ARM_VCPU_INIT = KvmIoctl.IOW<Interop.Arm64.kvm_vcpu_init>(nameof(KVM_ARM_VCPU_INIT), 0xAE);
        public static readonly KvmIoctl KVM_ARM_PREFERRED_TARGET = KvmIoctl.IOR<Interop.Arm64.kvm_vcpu_init>(nameof(KVM_ARM_PREFERRED_TARGET), 0xAF);
        public static readonly KvmIoctl KVM_ARM_VCPU_FINALIZE = KvmIoctl.IOC(nameof(KVM_ARM_VCPU_FINALIZE), read: false, write: true, 0xC2, sizeof(int));
    }

    /// <summary>s390x ioctls and those whose number depends on s390x struct sizes.</summary>
    internal static class S390x
    {
        public static readonly KvmIoctl KVM_GET_REGS = KvmIoctl.IOR<Interop.S390x.kvm_regs>(nameof(KVM_GET_REGS), 0x81);
        public static readonly KvmIoctl KVM_SET_REGS = KvmIoctl.IOW<Interop.S390x.kvm_regs>(nameof(KVM_SET_REGS), 0x82);
        public static readonly KvmIoctl KVM_GET_SREGS = KvmIoctl.IOR<Interop.S390x.kvm_sregs>(nameof(KVM_GET_SREGS), 0x83);
        public static readonly KvmIoctl KVM_SET_SREGS = KvmIoctl.IOW<Interop.S390x.kvm_sregs>(nameof(KVM_SET_SREGS), 0x84);
        public static readonly KvmIoctl KVM_GET_FPU = KvmIoctl.IOR<Interop.S390x.kvm_fpu>(nameof(KVM_GET_FPU), 0x8C);
        public static readonly KvmIoctl KVM_SET_FPU = KvmIoctl.IOW<Interop.S390x.kvm_fpu>(nameof(KVM_SET_FPU), 0x8D);
        public static readonly KvmIoctl KVM_S390_SET_INITIAL_PSW = KvmIoctl.IOW<Interop.S390x.kvm_s390_psw>(nameof(KVM_S390_SET_INITIAL_PSW), 0x96);
        public static readonly KvmIoctl KVM_S390_INITIAL_RESET = KvmIoctl.IO(nameof(KVM_S390_INITIAL_RESET), 0x97);
        public static readonly KvmIoctl KVM_SET_GUEST_DEBUG = KvmIoctl.IOW<Interop.S390x.kvm_guest_debug>(nameof(KVM_SET_GUEST_DEBUG), 0x9B);
        public static readonly KvmIoctl KVM_S390_SET_IRQ_STATE = KvmIoctl.IOW<Interop.S390x.kvm_s390_irq_state>(nameof(KVM_S390_SET_IRQ_STATE), 0xB5);
        public static readonly KvmIoctl KVM_S390_GET_IRQ_STATE = KvmIoctl.IOW<Interop.S390x.kvm_s390_irq_state>(nameof(KVM_S390_GET_IRQ_STATE), 0xB6);
        public static readonly KvmIoctl KVM_S390_NORMAL_RESET = KvmIoctl.IO(nameof(KVM_S390_NORMAL_RESET), 0xC3);
        public static readonly KvmIoctl KVM_S390_CLEAR_RESET = KvmIoctl.IO(nameof(KVM_S390_CLEAR_RESET), 0xC4);
    }
}
