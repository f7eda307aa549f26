using System.Diagnostics;
using Iced.Intel;
using KvmSharp.Devices;
using KvmSharp.Guests;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

public class IoBusTests : KvmTestBase
{
    /// <summary>A register file: reads return what was last written at the offset; records accesses.</summary>
    private sealed class Scratch(int size, Func<ulong, bool>? stopOnWrite = null) : IIoDevice
    {
        public readonly byte[] Bytes = new byte[size];
        public readonly List<(bool Port, ulong Address, ulong Offset, int Length, bool Write)> Log = [];

        public void Read(IoContext context, ulong offset, Span<byte> data)
        {
            lock (Log) Log.Add((context.IsPort, context.Address, offset, data.Length, false));
            Bytes.AsSpan((int)offset, data.Length).CopyTo(data);
        }

        public void Write(IoContext context, ulong offset, ReadOnlySpan<byte> data)
        {
            lock (Log) Log.Add((context.IsPort, context.Address, offset, data.Length, true));
            data.CopyTo(Bytes.AsSpan((int)offset));
            if (stopOnWrite?.Invoke(offset) == true) context.RequestStop();
        }
    }

    [Test]
    public void PortAndMmioDevices_GetRelativeOffsets_AndTheLoopStopsOnHlt()
    {
        var ports = new Scratch(16);
        var mmio = new Scratch(0x100);
        var bus = new IoBus();
        bus.MapPorts(0x3F8, 8, ports);
        bus.MapMmio(0x2000_0000, 0x100, mmio);
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(dx, 0x3FB);
            a.mov(al, 0x83);
            a.@out(dx, al);          // port 0x3FB → offset 3
            a.mov(rbx, 0x2000_0000UL);
            a.mov(__dword_ptr[rbx + 0x80], 0xAABBCCDD);
            a.mov(ecx, __dword_ptr[rbx + 0x80]);
            a.mov(__dword_ptr[TestGuest.DataAddress], ecx);
            a.hlt();
        });
        var result = new VcpuRunner(g.Cpu, bus).Run();
        Assert.That(result.Reason, Is.EqualTo(RunStopReason.Halted));
        Assert.That(result.Exits, Is.EqualTo(4));
        Assert.That(ports.Log, Is.EqualTo(new[] { (true, 0x3FBUL, 3UL, 1, true) }));
        Assert.That(ports.Bytes[3], Is.EqualTo(0x83));
        Assert.That(mmio.Log, Is.EqualTo(new[] { (false, 0x2000_0080UL, 0x80UL, 4, true), (false, 0x2000_0080UL, 0x80UL, 4, false) }));
        Assert.That(g.Ram.Read<uint>(TestGuest.DataAddress), Is.EqualTo(0xAABBCCDDu), "the device's data reached the guest");
    }

    [TestCase(UnclaimedAccessPolicy.Ignore, 0u)]
    [TestCase(UnclaimedAccessPolicy.ReadAllOnes, 0xFFFFFFFFu)]
    public void UnclaimedReads_FollowThePolicy(UnclaimedAccessPolicy policy, uint expected)
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(dx, 0x1234);
            a.@in(eax, dx);
            a.mov(__dword_ptr[TestGuest.DataAddress], eax);
            a.hlt();
        });
        g.Ram.Write(TestGuest.DataAddress, 0x5A5A5A5Au);
        var result = new VcpuRunner(g.Cpu, new IoBus()) { UnclaimedPolicy = policy }.Run();
        Assert.That(result.Reason, Is.EqualTo(RunStopReason.Halted));
        Assert.That(g.Ram.Read<uint>(TestGuest.DataAddress), Is.EqualTo(expected));
    }

    [Test]
    public void UnclaimedAccess_WithStopPolicy_StopsNamingTheAddress()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rbx, 0x3000_0000UL);
            a.mov(__byte_ptr[rbx + 5], 1);
            a.hlt();
        });
        var result = new VcpuRunner(g.Cpu, new IoBus()) { UnclaimedPolicy = UnclaimedAccessPolicy.Stop }.Run();
        Assert.That((result.Reason, result.LastExit, result.Address), Is.EqualTo((RunStopReason.UnclaimedAccess, VcpuExitReason.Mmio, 0x3000_0005UL)));
    }

    [Test]
    public void ADevice_CanStopTheLoop_AndTimeoutsAndShutdownsAreReported()
    {
        var bus = new IoBus();
        var doorbell = new Scratch(4, stopOnWrite: _ => true);
        bus.MapPorts(0x600, 4, doorbell);
        using (var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(dx, 0x600);
            a.@out(dx, eax);
            a.hlt();
        }))
        {
            Assert.That(new VcpuRunner(g.Cpu, bus).Run().Reason, Is.EqualTo(RunStopReason.StopRequested));
            Assert.That(new VcpuRunner(g.Cpu, bus).Run().Reason, Is.EqualTo(RunStopReason.Halted), "the runner resumes where it stopped");
        }
        using (var spin = TestGuest.LongMode(Kvm, a => { var l = a.CreateLabel(); a.Label(ref l); a.jmp(l); }, new X86LongModeOptions { UserMode = true }))
            Assert.That(new VcpuRunner(spin.Cpu, bus).Run(TimeSpan.FromMilliseconds(20)).Reason, Is.EqualTo(RunStopReason.Timeout));
        using (var crash = TestGuest.LongMode(Kvm, a => a.ud2(), new X86LongModeOptions { UserMode = true, InstallIdt = false }))
            Assert.That(new VcpuRunner(crash.Cpu, bus).Run().Reason, Is.EqualTo(RunStopReason.Shutdown));
    }

    [Test]
    public void RunnerTimeout_NeverEndsBeforeItsDeadline_AndBadTimeoutsAreRefused()
    {
        // A guest that exits to the bus after a spin of varying length, then spins forever: each
        // round's first loop (1 ms) may end just as its timer is due; the second (10 ms) must last
        // its whole timeout, whatever a late callback of the first run's timer does.
        var bus = new IoBus();
        bus.MapPorts(0x600, 4, new Scratch(4, stopOnWrite: _ => true));
        using var g = TestGuest.CountdownThenOut(Kvm, 0x600);
        var runner = new VcpuRunner(g.Cpu, bus);
        var random = new Random(11);
        int raced = 0;
        for (int round = 0; round < 20; round++)
        {
            g.Cpu.X86.Rip = TestGuest.CodeAddress;
            g.Cpu.X86.Rcx = (ulong)random.Next(1, 200_000);
            if (runner.Run(TimeSpan.FromMilliseconds(1)).Reason != RunStopReason.StopRequested)
                continue;
            raced++;
            var sw = Stopwatch.StartNew();
            var result = runner.Run(TimeSpan.FromMilliseconds(10));
            sw.Stop();
            Assert.That(result.Reason, Is.EqualTo(RunStopReason.Timeout), $"round {round}");
            Assert.That(sw.Elapsed, Is.GreaterThanOrEqualTo(TimeSpan.FromMilliseconds(10)), $"round {round}: the loop ended early");
        }
        Assert.That(raced, Is.GreaterThan(0), "some first loops ended at the bus");

        Assert.That(() => runner.Run(TimeSpan.FromMilliseconds(-5)), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => runner.Run(TimeSpan.FromDays(60)), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => g.Cpu.Run(TimeSpan.FromDays(60)), Throws.InstanceOf<ArgumentOutOfRangeException>());
        g.Cpu.X86.Rip = TestGuest.CodeAddress;
        g.Cpu.X86.Rcx = 1;
        Assert.That(runner.Run(TimeSpan.FromSeconds(30)).Reason, Is.EqualTo(RunStopReason.StopRequested), "the vCPU is usable after refused timeouts");
    }

    [Test]
    public void OverlappingRanges_AreRefused()
    {
        var bus = new IoBus();
        var d = new Scratch(8);
        bus.MapPorts(0x60, 8, d);
        var ex = Assert.Throws<ArgumentException>(() => bus.MapPorts(0x64, 2, d));
        Assert.That(ex!.Message, Does.Contain("0x64..0x65").And.Contain("0x60..0x67"));
        Assert.Throws<ArgumentException>(() => bus.MapPorts(0xFFFF, 2, d));
        Assert.That(bus.Unmap(d), Is.EqualTo(1));
        bus.MapPorts(0x64, 2, d);
    }
}

