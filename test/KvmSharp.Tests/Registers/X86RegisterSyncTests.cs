using System.Runtime.InteropServices;
using Iced.Intel;
using KvmSharp.Interop;
using KvmSharp.Registers;
using KvmSharp.Tests.Guests;
using KvmSharp.Tests.Model;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests.Registers;

/// <summary>The x86 strategy on the real /dev/kvm, with every ioctl counted through the seam.</summary>
[TestFixture(true)]
[TestFixture(false)]
public class X86RegisterSyncTests(bool syncRegs) : KvmTestBase
{
    private const ushort Port = 0x500;
    private RecordingKernel _kernel = null!;
    private Kvm _kvm = null!;

    [SetUp]
    public void OpenCountingKvm()
    {
        // Without sync regs the kernel seam hides KVM_CAP_SYNC_REGS, as an old kernel would.
        _kernel = new RecordingKernel
        {
            IoctlHook = (req, arg) => !syncRegs && req == KvmIoctls.KVM_CHECK_EXTENSION && arg == (int)KvmCapability.SyncRegs ? 0 : null,
        };
        _kvm = Kvm.Open(_kernel, Kvm.DefaultDevicePath, KvmArchitecture.X86_64);
    }

    [TearDown]
    public void CloseCountingKvm() => _kvm?.Dispose();

    private TestGuest Guest(Action<Assembler> code)
    {
        var g = TestGuest.LongMode(_kvm, code);
        Assert.That(g.Cpu.X86.UseSyncRegs, Is.EqualTo(syncRegs));
        return g;
    }

    /// <summary>loop: rax = rax * 3 + rbx; out Port, eax; jmp loop</summary>
    private static void Counter(Assembler a)
    {
        var loop = a.CreateLabel();
        a.mov(dx, Port);
        a.Label(ref loop);
        a.imul(rax, rax, 3);
        a.add(rax, rbx);
        a.@out(dx, eax);
        a.jmp(loop);
    }

