using System.Diagnostics;

namespace KvmSharp.Benchmarks;

/// <summary>
/// <c>--restore-table</c>: the full grid of <see cref="RestoreBenchmarks"/> (guest sizes × dirty
/// pages × ways), outside BenchmarkDotNet. Per cell, the six dirty-tracking ways are set up side by
/// side and timed round-robin (the order rotating each round), so that the host's drift is shared:
/// each round and way does <c>restore</c>, <c>run</c>, <c>run</c>, each timed alone with
/// <see cref="Stopwatch"/>. The full-copy way is timed right after, in its own loop, because
/// copying 16–256 MiB evicts the caches the others would then pay for.
/// </summary>
/// <remarks>
/// <para>Why three timings: with sync regs, the GPRs, special registers and events a restore sets
/// are only flagged in <c>kvm_run</c>; KVM loads them at the next KVM_RUN. And the dirty log
/// write-protects the pages again, so the next run takes a fault on each page it dirties. Both are
/// costs of the restore paid inside the next run. <c>run after run</c> is the same run without a
/// restore before it (the pages are still writable, nothing to load), so</para>
/// <para><c>restore + deferred = restore + (run after restore − run after run)</c></para>
/// <para>is what a restore really costs a fuzzer; the plain <c>restore</c> column is the call alone.</para>
/// </remarks>
internal static class RestoreTable
{
    private const int WarmupCycles = 20;

    public static int Run(string[] args)
    {
        int rounds = 200;
        int[] sizes = DirtyPagesGuest.SizesMiB, pages = DirtyPagesGuest.PageCounts;
        var ways = Enum.GetValues<RestoreWay>().Where(w => w != RestoreWay.FullCopy).ToArray();
        for (int i = 0; i < args.Length; i++)
        {
            bool ok = args[i] switch
            {
                "--sizes" when i + 1 < args.Length => TryList(args[++i], out sizes),
                "--pages" when i + 1 < args.Length => TryList(args[++i], out pages),
                "--ways" when i + 1 < args.Length => TryWays(args[++i], out ways),
                _ => int.TryParse(args[i], out rounds) && rounds > 0,
            };
            if (!ok)
            {
                Console.Error.WriteLine("usage: --restore-table [ROUNDS (default 200)] [--sizes 16,64,256] [--pages 1,8,64,512] [--ways RawCGetDirtyLog,KvmSharpGetDirtyLog,…]");
                return 2;
            }
        }

        ways = ways.Where(w => w != RestoreWay.FullCopy && w.IsAvailable()).ToArray();
        Console.WriteLine($"Restore: {rounds} interleaved rounds per cell of restore, run, run for {string.Join(", ", ways.Select(w => w.Label()))};");
        Console.WriteLine($"then {rounds} cycles of {RestoreWay.FullCopy.Label()} alone (fewer for big guests). Guest: " +
            (RestoreLoop.IsArm64 ? "EL1 with the MMU off, one byte into each dirty page, one MMIO exit." : "CPL3, one byte into each dirty page, one PIO exit."));
        Console.WriteLine("All times µs, medians (p90 in brackets). ratio = KvmSharp ÷ raw C of the same back end; ÷full = full copy ÷ this way.");
        WarmUpJit(ways);
        var summary = new List<string>();
        foreach (int size in sizes)
        {
            foreach (int n in pages)
            {
                var results = MeasureCell(ways, size, n, rounds);
                PrintCell(size, n, rounds, results);
                summary.Add(SummaryRow(size, n, results));
            }
        }
        Console.WriteLine();
        Console.WriteLine("Summary: restore + deferred, µs (median) — KvmSharp per back end with its ratio to raw C, and full copy with its ratio to KvmSharp GET_DIRTY_LOG");
        Console.WriteLine($"{"guest",7} {"pages",5} | {"GET_DIRTY_LOG",15} {"manual protect",15} {"dirty ring",15} | {"full copy",10} {"÷",6}");
        foreach (var row in summary) Console.WriteLine(row);
        return 0;
    }

