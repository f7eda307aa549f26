namespace KvmSharp.Tests;

/// <summary>
/// Bounded waits for tests that involve other threads: a test that waits must fail with a message
/// when what it waits for never happens, not hang the run. The bounds are generous (everything in the
/// lab is emulated and slow); they say "this is stuck", not how fast anything is.
/// </summary>
internal static class Wait
{
    public static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    /// <summary>Polls <paramref name="condition"/> until it holds; fails naming <paramref name="what"/> after <see cref="Bound"/>.</summary>
    public static void Until(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Bound;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"Timed out after {Bound.TotalSeconds:F0} s waiting until {what}.");
            Thread.Sleep(1);
        }
    }

    /// <summary>
    /// Runs <paramref name="action"/> (which blocks, e.g. Invoke or Pause) on another thread and waits
    /// for it; fails naming <paramref name="what"/> if it has not returned after <see cref="Bound"/>.
    /// Its exception, if any, is rethrown here.
    /// </summary>
    public static void For(Action action, string what)
    {
        var task = Task.Factory.StartNew(action, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        if (Task.WaitAny([task], Bound) != 0)
            Assert.Fail($"{what} did not return within {Bound.TotalSeconds:F0} s.");
        task.GetAwaiter().GetResult();
    }

    /// <summary>Joins <paramref name="thread"/>; fails naming <paramref name="what"/> if it has not ended after <see cref="Bound"/>.</summary>
    public static void Join(Thread thread, string what)
    {
        if (!thread.Join(Bound)) Assert.Fail($"{what}: the thread did not end within {Bound.TotalSeconds:F0} s.");
    }
}