    [Test]
    public void ADisposedVcpu_RefusesItsRegistersAndExitViews_InsteadOfReadingUnmappedMemory()
    {
        var g = Guest(Counter);
        var x86 = g.Cpu.X86;
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io));
        var io = exit.Io;
        Assert.That(x86.Rax, Is.Zero, "GPRs cached");
        g.Dispose();

        // Ref structs cannot go into lambdas: catch by hand.
        int refused = 0;
        try { _ = exit.Reason; } catch (ObjectDisposedException) { refused++; }
        try { _ = exit.Io; } catch (ObjectDisposedException) { refused++; }
        try { _ = io.Port; } catch (ObjectDisposedException) { refused++; }
        try { _ = io.Data; } catch (ObjectDisposedException) { refused++; }
        Assert.That(refused, Is.EqualTo(4), "the exit view and the I/O view taken before disposal");
        Assert.Throws<ObjectDisposedException>(() => _ = x86.Rax, "a cached register");
        Assert.Throws<ObjectDisposedException>(() => x86.Rip = 0x1000);
        Assert.Throws<ObjectDisposedException>(() => x86.SyncOnExit = X86RegisterSets.Gprs | X86RegisterSets.Sregs, "writes kvm_run");
        Assert.Throws<ObjectDisposedException>(() => x86.Fetch(X86RegisterSets.Xsave));
    }

    [Test]
    public void RegistersWrittenBeforeARun_AreWhatTheGuestSees()
    {
        using var g = Guest(Counter);
        g.Cpu.X86.Rax = 5;
        g.Cpu.X86.Rbx = 2;
        var exit = g.Cpu.Run();
        Assert.That((exit.Reason, exit.Io.Value), Is.EqualTo((VcpuExitReason.Io, 17u)));
    }

    [Test]
    public void WhatTheGuestChanged_IsWhatTheHostReads()
    {
        using var g = Guest(a =>
        {
            a.mov(rcx, 0x1122334455667788);
            a.mov(r15, 0x0F0F);
            a.mov(rax, cr4);
            a.or(rax, 0x80);                    // CR4.PGE
            a.mov(cr4, rax);
            a.hlt();
        });
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(g.Cpu.Registers.GetGeneralRegister(1), Is.EqualTo(0x1122334455667788UL), "RCX is general register 1");
        Assert.That(g.Cpu.X86.R15, Is.EqualTo(0x0F0FUL));
        Assert.That(g.Cpu.X86.Cr4 & 0x80, Is.EqualTo(0x80UL), "a special register the guest changed");
    }

    [Test]
    public void AHotExitThatReadsRipAndWritesRax_IsExactlyOneIoctlWithSyncRegs()
    {
        using var g = Guest(Counter);
        g.Cpu.Run();
        var rips = new HashSet<ulong>();
        for (int i = 0; i < 10; i++)
        {
            _kernel.ResetCounts();
            ulong rip = g.Cpu.X86.Rip;
            rips.Add(rip);
            g.Cpu.X86.Rax = (ulong)i;
            var exit = g.Cpu.Run();
            Assert.That(exit.Io.Value, Is.EqualTo((uint)(i * 3)), "rbx = 0: rax*3");
            var expected = syncRegs
                ? new Dictionary<string, int> { ["KVM_RUN"] = 1 }
                : new Dictionary<string, int> { ["KVM_GET_REGS"] = 1, ["KVM_SET_REGS"] = 1, ["KVM_RUN"] = 1 };
            Assert.That(_kernel.Counts, Is.EquivalentTo(expected));
        }
        Assert.That(rips, Has.Count.EqualTo(1), "every exit is the same OUT instruction");
    }

    [Test]
    public void WritingRipAtAnOutExit_CompletesTheOutFirst_OnlyWhenItIsTheOutsOwnAddress()
    {
        Label loop = default, outAt = default;
        using var g = Guest(a =>
        {
            loop = TestGuest.Here(a);
            a.inc(eax);
            outAt = TestGuest.Here(a);
            a.@out(0x10, eax);
            a.jmp(loop);
        });
        var cpu = g.Cpu;
        Assert.That(cpu.Run().Io.Value, Is.EqualTo(1u));
        bool stock = !IsKvmPvm;
        if (stock) Assert.That(cpu.X86.Rip, Is.EqualTo(g.AddressOf(outAt)), "stock KVM: RIP at the OUT");

        // Another address: KVM sees RIP changed and drops its completion; no extra KVM_RUN.
        _kernel.ResetCounts();
        cpu.X86.Rip = g.AddressOf(loop);
        Assert.That(_kernel.Count(KvmIoctls.KVM_RUN), Is.EqualTo(0));
        Assert.That(cpu.Run().Io.Value, Is.EqualTo(2u), "resumed at the loop: one more inc");
        Assert.That(_kernel.Count(KvmIoctls.KVM_RUN), Is.EqualTo(1));

        // The address RIP already holds: for KVM that is no change, so the cache completes the OUT
        // first (one KVM_RUN with immediate_exit) and the write then holds.
        _kernel.ResetCounts();
        cpu.X86.Rip = cpu.X86.Rip;
        Assert.That(_kernel.Count(KvmIoctls.KVM_RUN), Is.EqualTo(1), "the completing KVM_RUN");
        Assert.That(cpu.X86.Rip, Is.EqualTo(stock ? g.AddressOf(outAt) : g.AddressOf(outAt) + 2));
        Assert.That(cpu.Run().Io.Value, Is.EqualTo(stock ? 2u : 3u), stock ? "the OUT ran again, no inc in between" : "kvm-pvm: RIP was past the OUT already");
        Assert.That(_kernel.Count(KvmIoctls.KVM_RUN), Is.EqualTo(2));
    }

    [Test]
    public void RunTakesItsInlinedPath_ExactlyWhenTheWriteBackNeedsNoIoctl()
    {
        using var g = Guest(Counter);
        var cpu = g.Cpu;
        Assert.That(cpu.CanRunFast, Is.False, "before the first run (signal mask not set yet)");
        cpu.Run();
        Assert.That(cpu.CanRunFast, Is.True, "nothing dirty");
        cpu.X86.Rax = 1;
        Assert.That(cpu.CanRunFast, Is.EqualTo(syncRegs), "dirty GPRs travel in kvm_run only with sync regs");
        cpu.Run();
        Assert.That(cpu.CanRunFast, Is.True);
        cpu.X86.Xcr0 = cpu.X86.Xcr0;
        Assert.That(cpu.CanRunFast, Is.False, "XCR0 needs KVM_SET_XCRS");
        _kernel.ResetCounts();
        cpu.Run();
        Assert.That(_kernel.Count(KvmIoctls.X86.KVM_SET_XCRS), Is.EqualTo(1), "the slow path wrote it back");
        Assert.That(cpu.CanRunFast, Is.True);
        cpu.Hold();
        Assert.That(cpu.CanRunFast, Is.True, "a run loop (VcpuRunner) takes the inlined path too");
        cpu.Unhold();
        Assert.That(cpu.CanRunFast, Is.True);
    }

    [Test]
    public void TheInlineWriteBack_HandsOnlyKvmRunSetsToKvm()
    {
        using var g = Guest(Counter);
        var cpu = g.Cpu;
        cpu.Run();
        cpu.X86.Rax = 7;
        cpu.X86.Xcr0 = cpu.X86.Xcr0; // a set KVM would reject in kvm_dirty_regs
        cpu.X86.FlushInline(cpu.RunAddress);
        Assert.That(cpu.RunDirtyRegs, Is.EqualTo(syncRegs ? (ulong)X86RegisterSets.Gprs : 0UL));
        Assert.That(cpu.X86.DirtySets, Is.EqualTo(syncRegs ? X86RegisterSets.Xcrs : X86RegisterSets.Xcrs | X86RegisterSets.Gprs),
            "what does not travel in kvm_run stays dirty for the ioctl write-back");
        var exit = cpu.Run();
        Assert.That((exit.Reason, exit.Io.Value), Is.EqualTo((VcpuExitReason.Io, 21u)), "RAX reached the guest: 7 * 3");
        Assert.That(cpu.X86.DirtySets, Is.EqualTo(X86RegisterSets.None));
    }

    [Test]
    public void HotExits_AllocateNothing()
    {
        using var g = Guest(Counter);
        var x86 = g.Cpu.X86;
        for (int i = 0; i < 100; i++) Exit(i); // warm up (JIT, first-run setup)
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++) Exit(i);
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.EqualTo(0));

        void Exit(int i)
        {
            _ = x86.Rip;
            x86.Rax = (ulong)i;
            var exit = g.Cpu.Run();
            if (exit.Io.Port != Port) Assert.Fail("unexpected exit");
        }
    }

    [Test]
    public void AFetchAfterAWrite_DoesNotClobberIt()
    {
        using var g = Guest(Counter);
        g.Cpu.Run();
        g.Cpu.X86.Rax = 100;
        g.Cpu.X86.Rbx = 1;
        _ = g.Cpu.X86.Cr0;             // fetches Sregs only
        g.Cpu.Registers.Synchronize(); // fetches everything not cached; GPRs are dirty, so kept
        Assert.That(g.Cpu.X86.Rax, Is.EqualTo(100UL));
        Assert.That(g.Cpu.Run().Io.Value, Is.EqualTo(301u));
    }

    [Test]
    public void ARuntimeFlush_WritesNeitherTscNorResetMsrs_PostResetDoes()
    {
        using var g = Guest(Counter);
        g.Cpu.Run();
        var x86 = g.Cpu.X86;
        Assert.That(x86.ResetMsrIndices, Does.Contain(X86RegisterSync.MsrTsc));
        Assert.That(x86.RuntimeMsrIndices, Does.Contain(0xC0000082u), "LSTAR is a runtime MSR");
        x86.Synchronize();
        var written = new List<uint>();
        _kernel.IoctlHook = (req, arg) =>
        {
            if (req == KvmIoctls.X86.KVM_SET_MSRS) written.AddRange(MsrIndices(arg));
            return null;
        };
        x86.SetMsr(0xC0000082, 0xFFFF_8000_0000_1000);
        g.Cpu.Run();
        Assert.That(written, Is.EqualTo(x86.RuntimeMsrIndices), "the run wrote the runtime MSR set only");

        written.Clear();
        x86.Synchronize();
        x86.PostReset();
        Assert.That(written, Does.Contain(X86RegisterSync.MsrTsc), "PostReset writes the TSC");
        Assert.That(x86.GetMsr(0xC0000082), Is.EqualTo(0xFFFF_8000_0000_1000UL));
    }

    private static unsafe uint[] MsrIndices(nint arg)
    {
        var msrs = (kvm_msrs_view*)arg;
        var result = new uint[msrs->nmsrs];
        for (int i = 0; i < result.Length; i++) result[i] = *(uint*)(arg + 8 + 16 * i);
        return result;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct kvm_msrs_view
    {
        public uint nmsrs;
    }

    [Test]
    public void SaveRunRestore_TheGuestRepeatsItselfExactly()
    {
        using var g = Guest(Counter);
        g.Cpu.X86.Rax = 1;
        g.Cpu.X86.Rbx = 7;
        g.Cpu.Run();
        g.Cpu.Run();
        var saved = g.Cpu.Registers.SaveState();
        var first = Outputs(g, 6);
        g.Cpu.Registers.RestoreState(saved);
        var second = Outputs(g, 6);
        Assert.That(second, Is.EqualTo(first));
        Assert.That(first.Distinct().Count(), Is.EqualTo(6), "the guest made progress");
        Assert.That(g.Cpu.Registers.SaveState().ContentEquals(saved), Is.False);
        g.Cpu.Registers.RestoreState(saved);
        Assert.That(g.Cpu.Registers.SaveState().ContentEquals(saved), Is.True);
    }

    private static List<uint> Outputs(TestGuest g, int n)
    {
        var r = new List<uint>();
        for (int i = 0; i < n; i++)
        {
            var exit = g.Cpu.Run();
            Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io));
            r.Add(exit.Io.Value);
        }
        return r;
    }

    [Test]
    public void RestoringState_CostsNoIoctlForTheSetsInKvmRun()
    {
        using var g = Guest(Counter);
        g.Cpu.Run();
        var saved = g.Cpu.Registers.SaveState();
        g.Cpu.Run();
        _kernel.ResetCounts();
        g.Cpu.Registers.RestoreState(saved);
        g.Cpu.Run();
        bool usedRegsIoctls = _kernel.Count(KvmIoctls.X86.KVM_SET_REGS) + _kernel.Count(KvmIoctls.X86.KVM_SET_SREGS) + _kernel.Count(KvmIoctls.X86.KVM_SET_VCPU_EVENTS) > 0;
        Assert.That(usedRegsIoctls, Is.EqualTo(!syncRegs));
        Assert.That(_kernel.Count(KvmIoctls.X86.KVM_SET_XSAVE), Is.EqualTo(1), "sets outside kvm_run use their ioctl");
    }

    [Test]
    public void MpState_RoundTrips_WithAnInKernelIrqchip()
    {
        using var vm = _kvm.CreateVirtualMachine();
        vm.CreateIrqChip();
        using var cpu = vm.CreateVcpu();
        var regs = cpu.Registers;
        Assert.That(regs.MpState, Is.EqualTo(MpState.Runnable));
        var runnable = regs.SaveState();
        regs.MpState = MpState.Halted;
        regs.Invalidate();
        Assert.That(regs.MpState, Is.EqualTo(MpState.Halted), "read back from KVM: " + string.Join(",", _kernel.Counts.Select(kv => kv.Key + "=" + kv.Value)));
        var halted = regs.SaveState();
        regs.RestoreState(runnable);
        regs.Invalidate();
        Assert.That(regs.MpState, Is.EqualTo(MpState.Runnable));
        regs.RestoreState(halted);
        regs.Invalidate();
        Assert.That(regs.MpState, Is.EqualTo(MpState.Halted));
    }

    [Test]
    public void XmmAndXcr0_RoundTripThroughTheirIoctls()
    {
        using var g = Guest(a => a.hlt());
        var x86 = g.Cpu.X86;
        x86.SetXmm(3, new UInt128(0x0123456789ABCDEF, 0xFEDCBA9876543210));
        x86.Xcr0 = 0x7;
        x86.Invalidate();
        Assert.That(x86.GetXmm(3), Is.EqualTo(new UInt128(0x0123456789ABCDEF, 0xFEDCBA9876543210)));
        Assert.That(x86.Xcr0, Is.EqualTo(0x7UL));
        ref var dr = ref x86.EditDebugRegisters();
        dr.Dr0 = 0x1000;
        x86.Invalidate();
        Assert.That(x86.DebugRegisters.Dr0, Is.EqualTo(0x1000UL));
    }

    [Test]
    public void UnknownMsr_IsRefusedNamingIt()
    {
        using var g = Guest(a => a.hlt());
        var ex = Assert.Throws<ArgumentException>(() => g.Cpu.X86.GetMsr(0x12345678));
        Assert.That(ex!.Message, Does.Contain("0x12345678"));
    }
}
