using KvmSharp.Interop;
using KvmSharp.Interop.Arm64;

namespace KvmSharp;

// arm64 in-kernel devices: the GICv3 (KVM_CREATE_DEVICE of KVM_DEV_TYPE_ARM_VGIC_V3) and IRQ lines into it.
// The order rules KVM has (arm-vgic-v3.rst, vgic-init.c) are checked here, under the VM's lock, so
// that creating vCPUs and initialising the GIC cannot interleave.
public sealed partial class VirtualMachine
{
    private ArmGicV3? _gicV3;
    private bool _gicV3Created; // KVM has one, also when configuring it failed afterwards

    /// <summary>The in-kernel GICv3 <see cref="CreateGicV3"/> created, or <c>null</c>.</summary>
    public ArmGicV3? GicV3
    {
        get
        {
            lock (_lock) return _gicV3;
        }
    }

    /// <summary>
    /// Creates the VM's in-kernel GICv3: its distributor at <paramref name="distributorBase"/>
    /// (<see cref="ArmGicV3.DistributorSize"/>), and the redistributors, one per vCPU, from
    /// <paramref name="redistributorBase"/> on (<see cref="ArmGicV3.RedistributorSizePerVcpu"/> each). Then
    /// create every vCPU and call <see cref="ArmGicV3.Initialize"/>. Wraps KVM_CREATE_DEVICE
    /// (KVM_DEV_TYPE_ARM_VGIC_V3) and KVM_SET_DEVICE_ATTR of KVM_DEV_ARM_VGIC_GRP_ADDR
    /// (KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST) and KVM_DEV_ARM_VGIC_GRP_NR_IRQS;
    /// needs KVM_CAP_DEVICE_CTRL and a host with a GICv3.
    /// </summary>
    /// <param name="distributorBase">The distributor's guest-physical address, a multiple of 64 KiB.</param>
    /// <param name="redistributorBase">vCPU index 0's redistributor's guest-physical address, a multiple of 64 KiB.</param>
    /// <param name="interruptCount">The number of INTIDs (SGIs, PPIs and SPIs): a multiple of 32 from 64 to
    /// 992; by default KVM's <see cref="ArmGicV3.DefaultInterruptCount"/>. (arm-vgic-v3.rst says up to 1024,
    /// but KVM compares with VGIC_MAX_RESERVED, 1023, and refuses 1024 with EINVAL.)</param>
    /// <remarks>KVM allows one GIC per VM, created before any vCPU has run (vCPUs may exist already). Its
    /// frames must not overlap each other or a memory slot (a guest access there would reach the RAM, not
    /// the GIC); KvmSharp checks that here, at <see cref="ArmGicV3.Initialize"/>, for each vCPU created in
    /// between, and for slots added later. KVM's limits on the addresses (the VM's IPA size) surface as a
    /// <see cref="KvmException"/> with E2BIG.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">An address is not 64 KiB aligned, or <paramref name="interruptCount"/> is invalid.</exception>
    /// <exception cref="ArgumentException">The frames wrap, overlap each other or overlap a memory slot.</exception>
    /// <exception cref="InvalidOperationException">The VM has a GICv3 already.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_DEVICE_CTRL, or cannot create a GICv3 (ENODEV: the host has none).</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not arm64.</exception>
    /// <exception cref="KvmException">KVM refused (e.g. EBUSY: a vCPU has run already).</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public ArmGicV3 CreateGicV3(ulong distributorBase, ulong redistributorBase, int? interruptCount = null)
    {
        Kvm.RequireArch(KvmArchitecture.Arm64, nameof(CreateGicV3));
        RequireGicAligned(distributorBase, nameof(distributorBase));
        RequireGicAligned(redistributorBase, nameof(redistributorBase));
        if (interruptCount is int n && (n < 64 || n > ArmGicV3.MaxInterruptCount || n % 32 != 0))
            throw new ArgumentOutOfRangeException(nameof(interruptCount), n, $"KVM's GICv3 has a multiple of 32 INTIDs from 64 to {ArmGicV3.MaxInterruptCount}.");
        const string Name = "KVM_DEV_TYPE_ARM_VGIC_V3";
        lock (_lock)
        {
            if (_gicV3Created)
                throw new InvalidOperationException("This VM has an in-kernel GICv3 already; KVM creates one interrupt controller per VM.");
            RequireGicFrames(distributorBase, redistributorBase, Math.Max(_vcpusCreated, 1), "");
            RequireCapability(KvmCapability.DeviceCtrl, "KVM_CAP_DEVICE_CTRL", nameof(CreateGicV3));
            if (!KvmDevice.IsSupported(Kernel, Fd, kvm_create_device.KVM_DEV_TYPE_ARM_VGIC_V3, Name))
                throw new NotSupportedException($"{nameof(CreateGicV3)}: this KVM cannot create a GICv3 (KVM_CREATE_DEVICE_TEST answered ENODEV; KVM emulates one only on a host with a GICv3).");
            var device = KvmDevice.Create(Kernel, Fd, kvm_create_device.KVM_DEV_TYPE_ARM_VGIC_V3, Name);
            _gicV3Created = true;
            try
            {
                device.Set(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_ADDR, ArmVgicUapi.KVM_VGIC_V3_ADDR_TYPE_DIST, distributorBase, $"distributor at 0x{distributorBase:X}");
                device.Set(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_ADDR, ArmVgicUapi.KVM_VGIC_V3_ADDR_TYPE_REDIST, redistributorBase, $"redistributors at 0x{redistributorBase:X}");
                if (interruptCount is int count)
                    device.Set(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, (uint)count, $"{count} INTIDs");
            }
            catch
            {
                device.Dispose();
                throw;
            }
            return _gicV3 = new ArmGicV3(this, device, distributorBase, redistributorBase, interruptCount ?? ArmGicV3.DefaultInterruptCount);
        }
    }

