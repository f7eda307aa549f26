using KvmSharp.Arm64.Tests.Guests;

namespace KvmSharp.Arm64.Tests;

/// <summary>
/// KVM's in-kernel GICv3 (vgic-v3) on a real arm64 KVM: interrupts the host raises with KVM_IRQ_LINE
/// and an irqfd, and the virtual timer's PPI, reach a guest that programs the distributor, its
/// redistributor and the ICC_* CPU interface itself (<see cref="GicGuest"/>). Each test asserts what
/// the guest saw, that is what KVM delivered.
/// </summary>
public class Arm64GicTests
{
    private const int Spi = 40, EdgeSpi = 42, Ppi = 21, VirtualTimerPpi = 27;
    private static readonly TimeSpan Quiet = TimeSpan.FromMilliseconds(200); // a WFI with nothing pending blocks this long

    [Test]
    public void Spi_RaisedByTheHost_IsTakenByTheGuest_WhichReadsItsIntidFromIccIar1()
    {
        using var t = Boot(GicGuest.Code(spis: [Spi]));
        var gic = t.Vm.GicV3!;
        Assert.That((gic.IsInitialized, gic.InterruptCount), Is.EqualTo((true, ArmGicV3.DefaultInterruptCount)),
            "KVM_DEV_ARM_VGIC_GRP_NR_IRQS read back after CTRL_INIT: KVM's default, 256 INTIDs");
        Assert.That(ExpectReady(t) >> 16 & 3, Is.EqualTo(2UL), "GICD_ICFGR2 as the guest found it: KVM resets SPI 40 (bits 17:16) to edge");
        ExpectQuiet(t, "nothing is pending yet: the WFI waits inside KVM");

        gic.SetSpi(Spi, true);
        Assert.That(ExpectIntid(t), Is.EqualTo((ulong)Spi), "ICC_IAR1_EL1 in the guest's IRQ handler");

        gic.SetSpi(Spi, false);
        ExpectQuiet(t, "deasserted before the guest's EOI: not taken again");
    }

    [Test]
    public void LevelSpi_IsTakenAgainWhileAsserted_AndLostWhenPulsedWhileTheVcpuIsOut()
    {
        using var t = Boot(GicGuest.Code(spis: [Spi]));
        var gic = t.Vm.GicV3!;
        ExpectReady(t);

        // A level interrupt is pending exactly while its line is high (vgic: line_level).
        gic.SetSpi(Spi, true);
        gic.SetSpi(Spi, false);
        ExpectQuiet(t, "a level SPI asserted and deasserted between two runs is never pending when the guest runs");

        gic.SetSpi(Spi, true);
        Assert.That(ExpectIntid(t), Is.EqualTo((ulong)Spi));
        Assert.That(ExpectIntid(t), Is.EqualTo((ulong)Spi), "still asserted at the guest's EOI: pending again, taken again");
        gic.SetSpi(Spi, false);
        ExpectQuiet(t, "deasserted: taken no more");
    }

    [Test]
    public void EdgeSpi_PulsedWhileTheVcpuIsOut_IsLatched_ThroughSetIrqLineAndAnIrqFd()
    {
        // The guest makes SPI 42 edge-triggered (GICD_ICFGR): a rising edge latches it pending, and an
        // irqfd's assert-deassert pulse (KVM's irqfd_inject) is such an edge. GSI = INTID - 32 is
        // KVM's default route on arm64, set up at CTRL_INIT.
        using var t = Boot(GicGuest.Code(edgeSpis: [EdgeSpi]));
        ExpectReady(t);

        t.Vm.SetIrqLine(EdgeSpi, true);
        t.Vm.SetIrqLine(EdgeSpi, false);
        Assert.That(ExpectIntid(t), Is.EqualTo((ulong)EdgeSpi), "VirtualMachine.SetIrqLine is the SPI's KVM_IRQ_LINE on arm64");
        ExpectQuiet(t, "an edge is taken once");

        using var eventFd = new EventFd();
        t.Vm.AddIrqFd(eventFd, EdgeSpi - ArmGicV3.FirstSpi);
        eventFd.Signal();
        Assert.That(ExpectIntid(t), Is.EqualTo((ulong)EdgeSpi), "the irqfd raised the SPI without a KVM_IRQ_LINE");
        ExpectQuiet(t, "one signal, one interrupt");
        t.Vm.RemoveIrqFd(eventFd, EdgeSpi - ArmGicV3.FirstSpi);
        eventFd.Signal();
        ExpectQuiet(t, "removed: the signal raises nothing");
    }

