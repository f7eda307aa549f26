using KvmSharp.Devices;
using KvmSharp.Guests;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

/// <summary>Regressions for races and ordering bugs found in review.</summary>
public class ReviewRegressionTests : KvmTestBase
{
    private static readonly X86LongModeOptions User = new() { UserMode = true, FaultPort = TestGuest.FaultPort };

    private sealed class Sink : IIoDevice
    {
        public long Writes;
        public void Read(IoContext context, ulong offset, Span<byte> data) => data.Clear();
        public void Write(IoContext context, ulong offset, ReadOnlySpan<byte> data) => Interlocked.Increment(ref Writes);
    }

    /// <summary>A CPL3 loop of OUTs: exits all the time, so Invoke lands both inside and between runs.</summary>
    private TestGuest OutLoop() => TestGuest.LongMode(Kvm, a =>
    {
        var loop = a.CreateLabel();
        a.mov(dx, 0x70);
        a.Label(ref loop);
        a.inc(rax);
        a.@out(dx, al);
        a.jmp(loop);
    }, User);

    [Test]
    public void ManyInvokes_AgainstARunLoop_NeverBreakIt()
    {
        using var g = OutLoop();
        var sink = new Sink();
        var bus = new IoBus();
        bus.MapPorts(0x70, 1, sink);
        using var thread = new VcpuThread(g.Cpu, bus);
        int done = 0;
        string? broken = null;
        Wait.For(() =>
        {
            for (; done < 2000 && broken is null; done++)
            {
                var state = default(KvmSharp.Registers.RegisterState);
                g.Cpu.Invoke(v => state = v.Registers.SaveState());
                if (state is null) broken = "an Invoke returned without running its action";
                else if (thread.Completion.IsCompleted) broken = $"the run loop ended: {thread.Completion.Status} {(thread.Completion.IsCompletedSuccessfully ? thread.Completion.Result.ToString() : thread.Completion.Exception?.InnerException?.ToString())}";
            }
        }, "2000 Invokes against a run loop");
        Assert.That(broken, Is.Null, $"after {done} invokes");
        Assert.That(done, Is.EqualTo(2000));
        Assert.That(Interlocked.Read(ref sink.Writes), Is.GreaterThan(0));
    }

    [Test]
    public void InvokesWhilePaused_DoNotEndTheLoopAfterResume()
    {
        using var g = OutLoop();
        var sink = new Sink();
        var bus = new IoBus();
        bus.MapPorts(0x70, 1, sink);
        using var thread = new VcpuThread(g.Cpu, bus);
        Wait.For(thread.Pause, "Pause");
        var t1 = Task.Run(() => g.Cpu.Invoke(v => _ = v.X86.Rax));
        var t2 = Task.Run(() => g.Cpu.Invoke(v => _ = v.X86.Rbx));
        Assert.That(Task.WaitAll([t1, t2], Wait.Bound), Is.True);
        long writes = Interlocked.Read(ref sink.Writes);
        thread.Resume();
        Wait.Until(() => Interlocked.Read(ref sink.Writes) > writes || thread.Completion.IsCompleted, "the guest's OUTs come again after Resume");
        Thread.Sleep(50);
        Assert.That(thread.Completion.IsCompleted, Is.False, "a stale kick must not end the loop");
    }

    [Test]
    public void DisposeFromAnInvokeAction_EndsTheRunCleanly()
    {
        var g = OutLoop();
        Exception? error = null;
        var runner = new Thread(() =>
        {
            try
            {
                while (true) g.Cpu.Run();
            }
            catch (Exception e)
            {
                error = e;
            }
        }) { IsBackground = true };
        runner.Start();
        Wait.Until(() => g.Cpu.IsRunning, "the runner is inside Run");
        var t = g.Cpu.InvokeAsync(v => v.Dispose());
        Wait.Join(runner, "the runner after its vCPU was disposed");
        Assert.That(error, Is.InstanceOf<ObjectDisposedException>());
        Assert.That(t.Wait(Wait.Bound), Is.True);
        g.Dispose();
    }

    [Test]
    public void WritingRipAfterAnMmioRead_IsNotUndoneByKvmsCompletion()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            var target = a.CreateLabel();
            a.mov(rbx, 0x3000_0000UL);
            a.mov(rax, __qword_ptr[rbx]);   // MMIO read
            a.mov(ecx, 1);                    // skipped by the host
            a.hlt();
            a.Label(ref target);
            a.mov(ecx, 2);
            a.hlt();
        });
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio));
        exit.Mmio.Data.Fill(0x11);
        // Jump the guest elsewhere: 10 (mov rbx) + 3 (mov rax,[rbx]) + 5 (mov ecx) + 1 (hlt).
        g.Cpu.X86.Rip = TestGuest.CodeAddress + 19;
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That((g.Cpu.X86.Rcx, g.Cpu.X86.Rax), Is.EqualTo((2UL, 0x1111111111111111UL)), "the load completed, then the new RIP held");
    }

    [Test]
    public void ReplacingASlot_MakesTheNextRestoreCopyEverything()
    {
        using var g = TestGuest.LongMode(Kvm, a => a.hlt());
        var data = g.Vm.AddMemorySlot(0x400000, 0x2000);
        data.Write(0x400000, 0x1234UL);
        var snap = g.Vm.CreateSnapshot();
        data.Dispose();
        var fresh = g.Vm.AddMemorySlot(0x400000, 0x2000);
        Assert.That(fresh.Slot, Is.EqualTo(1), "same slot number, same place: only the baseline can tell");
        g.Vm.Restore(snap);
        Assert.That(fresh.Read<ulong>(0x400000), Is.EqualTo(0x1234UL));
    }

    [Test]
    public void AnActionServedOnRelease_ThatDisposesTheVcpu_IsReported()
    {
        using var g = TestGuest.LongMode(Kvm, a => a.hlt());
        var cpu = g.Cpu;
        cpu.Hold();
        // Queued while this thread holds the vCPU: it runs when the hold ends, on this thread.
        var action = cpu.InvokeAsync(v => v.Dispose());
        Assert.That(action.IsCompleted, Is.False);
        Assert.That(() => cpu.Unhold(), Throws.TypeOf<ObjectDisposedException>(), "the caller learns the vCPU is gone");
        Assert.That(action.IsCompletedSuccessfully, Is.True);
        Assert.That(cpu.IsDisposed, Is.True);
    }

    [Test]
    public void CacheOperationsThatIssueIoctls_CheckTheThreadFirst()
    {
        using var g = TestGuest.LongMode(Kvm, a => a.hlt());
        var x86 = g.Cpu.X86; // a reference taken while the vCPU is free
        var state = x86.SaveState();
        g.Cpu.Hold();
        try
        {
            var errors = Task.Run(() => new Action[]
            {
                () => x86.Invalidate(),
                () => x86.PostReset(),
                () => x86.PostInit(),
                () => x86.RestoreState(state),
            }.Select(op =>
            {
                try { op(); return null; }
                catch (Exception e) { return e; }
            }).ToArray()).Result;
            Assert.That(errors, Has.All.TypeOf<InvalidOperationException>());
        }
        finally
        {
            g.Cpu.Unhold();
        }
    }
}
