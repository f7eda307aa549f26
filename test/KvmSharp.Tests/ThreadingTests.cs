using System.Diagnostics;
using Iced.Intel;
using KvmSharp.Devices;
using KvmSharp.Guests;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

/// <summary>RequestExit, timeouts, Invoke, Dispose while running: the races, on the real /dev/kvm.</summary>
public class ThreadingTests : KvmTestBase
{
    private static readonly X86LongModeOptions User = new() { UserMode = true, FaultPort = TestGuest.FaultPort };

    /// <summary>
    /// A CPL3 guest spinning forever, counting in RAX and in memory at <see cref="TestGuest.DataAddress"/>
    /// (so the host can see that it runs): only a kick ends its run.
    /// </summary>
    private TestGuest Spinner()
    {
        return TestGuest.LongMode(Kvm, a =>
        {
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.inc(rax);
            a.mov(__qword_ptr[TestGuest.DataAddress], rax);
            a.jmp(spin);
        }, User);
    }

    /// <summary>
    /// Waits until the spinning guest has counted (its store is visible in memory): a vCPU thread that
    /// is inside Run has not necessarily run any guest code yet, the lab's emulated CPU enters slowly.
    /// Returns the count seen.
    /// </summary>
    private static ulong WaitUntilTheGuestRuns(TestGuest g)
    {
        ulong count = 0;
        Wait.Until(() => (count = g.Ram.Read<ulong>(TestGuest.DataAddress)) > 0, "the guest has run");
        return count;
    }

    private static Thread Start(Action body)
    {
        var t = new Thread(() => body()) { IsBackground = true };
        t.Start();
        return t;
    }

