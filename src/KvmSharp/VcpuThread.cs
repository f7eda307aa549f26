using KvmSharp.Devices;

namespace KvmSharp;

/// <summary>
/// Runs one vCPU on a dedicated thread with a <see cref="VcpuRunner"/> loop, and lets other threads
/// pause it (kick it out of KVM_RUN and park the thread outside <see cref="Vcpu.Run()"/>, so its
/// registers may then be used from any thread) and resume it. For SMP guests: one per vCPU.
/// </summary>
/// <remarks>All members are thread-safe.</remarks>
public sealed class VcpuThread : IDisposable
{
    private readonly VcpuRunner _runner;
    private readonly Thread _thread;
    private readonly TaskCompletionSource<RunResult> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly object _lock = new(); // a Monitor: Pause waits on it
    private bool _pauseRequested;
    private bool _paused;
    private bool _stopRequested;

    /// <summary>Starts running <paramref name="vcpu"/> on a new thread, dispatching to <paramref name="bus"/>.</summary>
    public VcpuThread(Vcpu vcpu, IoBus bus, UnclaimedAccessPolicy unclaimed = UnclaimedAccessPolicy.Ignore)
    {
        _runner = new VcpuRunner(vcpu, bus) { UnclaimedPolicy = unclaimed };
        _thread = new Thread(Main) { IsBackground = true, Name = $"vCPU {vcpu.Id}" };
        _thread.Start();
    }

    /// <summary>The vCPU.</summary>
    public Vcpu Vcpu => _runner.Vcpu;

    /// <summary>Completes when the loop stops for good (HLT, shutdown, a device's stop request, an unhandled exit, <see cref="Stop"/>), with why; faults if KVM_RUN failed.</summary>
    public Task<RunResult> Completion => _completion.Task;

    /// <summary>True while paused.</summary>
    public bool IsPaused
    {
        get
        {
            lock (_lock) return _paused;
        }
    }

    private void Main()
    {
        try
        {
            while (true)
            {
                lock (_lock)
                {
                    bool parked = false;
                    while (_pauseRequested && !_stopRequested)
                    {
                        _paused = parked = true;
                        Monitor.PulseAll(_lock);
                        Monitor.Wait(_lock);
                    }
                    _paused = false;
                    // Pause re-kicks until the thread parks; a kick that landed after the park must not
                    // cut the first run after Resume short.
                    if (parked) Vcpu.CancelExitRequest();
                    if (_stopRequested)
                    {
                        _completion.TrySetResult(new RunResult(RunStopReason.StopRequested, VcpuExitReason.Interrupted, 0, 0));
                        return;
                    }
                }
                var result = _runner.Run();
                if (result.Reason == RunStopReason.ExitRequested)
                {
                    lock (_lock)
                        if (_pauseRequested || _stopRequested) continue; // our own kick
                }
                _completion.TrySetResult(result);
                return;
            }
        }
        catch (Exception e)
        {
            _completion.TrySetException(e);
        }
        finally
        {
            lock (_lock)
            {
                _paused = true; // not running any more: waiters for a pause may proceed
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>
    /// Kicks the vCPU and waits until its thread is parked outside KVM_RUN (or has finished). Idempotent.
    /// Called on the vCPU's own thread (by a device handler), it only asks: the loop parks when the
    /// handler returns.
    /// </summary>
    public void Pause()
    {
        lock (_lock)
        {
            _pauseRequested = true;
            if (Thread.CurrentThread == _thread)
            {
                Vcpu.RequestExit(); // the loop's next entry returns, and Main parks
                return;
            }
            while (!_paused)
            {
                Vcpu.RequestExit();
                Monitor.Wait(_lock, 10); // re-kick in case the request landed between two runs
            }
        }
    }

    /// <summary>Lets a paused vCPU run again.</summary>
    public void Resume()
    {
        lock (_lock)
        {
            if (!_pauseRequested) return;
            _pauseRequested = false;
            if (!_completion.Task.IsCompleted) _paused = false;
            Monitor.PulseAll(_lock);
        }
    }

    /// <summary>Pauses every thread (kicking them all first, then waiting), so that all vCPUs are stopped at once.</summary>
    public static void PauseAll(IEnumerable<VcpuThread> threads)
    {
        ArgumentNullException.ThrowIfNull(threads);
        var all = threads.ToArray();
        foreach (var t in all)
            lock (t._lock) t._pauseRequested = true;
        foreach (var t in all) t.Vcpu.RequestExit();
        foreach (var t in all) t.Pause();
    }

    /// <summary>Resumes every thread.</summary>
    public static void ResumeAll(IEnumerable<VcpuThread> threads)
    {
        ArgumentNullException.ThrowIfNull(threads);
        foreach (var t in threads) t.Resume();
    }

    /// <summary>
    /// Stops the loop (kicking the vCPU) and waits for the thread to end. Called on the vCPU's own
    /// thread (by a device handler), it only asks: the loop ends when the handler returns.
    /// </summary>
    public void Stop()
    {
        lock (_lock)
        {
            _stopRequested = true;
            Monitor.PulseAll(_lock);
        }
        if (Thread.CurrentThread == _thread)
        {
            Vcpu.RequestExit();
            return;
        }
        while (!_thread.Join(10)) Vcpu.RequestExit();
    }

    /// <summary>Same as <see cref="Stop"/>; the vCPU itself is not disposed.</summary>
    public void Dispose() => Stop();
}
