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

    [Test]
    public void Load_RefusesAHostileDeviceSection_WithoutAllocatingWhatItClaims()
    {
        using var g = PendingTickGuest(Kvm);
        Assert.That(NextOut(g).Port, Is.EqualTo(PendingPort));
        var snapshot = g.Vm.CreateSnapshot();
        using var ms = new MemoryStream();
        snapshot.Save(ms);
        var bytes = ms.ToArray();
        var d = snapshot.Devices!;
        static int Blob(byte[]? b) => 4 + (b?.Length ?? 0);
        int section = 1 + Blob(d.Clock) + Blob(d.PicMaster) + Blob(d.PicSlave) + Blob(d.IoApic) + Blob(d.Pit) + 4
            + d.Lapics.Sum(l => 4 + 8 + Blob(l.Registers) + 1 + (l.TscDeadline is null ? 0 : 8));
        int start = bytes.Length - 32 - section;
        Assert.That(bytes[start], Is.EqualTo(1), "the device section starts where the format says");

        var random = new Random(7);
        foreach (int length in Enumerable.Range(0, 60).Select(_ => start + random.Next(section + 32)))
            Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(new MemoryStream(bytes[..length])), $"truncated to {length} bytes, in the device section");
        for (int i = 0; i < 40; i++)
        {
            var flipped = (byte[])bytes.Clone();
            int at = start + random.Next(section);
            flipped[at] ^= (byte)(1 << random.Next(8));
            Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(new MemoryStream(flipped)), $"bit flipped at {at}, in the device section");
        }
        foreach (uint claimed in new[] { 0x7FFF_FFFEu, 1u << 16 })
        {
            var hostile = bytes[..(start + 1 + 4 + 64)]; // the clock's length field, then 64 bytes
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(hostile.AsSpan(start + 1), claimed);
            long before = GC.GetAllocatedBytesForCurrentThread();
            var ex = Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(new MemoryStream(hostile)));
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.That(ex!.Message, Does.Contain("clock"), $"a clock of {claimed} bytes");
            Assert.That(allocated, Is.LessThan(bytes.Length + (4 << 20)), $"a clock claiming {claimed} bytes allocated {allocated}");
        }
    }
}
