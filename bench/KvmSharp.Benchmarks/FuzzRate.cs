using System.Diagnostics;
using KvmSharp.Guests;
using KvmSharp.Snapshots;

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
    // The sample's own target (compiled in from samples/FuzzHarness/Target.cs), without its bugs.
    private const ulong Code = FuzzHarness.Target.Code, Input = FuzzHarness.Target.Input,
        Coverage = FuzzHarness.Target.Coverage, StackTop = FuzzHarness.Target.StackTop;
    private const int MaxInput = FuzzHarness.Target.MaxInput, CoverageBytes = FuzzHarness.Target.CoverageBytes;
    private const ushort DonePort = FuzzHarness.Target.DonePort;
    private const byte FaultPort = FuzzHarness.Target.FaultPort;

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

    /// <summary>Inputs that reached new coverage, shared by all workers (as in the sample).</summary>
    private sealed class Corpus
    {
        private readonly List<byte[]> _inputs = [[]];
        private readonly bool[] _seen = new bool[CoverageBytes];

        public int Count
        {
            get
            {
                lock (_inputs) return _inputs.Count;
            }
        }

        public byte[] Pick(Random random)
        {
            lock (_inputs) return _inputs[random.Next(_inputs.Count)];
        }

        public void Offer(ReadOnlySpan<byte> input, ReadOnlySpan<byte> coverage)
        {
            lock (_inputs)
            {
                bool fresh = false;
                for (int i = 0; i < coverage.Length; i++)
                    if (coverage[i] != 0 && !_seen[i]) fresh = _seen[i] = true;
                if (fresh) _inputs.Add(input.ToArray());
            }
        }
    }

    private sealed class Fuzzer : IDisposable
    {
        private readonly VirtualMachine _vm;
        private readonly MemorySlot _ram;
        private readonly Vcpu _cpu;
        private readonly VmSnapshot _snapshot;
        private readonly Corpus _corpus;
        private readonly Random _random;
        private readonly byte[] _input = new byte[MaxInput];

        public Fuzzer(Kvm kvm, byte[] code, Corpus corpus, int seed)
        {
            _corpus = corpus;
            _random = new Random(seed);
            _vm = kvm.CreateVirtualMachine();
            try
            {
                _vm.EnableDirtyTracking();
                _ram = _vm.AddMemorySlot(0, 0x200000);
                _ram.Write(Code, code);
                _cpu = _vm.CreateVcpu();
                X86LongMode.Setup(_cpu, _ram, Code, StackTop, new X86LongModeOptions { UserMode = true, FaultPort = FaultPort });
                _cpu.X86.Rdi = Input;
                _snapshot = _vm.CreateSnapshot();
            }
            catch
            {
                _vm.Dispose();
                throw;
            }
        }

        public WorkerResult RunFor(TimeSpan duration)
        {
            long execs = 0, restoreTicks = 0, runTicks = 0;
            long allocated = GC.GetAllocatedBytesForCurrentThread();
            long start = Stopwatch.GetTimestamp(), end = start + (long)(duration.TotalSeconds * Stopwatch.Frequency), now = start;
            while (now < end)
            {
                int length = Mutate(_corpus.Pick(_random));
                long t0 = Stopwatch.GetTimestamp();
                _vm.Restore(_snapshot);                                 // only the pages the last run dirtied
                long t1 = Stopwatch.GetTimestamp();
                _ram.Write(Input, _input.AsSpan(0, length));            // tracked: restored after this run too
                _cpu.X86.Rsi = (ulong)length;                           // through kvm_run: no ioctl
                var exit = _cpu.Run(TimeSpan.FromSeconds(1));
                now = Stopwatch.GetTimestamp();
                if (exit.Reason != VcpuExitReason.Io || exit.Io.Port != DonePort)
                    throw new InvalidOperationException($"The bug-free guest ended with {exit.ToString()}.");
                _corpus.Offer(_input.AsSpan(0, length), _ram.GetSpan(Coverage, CoverageBytes));
                restoreTicks += t1 - t0;
                runTicks += now - t1;
                execs++;
            }
            allocated = GC.GetAllocatedBytesForCurrentThread() - allocated;
            return new WorkerResult(execs, (double)(now - start) / Stopwatch.Frequency,
                (double)restoreTicks / Stopwatch.Frequency, (double)runTicks / Stopwatch.Frequency, allocated);
        }

        /// <summary>
        /// The sample's mutations (insert, replace, append, remove; 1–3 of them). PERF: into a reused
        /// buffer, where the sample allocates a list and an array per execution, so that the rate is
        /// the library's loop rather than the mutator's garbage.
        /// </summary>
        private int Mutate(byte[] parent)
        {
            int length = parent.Length;
            parent.CopyTo(_input, 0);
            int n = 1 + _random.Next(3);
            for (int i = 0; i < n; i++)
            {
                int op = _random.Next(4);
                if (length == 0 || op == 0)
                {
                    if (length < MaxInput)
                    {
                        int at = _random.Next(length + 1);
                        Array.Copy(_input, at, _input, at + 1, length - at);
                        _input[at] = (byte)_random.Next(256);
                        length++;
                    }
                }
                else if (op == 1) _input[_random.Next(length)] = (byte)_random.Next(256);
                else if (op == 2 && length < MaxInput) _input[length++] = (byte)_random.Next(256);
                else
                {
                    int at = _random.Next(length);
                    Array.Copy(_input, at + 1, _input, at, length - at - 1);
                    length--;
                }
            }
            return length;
        }

        public void Dispose() => _vm.Dispose();
    }
}
