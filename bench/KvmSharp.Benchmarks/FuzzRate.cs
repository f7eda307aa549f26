using System.Diagnostics;
using FuzzHarness;

namespace KvmSharp.Benchmarks;

/// <summary>
/// <c>--fuzz-rate [SECONDS] [WORKERS…]</c>: the execution rate of <c>samples/FuzzHarness</c>'s loop,
/// which the sample itself cannot show because it stops at its planted bug after about a second.
/// Same loop, same kind of guest, no bug: per worker one VM (2 MiB, dirty tracking Auto — the dirty
/// ring here — CPL3 long mode) and, per execution, pick an input from the shared corpus and mutate
/// it, <see cref="VirtualMachine.Restore"/>, write the input into guest memory, set RSI,
/// <see cref="Vcpu.Run(TimeSpan)"/> with a 1 s timeout, read the coverage map into the corpus. The
/// guest is the sample's "KVM!" parser with the two crashing branches replaced by coverage bytes.
/// Each worker count runs for SECONDS (default 10) after a 1 s warm-up; 1 and 2 workers by default.
/// </summary>
internal static class FuzzRate
{
    // The sample's own target, VM setup, mutator and corpus (compiled in from samples/FuzzHarness), without its bugs.
    private const ushort DonePort = FuzzHarness.Target.DonePort;

    public static int Run(string[] args)
    {
        double seconds = 10;
        var workerCounts = new List<int>();
        if (args.Length >= 1 && !(double.TryParse(args[0], out seconds) && seconds > 0)
            || args.Skip(1).Any(a => !int.TryParse(a, out int w) || w < 1))
        {
            Console.Error.WriteLine("usage: --fuzz-rate [SECONDS (default 10)] [WORKERS… (default 1 2)]");
            return 2;
        }
        workerCounts.AddRange(args.Skip(1).Select(int.Parse));
        if (workerCounts.Count == 0) workerCounts.AddRange([1, 2]);

        using var kvm = Kvm.Open();
        byte[] code = FuzzHarness.Target.Assemble(plantBugs: false);
        Console.WriteLine($"Fuzz loop of samples/FuzzHarness without its bug: restore + write input + Run(1 s timeout) + coverage; {seconds:F0} s per worker count, {Environment.ProcessorCount} cores.");
        Console.WriteLine($"{"workers",7} {"execs",10} {"execs/s",9} {"per worker",10} {"µs/exec",8} {"restore µs",10} {"run µs",7} {"B/exec",7} {"corpus",6}");
        foreach (int workers in workerCounts)
        {
            var corpus = new Corpus();
            var fuzzers = new List<Fuzzer>();
            try
            {
                for (int w = 0; w < workers; w++) fuzzers.Add(new Fuzzer(kvm, code, corpus, seed: 1234 + w));
                var results = RunAll(fuzzers, TimeSpan.FromSeconds(1)); // warm-up: JIT, page faults
                results = RunAll(fuzzers, TimeSpan.FromSeconds(seconds));
                long execs = results.Sum(r => r.Execs);
                double elapsed = results.Max(r => r.Seconds);
                double rate = execs / elapsed;
                double restoreUs = results.Sum(r => r.RestoreSeconds) * 1e6 / execs, runUs = results.Sum(r => r.RunSeconds) * 1e6 / execs;
                double bytes = (double)results.Sum(r => r.Allocated) / execs;
                Console.WriteLine($"{workers,7} {execs,10:N0} {rate,9:N0} {rate / workers,10:N0} {1e6 * workers / rate,8:F1} {restoreUs,10:F1} {runUs,7:F1} {bytes,7:F0} {corpus.Count,6}");
            }
            finally
            {
                foreach (var f in fuzzers) f.Dispose();
            }
        }
        return 0;
    }

    private sealed record WorkerResult(long Execs, double Seconds, double RestoreSeconds, double RunSeconds, long Allocated);

    private static WorkerResult[] RunAll(List<Fuzzer> fuzzers, TimeSpan duration)
    {
        var results = new WorkerResult[fuzzers.Count];
        Exception? error = null;
        using var start = new Barrier(fuzzers.Count);
        var threads = fuzzers.Select((f, i) => new Thread(() =>
        {
            try
            {
                start.SignalAndWait();
                results[i] = f.RunFor(duration);
            }
            catch (Exception e)
            {
                error = e;
            }
        }) { Name = $"fuzz worker {i}", IsBackground = true }).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
        if (error is not null) throw new InvalidOperationException("A fuzz worker failed.", error);
        return results;
    }

    /// <summary>One worker: the sample's VM, mutator and corpus, in a loop that times its parts.</summary>
    private sealed class Fuzzer(Kvm kvm, byte[] code, Corpus corpus, int seed) : IDisposable
    {
        private readonly FuzzVm _vm = new(kvm, code);
        private readonly Mutator _mutator = new(seed);

        public WorkerResult RunFor(TimeSpan duration)
        {
            long execs = 0, restoreTicks = 0, runTicks = 0;
            long allocated = GC.GetAllocatedBytesForCurrentThread();
            long start = Stopwatch.GetTimestamp(), end = start + (long)(duration.TotalSeconds * Stopwatch.Frequency), now = start;
            while (now < end)
            {
                var input = _mutator.Mutate(corpus.Pick(_mutator.Random));
                long t0 = Stopwatch.GetTimestamp();
                _vm.Restore();
                long t1 = Stopwatch.GetTimestamp();
                var exit = _vm.Run(input);
                now = Stopwatch.GetTimestamp();
                if (exit.Reason != VcpuExitReason.Io || exit.Io.Port != DonePort)
                    throw new InvalidOperationException($"The bug-free guest ended with {exit.ToString()} after {(now - t1) * 1000.0 / Stopwatch.Frequency:F1} ms (exec {execs}).");
                corpus.Offer(input, _vm.Coverage);
                restoreTicks += t1 - t0;
                runTicks += now - t1;
                execs++;
            }
            allocated = GC.GetAllocatedBytesForCurrentThread() - allocated;
            return new WorkerResult(execs, (double)(now - start) / Stopwatch.Frequency,
                (double)restoreTicks / Stopwatch.Frequency, (double)runTicks / Stopwatch.Frequency, allocated);
        }

        public void Dispose() => _vm.Dispose();
    }
}
