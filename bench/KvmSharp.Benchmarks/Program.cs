using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace KvmSharp.Benchmarks;

/// <summary>
/// Entry point: <c>dotnet run -c Release --project bench/KvmSharp.Benchmarks -- --filter '*PioExit*'</c>
/// (add <c>--job dry</c> for a few-second smoke run, <c>--job short</c> for a quick estimate).
/// </summary>
public static class Program
{
    public static void Main(string[] args)
    {
        // BenchmarkDotNet 0.14 has no net10.0 toolchain, so it cannot generate and build a separate
        // benchmark project. Run in this process instead. The job is marked as the default job, so
        // jobs chosen on the command line (--job dry/short/medium…) are derived from it and keep the
        // in-process toolchain.
        var config = DefaultConfig.Instance
            .AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance).AsDefault());
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
    }
}