    [Test]
    public void Ppi_RaisedForTheVcpu_IsTakenByIt()
    {
        using var t = Boot(GicGuest.Code(ppis: [Ppi]));
        ExpectReady(t);

        t.Vm.GicV3!.SetPpi(t.Cpu, Ppi, true);
        Assert.That(ExpectIntid(t), Is.EqualTo((ulong)Ppi), "KVM_IRQ_LINE with KVM_ARM_IRQ_TYPE_PPI and vCPU index 0");
        t.Vm.GicV3.SetPpi(t.Cpu, Ppi, false);
        ExpectQuiet(t, "deasserted");
    }

    [Test]
    public void VirtualTimer_RaisesPpi27_ThroughTheGic_WithoutTheHost()
    {
        // The guest arms CNTV_TVAL_EL0 and enables CNTV_CTL_EL0; KVM's arch timer drives the vGIC's
        // PPI 27 when it expires. The handler disables the timer before its EOI.
        using var t = Boot(GicGuest.Code(ppis: [VirtualTimerPpi], timerTicks: 0x1000));
        ExpectReady(t);

        Assert.That(ExpectIntid(t), Is.EqualTo((ulong)VirtualTimerPpi), "the virtual timer's interrupt, with no call from the host");
        ExpectQuiet(t, "the handler stopped the timer");

        t.Vm.GicV3!.SetPpi(t.Cpu, VirtualTimerPpi, true);
        ExpectQuiet(t, "the timer owns PPI 27: KVM accepts the KVM_IRQ_LINE and ignores it (vgic_validate_injection: another owner)");
    }


    [TestCase(64)]
    [TestCase(128)]
    [TestCase(ArmGicV3.MaxInterruptCount)]
    public void InterruptCount_AskedFor_IsWhatKvmReports_AndBoundsTheSpis(int count)
    {
        using var t = Boot(GicGuest.Code(spis: [count - 1]), count);
        var gic = t.Vm.GicV3!;
        Assert.That(gic.InterruptCount, Is.EqualTo(count), "KVM_DEV_ARM_VGIC_GRP_NR_IRQS read back from KVM");
        ExpectReady(t);

        gic.SetSpi(count - 1, true);
        Assert.That(ExpectIntid(t), Is.EqualTo((ulong)(count - 1)), "the last SPI reaches the guest");
        gic.SetSpi(count - 1, false);
        Assert.That(() => gic.SetSpi(count, true), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains($"32–{count - 1}"));
        Assert.That(() => gic.SetSpi(31, true), Throws.InstanceOf<ArgumentOutOfRangeException>(), "31 is a PPI");
    }

    /// <summary>An <see cref="Arm64TestVm"/> running <paramref name="code"/> with a GICv3 created before its vCPU and initialised after it.</summary>
    private static Arm64TestVm Boot(A64 code, int? interruptCount = null)
    {
        var t = new Arm64TestVm(code, beforeVcpu: vm => vm.CreateGicV3(GicGuest.DistributorBase, GicGuest.RedistributorBase, interruptCount));
        t.Vm.GicV3!.Initialize();
        return t;
    }

    /// <summary>Runs to the guest's ready write and returns its data (the first SPI's GICD_ICFGR as KVM reset it).</summary>
    private static ulong ExpectReady(Arm64TestVm t)
    {
        var mmio = t.RunToMmio();
        Assert.That((mmio.Address, mmio.IsWrite), Is.EqualTo((GicGuest.ReadyAddress, true)), "the guest's set-up ends with its ready write");
        return BitConverter.ToUInt64(mmio.Data);
    }

    /// <summary>Runs to the guest's report of an INTID (its IRQ handler's MMIO write) and returns it.</summary>
    private static ulong ExpectIntid(Arm64TestVm t)
    {
        var mmio = t.RunToMmio();
        Assert.That((mmio.Address, mmio.IsWrite, mmio.Length), Is.EqualTo((GicGuest.IntidAddress, true, 8)), "an INTID report");
        return BitConverter.ToUInt64(mmio.Data);
    }

    /// <summary>Runs for <see cref="Quiet"/>: the guest must stay in its WFI (no interrupt taken), so the run ends by its timeout.</summary>
    private static void ExpectQuiet(Arm64TestVm t, string why)
    {
        var exit = t.Cpu.Run(Quiet);
        string got = exit.Reason == VcpuExitReason.Mmio ? $"an MMIO write of 0x{BitConverter.ToUInt64(exit.Mmio.Data):X} to 0x{exit.Mmio.Address:X}" : exit.ToString();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Interrupted), $"{why}; got {got}");
    }
}
