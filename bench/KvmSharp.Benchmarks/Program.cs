using System.Runtime.InteropServices;
using BenchmarkDotNet.Running;
using KvmSharp.Lab;

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
/// [WORKERS…]</c>: execs/s of the FuzzHarness loop (see <see cref="FuzzRate"/>); <c>--linux-boot
/// [ROUNDS]</c>: a stock kernel to its init, KvmSharp vs QEMU -accel kvm (see <see cref="LinuxBoot"/>);
/// <c>--ioeventfd [ROUNDS]</c>: a guest notification through an ioeventfd vs a PIO exit handled in
/// user space (see <see cref="IoEventFdBenchmark"/>).
/// </para>
/// <para>
/// <c>--arch arm64</c> (first) benchmarks arm64 KVM: from an x86_64 host it cross-compiles the
/// arm64 raw C baselines here (aarch64-linux-gnu-gcc) and relaunches in the arm64 lab. In an arm64
/// process <c>--interleaved mmio</c>, <c>--interleaved</c>, <c>--count-ioctls</c> and
/// <c>--restore-table</c> are the arm64 benchmarks (see <see cref="Arm64Benchmarks"/>).
/// <c>--count-with TOOL</c> (first, after <c>--arch</c>) runs the rest of the command line under
/// TOOL (e.g. <c>/work/shared/tools/ioctl-count</c>) where KVM is, i.e. inside the lab machine.
/// </para>
/// </summary>
public static class Program
{
    /// <returns>0, or 1 when a benchmark failed (so that a CI smoke run notices), or 2 for bad arguments.</returns>
    public static int Main(string[] args)
    {
        // Where /dev/kvm does not work, benchmark in a KvmSharp.Lab machine: there everything is
        // emulated, so only the ratios to the raw baselines measured in the same run mean anything.
        if (RelaunchIfNeeded(ref args) is int labExitCode)
            return labExitCode;
        if (args is ["--count-with", var tool, .. var traced])
            return RunUnder(tool, traced);
        if (RuntimeInformation.ProcessArchitecture == Architecture.Arm64)
            return MainArm64(args);
        if (args is ["--interleaved", "mmio", ..])
        {
            Console.Error.WriteLine("--interleaved mmio is the arm64 exit benchmark: add --arch arm64 (first).");
            return 2;
        }
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
        if (args is ["--linux-boot", ..])
            return LinuxBoot.Run(args[1..]);
        if (args is ["--ioeventfd", ..])
            return IoEventFdBenchmark.Run(args[1..]);
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

    /// <summary>
    /// <c>--arch x86_64|arm64</c> (first) picks the KVM's architecture (default: this process's). Before
    /// relaunching in a lab machine of another architecture, the arm64 raw C baselines are
    /// cross-compiled here and passed on with <c>--native-dir DIR</c>; in the process that runs the
    /// benchmark, both options are taken off <paramref name="args"/>.
    /// </summary>
    private static int? RelaunchIfNeeded(ref string[] args)
    {
        var lab = new LabOptions();
        if (args is ["--arch", var name, .. var rest])
        {
            if (name is not ("x86_64" or "arm64"))
            {
                Console.Error.WriteLine($"--arch '{name}': use x86_64 or arm64.");
                return 2;
            }
            lab = new LabOptions { Architecture = LabArchitectures.Parse(name) };
            if (KvmLab.IsInsideLab || lab.Architecture == LabArchitectures.Host)
                args = rest;
        }
        if (!KvmLab.IsInsideLab && lab.Architecture != LabArchitectures.Host && lab.Architecture == LabArchitecture.Arm64)
        {
            string dir;
            try
            {
                dir = NativeBuild.CrossCompileForLab();
            }
            catch (InvalidOperationException e)
            {
                Console.Error.WriteLine(e.Message);
                return 2;
            }
            try
            {
                return KvmLab.RelaunchIfNeeded([.. args, "--native-dir", dir], lab);
            }
            finally
            {
                NativeBuild.DeleteDirectory(dir);
            }
        }
        if (KvmLab.RelaunchIfNeeded(args, lab) is int code)
            return code;
        if (args is [.. var before, "--native-dir", var prebuilt])
        {
            NativeBuild.PrebuiltDirectory = prebuilt;
            args = before;
        }
        return null;
    }

    /// <summary>
    /// <c>--count-with TOOL …</c>: runs this program with the rest of the arguments under TOOL (a tracer)
    /// and returns its exit code. A TOOL that is a script runs with <c>sh</c> from PATH: in a lab
    /// machine of another architecture the host's interpreter named on its <c>#!</c> line cannot run
    /// (busybox's sh comes first there); its tracer, e.g. strace, must be of that architecture too.
    /// </summary>
    private static int RunUnder(string tool, string[] args)
    {
        bool script = File.Exists(tool) && File.ReadAllText(tool).StartsWith("#!", StringComparison.Ordinal);
        var psi = new System.Diagnostics.ProcessStartInfo(script ? "sh" : tool) { UseShellExecute = false };
        if (script) psi.ArgumentList.Add(tool);
        string self = Environment.ProcessPath!;
        psi.ArgumentList.Add(self);
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(Environment.GetCommandLineArgs()[0]);
        foreach (string a in args) psi.ArgumentList.Add(a);
        if (NativeBuild.PrebuiltDirectory is { } dir)
        {
            psi.ArgumentList.Add("--native-dir");
            psi.ArgumentList.Add(dir);
        }
        using var process = System.Diagnostics.Process.Start(psi)!;
        process.WaitForExit();
        return process.ExitCode;
    }

    /// <summary>The modes in an arm64 process (see <see cref="Arm64Benchmarks"/>); the x86-only ones say so.</summary>
    private static int MainArm64(string[] args)
    {
        switch (args)
        {
            case ["--count-ioctls", "restore", ..]:
                return CountRestoreIoctls(args[2..]);
            case ["--count-ioctls", var way, .. var rest] when Arm64Benchmarks.Ways.Contains(way) && rest.Length <= 1:
            {
                int exits = 10000;
                if (rest is [var n] && (!int.TryParse(n, out exits) || exits < 0)) break;
                return Arm64Benchmarks.CountIoctls(way, exits);
            }
            case ["--restore-table", ..]:
                return RestoreTable.Run(args[1..]);
            case ["--interleaved", "mmio", .. var rest] when TryRounds(rest, out int rounds):
                return Arm64Benchmarks.Interleaved(Arm64Benchmarks.MmioWays, rounds);
            case ["--interleaved", .. var rest] when TryRounds(rest, out int rounds):
                return Arm64Benchmarks.Interleaved(Arm64Benchmarks.RegisterWays, rounds);
        }
        Console.Error.WriteLine(
            "arm64 modes: --interleaved mmio [ROUNDS] | --interleaved [ROUNDS] | --restore-table [ROUNDS] [--sizes …] [--pages …] [--ways …] | " +
            $"--count-ioctls {string.Join("|", Arm64Benchmarks.Ways)} [EXITS] | --count-ioctls restore WAY [CYCLES]. " +
            "The PIO, kick-latency, fuzz-rate and BenchmarkDotNet modes are x86's.");
        return 2;

        static bool TryRounds(string[] rest, out int rounds)
        {
            rounds = 300;
            return rest.Length == 0 || (rest.Length == 1 && int.TryParse(rest[0], out rounds) && rounds > 0);
        }
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
    internal static void InterleavedRounds(string[] names, Action[] batches, int exits, int rounds)
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
