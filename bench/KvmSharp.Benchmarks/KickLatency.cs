using System.Diagnostics;
using System.Runtime.InteropServices;
using KvmSharp.Guests;

namespace KvmSharp.Benchmarks;

/// <summary>
/// <c>--kick-latency [N]</c>: how long <see cref="Vcpu.RequestExit"/> takes to get a vCPU that spins
/// in guest code (CPL3 <c>jmp $</c>, which kvm-pvm runs natively) out of <see cref="Vcpu.Run()"/>.
/// A vCPU thread calls <c>Run()</c> in a loop; the main thread, N times, sleeps a random 0–2 ms,
/// waits until the vCPU is inside KVM_RUN (<see cref="Vcpu.IsRunning"/>), notes the time and calls
/// <c>RequestExit()</c>; the vCPU thread notes the time when <c>Run()</c> returned
/// <see cref="VcpuExitReason.Interrupted"/>. The raw C version (<c>sv_kick_latency</c> in
/// <c>snapshot_vm.c</c>: a pthread in KVM_RUN, KVM_SET_SIGNAL_MASK, and KvmSharp's kick protocol —
/// request flag, immediate_exit, tgkill, wait for the kicker, sigtimedwait, stray EINTRs re-entered)
/// runs the same guest from the same state, in alternating blocks with KvmSharp's so that both see
/// the same host.
/// </summary>
internal static partial class KickLatency
{
    private const ulong Entry = 0x10000, StackTop = 0x80000;
    private const int MaxWaitMicroseconds = 2000, Blocks = 20;

    public static int Run(string[] args)
    {
        int n = 2000;
        if (args.Length > 1 || (args.Length == 1 && (!int.TryParse(args[0], out n) || n < Blocks)))
        {
            Console.Error.WriteLine($"usage: --kick-latency [N (default 2000, at least {Blocks})]");
            return 2;
        }
        using var kvm = Kvm.Open();
        using var vm = kvm.CreateVirtualMachine();
        var ram = vm.AddMemorySlot(0, 2 << 20);
        ram.Write(Entry, (ReadOnlySpan<byte>)[0xEB, 0xFE]); // jmp $
        using var cpu = vm.CreateVcpu();
        X86LongMode.Setup(cpu, ram, Entry, StackTop, new X86LongModeOptions { UserMode = true });
        using var native = new NativeSnapshotVm(ram.Span, cpu.Registers.SaveState(), DirtyLogBackend.GetDirtyLog, port: 0);
        // C's own kick signal, distinct from KvmSharp's (SIGRTMAX - 2).
        int cSignal = __libc_current_sigrtmax() - 3;

        var random = new Random(1234);
        var kvmSharp = new List<double>(n);
        var rawC = new List<double>(n);
        KvmSharpBlock(cpu, 50, random, []); // warm-up: thread start, JIT, first entry
        for (int b = 0; b < Blocks; b++)
        {
            int kicks = n / Blocks + (b < n % Blocks ? 1 : 0);
            KvmSharpBlock(cpu, kicks, random, kvmSharp);
            var ns = new long[kicks];
            native.KickLatency(cSignal, MaxWaitMicroseconds, (uint)random.Next(), ns);
            rawC.AddRange(ns.Select(x => x / 1000.0));
        }

        Console.WriteLine($"Kick latency: RequestExit() → Run() returns Interrupted, vCPU spinning at CPL3; {n} kicks each, random 0–{MaxWaitMicroseconds / 1000} ms apart,");
        Console.WriteLine($"in {Blocks} alternating blocks per way. µs:");
        Console.WriteLine($"{"way",-34} {"median",7} {"p90",7} {"p99",7} {"max",8} {"min",7} {"> 1 ms",6}");
        Print("KvmSharp RequestExit", kvmSharp);
        Print("raw C, the same protocol", rawC);
        Console.WriteLine($"median ratio KvmSharp ÷ raw C: {Percentile(kvmSharp, 0.5) / Percentile(rawC, 0.5):F2}");
        return 0;
    }

    /// <summary><paramref name="kicks"/> kicks of <paramref name="cpu"/>, run by a fresh vCPU thread; latencies (µs) appended to <paramref name="latencies"/>.</summary>
    private static void KvmSharpBlock(Vcpu cpu, int kicks, Random random, List<double> latencies)
    {
        var returned = new long[kicks];
        int count = 0;
        bool stop = false;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                while (true)
                {
                    var exit = cpu.Run();
                    long now = Stopwatch.GetTimestamp();
                    if (exit.Reason != VcpuExitReason.Interrupted)
                        throw new InvalidOperationException($"The spinning guest exited: {exit.ToString()}.");
                    if (Volatile.Read(ref stop)) break;
                    returned[count] = now;
                    Volatile.Write(ref count, count + 1);
                }
            }
            catch (Exception e)
            {
                error = e;
            }
        }) { Name = "vCPU (kick latency)", IsBackground = true };
        thread.Start();
        try
        {
            for (int i = 0; i < kicks; i++)
            {
                // PERF: usleep, not Thread.Sleep, which rounds to whole milliseconds.
                usleep((uint)random.Next(MaxWaitMicroseconds + 1));
                // PERF: the waits yield instead of spinning: the vCPU thread takes its own timestamp, and
                // a spinning waiter would be a third CPU-hungry thread on a 2-core host, which then
                // measures the scheduler (ms) rather than the kick whenever anything else runs.
                while (!cpu.IsRunning) CheckAlive();
                long kicked = Stopwatch.GetTimestamp();
                cpu.RequestExit();
                while (Volatile.Read(ref count) <= i) CheckAlive();
                latencies.Add(Stopwatch.GetElapsedTime(kicked, returned[i]).TotalMicroseconds);
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            cpu.RequestExit();
            thread.Join();
        }
        if (error is not null) throw new InvalidOperationException("The vCPU thread failed.", error);

        void CheckAlive()
        {
            if (!thread.IsAlive) throw new InvalidOperationException("The vCPU thread ended.", error);
            Thread.Yield();
        }
    }

    private static void Print(string name, List<double> us) =>
        Console.WriteLine($"{name,-34} {Percentile(us, 0.5),7:F1} {Percentile(us, 0.9),7:F1} {Percentile(us, 0.99),7:F1} {us.Max(),8:F1} {us.Min(),7:F1} {us.Count(x => x > 1000),6}");

    private static double Percentile(List<double> values, double p)
    {
        var sorted = values.Order().ToArray();
        return sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];
    }

    [LibraryImport("libc")]
    private static partial int usleep(uint microseconds);

    [LibraryImport("libc")]
    private static partial int __libc_current_sigrtmax();
}
