using BenchmarkDotNet.Running;

namespace KvmSharp.Benchmarks;

/// <summary>
/// Entry point: <c>dotnet run -c Release --project bench/KvmSharp.Benchmarks -- --filter '*PioExit*'</c>
/// (add <c>--job dry</c> for a smoke run of a few seconds, <c>--job short</c> for a quick estimate).
/// <para>
/// <c>--count-ioctls WAY [EXITS]</c> runs no benchmark: it sets up one <see cref="RegisterSyncWay"/>
/// (<c>rawc</c>, <c>lazy</c>, <c>eager</c>, <c>eager-kvmsharp</c>), runs EXITS exits (default 10000)
/// and exits, so that a tracer (<c>/work/shared/tools/ioctl-count</c>) can count its ioctls; run it
/// with EXITS 0 too, to subtract the setup.
/// </para>
/// <para>
/// <c>--interleaved [ROUNDS]</c> runs no benchmark either: it sets up every <see cref="RegisterSyncWay"/>
/// in one process and times batches of <see cref="RegisterSyncBenchmarks.Exits"/> exits round-robin (default 2000
/// rounds), reporting each way's median and quartiles per exit. On a noisy host, where the kernel's
/// exit cost drifts during BenchmarkDotNet's sequential runs, this shows the ratios with the drift
/// shared by all ways. <c>--interleaved pio [ROUNDS]</c> does the same for the three ways of
/// <see cref="PioExitBenchmarks"/> plus two raw C loops doing KvmSharp's extra kernel work.
/// </para>
/// <para>
/// <c>--count-ioctls restore WAY [CYCLES]</c> does the same for one <see cref="RestoreWay"/> (e.g.
/// <c>KvmSharpGetDirtyLog</c>, <c>RawCGetDirtyLog</c>): CYCLES restore + run cycles (default 1000)
/// of a 64 MiB guest dirtying 8 pages.
/// </para>
/// <para>
/// <c>--restore-table [ROUNDS] [--sizes …] [--pages …] [--ways …]</c>: the full restore grid,
/// interleaved, medians (see <see cref="RestoreTable"/>); <c>--kick-latency [N]</c>: RequestExit
/// to Run returning, KvmSharp and raw C (see <see cref="KickLatency"/>); <c>--fuzz-rate [SECONDS]
/// [WORKERS…]</c>: execs/s of the FuzzHarness loop (see <see cref="FuzzRate"/>).
/// </para>
/// </summary>
public static class Program
{
    /// <returns>0, or 1 when a benchmark failed (so that a CI smoke run notices), or 2 for bad arguments.</returns>
    public static int Main(string[] args)
    {
        // Where /dev/kvm does not work, benchmark in a KvmSharp.Lab machine: there everything is
        // emulated, so only the ratios to the raw baselines measured in the same run mean anything.
        if (KvmSharp.Lab.KvmLab.RelaunchIfNeeded(args) is int labExitCode)
            return labExitCode;
        if (args is ["--count-ioctls", "restore", ..])
            return CountRestoreIoctls(args[2..]);
        if (args is ["--count-ioctls", ..])
            return CountIoctls(args[1..]);
        if (args is ["--kick-latency", ..])
            return KickLatency.Run(args[1..]);
        if (args is ["--fuzz-rate", ..])
            return FuzzRate.Run(args[1..]);
        if (args is ["--restore-table", ..])
            return RestoreTable.Run(args[1..]);
        if (args is ["--interleaved", ..])
            return Interleaved(args[1..]);

        // BenchmarkDotNet 0.14 has no net10.0 toolchain, so it cannot generate and build a separate
        // benchmark project: run in this process (InProcessEmitToolchain) instead. This is done with
        // the --inProcess switch rather than a job in a global config, because a global default job
        // would replace whatever --job (dry/short/medium…) was asked for on the command line.
        if (!args.Any(a => a is "--inProcess" or "-i"))
            args = ["--inProcess", .. args];
        var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        bool failed = summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success));
        return failed ? 1 : 0;
    }

    private static int CountIoctls(string[] args)
    {
        RegisterSyncWay? way = args is [var name, ..] ? name switch
        {
            "rawc" => RegisterSyncWay.RawCSyncRegs,
            "lazy" => RegisterSyncWay.KvmSharpLazy,
            "eager" => RegisterSyncWay.RawEager,
            "eager-kvmsharp" => RegisterSyncWay.KvmSharpEager,
            "rawc-sigmask" => RegisterSyncWay.RawCSyncRegsSignalMask,
            "runner" => RegisterSyncWay.KvmSharpRunnerLazy,
            _ => null,
        } : null;
        int exits = 10000;
        if (way is null || args.Length > 2 || (args.Length == 2 && (!int.TryParse(args[1], out exits) || exits < 0)))
        {
            Console.Error.WriteLine("usage: --count-ioctls rawc|rawc-sigmask|lazy|runner|eager|eager-kvmsharp [EXITS (default 10000)]");
            return 2;
        }
        // Setup (VM, vCPU, registers) and the first exit happen in Create; EXITS exits follow.
        using var loop = RegisterSyncLoop.Create(way.Value);
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        loop.Run(exits);
        allocated = GC.GetAllocatedBytesForCurrentThread() - allocated;
        Console.WriteLine($"{way}: {exits} exits after setup, all checked (RIP at each exit 0x{loop.ExitRip:x}); " +
            $"{allocated} managed bytes allocated by the exits");
        return 0;
    }

    private static int CountRestoreIoctls(string[] args)
    {
        int cycles = 1000;
        if (args.Length is < 1 or > 2 || !Enum.TryParse<RestoreWay>(args[0], ignoreCase: true, out var way)
            || (args.Length == 2 && (!int.TryParse(args[1], out cycles) || cycles < 0)))
        {
            Console.Error.WriteLine($"usage: --count-ioctls restore {string.Join("|", Enum.GetNames<RestoreWay>())} [CYCLES (default 1000)]");
            return 2;
        }
        // Setup (VM, long mode, snapshot, one checked cycle) happens in Create; CYCLES restore+run cycles follow.
        const int sizeMiB = 64, pages = 8;
        using var loop = RestoreLoop.Create(way, sizeMiB, pages);
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < cycles; i++)
        {
            loop.Restore();
            loop.Run();
        }
        allocated = GC.GetAllocatedBytesForCurrentThread() - allocated;
        loop.Verify();
        Console.WriteLine($"{way}: {cycles} cycles (restore + run) of a {sizeMiB} MiB guest dirtying {pages} pages, after setup; " +
            $"{(cycles == 0 ? 0 : allocated / cycles)} managed bytes allocated per cycle");
        return 0;
    }

    private static int Interleaved(string[] args)
    {
        int rounds = 2000;
        bool pio = args is ["pio", ..];
        if (pio) args = args[1..];
        if (args.Length > 1 || (args.Length == 1 && (!int.TryParse(args[0], out rounds) || rounds < 1)))
        {
            Console.Error.WriteLine("usage: --interleaved [pio] [ROUNDS (default 2000)]");
            return 2;
        }
        return pio ? InterleavedPio(rounds) : InterleavedRegisterSync(rounds);
    }

    private static int InterleavedRegisterSync(int rounds)
    {
        const int exits = RegisterSyncBenchmarks.Exits;
        var ways = Enum.GetValues<RegisterSyncWay>();
        var loops = new List<RegisterSyncLoop>();
        try
        {
            foreach (var way in ways) loops.Add(RegisterSyncLoop.Create(way));
            InterleavedRounds(ways.Select(w => w.ToString()).ToArray(), loops.Select(l => (Action)(() => l.Run(exits))).ToArray(), exits, rounds);
            return 0;
        }
        finally
        {
            foreach (var loop in loops) loop.Dispose();
        }
    }

    /// <summary>
    /// The four ways of <see cref="PioExitBenchmarks"/> (raw C, raw P/Invoke, Vcpu.Run, VcpuRunner), through its own setup and benchmark methods,
    /// plus two raw C loops that ask the kernel for the work KvmSharp's configuration adds to every
    /// run: the kick signal mask (KVM_SET_SIGNAL_MASK), and that plus GPRs stored into kvm_run at
    /// each exit (KvmSharp's default <c>SyncOnExit</c>). They split the gap to raw C into kernel
    /// work and library work.
    /// </summary>
    private static int InterleavedPio(int rounds)
    {
        var raw = new PioExitBenchmarks();
        var pinvoke = new PioExitBenchmarks();
        var kvmSharp = new PioExitBenchmarks();
        var runner = new PioExitBenchmarks();
        NativePioLoop? masked = null, maskedGprs = null;
        try
        {
            raw.SetupRawC();
            pinvoke.SetupRawPInvoke();
            kvmSharp.SetupKvmSharp();
            runner.SetupKvmSharpRunner();
            masked = new NativePioLoop();
            masked.SetSignalMask(Vcpu.KickSignalNumber);
            maskedGprs = new NativePioLoop();
            maskedGprs.SetSignalMask(Vcpu.KickSignalNumber);
            maskedGprs.UseSyncRegs();
            var m = masked;
            var mg = maskedGprs;
            InterleavedRounds(
                ["RawC", "RawPInvoke", "KvmSharp", "KvmSharpRunner", "RawC+sigmask", "RawC+sigmask+gprs"],
                [raw.RawC, pinvoke.RawPInvoke, kvmSharp.KvmSharpLibrary, runner.KvmSharpRunner, () => m.Run(PioExitBenchmarks.Exits), () => mg.Run(PioExitBenchmarks.Exits)],
                PioExitBenchmarks.Exits, rounds);
            return 0;
        }
        finally
        {
            raw.CleanupRawC();
            pinvoke.CleanupRawPInvoke();
            kvmSharp.CleanupKvmSharp();
            runner.CleanupKvmSharpRunner();
            masked?.Dispose();
            maskedGprs?.Dispose();
        }
    }

    /// <summary>
    /// Times <paramref name="batches"/> (each <paramref name="exits"/> exits) round-robin for
    /// <paramref name="rounds"/> rounds after a warm-up, and prints each way's median and quartiles
    /// per exit with its ratio to the first way.
    /// </summary>
    private static void InterleavedRounds(string[] names, Action[] batches, int exits, int rounds)
    {
        foreach (var batch in batches)
            for (int i = 0; i < 20; i++) batch(); // warm-up: JIT tiers, kernel caches
        var ns = new double[batches.Length][];
        for (int w = 0; w < batches.Length; w++) ns[w] = new double[rounds];
        for (int r = 0; r < rounds; r++)
        {
            for (int w = 0; w < batches.Length; w++)
            {
                long t = System.Diagnostics.Stopwatch.GetTimestamp();
                batches[w]();
                ns[w][r] = System.Diagnostics.Stopwatch.GetElapsedTime(t).TotalNanoseconds / exits;
            }
        }
        double baseline = Median(ns[0]);
        Console.WriteLine($"{rounds} interleaved rounds of {exits} exits per way; ns/exit");
        Console.WriteLine($"{"way",-16} {"median",8} {"Q1",8} {"Q3",8} {"ratio",6}");
        for (int w = 0; w < batches.Length; w++)
        {
            Array.Sort(ns[w]);
            double m = Median(ns[w]);
            Console.WriteLine($"{names[w],-16} {m,8:F0} {ns[w][rounds / 4],8:F0} {ns[w][3 * rounds / 4],8:F0} {m / baseline,6:F2}");
        }

        static double Median(double[] values)
        {
            var sorted = values.Order().ToArray();
            return sorted[sorted.Length / 2];
        }
    }
}
