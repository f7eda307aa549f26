using KvmSharp.Arm64.Tests.Guests;
using KvmSharp.Interop;
using KvmSharp.Interop.Arm64;

namespace KvmSharp.Arm64.Tests;

/// <summary>
/// The order and range rules of KVM's GICv3 that <see cref="VirtualMachine.CreateGicV3"/>,
/// <see cref="ArmGicV3"/> and <see cref="VirtualMachine.CreateVcpu"/> check before KVM does: each test
/// shows KvmSharp's clear exception, then the same request sent raw to the real KVM and its errno,
/// so that a check cannot drift from the kernel's rule unnoticed.
/// </summary>
public class Arm64GicRuleTests
{
    private const ulong Dist = GicGuest.DistributorBase, Redist = GicGuest.RedistributorBase;

    private Kvm _kvm = null!;

    [SetUp]
    public void Open() => _kvm = Kvm.Open();

    [TearDown]
    public void Close() => _kvm.Dispose();

    [Test]
    public void CreateGicV3_ASecondTime_IsRefused_AsKvmRefusesASecondVgic()
    {
        using var vm = _kvm.CreateVirtualMachine();
        var gic = vm.CreateGicV3(Dist, Redist);
        Assert.That(vm.GicV3, Is.SameAs(gic));

        Assert.That(() => vm.CreateGicV3(Dist + 0x10_0000, Redist + 0x10_0000),
            Throws.InvalidOperationException.With.Message.Contains("one interrupt controller per VM"));
        var raw = Assert.Throws<KvmException>(() => KvmDevice.Create(vm.Kernel, vm.Fd, kvm_create_device.KVM_DEV_TYPE_ARM_VGIC_V3, "second vGIC"));
        Assert.That((raw!.Operation, raw.ErrnoName), Is.EqualTo(("KVM_CREATE_DEVICE", "EEXIST")), "kvm_vgic_create: irqchip_in_kernel");
    }

    [Test]
    public void Vcpu_AfterInitialize_IsRefused_AsKvmRefusesIt()
    {
        using var vm = _kvm.CreateVirtualMachine();
        var gic = vm.CreateGicV3(Dist, Redist);
        Assert.That(gic.Initialize, Throws.InvalidOperationException.With.Message.Contains("Create the VM's vCPUs before"));
        using var vcpu = Arm64TestVm.Boot(vm, GicGuest.Code());
        gic.Initialize();

        Assert.That(() => vm.CreateVcpu(), Throws.InvalidOperationException.With.Message.Contains("GICv3 is initialised"));
        Assert.That(vm.Vcpus, Has.Count.EqualTo(1));
        int r = vm.Kernel.Ioctl(vm.Fd, KvmIoctls.KVM_CREATE_VCPU, 1);
        if (r >= 0) vm.Kernel.Close(r);
        Assert.That(r, Is.EqualTo(-Errno.EBUSY), "kvm_arch_vcpu_precreate: no vCPU once the vGIC is initialised");
    }

    [Test]
    public void Run_BeforeInitialize_IsRefused_BecauseKvmWouldFailItAndKillTheVm()
    {
        using var vm = _kvm.CreateVirtualMachine();
        var gic = vm.CreateGicV3(Dist, Redist);
        using var vcpu = Arm64TestVm.Boot(vm, GicGuest.Code());
        Assert.That(() => vcpu.Run(TimeSpan.FromMinutes(1)), Throws.InvalidOperationException.With.Message.Contains("before the VM's GICv3 is initialised"));
        gic.Initialize();
        var exit = vcpu.Run(TimeSpan.FromMinutes(1));
        Assert.That((exit.Reason, exit.Mmio.Address), Is.EqualTo((VcpuExitReason.Mmio, GicGuest.ReadyAddress)), "initialised, the vCPU runs: " + exit.ToString());

        // The same first run sent raw: vgic_v3_map_resources answers -EBUSY, and kvm_vgic_map_resources
        // then calls kvm_vm_dead: every later ioctl on the VM and its devices fails with EIO.
        using var rawVm = _kvm.CreateVirtualMachine();
        var rawGic = rawVm.CreateGicV3(Dist, Redist);
        using var rawVcpu = Arm64TestVm.Boot(rawVm, GicGuest.Code());
        Assert.That(rawVm.Kernel.Ioctl(rawVcpu.Fd, KvmIoctls.KVM_RUN, 0), Is.EqualTo(-Errno.EBUSY));
        var dead = Assert.Throws<KvmException>(rawGic.Initialize);
        Assert.That((dead!.Operation, dead.ErrnoName), Is.EqualTo(("KVM_SET_DEVICE_ATTR", "EIO")), dead.Message);
    }

