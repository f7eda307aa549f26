using System.Buffers.Binary;
using KvmSharp.Arm64.Tests.Guests;
using static KvmSharp.Arm64.Tests.Guests.Arm64TestVm;

namespace KvmSharp.Arm64.Tests;

/// <summary>
/// Memory on a real arm64 KVM: MMIO of every access size in both directions, dirty tracking with
/// every back end the kernel offers, and snapshot/restore (byte-exact memory, identical registers,
/// a cost that follows the dirty pages).
/// </summary>
public class Arm64MemoryTests
{
    private const ulong Value = 0x8877_6655_4433_2211;

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(4)]
    [TestCase(8)]
    public void MmioWrite_OfEachSize_CarriesTheLowBytesOfTheRegister(int size)
    {
        using var t = new Arm64TestVm(new A64().Mov(1, MmioBase).Mov(0, Value).Store(size, 0, 1, size).BranchToSelf());
        var mmio = t.RunToMmio();
        Assert.That((mmio.Address, mmio.IsWrite, mmio.Length), Is.EqualTo((MmioBase + (ulong)size, true, size)));
        Assert.That(mmio.Data.ToArray(), Is.EqualTo(BitConverter.GetBytes(Value)[..size]));
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(4)]
    [TestCase(8)]
    public void MmioRead_OfEachSize_LandsZeroExtendedInTheTargetRegister(int size)
    {
        var code = new A64()
            .Mov(1, MmioBase)
            .Load(size, 2, 1, size)    // x2 <- MMIO (the host answers); x2 held all ones before
            .Store(8, 2, 1, 0x100)     // MMIO <- x2: what landed
            .BranchToSelf();
        using var t = new Arm64TestVm(code);
        t.Arm.X2 = ulong.MaxValue;
        var mmio = t.RunToMmio();
        Assert.That((mmio.Address, mmio.IsWrite, mmio.Length), Is.EqualTo((MmioBase + (ulong)size, false, size)));
        BitConverter.GetBytes(Value).AsSpan(0, size).CopyTo(mmio.Data);

        ulong expected = size == 8 ? Value : Value & ((1UL << (8 * size)) - 1);
        mmio = t.RunToMmio();
        Assert.That((mmio.Address, BinaryPrimitives.ReadUInt64LittleEndian(mmio.Data)), Is.EqualTo((MmioBase + 0x100, expected)));
        Assert.That(t.Arm.X2, Is.EqualTo(expected), "the register cache reads the completed load");
    }

    // ---- dirty tracking ----------------------------------------------------------------------------

    private const ulong DataAddress = 0x10_0000, DataSize = 16 * 4096;

    /// <summary>The guest stores X0 to pages 3, 5 and 9 of the data slot, exits (MMIO), then stores to page 5 again and exits.</summary>
    private static A64 WritePagesGuest() => new A64()
        .Mov(1, MmioBase)
        .Mov(2, DataAddress + 3 * 4096).Store(8, 0, 2)
        .Mov(2, DataAddress + 5 * 4096).Store(8, 0, 2)
        .Mov(2, DataAddress + 9 * 4096).Store(8, 0, 2)
        .Store(8, 0, 1)
        .Mov(2, DataAddress + 5 * 4096).Store(8, 0, 2, 8)
        .Store(8, 0, 1)
        .BranchToSelf();

    [TestCase(DirtyLogBackend.GetDirtyLog)]
    [TestCase(DirtyLogBackend.ManualProtect)]
    public void DirtyTracking_ReportsExactlyThePagesTheGuestWrote(DirtyLogBackend backend)
    {
        MemorySlot data = null!;
        using var t = new Arm64TestVm(WritePagesGuest(), beforeVcpu: vm => data = vm.AddMemorySlot(DataAddress, DataSize));
        var tracker = t.Vm.EnableDirtyTracking(backend);
        Assert.That(tracker.Backend, Is.EqualTo(backend));
        using (tracker.Harvest()) { } // the code the host wrote before tracking began is not the guest's

        t.RunToMmio();
        using (var pages = tracker.Harvest())
            Assert.That(pages.PagesOf(data).ToArray(), Is.EqualTo(new ulong[] { 3, 5, 9 }));
        t.RunToMmio();
        using (var pages = tracker.Harvest())
            Assert.That(pages.PagesOf(data).ToArray(), Is.EqualTo(new ulong[] { 5 }), "tracking was re-armed: only the page written since");
    }

    [Test]
    public void DirtyTracking_BackEnds_AreWhatThisKernelOffers()
    {
        using var kvm = Kvm.Open();
        using (var vm = kvm.CreateVirtualMachine())
        {
            vm.AddMemorySlot(0, RamSize);
            bool manual = vm.CheckExtension(KvmCapability.ManualDirtyLogProtect2) > 0;
            Assert.That(vm.EnableDirtyTracking().Backend, Is.EqualTo(manual ? DirtyLogBackend.ManualProtect : DirtyLogBackend.GetDirtyLog), "Auto without a ring");
        }
        using (var vm = kvm.CreateVirtualMachine())
        {
            // Linux 6.1 has no dirty ring on arm64 (KVM_CAP_DIRTY_LOG_RING[_ACQ_REL] came to arm64 in 6.2);
            // KvmSharp maps the ring on x86_64 only, and says so.
            if (Environment.OSVersion.Version is { Major: 6, Minor: 1 })
                Assert.That((vm.CheckExtension(KvmCapability.DirtyLogRing), vm.CheckExtension(KvmCapability.DirtyLogRingAcqRel)), Is.EqualTo((0, 0)));
            var refused = Assert.Throws<NotSupportedException>(() => vm.EnableDirtyTracking(DirtyLogBackend.DirtyRing));
            Assert.That(refused!.Message, Does.Contain("KVM_CAP_DIRTY_LOG_RING"));
            Assert.That(vm.DirtyTracker, Is.Null, "the refusal changed nothing");
        }
    }

    // ---- snapshots ---------------------------------------------------------------------------------

    [Test]
    public void SnapshotRestore_GivesByteExactMemory_AndTheGuestRepeatsItself()
    {
        // Each round the guest adds 1 to X0, stores it at [X2] and moves X2 on by 8, then reports X0 (MMIO).
        var code = new A64().Mov(1, MmioBase).Mov(2, DataAddress);
        int loop = code.Position;
        code.Add(0, 0, 1).Store(8, 0, 2).Add(2, 2, 8).Store(8, 0, 1);
        code.Instruction(A64.B(loop - code.Position));
        MemorySlot data = null!;
        using var t = new Arm64TestVm(code, beforeVcpu: vm => data = vm.AddMemorySlot(DataAddress, DataSize));
        t.RunToMmio();

        var snapshot = t.Vm.CreateSnapshot();
        var memoryAtSnapshot = data.Span.ToArray();
        var first = Rounds(t, 5);
        Assert.That(first.Select(r => r.Reported), Is.EqualTo(new ulong[] { 2, 3, 4, 5, 6 }));
        data.GetSpan(12 * 4096, 8).Fill(0xEE); // a write the tracker is not told of: restore does not copy it back

        t.Vm.Restore(snapshot);
        var restored = data.Span.ToArray();
        Assert.That(restored.AsSpan(0, 12 * 4096).SequenceEqual(memoryAtSnapshot.AsSpan(0, 12 * 4096)), Is.True,
            "the pages the guest wrote since the snapshot are back, byte for byte");
        Assert.That(restored[12 * 4096], Is.EqualTo(0xEE),
            "an incremental restore copies only the dirty pages: the page written behind the tracker's back is untouched");
        Assert.That(Rounds(t, 5), Is.EqualTo(first), "the same exits, registers and memory again");
    }

    private static List<(ulong Reported, ulong X2, ulong Pc)> Rounds(Arm64TestVm t, int n)
    {
        var seen = new List<(ulong, ulong, ulong)>();
        for (int i = 0; i < n; i++)
        {
            var mmio = t.RunToMmio();
            seen.Add((BinaryPrimitives.ReadUInt64LittleEndian(mmio.Data), t.Arm.X2, t.Arm.Pc));
        }
        return seen;
    }
}
