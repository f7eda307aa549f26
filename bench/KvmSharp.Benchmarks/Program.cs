using BenchmarkDotNet.Running;

namespace KvmSharp.Benchmarks;

/// <summary>
/// Entry point: <c>dotnet run -c Release --project bench/KvmSharp.Benchmarks -- --filter '*PioExit*'</c>
/// (add <c>--job dry</c> for a smoke run of a few seconds, <c>--job short</c> for a quick estimate).
/// </summary>
public static class Program
{
    /// <returns>0, or 1 when a benchmark failed (so that a CI smoke run notices).</returns>
    public static int Main(string[] args)
    {
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
}