    [Test]
    public void RequestExit_BeforeEntry_NextRunReturnsAtOnce_WithoutRunningTheGuest()
    {
        using var g = Spinner();
        g.Cpu.RequestExit();
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Interrupted));
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(TestGuest.CodeAddress), "the guest never ran");
    }

    [Test]
    public void CancelExitRequest_WithdrawsARequestNoRunConsumed()
    {
        using var g = TestGuest.LongMode(Kvm, a => a.hlt());
        g.Cpu.RequestExit();
        g.Cpu.CancelExitRequest();
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
    }

    [Test]
    public void RequestExit_DuringRun_FromAnotherThread_ReturnsInterrupted()
    {
        using var g = Spinner();
        ulong seen = 0;
        var kicker = Start(() =>
        {
            // Kick once the guest runs, or after the bound anyway (the run must still return).
            var deadline = DateTime.UtcNow + Wait.Bound;
            while ((seen = g.Ram.Read<ulong>(TestGuest.DataAddress)) == 0 && DateTime.UtcNow < deadline) Thread.Sleep(1);
            g.Cpu.RequestExit();
        });
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Interrupted));
        Wait.Join(kicker, "the kicker");
        Assert.That(seen, Is.GreaterThan(0UL), "the guest ran before the kick");
        Assert.That(g.Cpu.X86.Rax, Is.GreaterThanOrEqualTo(seen), "the guest was running: RAX has counted at least as far as memory showed");
        // The request was consumed: the next run is not cut short by it.
        Assert.That(g.Cpu.Run(TimeSpan.FromMilliseconds(20)).Reason, Is.EqualTo(VcpuExitReason.Interrupted));
    }

    [Test]
    public void RequestExit_AfterAnExit_MakesTheNextRunReturnAtOnce()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(dx, 0x70);
            a.@out(dx, al);
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.jmp(spin);
        }, User);
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Io));
        g.Cpu.RequestExit();
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Interrupted));
    }

    [Test]
    public void TenThousandKicks_AreNeverLost_AndNeverHang()
    {
        using var g = Spinner();
        const int kicks = 10_000;
        using var returned = new SemaphoreSlim(0);
        int interrupted = 0, other = 0;
        // Exactly one run per kick: the guest never exits by itself, so each run returns only for its
        // kick. (A loop that checked a stop flag between runs could see the last kick's flag before
        // running once more and leave that kick unconsumed.)
        var vcpuThread = Start(() =>
        {
            for (int k = 0; k < kicks; k++)
            {
                var r = g.Cpu.Run().Reason;
                if (r == VcpuExitReason.Interrupted) Interlocked.Increment(ref interrupted);
                else Interlocked.Increment(ref other);
                returned.Release();
            }
        });
        var random = new Random(42);
        for (int i = 0; i < kicks; i++)
        {
            // Vary the moment: right away (the vCPU may be between runs or entering), or after a spin.
            if (random.Next(3) == 0) Thread.SpinWait(random.Next(2000));
            g.Cpu.RequestExit();
            Assert.That(returned.Wait(Wait.Bound), Is.True, $"kick {i} was lost: the run did not return");
        }
        Wait.Join(vcpuThread, "the vCPU thread after its last run");
        Assert.That((interrupted, other), Is.EqualTo((kicks, 0)));
        Assert.That(g.Cpu.IsExitRequested, Is.False, "every request was consumed by a run");
    }

    [Test]
    public void RunWithTimeout_NeverEndsBeforeItsTimeout_WhenAnEarlierRunsTimerWasDue()
    {
        // Each round: a run with a 1 ms timeout that ends by an I/O exit after a spin of varying length
        // (so it often ends just as its timer is due), then a 20 ms run of a guest that spins forever.
        // The second run must take its 20 ms: a late callback of the first run's timer must not end it.
        using var g = TestGuest.CountdownThenOut(Kvm, 0x70);
        var random = new Random(7);
        int raced = 0;
        for (int round = 0; round < 30; round++)
        {
            g.Cpu.X86.Rip = TestGuest.CodeAddress;
            g.Cpu.X86.Rcx = (ulong)random.Next(1, 200_000);
            if (g.Cpu.Run(TimeSpan.FromMilliseconds(1)).Reason != VcpuExitReason.Io)
                continue; // the countdown outlasted the timeout: nothing to race with
            raced++;
            var sw = Stopwatch.StartNew();
            var exit = g.Cpu.Run(TimeSpan.FromMilliseconds(20));
            sw.Stop();
            Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Interrupted), $"round {round}");
            Assert.That(sw.Elapsed, Is.GreaterThanOrEqualTo(TimeSpan.FromMilliseconds(20)), $"round {round}: the run ended early");
        }
        Assert.That(raced, Is.GreaterThan(0), "some first runs ended by their I/O exit");
    }

    [Test]
    public void RunWithTimeout_ReturnsInterrupted_AndLeavesNoRequestBehind()
    {
        using var g = Spinner();
        var sw = Stopwatch.StartNew();
        Assert.That(g.Cpu.Run(TimeSpan.FromMilliseconds(30)).Reason, Is.EqualTo(VcpuExitReason.Interrupted));
        Assert.That(sw.ElapsedMilliseconds, Is.GreaterThanOrEqualTo(25));

        using var hlt = TestGuest.LongMode(Kvm, a => a.hlt());
        Assert.That(hlt.Cpu.Run(TimeSpan.FromMilliseconds(1)).Reason, Is.AnyOf(VcpuExitReason.Hlt, VcpuExitReason.Interrupted));
        Thread.Sleep(20); // a late timer must not leave an exit request behind
        hlt.Cpu.X86.Rip = TestGuest.CodeAddress;
        Assert.That(hlt.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
    }

    [Test]
    public void RunWithCancellation_ReturnsInterrupted()
    {
        using var g = Spinner();
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(30));
        Assert.That(g.Cpu.Run(cts.Token).Reason, Is.EqualTo(VcpuExitReason.Interrupted));
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        Assert.That(g.Cpu.Run(cancelled.Token).Reason, Is.EqualTo(VcpuExitReason.Interrupted));
    }

    [Test]
    public void Invoke_RunsOnTheVcpuThreadBetweenRuns_AndTheRunGoesOn()
    {
        using var g = Spinner();
        int runThread = 0, returns = 0;
        var vcpuThread = Start(() =>
        {
            runThread = Environment.CurrentManagedThreadId;
            while (g.Cpu.Run().Reason != VcpuExitReason.Interrupted) { }
            Interlocked.Increment(ref returns);
        });
        ulong counted = WaitUntilTheGuestRuns(g);
        Assert.That(g.Cpu.IsRunning, Is.True, "the vCPU thread is inside Run");
        Assert.Throws<InvalidOperationException>(() => _ = g.Cpu.X86.Rip, "direct access from another thread while it runs");

        int actionThread = 0;
        ulong rax = 0;
        Wait.For(() => g.Cpu.Invoke(v =>
        {
            actionThread = Environment.CurrentManagedThreadId;
            rax = v.X86.Rax;
            v.X86.Rbx = 0x1234;
        }), "Invoke");
        Assert.That(actionThread, Is.EqualTo(runThread), "the action ran on the vCPU's thread");
        Assert.That(rax, Is.GreaterThanOrEqualTo(counted), "the action saw the running guest's RAX");
        Thread.Sleep(20);
        Assert.That(Volatile.Read(ref returns), Is.EqualTo(0), "an Invoke kick does not end the run");
        ulong later = g.Ram.Read<ulong>(TestGuest.DataAddress);
        Wait.Until(() => g.Ram.Read<ulong>(TestGuest.DataAddress) > later, "the guest runs on after the Invoke");

        var task = g.Cpu.InvokeAsync(v => v.X86.Rcx = 99);
        Assert.That(task.Wait(Wait.Bound), Is.True);
        var failing = g.Cpu.InvokeAsync(_ => throw new FormatException("boom"));
        Assert.That(() => failing.Wait(Wait.Bound), Throws.InstanceOf<AggregateException>().With.InnerException.InstanceOf<FormatException>());

        g.Cpu.RequestExit();
        Wait.Join(vcpuThread, "the vCPU thread after RequestExit");
        Assert.That((g.Cpu.X86.Rbx, g.Cpu.X86.Rcx), Is.EqualTo((0x1234UL, 99UL)), "the actions' writes reached the vCPU");
    }

    [Test]
    public void Invoke_OnAnIdleVcpu_RunsOnTheCallingThread()
    {
        using var g = Spinner();
        int t = 0;
        g.Cpu.Invoke(v => t = Environment.CurrentManagedThreadId);
        Assert.That(t, Is.EqualTo(Environment.CurrentManagedThreadId));
        var ex = Assert.Throws<InvalidOperationException>(() => g.Cpu.Invoke(_ => throw new InvalidOperationException("from the action")));
        Assert.That(ex!.Message, Is.EqualTo("from the action"));
    }

    [Test]
    public void Dispose_WhileRunningOnAnotherThread_KicksWaitsAndReleases()
    {
        var g = Spinner();
        Exception? error = null;
        VcpuExitReason? last = null;
        var vcpuThread = Start(() =>
        {
            try
            {
                while (true) last = g.Cpu.Run().Reason;
            }
            catch (Exception e)
            {
                error = e;
            }
        });
        Wait.Until(() => g.Cpu.IsRunning, "the vCPU thread is inside Run");
        Wait.For(g.Cpu.Dispose, "Dispose while another thread runs the vCPU");
        Wait.Join(vcpuThread, "the vCPU thread after Dispose");
        Assert.That(error, Is.InstanceOf<ObjectDisposedException>(), "the run the disposal cut short throws");
        Assert.That(last, Is.Null, "that run returned no exit view (its kvm_run is being unmapped)");
        Assert.That(g.Cpu.IsDisposed, Is.True);
        g.Dispose();
    }

    [Test]
    public void RunFromTwoThreadsAtOnce_IsRefused()
    {
        using var g = Spinner();
        var vcpuThread = Start(() => g.Cpu.Run());
        Wait.Until(() => g.Cpu.IsRunning, "the vCPU thread is inside Run");
        var ex = Assert.Throws<InvalidOperationException>(() => g.Cpu.Run());
        Assert.That(ex!.Message, Does.Contain("one thread runs a vCPU at a time"));
        g.Cpu.RequestExit();
        Wait.Join(vcpuThread, "the vCPU thread after RequestExit");
    }
}
