using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>
/// The in-kernel GICv3 interrupt controller of an arm64 VM (KVM's vGIC): a distributor of
/// <see cref="DistributorSize"/> bytes and one redistributor of <see cref="RedistributorSizePerVcpu"/>
/// bytes per vCPU, contiguous, at the guest-physical addresses given to
/// <see cref="VirtualMachine.CreateGicV3"/>; the guest reaches its CPU interface through the ICC_*
/// system registers. With it, a WFI waits inside KVM until an interrupt is pending, and the in-kernel
/// timers raise their PPIs (27 for the virtual timer, 30 for the physical one). See
/// <c>Documentation/virt/kvm/devices/arm-vgic-v3.rst</c>.
/// </summary>
/// <remarks>
/// <para>The order KVM requires: create the GIC (before any vCPU has run), create every vCPU, then
/// <see cref="Initialize"/>; only then may interrupts be raised and vCPUs run, and no vCPU can be
/// added any more. KvmSharp checks these rules before KVM does and says which one was broken — a
/// vCPU that ran first would not only fail KVM_RUN with EBUSY: KVM then marks the whole VM dead.</para>
/// <para>The GIC lives as long as its VM: KVM cannot remove an in-kernel device, so there is no
/// Dispose; disposing the VM closes the device's file descriptor. The GIC's state is not part of
/// snapshots.</para>
/// <para>Thread safety: every member may be called from any thread, also while vCPUs run.</para>
/// </remarks>
public sealed class ArmGicV3
{
    /// <summary>The size of the distributor's register frame, 64 KiB (<c>KVM_VGIC_V3_DIST_SIZE</c>).</summary>
    public const ulong DistributorSize = 0x1_0000;

    /// <summary>
    /// The size of one vCPU's redistributor, 128 KiB (<c>KVM_VGIC_V3_REDIST_SIZE</c>): its RD_base frame
    /// then its SGI_base frame (PPIs' and SGIs' enable, group and priority registers). vCPU index i's
    /// redistributor starts at <see cref="RedistributorBase"/> + i × this.
    /// </summary>
    public const ulong RedistributorSizePerVcpu = 0x2_0000;

    /// <summary>The base addresses must be multiples of this, 64 KiB.</summary>
    public const ulong Alignment = 0x1_0000;

    /// <summary>The first SPI's INTID (0–15 are SGIs, 16–31 PPIs).</summary>
    public const int FirstSpi = 32;

    /// <summary>The most INTIDs KVM's GICv3 can have: 992 (SPIs 32–991).</summary>
    public const int MaxInterruptCount = 992;

    /// <summary>The number of INTIDs KVM gives a GIC when <see cref="VirtualMachine.CreateGicV3"/> asks for none: 256 (SPIs 32–255).</summary>
    public const int DefaultInterruptCount = 256;

    private readonly VirtualMachine _vm;
    private int _interruptCount;
    private volatile bool _initialized;

    internal ArmGicV3(VirtualMachine vm, KvmDevice device, ulong distributorBase, ulong redistributorBase, int interruptCount)
    {
        _vm = vm;
        Device = device;
        DistributorBase = distributorBase;
        RedistributorBase = redistributorBase;
        _interruptCount = interruptCount;
    }

    internal KvmDevice Device { get; }

    /// <summary>The VM this GIC belongs to.</summary>
    public VirtualMachine VirtualMachine => _vm;

    /// <summary>The guest-physical address of the distributor (GICD_*).</summary>
    public ulong DistributorBase { get; }

    /// <summary>The guest-physical address of vCPU index 0's redistributor (GICR_*).</summary>
    public ulong RedistributorBase { get; }

    /// <summary>
    /// The number of INTIDs the distributor implements, SGIs and PPIs included: SPIs are
    /// <see cref="FirstSpi"/> to this − 1. After <see cref="Initialize"/> it is what KVM reports
    /// (KVM_GET_DEVICE_ATTR of KVM_DEV_ARM_VGIC_GRP_NR_IRQS); before, what was asked for, or
    /// <see cref="DefaultInterruptCount"/>.
    /// </summary>
    public int InterruptCount => Volatile.Read(ref _interruptCount);

    /// <summary>True once <see cref="Initialize"/> has succeeded.</summary>
    public bool IsInitialized => _initialized;

    /// <summary>
    /// The device's file descriptor, for a device attribute KvmSharp lacks (e.g. reading distributor
    /// registers with KVM_GET_DEVICE_ATTR). Do not close it; hold it with
    /// <see cref="SafeHandle.DangerousAddRef"/> / <see cref="SafeHandle.DangerousRelease"/> around the call.
    /// </summary>
    public SafeHandle SafeHandle => Device.Handle;

