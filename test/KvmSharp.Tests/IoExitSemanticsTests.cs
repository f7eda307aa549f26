using Iced.Intel;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

/// <summary>
/// x86 port I/O exits as stock KVM has them: RIP still points at the IN/OUT when the exit reaches
/// user space, and the next KVM_RUN completes the instruction (stores an IN's data, advances RIP)
/// unless RIP was changed. What a handler reads there, what writing RAX or RIP does, string I/O,
/// snapshots taken at an I/O exit, and KVM's port 0x7E quirk. CPL0 long-mode guests.
/// </summary>
public class IoExitSemanticsTests : KvmTestBase
{
    /// <summary>Where RIP points at an OUT exit: at the OUT on stock KVM; past it on kvm-pvm, whose CPL0 emulator finishes an OUT before the exit (KVM-LAB.md).</summary>
    private static ulong OutExitRip(TestGuest g, Label outInstruction, Label next) =>
        g.AddressOf(IsKvmPvm ? next : outInstruction);

    /// <summary>Runs to the next exit, which must be port I/O on <paramref name="port"/> in <paramref name="direction"/>.</summary>
    private static IoExit NextIo(TestGuest g, ushort port, IoDirection direction)
    {
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io), exit.ToString());
        var io = exit.Io;
        Assert.That((io.Port, io.Direction), Is.EqualTo((port, direction)), "the I/O exit expected next");
        return io;
    }

    private static void RunToHlt(TestGuest g)
    {
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Hlt), exit.ToString());
    }

    [Test]
    public void Out_RipPointsAtTheInstruction_AndTheNextRunStepsOverIt_Once()
    {
        Label out1 = default, after1 = default, out2 = default, hlt = default;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(eax, 0x5A);
            out1 = TestGuest.Here(a);
            a.@out(0x10, al);          // 2 bytes
            after1 = TestGuest.Here(a);
            a.inc(ebx);
            a.mov(dx, 0x11);
            out2 = TestGuest.Here(a);
            a.@out(dx, eax);           // 1 byte
            hlt = TestGuest.Here(a);
            a.hlt();
        });
        var io = NextIo(g, 0x10, IoDirection.Out);
        Assert.That((io.Size, io.Value), Is.EqualTo((1, 0x5Au)));
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(OutExitRip(g, out1, after1)), "RIP at an OUT exit");

        io = NextIo(g, 0x11, IoDirection.Out);
        Assert.That((io.Size, io.Value), Is.EqualTo((4, 0x5Au)));
        Assert.That(g.Cpu.X86.Rbx, Is.EqualTo(1UL), "the instruction after the first OUT ran exactly once: KVM stepped over the OUT once");
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(OutExitRip(g, out2, hlt)));

        RunToHlt(g);
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(g.AddressOf(hlt) + 1), "a HLT exit's RIP is past the hlt");
    }

    [Test]
    public void In_RipPointsAtTheInstruction_AndTheNextRunPutsTheDataIntoAlAxEax()
    {
        Label in8 = default, in16 = default, in32 = default;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rax, 0x1111_1111_1111_1111UL);
            in8 = TestGuest.Here(a);
            a.@in(al, 0x20);
            a.mov(rbx, rax);
            a.mov(dx, 0x21);
            in16 = TestGuest.Here(a);
            a.@in(ax, dx);
            a.mov(rcx, rax);
            in32 = TestGuest.Here(a);
            a.@in(eax, dx);
            a.hlt();
        });
        var x86 = g.Cpu.X86;
        var io = NextIo(g, 0x20, IoDirection.In);
        Assert.That(io.Size, Is.EqualTo(1));
        Assert.That(x86.Rip, Is.EqualTo(g.AddressOf(in8)), "RIP at the IN");
        Assert.That(x86.Rax, Is.EqualTo(0x1111_1111_1111_1111UL), "RAX is untouched until the next run completes the IN");
        io.SetValue(0xAB);

        io = NextIo(g, 0x21, IoDirection.In);
        Assert.That(io.Size, Is.EqualTo(2));
        Assert.That(x86.Rip, Is.EqualTo(g.AddressOf(in16)));
        Assert.That(x86.Rbx, Is.EqualTo(0x1111_1111_1111_11ABUL), "IN AL replaced the low byte only");
        io.SetValue(0xCDEF);

        io = NextIo(g, 0x21, IoDirection.In);
        Assert.That(io.Size, Is.EqualTo(4));
        Assert.That(x86.Rip, Is.EqualTo(g.AddressOf(in32)));
        Assert.That(x86.Rcx, Is.EqualTo(0x1111_1111_1111_CDEFUL), "IN AX replaced the low word only");
        io.SetValue(0x89AB_CDEF);

        RunToHlt(g);
        Assert.That(x86.Rax, Is.EqualTo(0x89AB_CDEFUL), "IN EAX zero-extends into RAX");
    }

    [Test]
    public void In_WritingRegisters_StoresTheDataFirst_SoAWrittenRaxReplacesWhatTheInLoaded()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rax, 0x1111_1111_1111_1111UL);
            a.@in(al, 0x20);
            a.mov(rsi, rax);           // what the guest has after the first IN
            a.@in(al, 0x20);
            a.mov(rdi, rax);           // ... and after the second
            a.hlt();
        });
        var x86 = g.Cpu.X86;
        NextIo(g, 0x20, IoDirection.In).SetValue(0x5A);
        x86.Rbx = 7;                    // another register: the IN still gets its data
        NextIo(g, 0x20, IoDirection.In).SetValue(0x6B);
        x86.Rax = 0x2222_2222_2222_2222; // RAX itself: the write comes after the IN, so it wins
        RunToHlt(g);
        Assert.That(x86.Rsi, Is.EqualTo(0x1111_1111_1111_115AUL), "the first IN's data reached AL");
        Assert.That(x86.Rbx, Is.EqualTo(7UL));
        Assert.That(x86.Rdi, Is.EqualTo(0x2222_2222_2222_2222UL), "the RAX written at the second IN's exit");
    }

    public enum RipWrite
    {
        /// <summary>RIP = the instruction after the I/O instruction: skip only the I/O instruction itself.</summary>
        PastTheInstruction,
        /// <summary>RIP = somewhere further on: the guest jumps there.</summary>
        Elsewhere,
        /// <summary>RIP = the I/O instruction itself: it runs again.</summary>
        TheInstructionItself,
    }

    [Test]
    public void Out_WritingRip_ResumesTheGuestExactlyThere([Values] RipWrite write)
    {
        Label outAt = default, next = default, second = default;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(eax, 0x77);
            outAt = TestGuest.Here(a);
            a.@out(0x10, al);
            next = TestGuest.Here(a);
            a.inc(ebx);
            second = TestGuest.Here(a);
            a.@out(0x11, al);
            a.inc(ecx);
            a.hlt();
        });
        var x86 = g.Cpu.X86;
        NextIo(g, 0x10, IoDirection.Out);
        x86.Rip = g.AddressOf(write switch
        {
            RipWrite.PastTheInstruction => next,
            RipWrite.Elsewhere => second,
            _ => outAt,
        });
        if (write == RipWrite.TheInstructionItself)
        {
            Assert.That(NextIo(g, 0x10, IoDirection.Out).Value, Is.EqualTo(0x77u), "the OUT ran again");
            Assert.That(x86.Rip, Is.EqualTo(OutExitRip(g, outAt, next)));
        }
        NextIo(g, 0x11, IoDirection.Out);
        Assert.That(x86.Rbx, Is.EqualTo(write == RipWrite.Elsewhere ? 0UL : 1UL),
            "the instruction after the OUT ran once (resumed there, nothing skipped twice) or not at all (jumped over)");
        RunToHlt(g);
        Assert.That(x86.Rcx, Is.EqualTo(1UL));
    }

    [Test]
    public void In_WritingRip_StoresTheData_ThenResumesTheGuestExactlyThere([Values] RipWrite write)
    {
        Label inAt = default, next = default, end = default;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            inAt = TestGuest.Here(a);
            a.@in(al, 0x20);
            next = TestGuest.Here(a);
            a.mov(bl, al);
            a.inc(ecx);
            end = TestGuest.Here(a);
            a.hlt();
        });
        var x86 = g.Cpu.X86;
        var io = NextIo(g, 0x20, IoDirection.In);
        Assert.That(x86.Rip, Is.EqualTo(g.AddressOf(inAt)));
        io.SetValue(0x42);
        x86.Rip = g.AddressOf(write switch
        {
            RipWrite.PastTheInstruction => next,
            RipWrite.Elsewhere => end,
            _ => inAt,
        });
        if (write == RipWrite.TheInstructionItself)
        {
            io = NextIo(g, 0x20, IoDirection.In);
            Assert.That(x86.Rip, Is.EqualTo(g.AddressOf(inAt)), "the IN runs again");
            Assert.That(x86.Rax & 0xFF, Is.EqualTo(0x42UL), "the first IN completed before RIP moved back");
            io.SetValue(0x43);
        }
        RunToHlt(g);
        Assert.That(x86.Rax & 0xFF, Is.EqualTo(write == RipWrite.TheInstructionItself ? 0x43UL : 0x42UL), "the IN's data is in AL whatever RIP was set to");
        Assert.That((x86.Rbx, x86.Rcx), Is.EqualTo(write == RipWrite.Elsewhere ? (0UL, 0UL) : (x86.Rax & 0xFF, 1UL)),
            "the instructions after the IN ran once, or not at all when the guest was sent past them");
    }

    [Test]
    public void StringIo_RipStaysAtRepOutsbAndRepInsb_UntilTheyAreDone()
    {
        byte[] message = "abc"u8.ToArray();
        Label outs = default, ins = default, hlt = default;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rsi, TestGuest.DataAddress);
            a.mov(ecx, message.Length);
            a.mov(dx, 0xE9);
            outs = TestGuest.Here(a);
            a.rep.outsb();
            a.mov(rdi, TestGuest.DataAddress + 0x100);
            a.mov(ecx, message.Length);
            ins = TestGuest.Here(a);
            a.rep.insb();
            hlt = TestGuest.Here(a);
            a.hlt();
        });
        g.Ram.Write(TestGuest.DataAddress, message);
        var x86 = g.Cpu.X86;
        for (int i = 0; i < message.Length; i++)
        {
            // KVM's emulator hands rep outs over an item at a time; the item is done at its exit (RSI
            // and RCX have moved on) and the instruction repeats from its own address.
            var io = NextIo(g, 0xE9, IoDirection.Out);
            Assert.That((io.Count, io.Value), Is.EqualTo((1, (uint)message[i])));
            Assert.That(x86.Rip, Is.EqualTo(g.AddressOf(outs)), $"RIP at rep outsb, item {i}");
            Assert.That(x86.Rcx, Is.EqualTo((ulong)(message.Length - i - 1)), $"items left after item {i}");
        }
        int filled = 0;
        VcpuExit exit;
        while ((exit = g.Cpu.Run()).Reason == VcpuExitReason.Io)
        {
            var io = exit.Io;
            Assert.That((io.Port, io.Direction), Is.EqualTo(((ushort)0xE9, IoDirection.In)));
            Assert.That(x86.Rip, Is.EqualTo(g.AddressOf(ins)), "RIP at rep insb until its items are stored");
            for (int k = 0; k < io.Count; k++) io.Data[k] = (byte)('X' + filled++);
        }
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Hlt), exit.ToString());
        Assert.That(x86.Rip, Is.EqualTo(g.AddressOf(hlt) + 1));
        Assert.That(filled, Is.EqualTo(message.Length));
        Assert.That(g.Ram.GetSpan(TestGuest.DataAddress + 0x100, 3).ToArray(), Is.EqualTo("XYZ"u8.ToArray()));
    }

    /// <summary>
    /// loop: in eax, 0x20 ; rbx = (rbx + rax) * 3 ; [data] = rbx ; out 0x21, eax (= ebx) ; jmp loop.
    /// The host answers the n-th IN with <c>Answer(n)</c>.
    /// </summary>
    private TestGuest Echo(out Label inAt, out Label outAt, out Label afterOut)
    {
        Label i = default, o = default, after = default;
        var g = TestGuest.LongMode(Kvm, a =>
        {
            i = TestGuest.Here(a);
            a.@in(eax, 0x20);
            a.add(rbx, rax);
            a.imul(rbx, rbx, 3);
            a.mov(__qword_ptr[TestGuest.DataAddress], rbx);
            a.mov(eax, ebx);
            o = TestGuest.Here(a);
            a.@out(0x21, eax);
            after = TestGuest.Here(a);
            a.jmp(i);
        });
        (inAt, outAt, afterOut) = (i, o, after);
        return g;
    }

    private static uint Answer(int n) => (uint)(n * 7 + 1);

    /// <summary>Runs <paramref name="exits"/> exits, answering INs from <paramref name="n"/> on; returns each exit as (port, RIP, value).</summary>
    private static List<(ushort Port, ulong Rip, uint Value)> Trace(TestGuest g, ref int n, int exits)
    {
        var trace = new List<(ushort, ulong, uint)>();
        for (int k = 0; k < exits; k++)
        {
            var exit = g.Cpu.Run();
            Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io), exit.ToString());
            var io = exit.Io;
            if (!io.IsOut) io.SetValue(Answer(n++));
            trace.Add((io.Port, g.Cpu.X86.Rip, io.Value));
        }
        return trace;
    }

    [Test]
    public void Snapshot_AtAnOutExit_CapturesTheStateAfterTheOut_AndTheGuestContinuesIdentically()
    {
        using var g = Echo(out _, out var outAt, out var afterOut);
        int n = 0;
        Trace(g, ref n, 5);             // in, out, in, out, in
        NextIo(g, 0x21, IoDirection.Out);
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(OutExitRip(g, outAt, afterOut)));
        var snapshot = g.Vm.CreateSnapshot();
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(g.AddressOf(afterOut)), "taking the snapshot completed the OUT");
        int nAtSnapshot = n;
        var first = Trace(g, ref n, 8);
        ulong memoryAfterFirst = g.Ram.Read<ulong>(TestGuest.DataAddress);

        g.Vm.Restore(snapshot);
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(g.AddressOf(afterOut)), "restored to just after the OUT");
        n = nAtSnapshot;
        var second = Trace(g, ref n, 8);
        Assert.That(second, Is.EqualTo(first), "the same exits, RIPs and values after the restore: the OUT was neither repeated nor skipped twice");
        Assert.That(g.Ram.Read<ulong>(TestGuest.DataAddress), Is.EqualTo(memoryAfterFirst));
    }

    [Test]
    public void Snapshot_AtAnInExit_StoresTheDataFirst_AndTheGuestContinuesIdentically()
    {
        using var g = Echo(out var inAt, out _, out _);
        int n = 0;
        Trace(g, ref n, 4);             // in, out, in, out
        var io = NextIo(g, 0x20, IoDirection.In);
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(g.AddressOf(inAt)));
        io.SetValue(Answer(n++));       // fill the data first: the snapshot completes the IN with it
        var snapshot = g.Vm.CreateSnapshot();
        Assert.That(g.Cpu.X86.Rax, Is.EqualTo((ulong)Answer(n - 1)), "taking the snapshot completed the IN with its data");
        int nAtSnapshot = n;
        var first = Trace(g, ref n, 8);

        g.Vm.Restore(snapshot);
        Assert.That(g.Cpu.X86.Rax, Is.EqualTo((ulong)Answer(nAtSnapshot - 1)));
        n = nAtSnapshot;
        var second = Trace(g, ref n, 8);
        Assert.That(second, Is.EqualTo(first), "the same exits, RIPs and values after the restore");
        Assert.That(first[0].Port, Is.EqualTo((ushort)0x21), "the next exit after the snapshot is the OUT: the IN was not repeated");
    }

    /// <summary>KVM_X86_QUIRK_OUT_7E_INC_RIP: <c>out 0x7e</c> gets RIP advanced before the exit.</summary>
    private const ulong QuirkOut7eIncRip = 1 << 3;

    [Test]
    public void Port0x7E_RipIsPastTheOut_WhileKvmsQuirkIsOn_AndTheGuestGoesOnOnce([Values] bool disableQuirk)
    {
        // The quirks a VM may turn off; each is on until the VM does (Linux 6.1 lists this one).
        ulong quirks = (ulong)Kvm.CheckExtension(KvmCapability.DisableQuirks2);
        bool listed = (quirks & QuirkOut7eIncRip) != 0;
        if (!IsKvmPvm) Assert.That(listed, Is.True, $"stock KVM lists the port 0x7E quirk in KVM_CAP_DISABLE_QUIRKS2 (0x{quirks:X})");
        Label outAt = default, next = default;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            outAt = TestGuest.Here(a);
            a.@out(0x7E, al);
            next = TestGuest.Here(a);
            a.inc(ebx);
            a.@out(0x10, al);
            a.hlt();
        });
        if (disableQuirk && listed) g.Vm.EnableCap(KvmCapability.DisableQuirks2, QuirkOut7eIncRip);
        bool quirkOn = listed && !disableQuirk;

        NextIo(g, 0x7E, IoDirection.Out);
        var x86 = g.Cpu.X86;
        Assert.That(x86.Rip, Is.EqualTo(g.AddressOf(quirkOn || IsKvmPvm ? next : outAt)),
            quirkOn ? "the quirk advances RIP before the exit" : "without the quirk port 0x7E is like any other");
        x86.Rip = x86.Rip; // "resume where RIP says": after the OUT with the quirk, the OUT again without it
        if (!quirkOn && !IsKvmPvm) NextIo(g, 0x7E, IoDirection.Out);
        NextIo(g, 0x10, IoDirection.Out);
        Assert.That(x86.Rbx, Is.EqualTo(1UL), "the instruction after the OUT ran exactly once");
        RunToHlt(g);
    }
}
