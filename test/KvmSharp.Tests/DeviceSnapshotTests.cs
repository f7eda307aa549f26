using KvmSharp.Snapshots;
using KvmSharp.Tests.Guests;
using static KvmSharp.Tests.Guests.InterruptGuest;

namespace KvmSharp.Tests;

/// <summary>
/// Whole-VM snapshots of an x86 VM with an in-kernel irqchip and PIT, on stock KVM: the snapshot
/// holds the devices, and a guest whose timer interrupt was pending at the snapshot continues
/// identically after <see cref="VirtualMachine.Restore"/> — also from a saved and loaded snapshot —
/// although it masked the PIC and stopped the PIT in between (which only the devices' restore undoes).
/// </summary>
public class DeviceSnapshotTests : KvmTestBase
{
    [TestCase(false)]
    [TestCase(true)]
    public void APendingTimerInterrupt_ContinuesIdenticallyAfterRestore(bool throughAStream)
    {
        using var g = PendingTickGuest(Kvm);
        Assert.That(NextOut(g).Port, Is.EqualTo(PendingPort), "IRQ0 is pending, interrupts still off");
        var snapshot = g.Vm.CreateSnapshot();
        Assert.That(snapshot.HasDeviceState, Is.True);
        var first = OutsUntil(g, BrokePort);
        Assert.That(first, Is.EqualTo(new[] { (TickPort, 1u), (TickPort, 2u), (TickPort, 3u), (BrokePort, 1u) }));
        AssertQuiet(g, 0, "PIC masked and PIT stopped");

        if (throughAStream)
        {
            using var stream = new MemoryStream();
            snapshot.Save(stream);
            stream.Position = 0;
            snapshot = VmSnapshot.Load(stream);
            Assert.That(snapshot.HasDeviceState, Is.True, "the device section survives Save/Load");
        }
        for (int round = 0; round < 2; round++)
        {
            g.Vm.Restore(snapshot);
            Assert.That(OutsUntil(g, BrokePort), Is.EqualTo(first), $"restore {round + 1}: the same ticks again, the pending one first");
        }
    }

    [Test]
    public void DeviceStateRestoresOnlyIntoAVmWithTheSameDevices()
    {
        VmSnapshot withDevices, without;
        using (var g = PendingTickGuest(Kvm))
        {
            Assert.That(NextOut(g).Port, Is.EqualTo(PendingPort));
            withDevices = g.Vm.CreateSnapshot();
        }
        using (var plain = TestGuest.LongMode(Kvm, a => a.hlt()))
        {
            without = plain.Vm.CreateSnapshot();
            Assert.That(without.HasDeviceState, Is.False, "no irqchip, no device state");
            var ex = Assert.Throws<ArgumentException>(() => plain.Vm.Restore(withDevices));
            Assert.That(ex!.Message, Does.Contain("irqchip").IgnoreCase.Or.Contain("interrupt controller").IgnoreCase.Or.Contain("PIC"));
            Assert.That(plain.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt), "nothing was changed");
        }
        using (var g = PendingTickGuest(Kvm))
        {
            var ex = Assert.Throws<ArgumentException>(() => g.Vm.Restore(without));
            Assert.That(ex!.Message, Does.Contain("no device state"));
        }
    }
}
