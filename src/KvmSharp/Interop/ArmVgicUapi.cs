#pragma warning disable IDE1006, CA1707
namespace KvmSharp.Interop.Arm64;

/// <summary>
/// The arm64 uapi constants of the in-kernel vGIC (<c>asm/kvm.h</c>; api.rst and
/// <c>Documentation/virt/kvm/devices/arm-vgic-v3.rst</c>) and of KVM_IRQ_LINE's <c>irq</c> field on arm64,
/// under their C names. The layout tests compare each with the header macro its
/// <see cref="UapiValueAttribute"/> names (they are <c>ulong</c> for that reason).
/// </summary>
internal static class ArmVgicUapi
{
    // kvm_device_attr.group / .attr of a KVM_DEV_TYPE_ARM_VGIC_V3 device
    [UapiValue("KVM_DEV_ARM_VGIC_GRP_ADDR")] public const ulong KVM_DEV_ARM_VGIC_GRP_ADDR = 0;
    [UapiValue("KVM_VGIC_V3_ADDR_TYPE_DIST")] public const ulong KVM_VGIC_V3_ADDR_TYPE_DIST = 2;
    [UapiValue("KVM_VGIC_V3_ADDR_TYPE_REDIST")] public const ulong KVM_VGIC_V3_ADDR_TYPE_REDIST = 3;
    [UapiValue("KVM_DEV_ARM_VGIC_GRP_NR_IRQS")] public const ulong KVM_DEV_ARM_VGIC_GRP_NR_IRQS = 3;
    [UapiValue("KVM_DEV_ARM_VGIC_GRP_CTRL")] public const ulong KVM_DEV_ARM_VGIC_GRP_CTRL = 4;
    [UapiValue("KVM_DEV_ARM_VGIC_CTRL_INIT")] public const ulong KVM_DEV_ARM_VGIC_CTRL_INIT = 0;

    // kvm_irq_level.irq on arm64: vcpu2_index << 28 | irq_type << 24 | vcpu_index << 16 | irq_id
    [UapiValue("KVM_ARM_IRQ_TYPE_SHIFT")] public const ulong KVM_ARM_IRQ_TYPE_SHIFT = 24;
    [UapiValue("KVM_ARM_IRQ_VCPU_SHIFT")] public const ulong KVM_ARM_IRQ_VCPU_SHIFT = 16;
    [UapiValue("KVM_ARM_IRQ_VCPU_MASK")] public const ulong KVM_ARM_IRQ_VCPU_MASK = 0xFF;
    [UapiValue("KVM_ARM_IRQ_TYPE_SPI")] public const ulong KVM_ARM_IRQ_TYPE_SPI = 1;
    [UapiValue("KVM_ARM_IRQ_TYPE_PPI")] public const ulong KVM_ARM_IRQ_TYPE_PPI = 2;

    /// <summary>The <c>kvm_irq_level.irq</c> word for an interrupt of <paramref name="type"/> (SPI or PPI) to vCPU index <paramref name="vcpuIndex"/> (0–255; SPIs ignore it).</summary>
    public static uint IrqLineWord(ulong type, int vcpuIndex, int intid) =>
        (uint)(type << (int)KVM_ARM_IRQ_TYPE_SHIFT | ((ulong)vcpuIndex & KVM_ARM_IRQ_VCPU_MASK) << (int)KVM_ARM_IRQ_VCPU_SHIFT | (uint)intid);
}