    internal void InitializeGic(ArmGicV3 gic)
    {
        lock (_lock)
        {
            _ = Fd;
            if (gic.IsInitialized) return;
            if (_vcpusCreated == 0)
                throw new InvalidOperationException("Create the VM's vCPUs before initialising the GICv3: KVM gives each vCPU existing then a redistributor, and no vCPU can be added afterwards.");
            RequireGicFrames(gic.DistributorBase, gic.RedistributorBase, _vcpusCreated, "");
            gic.Device.Set(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_CTRL, ArmVgicUapi.KVM_DEV_ARM_VGIC_CTRL_INIT, "KVM_DEV_ARM_VGIC_CTRL_INIT");
            uint count = gic.Device.Get<uint>(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, "number of INTIDs");
            gic.OnInitialized((int)count);
        }
    }

    /// <summary>
    /// Called before a vCPU's first KVM_RUN: a GIC that exists must be initialised, because KVM fails that
    /// run with EBUSY and then marks the whole VM dead (kvm_vm_dead: every later ioctl on it fails with EIO).
    /// </summary>
    internal void RequireGicReadyToRun(int vcpuId)
    {
        if (GicV3 is { IsInitialized: false })
            throw new InvalidOperationException(
                $"vCPU {vcpuId} cannot run before the VM's GICv3 is initialised: call ArmGicV3.Initialize after creating every vCPU " +
                "(KVM would fail the run with EBUSY and make the VM unusable).");
    }

    /// <summary>Called under the lock before KVM_CREATE_VCPU: the GIC's rules for a new vCPU.</summary>
    private void RequireVcpuFitsGic(int vcpuId)
    {
        if (_gicV3 is not { } gic) return;
        if (gic.IsInitialized)
            throw new InvalidOperationException(
                $"vCPU {vcpuId} cannot be created: the VM's GICv3 is initialised, and KVM adds no vCPU after that (EBUSY). Create every vCPU before ArmGicV3.Initialize.");
        RequireGicFrames(gic.DistributorBase, gic.RedistributorBase, _vcpusCreated + 1, $"vCPU {vcpuId} cannot be created: ");
    }

    /// <summary>Called under the lock before a memory slot is added or moved: it must leave the GIC's frames alone.</summary>
    private void RequireNoGicOverlap(ulong gpa, ulong size)
    {
        if (_gicV3 is not { } gic) return;
        ulong redistributors = (ulong)Math.Max(_vcpusCreated, 1) * ArmGicV3.RedistributorSizePerVcpu;
        if (Overlaps(gpa, size, gic.DistributorBase, ArmGicV3.DistributorSize) || Overlaps(gpa, size, gic.RedistributorBase, redistributors))
            throw new ArgumentException(
                $"Memory range 0x{gpa:X}..0x{gpa + size:X} overlaps the GICv3 (distributor 0x{gic.DistributorBase:X}..0x{gic.DistributorBase + ArmGicV3.DistributorSize:X}, " +
                $"redistributors 0x{gic.RedistributorBase:X}..0x{gic.RedistributorBase + redistributors:X}).", nameof(gpa));
    }

    /// <summary>The distributor and <paramref name="vcpus"/> redistributors: no wrap, no overlap with each other or a slot.</summary>
    private void RequireGicFrames(ulong distributor, ulong redistributor, int vcpus, string prefix)
    {
        ulong redistributors = (ulong)vcpus * ArmGicV3.RedistributorSizePerVcpu;
        if (distributor > ulong.MaxValue - ArmGicV3.DistributorSize || redistributor > ulong.MaxValue - redistributors)
            throw new ArgumentException($"{prefix}the GICv3's frames wrap around the address space.", nameof(redistributor));
        if (Overlaps(distributor, ArmGicV3.DistributorSize, redistributor, redistributors))
            throw new ArgumentException(
                $"{prefix}the GICv3 distributor 0x{distributor:X}..0x{distributor + ArmGicV3.DistributorSize:X} overlaps the redistributors of {vcpus} vCPU(s), " +
                $"0x{redistributor:X}..0x{redistributor + redistributors:X} (128 KiB each).", nameof(redistributor));
        ThrowIfOverlaps(distributor, ArmGicV3.DistributorSize, except: null, $"{prefix}the GICv3 distributor");
        ThrowIfOverlaps(redistributor, redistributors, except: null, $"{prefix}the redistributors of {vcpus} vCPU(s) (128 KiB each)");
    }

    private static bool Overlaps(ulong a, ulong aSize, ulong b, ulong bSize) => a < b + bSize && b < a + aSize;

    private static void RequireGicAligned(ulong address, string name)
    {
        if (address % ArmGicV3.Alignment != 0)
            throw new ArgumentOutOfRangeException(name, $"0x{address:X} is not a multiple of 64 KiB, as the GICv3's frames must be.");
    }

    /// <summary>KVM_IRQ_LINE on arm64: <c>irq_type &lt;&lt; 24 | vcpu_index &lt;&lt; 16 | irq_id</c> (api.rst 4.25).</summary>
    internal void SetArmIrqLine(ulong type, int vcpuIndex, int intid, bool level, string what)
    {
        var line = new kvm_irq_level { irq = ArmVgicUapi.IrqLineWord(type, vcpuIndex, intid), level = level ? 1u : 0u };
        Kernel.IoctlSet(Fd, KvmIoctls.KVM_IRQ_LINE, line, $"{what}, level {line.level}");
    }
}