    /// <summary>
    /// Initialises the GIC for the vCPUs that exist now: one redistributor each, at
    /// <see cref="RedistributorBase"/> + index × <see cref="RedistributorSizePerVcpu"/>. Call it after
    /// creating every vCPU and before running any or raising an interrupt. Calling it again does nothing.
    /// Wraps KVM_SET_DEVICE_ATTR of KVM_DEV_ARM_VGIC_GRP_CTRL / KVM_DEV_ARM_VGIC_CTRL_INIT.
    /// </summary>
    /// <exception cref="InvalidOperationException">The VM has no vCPU yet.</exception>
    /// <exception cref="ArgumentException">The redistributors of all vCPUs would overlap the distributor or a memory slot, or wrap.</exception>
    /// <exception cref="KvmException">KVM refused.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void Initialize() => _vm.InitializeGic(this);

    internal void OnInitialized(int interruptCount)
    {
        Volatile.Write(ref _interruptCount, interruptCount);
        _initialized = true;
    }

    /// <summary>
    /// Sets the level of a shared peripheral interrupt (SPI) input: <c>true</c> asserts it, <c>false</c>
    /// deasserts it. KVM resets every SPI to edge-triggered: a rising edge latches it pending, taken once.
    /// A guest that configures it level-triggered (GICD_ICFGR) sees it pending exactly while it is
    /// asserted: taken again after its EOI while still asserted, never if deasserted before the vCPU
    /// ran. The distributor routes it to the vCPU its GICD_IROUTER names. Wraps KVM_IRQ_LINE with
    /// <c>KVM_ARM_IRQ_TYPE_SPI</c>; the same as <see cref="VirtualMachine.SetIrqLine"/> on arm64.
    /// </summary>
    /// <param name="intid">The SPI's INTID, <see cref="FirstSpi"/> to <see cref="InterruptCount"/> − 1.</param>
    /// <param name="level">True to assert the line, false to deassert it.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="intid"/> is no SPI of this GIC.</exception>
    /// <exception cref="InvalidOperationException">The GIC is not initialised yet (KVM would answer EBUSY).</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void SetSpi(int intid, bool level)
    {
        RequireInitialized(nameof(SetSpi));
        if (intid < FirstSpi || intid >= InterruptCount)
            throw new ArgumentOutOfRangeException(nameof(intid), intid, $"SPIs of this GIC are INTIDs {FirstSpi}–{InterruptCount - 1}.");
        _vm.SetArmIrqLine(Interop.Arm64.ArmVgicUapi.KVM_ARM_IRQ_TYPE_SPI, 0, intid, level, $"SPI {intid}");
    }

    /// <summary>
    /// Sets the level of a private peripheral interrupt (PPI) input of one vCPU's redistributor.
    /// KVM ignores the level of a PPI an in-kernel timer owns (27 and 30 once the vCPU has run): the
    /// call succeeds and changes nothing.
    /// Wraps KVM_IRQ_LINE with <c>KVM_ARM_IRQ_TYPE_PPI</c> and the vCPU's index.
    /// </summary>
    /// <param name="vcpu">The vCPU whose PPI it is (of this VM).</param>
    /// <param name="intid">The PPI's INTID, 16–31.</param>
    /// <param name="level">True to assert the line, false to deassert it.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="intid"/> is no PPI.</exception>
    /// <exception cref="ArgumentException"><paramref name="vcpu"/> belongs to another VM.</exception>
    /// <exception cref="NotSupportedException">The vCPU's index is above 255 (KVM_CAP_ARM_IRQ_LINE_LAYOUT_2 is not supported).</exception>
    /// <exception cref="InvalidOperationException">The GIC is not initialised yet.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void SetPpi(Vcpu vcpu, int intid, bool level)
    {
        ArgumentNullException.ThrowIfNull(vcpu);
        RequireInitialized(nameof(SetPpi));
        if (intid is < 16 or >= FirstSpi)
            throw new ArgumentOutOfRangeException(nameof(intid), intid, "PPIs are INTIDs 16–31.");
        if (vcpu.VirtualMachine != _vm)
            throw new ArgumentException("The vCPU belongs to another VM.", nameof(vcpu));
        if (vcpu.Index > (int)Interop.Arm64.ArmVgicUapi.KVM_ARM_IRQ_VCPU_MASK)
            throw new NotSupportedException($"vCPU index {vcpu.Index} does not fit KVM_IRQ_LINE's 8-bit vCPU field; the wider layout (KVM_CAP_ARM_IRQ_LINE_LAYOUT_2) is not supported.");
        _vm.SetArmIrqLine(Interop.Arm64.ArmVgicUapi.KVM_ARM_IRQ_TYPE_PPI, vcpu.Index, intid, level, $"PPI {intid} of vCPU {vcpu.Id} (index {vcpu.Index})");
    }

    private void RequireInitialized(string member)
    {
        if (!IsInitialized)
            throw new InvalidOperationException($"{member}: the GICv3 is not initialised; create every vCPU, then call Initialize (KVM answers EBUSY before).");
    }
}
