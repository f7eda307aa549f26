using KvmSharp.Guests;
using KvmSharp.Snapshots;
using KvmSharp.Tests.Guests;
using KvmSharp.Tests.Model;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

public class SlotManagementTests : KvmTestBase
{
    [Test]
    public void MoveAndFlags_AreValidatedAndApplied()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rbx, 0x600000UL);
            a.mov(rax, __qword_ptr[rbx]);
            a.hlt();
        });
        var extra = g.Vm.AddMemorySlot(0x400000, 0x1000);
        extra.Write(0x400000, 0xABCDUL);
        Assert.Throws<ArgumentException>(() => extra.Move(0x1000), "overlaps the RAM slot");
        Assert.Throws<ArgumentException>(() => extra.Move(0x600800), "unaligned");
        extra.Move(0x600000);
        Assert.That(extra.GuestPhysicalAddress, Is.EqualTo(0x600000UL));
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(g.Cpu.X86.Rax, Is.EqualTo(0xABCDUL), "the guest reads the moved slot's memory at its new address");

        extra.SetFlags(MemorySlotFlags.LogDirtyPages);
        Assert.That(extra.Flags, Is.EqualTo(MemorySlotFlags.LogDirtyPages));
        var ex = Assert.Throws<ArgumentException>(() => extra.SetFlags(MemorySlotFlags.ReadOnly));
        Assert.That(ex!.Message, Does.Contain("KVM_MEM_READONLY"));
    }

    [Test]
    public void TheDirtyRing_AfterAVcpuWasCreatedAndDisposed_IsRefusedClearly_AndAutoPicksAnotherBackend()
    {
        // KVM refuses KVM_CAP_DIRTY_LOG_RING once any vCPU was created (kvm->created_vcpus), disposed or not.
        Assert.That(Kvm.CheckExtension(KvmCapability.DirtyLogRing) > 0 || Kvm.CheckExtension(KvmCapability.DirtyLogRingAcqRel) > 0, Is.True,
            "stock x86 KVM (5.11+) has the dirty ring");
        using (var vm = Kvm.CreateVirtualMachine())
        {
            vm.AddMemorySlot(0, 0x10000);
            vm.CreateVcpu().Dispose();
            var ex = Assert.Throws<NotSupportedException>(() => vm.EnableDirtyTracking(DirtyLogBackend.DirtyRing));
            Assert.That(ex!.Message, Does.Contain("before the VM's first vCPU").And.Contain("disposed"));
            Assert.That(vm.DirtyTracker, Is.Null, "nothing was enabled");
        }
        using (var vm = Kvm.CreateVirtualMachine())
        {
            var slot = vm.AddMemorySlot(0, 0x10000);
            vm.CreateVcpu().Dispose();
            var tracker = vm.EnableDirtyTracking(); // Auto: not the ring, which KVM would refuse now
            Assert.That(tracker.Backend, Is.Not.EqualTo(DirtyLogBackend.DirtyRing));
            slot.Write(0x2000, 1UL);
            using var pages = tracker.Harvest();
            Assert.That(pages.SlotCount, Is.EqualTo(1));
            Assert.That(pages.PagesAt(0).ToArray(), Is.EqualTo(new ulong[] { 2 }), "the tracker works: the host write to page 2 is reported");
        }
    }

    [Test]
    public void VmWideTranslation_CrossesSlots_AndNamesHoles()
    {
        using var vm = Kvm.CreateVirtualMachine();
        vm.AddMemorySlot(0x0, 0x2000);
        vm.AddMemorySlot(0x2000, 0x2000);
        vm.AddMemorySlot(0x8000, 0x1000);
        byte[] data = [.. Enumerable.Range(0, 0x100).Select(i => (byte)i)];
        vm.WriteGuest(0x1F80, data);                         // crosses slot 0 → slot 1
        var back = new byte[0x100];
        vm.ReadGuest(0x1F80, back);
        Assert.That(back, Is.EqualTo(data));
        Assert.That(vm.GetGuestSpan(0x2000, 0x10)[0], Is.EqualTo(0x80));
        var ex = Assert.Throws<ArgumentException>(() => vm.ReadGuest(0x3F00, new byte[0x200]));
        Assert.That(ex!.Message, Does.Contain("0x4000").And.Contain("not backed"));
        var ex2 = Assert.Throws<ArgumentException>(() => vm.WriteGuest(0x3FF0, new byte[0x20]));
        Assert.That(ex2!.Message, Does.Contain("0x4000"));
        Assert.That(vm.GetGuestSpan(0x3FF0, 0x10).ToArray(), Is.All.EqualTo(0), "a refused write writes nothing");
        Assert.Throws<ArgumentException>(() => vm.GetGuestSpan(0x1FF0, 0x20), "a span cannot cross slots");
    }
}

