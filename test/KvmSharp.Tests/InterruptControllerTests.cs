using System.Buffers.Binary;
using KvmSharp.Interop;
using KvmSharp.Interop.X86;
using KvmSharp.Tests.Guests;
using static KvmSharp.Tests.Guests.InterruptGuest;

namespace KvmSharp.Tests;

/// <summary>
/// The x86 in-kernel interrupt controller and PIT on stock KVM: the rules for creating them (checked
/// before KVM, and KVM's own answer alongside), PIT ticks and host-raised IRQ lines reaching a CPL0
/// guest's handlers through the PIC.
/// </summary>
public class InterruptControllerTests : KvmTestBase
{
    [Test]
    public void CreateIrqChip_AfterAVcpu_IsRefusedSayingWhy_EvenWhenTheVcpuIsDisposed()
    {
        using var vm = Kvm.CreateVirtualMachine();
        vm.CreateVcpu().Dispose();

        var ex = Assert.Throws<InvalidOperationException>(vm.CreateIrqChip);
        Assert.That(ex!.Message, Does.Contain("before the VM's first vCPU"));
        Assert.That(vm.HasIrqChip, Is.False);
        Assert.That(vm.Kernel.Ioctl(vm.Fd, KvmIoctls.KVM_CREATE_IRQCHIP, 0), Is.EqualTo(-Errno.EINVAL),
            "KVM itself refuses it (EINVAL): it keeps the disposed vCPU until the VM is closed");
    }

    [Test]
    public void CreateIrqChip_Twice_IsRefused_AndAVcpuCreatedAfterItHasALocalApic()
    {
        using var vm = Kvm.CreateVirtualMachine();
        vm.CreateIrqChip();
        Assert.That(vm.HasIrqChip, Is.True);

        var ex = Assert.Throws<InvalidOperationException>(vm.CreateIrqChip);
        Assert.That(ex!.Message, Does.Contain("already"));
        Assert.That(vm.Kernel.Ioctl(vm.Fd, KvmIoctls.KVM_CREATE_IRQCHIP, 0), Is.EqualTo(-Errno.EEXIST), "KVM's own answer");

        using var cpu = vm.CreateVcpu(1);
        byte[] lapic = cpu.GetLapicState();
        Assert.That(lapic, Has.Length.EqualTo(1024));
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(lapic.AsSpan(0x20)) >> 24, Is.EqualTo(1u), "APIC ID register = vCPU id (xAPIC format)");
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(lapic.AsSpan(0x30)) & 0xFF, Is.EqualTo(0x14u), "APIC version register: an integrated APIC (0x14)");
    }

    [Test]
    public void CreatePit_NeedsTheIrqChip_AndIsRefusedTwice()
    {
        using var vm = Kvm.CreateVirtualMachine();
        var ex = Assert.Throws<InvalidOperationException>(vm.CreatePit);
        Assert.That(ex!.Message, Does.Contain("CreateIrqChip first"));
        Assert.That(vm.HasPit, Is.False);

        vm.CreateIrqChip();
        vm.CreatePit();
        Assert.That(vm.HasPit, Is.True);
        ex = Assert.Throws<InvalidOperationException>(vm.CreatePit);
        Assert.That(ex!.Message, Does.Contain("already"));
        var config = default(kvm_pit_config);
        Assert.That(vm.Kernel.Ioctl(vm.Fd, KvmIoctls.X86.KVM_CREATE_PIT2, ref config), Is.EqualTo(-Errno.EEXIST), "KVM's own answer");
        Assert.That(vm.GetPitState(), Has.Length.EqualTo(112), "KVM_GET_PIT2 answers once the PIT exists");

        using var bare = Kvm.CreateVirtualMachine();
        int r = bare.Kernel.Ioctl(bare.Fd, KvmIoctls.X86.KVM_CREATE_PIT2, ref config);
        Assert.That(r, Is.EqualTo(0).Or.EqualTo(-Errno.ENOENT),
            "KVM without an irqchip: older kernels create a PIT that reaches nothing, newer ones refuse (ENOENT); hence the check");
    }

    [Test]
    public void SetIrqLine_NeedsTheIrqChip_AndANonNegativeGsi()
    {
        using var vm = Kvm.CreateVirtualMachine();
        Assert.Throws<InvalidOperationException>(() => vm.SetIrqLine(4, true));
        Assert.Throws<InvalidOperationException>(() => vm.GetIrqChipState(kvm_irqchip.KVM_IRQCHIP_PIC_MASTER));
        Assert.Throws<InvalidOperationException>(() => vm.GetPitState());
        vm.CreateIrqChip();
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.SetIrqLine(-1, true));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.GetIrqChipState(3));
        vm.SetIrqLine(4, true);
        vm.SetIrqLine(4, false);
    }

    [Test]
    public void PitTicks_ReachTheGuestsHandlerThroughThePic_AndHltWaitsInsideKvm()
    {
        using var g = TickGuest(Kvm);
        for (uint tick = 1; tick <= 3; tick++)
            Assert.That(NextOut(g), Is.EqualTo((TickPort, tick)), "every exit is the handler's report: the guest's HLTs and PIC/PIT port writes stay inside KVM");
        var pic = g.Vm.GetIrqChipState(kvm_irqchip.KVM_IRQCHIP_PIC_MASTER);
        Assert.That((pic[8 + 2], pic[8 + 5]), Is.EqualTo(((byte)0xFE, (byte)MasterBase)), "KVM's PIC holds the guest's mask (imr) and vector base (irq_base)");
    }

    [Test]
    public void HostRaisedIrqLine_ReachesTheGuestsHandlerForThatVector()
    {
        using var g = IrqLineGuest(Kvm, reportPending: false);
        Assert.That(NextOut(g).Port, Is.EqualTo(ReadyPort));
        Assert.That(g.Cpu.Run(TimeSpan.FromSeconds(1)).Reason, Is.EqualTo(VcpuExitReason.Interrupted), "nothing arrives before the line is raised");
        RaiseEdge(g.Vm, 4);
        Assert.That(NextOut(g), Is.EqualTo((LinePort, 1u)), "vector 0x24's handler ran once");
        AssertQuiet(g, 0, "one edge, one interrupt");
    }
}
