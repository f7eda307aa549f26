using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Filters;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace KvmSharp.Benchmarks;

/// <summary>
/// Snapshot restore of a guest that dirties N pages per run (<see cref="DirtyPagesGuest"/>), three
/// ways in one run (see <see cref="RestoreWay"/>), per dirty-log back end:
/// <list type="bullet">
/// <item><see cref="RawC"/> (baseline): <c>snapshot_vm.c</c>, the same ioctls as KvmSharp.</item>
/// <item><see cref="KvmSharp"/>: <see cref="VirtualMachine.Restore"/>.</item>
/// <item><see cref="FullCopy"/>: all RAM copied back + <see cref="Registers.IRegisterSync.RestoreState"/> (no tracking; GET_DIRTY_LOG rows only).</item>
/// </list>
/// One operation is one cycle: restore, then run the guest to its exit (which dirties the pages
/// again), so the Mean is restore + run. Inside it both halves are timed with <see cref="Stopwatch"/>
/// into preallocated buffers (no allocation); the extra columns <c>Restore</c> and <c>Run</c> are the
/// medians of those, and <c>Restore ratio</c> the restore median over the raw C one.
/// </summary>
/// <remarks>
/// A restore of a few pages takes tens of µs, too little for <c>[IterationSetup]</c>, hence the
/// timing inside. Part of what a restore costs is paid in the next run (KVM loads the sync-regs sets
/// there, and each re-protected page faults once): compare the Run column with the run-after-run
/// figures of <c>--restore-table</c>, which also covers the full grid (<see cref="RestoreTable"/>).
/// </remarks>
[MemoryDiagnoser]
[Config(typeof(Config))]
public class RestoreBenchmarks
{
    /// <summary>A reduced grid (the full one is <c>--restore-table</c>).</summary>
    public static IEnumerable<RestoreCell> Cells => [new(16, 8), new(64, 1), new(64, 8), new(64, 64), new(64, 512), new(256, 8)];

    [ParamsSource(nameof(Cells))]
    public RestoreCell Cell { get; set; } = new(64, 8);

    [Params(DirtyLogBackend.GetDirtyLog, DirtyLogBackend.ManualProtect, DirtyLogBackend.DirtyRing)]
    public DirtyLogBackend Backend { get; set; }

    private RestoreLoop? _loop;
    private CycleSamples? _samples;

    [GlobalSetup(Target = nameof(RawC))]
    public void SetupRawC() => Setup(nameof(RawC), RestoreWays.RawC(Backend));

    [GlobalSetup(Target = nameof(KvmSharp))]
    public void SetupKvmSharp() => Setup(nameof(KvmSharp), RestoreWays.KvmSharp(Backend));

    [GlobalSetup(Target = nameof(FullCopy))]
    public void SetupFullCopy() => Setup(nameof(FullCopy), RestoreWay.FullCopy);

    private void Setup(string method, RestoreWay way)
    {
        _loop = RestoreLoop.Create(way, Cell.SizeMiB, Cell.Pages);
        _samples = CycleSamples.Start(CycleSamples.Key(method, Cell, Backend));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _loop?.Verify(); // the last cycles restored memory correctly
        _loop?.Dispose();
        _loop = null;
    }

    [Benchmark(Baseline = true, Description = "raw C restore + run")]
    public void RawC() => Cycle();

    [Benchmark(Description = "KvmSharp vm.Restore + run")]
    public void KvmSharp() => Cycle();

    [Benchmark(Description = "full copy + RestoreState + run")]
    public void FullCopy() => Cycle();

    private void Cycle()
    {
        var (restore, run) = _loop!.TimedCycle();
        _samples!.Add(restore, run);
    }

    private sealed class Config : ManualConfig
    {
        public Config()
        {
            AddColumn(new CycleColumn("Restore", "median µs of the restore alone (Stopwatch inside the op)", s => s.MedianRestoreUs()));
            AddColumn(new CycleColumn("Run", "median µs of the run after the restore", s => s.MedianRunUs()));
            AddColumn(new CycleColumn("Restore ratio", "Restore median ÷ the raw C one of the same cell and back end", null));
            // The full copy ignores the back end: measure it once per cell.
            AddFilter(new SimpleFilter(b => b.Descriptor.WorkloadMethod.Name != nameof(FullCopy)
                                            || (DirtyLogBackend)b.Parameters[nameof(Backend)] == DirtyLogBackend.GetDirtyLog));
        }
    }

    /// <summary>
    /// The last <see cref="Capacity"/> (restore, run) durations of one benchmark case. PERF: fixed
    /// arrays written in a ring, so recording allocates nothing and MemoryDiagnoser sees only the
    /// restore's own allocations.
    /// </summary>
    internal sealed class CycleSamples
    {
        private const int Capacity = 1 << 14;
        private static readonly Dictionary<string, CycleSamples> s_all = [];
        private readonly long[] _restore = new long[Capacity], _run = new long[Capacity];
        private int _count;

        public static string Key(string method, object cell, object backend) => $"{method}|{cell}|{backend}";

        public static CycleSamples Start(string key)
        {
            lock (s_all) return s_all[key] = new CycleSamples();
        }

        public static CycleSamples? Find(string key)
        {
            lock (s_all) return s_all.GetValueOrDefault(key);
        }

        public void Add(long restore, long run)
        {
            int i = _count++ & (Capacity - 1);
            _restore[i] = restore;
            _run[i] = run;
        }

        public double MedianRestoreUs() => MedianUs(_restore);
        public double MedianRunUs() => MedianUs(_run);

        private double MedianUs(long[] ticks)
        {
            var sorted = ticks.AsSpan(0, Math.Min(_count, Capacity)).ToArray();
            if (sorted.Length == 0) return double.NaN;
            Array.Sort(sorted);
            return sorted[sorted.Length / 2] * 1e6 / Stopwatch.Frequency;
        }
    }

    /// <summary>A column computed from <see cref="CycleSamples"/>; with no selector, the restore ratio to the raw C case.</summary>
    private sealed class CycleColumn(string name, string legend, Func<CycleSamples, double>? value) : IColumn
    {
        public string Id => nameof(CycleColumn) + name;
        public string ColumnName => name;
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => legend;

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
        {
            object cell = benchmarkCase.Parameters[nameof(Cell)], backend = benchmarkCase.Parameters[nameof(Backend)];
            var mine = CycleSamples.Find(CycleSamples.Key(benchmarkCase.Descriptor.WorkloadMethod.Name, cell, backend));
            if (mine is null) return "-";
            if (value is not null) return $"{value(mine):F1} µs";
            var baseline = CycleSamples.Find(CycleSamples.Key(nameof(RawC), cell, backend));
            return baseline is null ? "-" : $"{mine.MedianRestoreUs() / baseline.MedianRestoreUs():F2}";
        }

        public bool IsAvailable(Summary summary) => true;
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    }
}

/// <summary>One cell of the restore grid: guest RAM size and pages dirtied per run. Sorted by size, then pages.</summary>
public sealed record RestoreCell(int SizeMiB, int Pages) : IComparable<RestoreCell>, IComparable
{
    public int CompareTo(RestoreCell? other) =>
        other is null ? 1 : SizeMiB != other.SizeMiB ? SizeMiB.CompareTo(other.SizeMiB) : Pages.CompareTo(other.Pages);

    public int CompareTo(object? obj) => CompareTo(obj as RestoreCell);

    public override string ToString() => $"{SizeMiB} MiB, {Pages} p";
}