[TestFixture(DirtyLogBackend.GetDirtyLog)]
[TestFixture(DirtyLogBackend.ManualProtect)]
[TestFixture(DirtyLogBackend.DirtyRing)]
public class DirtyTrackingTests(DirtyLogBackend backend) : KvmTestBase
{
    private const ulong Data = 0x400000;

    /// <summary>A VM with tracking on (the ring needs it before vCPUs), RAM, a data slot (2 MiB unless said), one CPL0 vCPU.</summary>
    private (VirtualMachine, MemorySlot, Vcpu) Create(Action<Iced.Intel.Assembler> code, int ringEntries = 4096, ulong dataBytes = 0x200000)
    {
        var vm = Kvm.CreateVirtualMachine();
        var tracker = vm.EnableDirtyTracking(backend, ringEntries);
        Assert.That(tracker.Backend, Is.EqualTo(backend));
        var ram = vm.AddMemorySlot(0, TestGuest.RamSize);
        var data = vm.AddMemorySlot(Data, dataBytes);
        var cpu = vm.CreateVcpu();
        var asm = new Iced.Intel.Assembler(64);
        code(asm);
        using var ms = new MemoryStream();
        asm.Assemble(new Iced.Intel.StreamCodeWriter(ms), TestGuest.CodeAddress);
        ram.GetSpan(TestGuest.CodeAddress, (int)ms.Length).Clear();
        ms.ToArray().CopyTo(ram.GetSpan(TestGuest.CodeAddress, (int)ms.Length));
        X86LongMode.Setup(cpu, ram, TestGuest.CodeAddress, TestGuest.StackTop);
        tracker.Harvest().Dispose(); // setup writes are not what the test is about
        return (vm, data, cpu);
    }

    private static ulong[] Pages(DirtyPageList list) => [.. list.Addresses()];