/// <summary>Several vCPUs of one VM on their own threads.</summary>
public class SmpTests : KvmTestBase
{
    private const ulong Counter = TestGuest.DataAddress;

    /// <summary>Builds a VM whose vCPUs all run <paramref name="code"/> at CPL3, each with its own stack and RDI = its index.</summary>
    private (TestGuest, Vcpu[]) Smp(int n, Action<Assembler> code)
    {
        var g = TestGuest.LongMode(Kvm, code, new X86LongModeOptions { UserMode = true, FaultPort = TestGuest.FaultPort });
        var cpus = new Vcpu[n];
        cpus[0] = g.Cpu;
        for (int i = 1; i < n; i++)
        {
            cpus[i] = g.Vm.CreateVcpu();
            X86LongMode.Setup(cpus[i], g.Ram, TestGuest.CodeAddress, TestGuest.StackTop - (ulong)i * 0x4000,
                new X86LongModeOptions { UserMode = true, FaultPort = TestGuest.FaultPort });
        }
        for (int i = 0; i < n; i++) cpus[i].X86.Rdi = (ulong)i;
        return (g, cpus);
    }

    private sealed class Doorbell : IIoDevice
    {
        public void Read(IoContext context, ulong offset, Span<byte> data) => data.Clear();
        public void Write(IoContext context, ulong offset, ReadOnlySpan<byte> data) => context.RequestStop();
    }