    /// <summary>
    /// Runs every way on a small guest for a few seconds, so that KvmSharp's code (and this harness's)
    /// is at tier 1 before anything is measured: with a few dozen warm-up cycles per cell it would still
    /// be tier-0 code, which made KvmSharp's restore look twice as slow as it is.
    /// </summary>
    private static void WarmUpJit(RestoreWay[] ways)
    {
        // PERF: by time, not by count: tier-1 code arrives only after the call-counting delay.
        var loops = new List<RestoreLoop>();
        try
        {
            foreach (var way in ways.Append(RestoreWay.FullCopy)) loops.Add(RestoreLoop.Create(way, 16, 8));
            var sw = Stopwatch.StartNew();
            while (sw.Elapsed < TimeSpan.FromSeconds(3))
                foreach (var loop in loops) TimeRound(loop);
        }
        finally
        {
            foreach (var loop in loops) loop.Dispose();
        }
    }

    private static bool TryList(string s, out int[] values)
    {
        values = [];
        var parts = s.Split(',');
        var list = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], out list[i]) || list[i] <= 0) return false;
        values = list;
        return true;
    }

    private static bool TryWays(string s, out RestoreWay[] ways)
    {
        var list = new List<RestoreWay>();
        foreach (var name in s.Split(','))
        {
            if (!Enum.TryParse(name, ignoreCase: true, out RestoreWay w)) { ways = []; return false; }
            list.Add(w);
        }
        ways = [.. list];
        return true;
    }

    /// <summary>One way's samples in one cell: µs per restore, per run after it, per run after a run; bytes allocated per restore.</summary>
    private sealed record WayResult(RestoreWay Way, double[] Restore, double[] RunAfterRestore, double[] RunAfterRun, double AllocatedPerRestore)
    {
        public double RestoreMedian => Median(Restore);
        public double Deferred => Median(RunAfterRestore) - Median(RunAfterRun);
        public double Total => RestoreMedian + Deferred;
    }

    private static List<WayResult> MeasureCell(RestoreWay[] ways, int sizeMiB, int pages, int rounds)
    {
        var results = new List<WayResult>();
        var loops = new List<RestoreLoop>();
        try
        {
            foreach (var way in ways) loops.Add(RestoreLoop.Create(way, sizeMiB, pages));
            foreach (var loop in loops)
                for (int i = 0; i < WarmupCycles; i++) loop.TimedCycle();
            var samples = loops.Select(_ => (R: new double[rounds], A: new double[rounds], B: new double[rounds], Bytes: 0L)).ToArray();
            for (int r = 0; r < rounds; r++)
            {
                for (int k = 0; k < loops.Count; k++)
                {
                    int w = (k + r) % loops.Count; // rotate, so that no way always follows the same one
                    ref var s = ref samples[w];
                    (s.R[r], s.A[r], s.B[r], long bytes) = TimeRound(loops[w]);
                    s.Bytes += bytes;
                }
            }
            for (int w = 0; w < loops.Count; w++)
            {
                loops[w].Verify();
                results.Add(new WayResult(ways[w], samples[w].R, samples[w].A, samples[w].B, (double)samples[w].Bytes / rounds));
            }
        }
        finally
        {
            foreach (var loop in loops) loop.Dispose();
            loops.Clear();
        }
        GC.Collect(); // give the previous cell's snapshots (up to 256 MiB each) back before the next

        // PERF: the full copy is timed apart from the others, because copying 16–256 MiB evicts the
        // caches the next way in a round would then pay for; and it takes tens of ms at 256 MiB, so
        // its rounds are capped.
        int fullRounds = Math.Max(20, Math.Min(rounds, 8192 / sizeMiB));
        using (var full = RestoreLoop.Create(RestoreWay.FullCopy, sizeMiB, pages))
        {
            for (int i = 0; i < 3; i++) full.TimedCycle();
            var (fr, fa, fb) = (new double[fullRounds], new double[fullRounds], new double[fullRounds]);
            long bytes = 0;
            for (int r = 0; r < fullRounds; r++)
            {
                (fr[r], fa[r], fb[r], long b) = TimeRound(full);
                bytes += b;
            }
            full.Verify();
            results.Add(new WayResult(RestoreWay.FullCopy, fr, fa, fb, (double)bytes / fullRounds));
        }
        GC.Collect();
        return results;
    }

    /// <summary>restore, run, run: µs each, and the bytes the restore allocated.</summary>
    private static (double Restore, double RunAfterRestore, double RunAfterRun, long Bytes) TimeRound(RestoreLoop loop)
    {
        long a0 = GC.GetAllocatedBytesForCurrentThread();
        long t0 = Stopwatch.GetTimestamp();
        loop.Restore();
        long t1 = Stopwatch.GetTimestamp();
        long a1 = GC.GetAllocatedBytesForCurrentThread();
        loop.Run();
        long t2 = Stopwatch.GetTimestamp();
        loop.Run();
        long t3 = Stopwatch.GetTimestamp();
        return (Us(t1 - t0), Us(t2 - t1), Us(t3 - t2), a1 - a0);
    }

    private static double Us(long ticks) => ticks * 1e6 / Stopwatch.Frequency;

    private static void PrintCell(int sizeMiB, int pages, int rounds, List<WayResult> results)
    {
        Console.WriteLine();
        Console.WriteLine($"{sizeMiB} MiB guest, {pages} dirty page(s)");
        Console.WriteLine($"{"way",-26} {"restore",17} {"ratio",5} {"run after restore",17} {"run after run",15} {"restore+deferred",16} {"ratio",5} {"B/restore",9} {"÷full",7}");
        var full = results.Single(r => r.Way == RestoreWay.FullCopy);
        foreach (var r in results)
        {
            var baseline = r.Way.Backend() is { } b && !r.Way.IsRawC() ? results.FirstOrDefault(x => x.Way == RestoreWays.RawC(b)) : null;
            string ratio = baseline is null ? "" : $"{r.RestoreMedian / baseline.RestoreMedian:F2}";
            string totalRatio = baseline is null ? "" : $"{r.Total / baseline.Total:F2}";
            string vsFull = r.Way == RestoreWay.FullCopy ? "" : Times(full.Total / r.Total);
            Console.WriteLine($"{r.Way.Label(),-26} {Cell(r.Restore),17} {ratio,5} {Cell(r.RunAfterRestore),17} {Median(r.RunAfterRun),15:F1} {r.Total,16:F1} {totalRatio,5} {r.AllocatedPerRestore,9:F0} {vsFull,7}");
        }
    }

    private static string SummaryRow(int sizeMiB, int pages, List<WayResult> results)
    {
        string Way(Func<DirtyLogBackend, RestoreWay> pick, DirtyLogBackend b)
        {
            var k = results.FirstOrDefault(r => r.Way == pick(b));
            var c = results.FirstOrDefault(r => r.Way == RestoreWays.RawC(b));
            return k is null || c is null ? "n/a" : $"{k.Total:F1} ({k.Total / c.Total:F2})";
        }
        var full = results.Single(r => r.Way == RestoreWay.FullCopy);
        var kgdl = results.FirstOrDefault(r => r.Way == RestoreWay.KvmSharpGetDirtyLog);
        return $"{sizeMiB + " MiB",7} {pages,5} | {Way(RestoreWays.KvmSharp, DirtyLogBackend.GetDirtyLog),15} {Way(RestoreWays.KvmSharp, DirtyLogBackend.ManualProtect),15} " +
               $"{Way(RestoreWays.KvmSharp, DirtyLogBackend.DirtyRing),15} | {full.Total,10:F0} {(kgdl is null ? "" : Times(full.Total / kgdl.Total)),6}";
    }

    private static string Times(double ratio) => ratio >= 10 ? $"{ratio:F0}×" : $"{ratio:F1}×";

    private static string Cell(double[] values)
    {
        var sorted = values.Order().ToArray();
        return $"{sorted[sorted.Length / 2],7:F1} [{sorted[sorted.Length * 9 / 10],7:F1}]";
    }

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        return sorted[sorted.Length / 2];
    }
}