    /// <summary>
    /// Every page the guest's stores touched is reported and a page it only read is not — asserted on
    /// the data slot, which holds nothing the CPU writes by itself. In the RAM slot the CPU does write
    /// (stock KVM reports the page-table pages after every run: a nested-paging walk counts as a
    /// write to them even with accessed/dirty bits preset).
    /// <para>Stock KVM also reports a page the first time the guest merely reads it when the host page
    /// behind it is already present and writable (KVM then maps it writable at once and counts it
    /// dirty): a page the host wrote, such as the code page, or any page of a transparent huge page
    /// the host faulted in — which a 2 MiB slot can get whenever its mapping happens to be 2 MiB
    /// aligned. So the data slot here is 64 KiB (too small to hold a huge page) and the host never
    /// touches the page the guest only reads: that read can map nothing but the shared zero page.</para>
    /// </summary>
    [Test]
    public void ReportsExactlyThePagesTheGuestWrote_NotThoseItOnlyRead()
    {
        var (vm, data, cpu) = Create(a =>
        {
            a.mov(rbx, Data);
            a.mov(__qword_ptr[rbx + 0x1008], rax);    // page 1
            a.mov(rcx, __qword_ptr[rbx + 0x3000]);    // page 3: read only
            a.mov(__byte_ptr[rbx + 0x5FFF], cl);      // page 5
            a.mov(__dword_ptr[rbx + 0x9000], 1);      // page 9
            a.hlt();
        }, dataBytes: 0x10000);
        using (vm)
        {
            var ram = vm.FindSlot(0)!;
            Assert.That(cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
            using (var dirty = vm.DirtyTracker!.Harvest())
            {
                Assert.That(dirty.PagesOf(data).ToArray(), Is.EqualTo(new ulong[] { 1, 5, 9 }), "the data slot: the pages stored to, not the one only read");
                Assert.That(Pages(dirty).Where(a => a >= Data), Is.EqualTo(new[] { Data + 0x1000, Data + 0x5000, Data + 0x9000 }));
                AssertOnlyCpuStructuresOrCode(dirty, ram);
            }
            using (var again = vm.DirtyTracker!.Harvest())
                Assert.That(again.Count, Is.EqualTo(0), "each page is reported once");

            data.Write(Data + 0x7010, 42); // a host write through the slot API is reported too
            cpu.X86.Rip = TestGuest.CodeAddress;
            Assert.That(cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
            using var third = vm.DirtyTracker!.Harvest();
            Assert.That(third.PagesOf(data).ToArray(), Is.EqualTo(new ulong[] { 1, 5, 7, 9 }), "stored to again, and the host's write; page 3 read again, still not reported");
            AssertOnlyCpuStructuresOrCode(third, ram);
        }
    }

    /// <summary>
    /// The RAM slot's reported pages are ones the CPU writes by itself — page tables, GDT, TSS, IDT
    /// and kernel stack, all below <see cref="X86LongMode.ReservedBytes"/> — or the code page the host
    /// wrote and the guest fetched from; never, say, the guest stack, which this guest does not use.
    /// </summary>
    private static void AssertOnlyCpuStructuresOrCode(DirtyPageList dirty, MemorySlot ram)
    {
        var pages = dirty.PagesOf(ram).ToArray();
        ulong codePage = TestGuest.CodeAddress / (ulong)VirtualMachine.PageSize;
        Assert.That(pages, Has.All.Matches<ulong>(p => p * (ulong)VirtualMachine.PageSize < X86LongMode.ReservedBytes || p == codePage),
            $"RAM pages reported: {string.Join(", ", pages.Select(p => $"0x{p * (ulong)VirtualMachine.PageSize:X}"))}");
    }

    /// <summary>
    /// The user's <see cref="DirtyPageTracker.Harvest"/> and the snapshot baseline are independent
    /// consumers: harvesting between a snapshot and a restore takes nothing from the restore (memory
    /// comes back byte-exact), and a snapshot or a restore takes nothing from the user's harvest
    /// (which also reports the pages the restore copied back: host writes).
    /// </summary>
    [Test]
    public void UsersHarvest_AndSnapshotRestore_EachSeeEveryWrite()
    {
        var (vm, data, cpu) = Create(a =>
        {
            a.mov(rbx, Data);
            a.mov(__qword_ptr[rbx + 0x1000], rax);    // page 1
            a.mov(__qword_ptr[rbx + 0x5008], rax);    // page 5
            a.hlt();
        });
        using (vm)
        {
            var tracker = vm.DirtyTracker!;
            cpu.X86.Rax = 0xAAAA;
            Assert.That(cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
            var snap = vm.CreateSnapshot();            // collects what KVM reports, for both consumers
            using (var before = tracker.Harvest())
                Assert.That(before.PagesOf(data).ToArray(), Is.EqualTo(new ulong[] { 1, 5 }), "the guest's writes before the snapshot: CreateSnapshot did not consume them");
            var memory = vm.MemorySlots.Select(s => s.Span.ToArray()).ToArray();

            for (int round = 0; round < 2; round++)
            {
                cpu.X86.Rip = TestGuest.CodeAddress;
                cpu.X86.Rax = 0xBBBB + (ulong)round;
                Assert.That(cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
                data.Write(Data + 0x7010, 42UL);       // a host write through the slot API
                Assert.That(data.Read<ulong>(Data + 0x1000), Is.EqualTo(0xBBBB + (ulong)round), "KVM ran the guest's store");
                if (round == 0)
                {
                    // The user reads the dirty pages between snapshot and restore (a fuzzer's coverage, a migration pass).
                    using var mine = tracker.Harvest();
                    Assert.That(mine.PagesOf(data).ToArray(), Is.EqualTo(new ulong[] { 1, 5, 7 }));
                }
                vm.Restore(snap);
                Assert.That(vm.MemorySlots.Select((s, i) => s.Span.SequenceEqual(memory[i])), Is.All.True,
                    $"round {round}: byte-exact memory after restore{(round == 0 ? ", although the user harvested in between" : "")}");
                using var after = tracker.Harvest();
                Assert.That(after.PagesOf(data).ToArray(), Is.EqualTo(new ulong[] { 1, 5, 7 }),
                    round == 0 ? "the pages the restore copied back (host writes), although the user had harvested the guest's"
                               : "the guest's and the host's writes, although the restore harvested them too");
                AssertOnlyCpuStructuresOrCode(after, vm.FindSlot(0)!);
            }
            using (var none = tracker.Harvest())
                Assert.That(none.PagesOf(data).Length, Is.EqualTo(0), "each page once per consumer");
        }
    }

    [Test]
    public void ManyPages_AreAllReported_EvenPastAFullDirtyRing()
    {
        const int pages = 300; // more than a 256-entry ring holds
        var (vm, data, cpu) = Create(a =>
        {
            var loop = a.CreateLabel();
            a.mov(rbx, Data);
            a.mov(ecx, pages);
            a.Label(ref loop);
            a.mov(__byte_ptr[rbx], 1);
            a.add(rbx, 0x1000);
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
        }, ringEntries: 256);
        using (vm)
        {
            Assert.That(cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
            using var dirty = vm.DirtyTracker!.Harvest();
            Assert.That(dirty.PagesOf(data).ToArray(), Is.EqualTo(Enumerable.Range(0, pages).Select(i => (ulong)i).ToArray()));
        }
    }
}

public class SnapshotTests : KvmTestBase
{
    private const ulong Data = 0x400000;

    /// <summary>Each run: writes rax to data[rdi*8] for rdi in 0..rcx, mutates registers, reports via port 0x70.</summary>
    private TestGuest Mutator()
    {
        var g = TestGuest.LongMode(Kvm, a =>
        {
            var top = a.CreateLabel();
            var loop = a.CreateLabel();
            a.Label(ref top);
            a.mov(rbx, Data);
            a.xor(edi, edi);
            a.Label(ref loop);
            a.mov(__qword_ptr[rbx + rdi * 8], rax);
            a.add(rdi, 512);                          // one qword per page
            a.dec(rcx);
            a.jnz(loop);
            a.imul(rax, rax, 7);
            a.add(rax, 3);
            a.mov(rcx, rsi);
            a.mov(dx, 0x70);
            a.@out(dx, eax);
            a.jmp(top);
        });
        g.Vm.AddMemorySlot(Data, 0x400000);
        g.Cpu.X86.Rax = 1;
        g.Cpu.X86.Rcx = 4;
        g.Cpu.X86.Rsi = 4;
        return g;
    }

    [Test]
    public void Restore_BringsBackByteExactMemoryAndIdenticalRegisters()
    {
        using var g = Mutator();
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Io));
        var snap = g.Vm.CreateSnapshot();
        var memory = g.Vm.MemorySlots.Select(s => s.Span.ToArray()).ToArray();
        var regs = g.Cpu.Registers.SaveState();
        var outputs = new List<uint>();
        for (int i = 0; i < 3; i++) outputs.Add(g.Cpu.Run().Io.Value);
        g.Ram.Write(0x30000, 0xFFFFUL); // a host write
        Assert.That(SameMemory(g.Vm, memory), Is.False, "the guest changed memory");

        g.Vm.Restore(snap);
        Assert.That(SameMemory(g.Vm, memory), Is.True, "byte-exact memory");
        Assert.That(g.Cpu.Registers.SaveState().ContentEquals(regs), Is.True, "identical registers");
        var again = new List<uint>();
        for (int i = 0; i < 3; i++) again.Add(g.Cpu.Run().Io.Value);
        Assert.That(again, Is.EqualTo(outputs), "the guest repeats itself");
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(100)]
    public void RestoreAfterNDirtyPages_CopiesThoseAndMatches(int pagesPerRun)
    {
        using var g = Mutator();
        g.Cpu.X86.Rcx = (ulong)Math.Max(pagesPerRun, 1);
        g.Cpu.X86.Rsi = (ulong)Math.Max(pagesPerRun, 1);
        var snap = g.Vm.CreateSnapshot();
        var memory = g.Vm.MemorySlots.Select(s => s.Span.ToArray()).ToArray();
        if (pagesPerRun > 0) Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Io));
        using (var peek = g.Vm.DirtyTracker!.Harvest()) // the user's harvest: takes nothing from Restore
        {
            // The guest's stores go to the data slot only; the CPU itself writes RAM (page tables,
            // descriptor tables: below X86LongMode.ReservedBytes) and KVM may report the code page
            // the host wrote on the guest's first fetch from it.
            Assert.That(peek.PagesOf(g.Vm.FindSlot(Data)!).Length, Is.EqualTo(pagesPerRun), "the guest dirtied exactly that many data pages");
            Assert.That(peek.Addresses().Where(a => a < Data),
                Has.All.Matches<ulong>(a => a < X86LongMode.ReservedBytes || a == TestGuest.CodeAddress), "RAM: only what the CPU writes, or the code page");
        }
        g.Vm.Restore(snap);
        Assert.That(SameMemory(g.Vm, memory), Is.True);
    }

    // NUnit compares large arrays element by element (slowly); a span compare is a memcmp.
    private static bool SameMemory(VirtualMachine vm, byte[][] memory)
    {
        var slots = vm.MemorySlots;
        return slots.Count == memory.Length && slots.Select((s, i) => s.Span.SequenceEqual(memory[i])).All(x => x);
    }

    [Test]
    public void AThousandRestoreCycles_LeakNothing()
    {
        var kernel = new RecordingKernel();
        using var kvm = Kvm.Open(kernel, Kvm.DefaultDevicePath, KvmArchitecture.X86_64);
        using var g = TestGuest.LongMode(kvm, a =>
        {
            a.mov(rbx, 0x20000UL);
            a.inc(__qword_ptr[rbx]);
            a.mov(dx, 0x70);
            a.@out(dx, al);
            a.hlt();
        });
        var snap = g.Vm.CreateSnapshot();
        int fds = kernel.LiveFds, maps = kernel.LiveMappings;
        for (int i = 0; i < 200; i++) Cycle();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++) Cycle();
        long perCycle = (GC.GetAllocatedBytesForCurrentThread() - before) / 1000;
        Assert.That((kernel.LiveFds, kernel.LiveMappings), Is.EqualTo((fds, maps)));
        Assert.That(g.Ram.Read<ulong>(0x20000), Is.EqualTo(0UL), "the counter is restored every time");
        Assert.That(perCycle, Is.EqualTo(0), "a repeated restore allocates nothing (pooled page lists, cached slot matching)");

        void Cycle()
        {
            // Plain checks: NUnit's Assert.That allocates, which would hide what Restore allocates.
            if (g.Cpu.Run().Reason != VcpuExitReason.Io || g.Cpu.Run().Reason != VcpuExitReason.Hlt) Assert.Fail("unexpected exit");
            g.Vm.Restore(snap);
        }
    }