    [Test]
    public void InterruptCount_Above992_IsRefused_AsKvmRefuses1024()
    {
        using var vm = _kvm.CreateVirtualMachine();
        Assert.That(() => vm.CreateGicV3(Dist, Redist, 1024), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("64 to 992"));
        Assert.That(() => vm.CreateGicV3(Dist, Redist, 100), Throws.InstanceOf<ArgumentOutOfRangeException>(), "not a multiple of 32");

        using var device = KvmDevice.Create(vm.Kernel, vm.Fd, kvm_create_device.KVM_DEV_TYPE_ARM_VGIC_V3, "raw vGIC");
        var raw = Assert.Throws<KvmException>(() => device.Set(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, 1024u, "1024"));
        Assert.That(raw!.ErrnoName, Is.EqualTo("EINVAL"), "vgic-kvm-device.c: more than VGIC_MAX_RESERVED (1023)");
        device.Set(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, 992u, "992");
        Assert.That(device.Get<uint>(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, "read back"), Is.EqualTo(992u));
        Assert.That(device.Has(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_CTRL, ArmVgicUapi.KVM_DEV_ARM_VGIC_CTRL_INIT), Is.True, "KVM_HAS_DEVICE_ATTR");
        Assert.That(device.Has(ArmVgicUapi.KVM_DEV_ARM_VGIC_GRP_CTRL, 0x7F), Is.False, "KVM_HAS_DEVICE_ATTR: ENXIO for an unknown attribute");
    }

    [Test]
    public void IrqLine_WithoutAGic_IsRefused_AsKvmRefusesIt()
    {
        using var vm = _kvm.CreateVirtualMachine();
        using var vcpu = Arm64TestVm.Boot(vm, GicGuest.Code());
        using var eventFd = new EventFd();

        Assert.That(() => vm.SetIrqLine(40, true), Throws.InvalidOperationException.With.Message.Contains("CreateGicV3"));
        Assert.That(() => vm.AddIrqFd(eventFd, 8), Throws.InvalidOperationException.With.Message.Contains("GICv3"));
        Assert.That(RawSpi(vm, 40), Is.EqualTo(-Errno.ENXIO), "kvm_vm_ioctl_irq_line: an SPI without an in-kernel irqchip");
    }

    [Test]
    public void IrqLine_BeforeInitialize_IsRefused_AsKvmRefusesIt()
    {
        using var vm = _kvm.CreateVirtualMachine();
        var gic = vm.CreateGicV3(Dist, Redist);
        using var vcpu = Arm64TestVm.Boot(vm, GicGuest.Code());

        Assert.That(() => gic.SetSpi(40, true), Throws.InvalidOperationException.With.Message.Contains("not initialised"));
        Assert.That(() => gic.SetPpi(vcpu, 21, true), Throws.InvalidOperationException.With.Message.Contains("not initialised"));
        Assert.That(RawSpi(vm, 40), Is.EqualTo(-Errno.EBUSY), "vgic_lazy_init: only a GICv2 initialises itself");
    }

    [Test]
    public void Spi_OutOfRange_IsRefused_AsKvmRefusesIt()
    {
        using var t = new Arm64TestVm(GicGuest.Code(), beforeVcpu: vm => vm.CreateGicV3(Dist, Redist));
        var gic = t.Vm.GicV3!;
        gic.Initialize();

        Assert.That(() => gic.SetSpi(256, true), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("32–255"));
        Assert.That(() => gic.SetPpi(t.Cpu, 32, true), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("16–31"));
        Assert.That(RawSpi(t.Vm, 256), Is.EqualTo(-Errno.EINVAL), "vgic_get_irq: no INTID 256 with KVM's default 256 INTIDs");
        Assert.That(RawSpi(t.Vm, 255), Is.Zero, "the last SPI is accepted");
    }

    [Test]
    public void Frames_ThatOverlapEachOtherOrMemory_AreRefusedBeforeKvmSeesThem()
    {
        using var vm = _kvm.CreateVirtualMachine();
        vm.AddMemorySlot(0, Arm64TestVm.RamSize);

        Assert.That(() => vm.CreateGicV3(Dist + 0x1000, Redist), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("64 KiB"));
        Assert.That(() => vm.CreateGicV3(0, Redist), Throws.ArgumentException.With.Message.Contains("overlaps memory slot 0"));
        Assert.That(() => vm.CreateGicV3(Dist, Dist), Throws.ArgumentException.With.Message.Contains("overlaps the redistributors"));
        Assert.That(vm.GicV3, Is.Null, "nothing was created");

        // Room for one redistributor before the distributor: a second vCPU's would overlap it.
        var gic = vm.CreateGicV3(Dist, Dist - ArmGicV3.RedistributorSizePerVcpu);
        Assert.That(() => vm.AddMemorySlot(Dist, 0x1000), Throws.ArgumentException.With.Message.Contains("overlaps the GICv3"));
        using var first = vm.CreateVcpu();
        Assert.That(() => vm.CreateVcpu(), Throws.ArgumentException.With.Message.Contains("vCPU 1 cannot be created"));
        gic.Initialize();
        Assert.That(gic.IsInitialized, Is.True, "one vCPU fits");
    }

    /// <summary>KVM_IRQ_LINE for SPI <paramref name="intid"/>, asserted, straight to KVM: 0 or -errno.</summary>
    private static int RawSpi(VirtualMachine vm, int intid)
    {
        var line = new kvm_irq_level { irq = ArmVgicUapi.IrqLineWord(ArmVgicUapi.KVM_ARM_IRQ_TYPE_SPI, 0, intid), level = 1 };
        return vm.Kernel.Ioctl(vm.Fd, KvmIoctls.KVM_IRQ_LINE, ref line);
    }
}
