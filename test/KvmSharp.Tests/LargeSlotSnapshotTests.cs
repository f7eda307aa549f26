using KvmSharp.Snapshots;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

/// <summary>
/// Snapshots of a memory slot of more than 2 GiB (past what one array or span holds), which the
/// guest writes near its start, near 1 GiB and in its last page. The test process never touches the
/// slot's untouched memory: it only reads it (the kernel's shared zero page), and the snapshot does
/// not store chunks that are all zeros — asserted on the process's resident memory.
/// </summary>
public class LargeSlotSnapshotTests : KvmTestBase
{
    private const ulong Big = 0x4000_0000;                 // the big slot starts at 1 GiB
    private const ulong BigSize = 0x8000_3000;             // 2 GiB + 3 pages: a short last 2 MiB chunk
    private const ulong NearStart = Big + 0x10;
    private const ulong NearOneGiB = Big + 0x4000_0008;
    private const ulong LastQword = Big + BigSize - 8;
    private const ulong Untouched = Big + 0x6000_0000;     // 1.5 GiB in: zeros in the snapshot
    private const ulong PageDirectories = 0x100000;        // in the RAM slot, above code, data and stack
    private const ulong A = 0x1111_2222_3333_4444, B = 0x5555_6666_7777_8888, C = 0x9999_AAAA_BBBB_CCCC;

    /// <summary>A long-mode guest that stores RAX at the three addresses and halts; the big slot is identity-mapped too.</summary>
    private TestGuest Create()
    {
        var g = TestGuest.LongMode(Kvm, a =>
        {
            foreach (ulong address in new[] { NearStart, NearOneGiB, LastQword })
            {
                a.mov(rbx, address);
                a.mov(__qword_ptr[rbx], rax);
            }
            a.hlt();
        });
        try
        {
            g.Vm.AddMemorySlot(Big, BigSize);
            // X86LongMode maps the first GiB; map GiBs 1..3 with 2 MiB pages (Accessed/Dirty preset).
            const ulong P = 1, W = 2, U = 4, Accessed = 0x20, Dirty = 0x40, Large = 0x80;
            ulong pdpt = g.Ram.Read<ulong>(g.Cpu.X86.Cr3) & ~0xFFFUL;
            for (ulong gib = 1; gib <= 3; gib++)
            {
                ulong pd = PageDirectories + (gib - 1) * 0x1000;
                g.Ram.Write(pdpt + gib * 8, pd | P | W | U | Accessed);
                for (ulong i = 0; i < 512; i++)
                    g.Ram.Write(pd + i * 8, ((gib << 30) + (i << 21)) | P | W | U | Accessed | Dirty | Large);
            }
            return g;
        }
        catch
        {
            g.Dispose();
            throw;
        }
    }

    private static void RunStores(TestGuest g, ulong value)
    {
        g.Cpu.X86.Rip = TestGuest.CodeAddress;
        g.Cpu.X86.Rax = value;
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
    }

    [Test]
    public void SlotOver2GiB_SnapshotsRestoresSavesAndLoads_ByteExact()
    {
        long residentBefore = Environment.WorkingSet;
        using var g = Create();
        var big = g.Vm.FindSlot(Big)!;
        RunStores(g, A);
        Assert.That(NonZeroQwords(big), Is.EqualTo(Expected(A)), "KVM ran the guest's stores across the slot");

        var snap = g.Vm.CreateSnapshot();
        var ram = g.Ram.Span.ToArray();
        Assert.That(snap.MemoryBytes, Is.EqualTo((long)(TestGuest.RamSize + BigSize)));
        foreach (ulong address in new[] { NearStart, NearOneGiB, LastQword })
            Assert.That(BitConverter.ToUInt64(snap.GetMemory(address, 8)), Is.EqualTo(A), $"captured at 0x{address:X}");
        Assert.That(snap.GetMemory(Untouched, 0x1000).ContainsAnyExcept((byte)0), Is.False);
        Assert.That(snap.GetMemory(Big + 0x1F_FFF0, 0x20).ToArray(), Is.All.EqualTo(0), "a range across two chunks");

        // The guest stores another value; the host writes into a chunk that was all zeros and into a
        // page beside a stored one.
        RunStores(g, B);
        big.Write(Untouched, 0xDEADUL);
        big.Write(NearStart + 0x1000, 0xBEEFUL);
        Assert.That(big.Read<ulong>(LastQword), Is.EqualTo(B), "KVM ran the guest's second stores");

        g.Vm.Restore(snap); // incremental: the dirty pages only
        Assert.That(NonZeroQwords(big), Is.EqualTo(Expected(A)), "restored: exactly the snapshot's bytes");
        Assert.That(g.Ram.Span.SequenceEqual(ram), Is.True, "the RAM slot too");

        using var stream = new MemoryStream();
        snap.Save(stream);
        Assert.That(stream.Length, Is.LessThan(16L << 20), "saved sparse: only the 2 MiB chunks that were not all zeros");
        stream.Position = 0;
        var loaded = VmSnapshot.Load(stream);
        Assert.That(loaded.MemoryBytes, Is.EqualTo(snap.MemoryBytes));

        using var fresh = Create();
        var big2 = fresh.Vm.FindSlot(Big)!;
        big2.Write(Untouched, 0xDEADUL);        // memory the restore must zero (a chunk it holds nothing for)
        big2.Write(Big + 0x2000, 0xF00DUL);     // and a page of a chunk it holds
        fresh.Vm.Restore(loaded);               // the first restore here: all memory
        Assert.That(NonZeroQwords(big2), Is.EqualTo(Expected(A)), "restored into a fresh VM: exactly the snapshot's bytes");
        Assert.That(fresh.Ram.Span.SequenceEqual(ram), Is.True, "the fresh VM's RAM slot too");
        RunStores(fresh, C);                    // KVM runs on the restored page tables and memory
        Assert.That(NonZeroQwords(big2), Is.EqualTo(Expected(C)));

        long grown = Environment.WorkingSet - residentBefore;
        Assert.That(grown, Is.LessThan(512L << 20), "the test never made the 2 GiB slots resident");
    }

    private static (ulong, ulong)[] Expected(ulong value) => [(NearStart, value), (NearOneGiB, value), (LastQword, value)];

    /// <summary>
    /// Every non-zero aligned qword of <paramref name="slot"/> and its value (at most a few dozen),
    /// found by scanning the whole slot: what it holds, checked without the snapshot code under test.
    /// </summary>
    private static List<(ulong Address, ulong Value)> NonZeroQwords(MemorySlot slot)
    {
        const int Piece = 1 << 24;
        var found = new List<(ulong, ulong)>();
        for (ulong offset = 0; offset < slot.Size; offset += Piece)
        {
            var span = slot.GetSpan(offset, (int)Math.Min(Piece, slot.Size - offset));
            for (int at = 0; found.Count < 32;)
            {
                int i = span.Slice(at).IndexOfAnyExcept((byte)0);
                if (i < 0) break;
                int q = (at + i) & ~7;
                found.Add((slot.GuestPhysicalAddress + offset + (ulong)q, BitConverter.ToUInt64(span.Slice(q, 8))));
                at = q + 8;
            }
        }
        return found;
    }
}