    [Test]
    public void TwoVcpus_LockXadd_NTimesEach_TheHostSees2N()
    {
        const int n = 200_000;
        var (g, cpus) = Smp(2, a =>
        {
            var loop = a.CreateLabel();
            a.mov(rbx, Counter);
            a.mov(ecx, n);
            a.Label(ref loop);
            a.mov(eax, 1);
            a.@lock.xadd(__dword_ptr[rbx], eax);
            a.dec(ecx);
            a.jnz(loop);
            a.mov(dx, 0x600);
            a.@out(dx, al);
            var done = a.CreateLabel();
            a.Label(ref done);
            a.jmp(done);                  // the doorbell stops the loop; never run on into what follows
        });
        using (g)
        {
            var bus = new IoBus();
            bus.MapPorts(0x600, 1, new Doorbell());
            var threads = cpus.Select(c => new VcpuThread(c, bus)).ToArray();
            try
            {
                Assert.That(Task.WaitAll([.. threads.Select(t => t.Completion)], Wait.Bound), Is.True, "both vCPUs rang the doorbell");
                Assert.That(threads.Select(t => t.Completion.Result), Has.All.Matches<RunResult>(r => r.Reason == RunStopReason.StopRequested),
                    string.Join("; ", threads.Select(t => t.Completion.Result.ToString())));
                Assert.That(g.Ram.Read<uint>(Counter), Is.EqualTo(2u * n));
            }
            finally
            {
                foreach (var t in threads) Wait.For(t.Dispose, "stopping a vCPU thread");
            }
        }
    }

    [Test]
    public void PauseAll_StopsEveryVcpu_MpStateSavesAndRestores_ResumeAll_ContinuesThem()
    {
        // Each vCPU increments its own counter forever: counter[rdi] += 1.
        var (g, cpus) = Smp(2, a =>
        {
            var loop = a.CreateLabel();
            a.mov(rbx, Counter);
            a.Label(ref loop);
            a.inc(__qword_ptr[rbx + rdi * 8]);
            a.jmp(loop);
        });
        using (g)
        {
            var threads = cpus.Select(c => new VcpuThread(c, new IoBus())).ToArray();
            Wait.Until(() => g.Ram.Read<ulong>(Counter) != 0 && g.Ram.Read<ulong>(Counter + 8) != 0, "both vCPUs count");

            Wait.For(() => VcpuThread.PauseAll(threads), "PauseAll");
            Assert.That(threads.All(t => t.IsPaused), Is.True);
            ulong a0 = g.Ram.Read<ulong>(Counter), b0 = g.Ram.Read<ulong>(Counter + 8);
            Thread.Sleep(30);
            Assert.That((g.Ram.Read<ulong>(Counter), g.Ram.Read<ulong>(Counter + 8)), Is.EqualTo((a0, b0)), "paused vCPUs do not run");

            // Paused vCPUs are owned by no thread: their registers can be used from here.
            var states = cpus.Select(c => c.Registers.SaveState()).ToArray();
            Assert.That(cpus.Select(c => c.Registers.MpState), Is.All.EqualTo(KvmSharp.Registers.MpState.Runnable));
            for (int i = 0; i < cpus.Length; i++)
            {
                cpus[i].Registers.RestoreState(states[i]);
                Assert.That(cpus[i].Registers.SaveState().ContentEquals(states[i]), Is.True, $"vCPU {i} state round trip");
            }

            VcpuThread.ResumeAll(threads);
            Wait.Until(() => g.Ram.Read<ulong>(Counter) != a0 && g.Ram.Read<ulong>(Counter + 8) != b0, "both vCPUs count again after ResumeAll");
            Assert.That(g.Ram.Read<ulong>(Counter), Is.GreaterThan(a0));
            Assert.That(g.Ram.Read<ulong>(Counter + 8), Is.GreaterThan(b0));
            foreach (var t in threads) Wait.For(t.Stop, "Stop");
            Assert.That(threads.Select(t => t.Completion.Result.Reason), Is.All.EqualTo(RunStopReason.StopRequested));
        }
    }
}

public class SerialConsoleTests : KvmTestBase
{
    [Test]
    public void GuestOutput_ComesOutOfThePipe()
    {
        byte[] text = "serial hello\n"u8.ToArray();
        using var console = new SerialConsole();
        var bus = new IoBus();
        bus.MapPorts(0x3F8, 8, console);
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            var next = a.CreateLabel();
            var wait = a.CreateLabel();
            a.mov(rsi, TestGuest.DataAddress);
            a.mov(ecx, text.Length);
            a.Label(ref next);
            a.mov(dx, 0x3FD);                 // line status: wait for the transmitter, as a driver does
            a.Label(ref wait);
            a.@in(al, dx);
            a.test(al, 0x20);
            a.jz(wait);
            a.mov(dx, 0x3F8);
            a.mov(al, __byte_ptr[rsi]);
            a.@out(dx, al);
            a.inc(rsi);
            a.dec(ecx);
            a.jnz(next);
            a.hlt();
        });
        g.Ram.Write(TestGuest.DataAddress, text);
        Assert.That(new VcpuRunner(g.Cpu, bus).Run().Reason, Is.EqualTo(RunStopReason.Halted));
        console.Dispose();
        var read = console.Output.ReadAtLeastAsync(text.Length).AsTask().GetAwaiter().GetResult();
        Assert.That(System.Buffers.BuffersExtensions.ToArray(read.Buffer), Is.EqualTo(text));
        Assert.That(console.BytesWritten, Is.EqualTo(text.Length));
    }
}