    [Test]
    public void SaveAndLoad_RoundTrips_AndRejectsTruncatedOrCorruptedData()
    {
        using var g = Mutator();
        g.Cpu.Run();
        var snap = g.Vm.CreateSnapshot();
        using var ms = new MemoryStream();
        snap.Save(ms);
        var bytes = ms.ToArray();
        var loaded = VmSnapshot.Load(new MemoryStream(bytes));
        Assert.That(loaded.GetRegisters(0).ContentEquals(snap.GetRegisters(0)), Is.True);
        Assert.That(loaded.GetMemory(Data, 64).ToArray(), Is.EqualTo(snap.GetMemory(Data, 64).ToArray()));
        Assert.That(loaded.MemoryBytes, Is.EqualTo(snap.MemoryBytes));

        // A loaded snapshot restores into a fresh VM of the same shape: the first restore copies everything.
        using var g2 = Mutator();
        g2.Vm.Restore(loaded);
        Assert.That(SameMemory(g2.Vm, [.. g.Vm.MemorySlots.Select(s => s.Span.ToArray())]), Is.True);
        using (var all = g2.Vm.DirtyTracker!.Harvest())
            Assert.That(all.Count, Is.EqualTo(g2.Vm.MemorySlots.Sum(s => (long)(s.Size / (ulong)VirtualMachine.PageSize))),
                "a restore that copied all memory reports every page to the user's harvest (host writes)");
        Assert.That(g2.Cpu.Run().Io.Value, Is.EqualTo(g.Cpu.Run().Io.Value));

        var truncated = Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(new MemoryStream(bytes[..(bytes.Length / 2)])));
        Assert.That(truncated!.Message, Does.Contain("truncated"));
        var corrupt = (byte[])bytes.Clone();
        corrupt[bytes.Length / 3] ^= 0x40;
        var bad = Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(new MemoryStream(corrupt)));
        Assert.That(bad!.Message, Does.Contain("checksum mismatch").Or.Contain("corrupted"));
        var notSnap = Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(new MemoryStream("hello world, not a snapshot"u8.ToArray())));
        Assert.That(notSnap!.Message, Does.Contain("Not a KvmSharp snapshot"));
    }

    [Test]
    public void Load_OnHostileInput_FailsCleanly_AndNeverAllocatesWhatIsOnlyClaimed([Values] bool seekable)
    {
        using var g = Mutator();
        g.Cpu.Run();
        var snap = g.Vm.CreateSnapshot();
        using var ms = new MemoryStream();
        snap.Save(ms);
        var bytes = ms.ToArray();
        Stream Open(byte[] b) => seekable ? new MemoryStream(b) : new NonSeekable(new MemoryStream(b));
        var random = new Random(seekable ? 5 : 6);

        // Truncated: every prefix of the first 4 KiB (header, registers) and 40 random ones (each
        // hashes up to the whole 2 MiB image, which the lab's emulated CPU does slowly).
        var prefixes = Enumerable.Range(0, 4096).Concat(Enumerable.Range(0, 40).Select(_ => random.Next(bytes.Length)));
        foreach (int length in prefixes)
            Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(Open(bytes[..length])), $"truncated to {length} bytes");
        // Bit flips anywhere: the checksum (or an earlier check) catches every one.
        for (int i = 0; i < 60; i++)
        {
            var flipped = (byte[])bytes.Clone();
            int at = random.Next(flipped.Length);
            flipped[at] ^= (byte)(1 << random.Next(8));
            Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(Open(flipped)), $"bit flipped at {at}");
        }
        // Huge lengths in a short stream: refused without allocating what they claim.
        foreach (var (hostile, what) in new[]
        {
            (HostileSnapshot(slotSize: (ulong)Array.MaxLength), "a slot of Array.MaxLength bytes"),
            (HostileSnapshot(slotSize: 0x1_0000_0000), "a slot of 4 GiB (2048 chunk records)"),
            (HostileSnapshot(slotSize: 1UL << 45), "a slot of 32 TiB (16 Mi chunk records)"),
            (HostileSnapshot(slotSize: 1UL << 60), "a slot of 1 EiB"),
            (HostileSnapshot(slotSize: 0x200000, storedChunk: true), "a stored 2 MiB chunk"),
            (HostileSnapshot(setLength: 1 << 20), "a 1 MiB register set"),
            (HostileSnapshot(vcpus: 4096, slots: 65536), "4096 vCPUs and 65536 slots"),
        })
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            var ex = Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(Open(hostile)), what);
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.That(allocated, Is.LessThan(4 << 20), $"{what}: allocated {allocated} bytes ({ex!.Message})");
            Assert.That(ex.Message, Does.Contain("truncated").Or.Contain("too large"), what);
        }
        var kind = Assert.Throws<InvalidDataException>(() => VmSnapshot.Load(Open(HostileSnapshot(slotSize: 0x1000, chunkKind: 7))));
        Assert.That(kind!.Message, Does.Contain("unknown kind 7"));
    }

    /// <summary>
    /// A snapshot header (x86_64) followed by one record that claims far more than the 64 bytes after
    /// it (which, after a slot header, read as chunk records of kind 0: all zeros, nothing stored).
    /// </summary>
    private static byte[] HostileSnapshot(ulong slotSize = 0, uint setLength = 0, uint vcpus = 0, uint slots = 0, bool storedChunk = false, byte chunkKind = 0)
    {
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms);
        w.Write("KVMSNAP\0"u8);
        w.Write((uint)VmSnapshot.FormatVersion);
        w.Write((uint)KvmArchitecture.X86_64);
        if (setLength != 0)
        {
            w.Write(1u); w.Write(0u);               // one vCPU, no slots
            w.Write(0u); w.Write(1u);               // vCPU 0, one set
            w.Write(1UL); w.Write(setLength);       // set key 1, claimed length
        }
        else if (slotSize != 0)
        {
            w.Write(0u); w.Write(1u);               // no vCPUs, one slot
            w.Write(0u); w.Write(0u); w.Write(0UL); w.Write(slotSize);
            if (storedChunk) w.Write((byte)1);      // chunk 0 stored: 2 MiB should follow
            else if (chunkKind != 0) w.Write(chunkKind);
        }
        else
        {
            w.Write(vcpus); w.Write(slots);
        }
        w.Write(new byte[64]);
        return ms.ToArray();
    }

    /// <summary>A stream that hides its length, as a pipe or a network stream would.</summary>
    private sealed class NonSeekable(Stream inner) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    [Test]
    public void Restore_RefusesAMismatchedVm_NamingTheDifference()
    {
        using var g = Mutator();
        var snap = g.Vm.CreateSnapshot();
        using var other = TestGuest.LongMode(Kvm, a => a.hlt());
        var ex = Assert.Throws<ArgumentException>(() => other.Vm.Restore(snap));
        Assert.That(ex!.Message, Does.Contain("slot 1"));
    }
}
