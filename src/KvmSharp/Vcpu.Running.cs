using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KvmSharp.Interop;
using KvmSharp.Registers;

namespace KvmSharp;

// Running: Run and its inlined fast path, the general run loop, timeouts, cancellation and kicks.
public sealed partial class Vcpu
{
    /// <summary>
    /// Writes back dirty registers, runs guest code until the next exit, and returns a view of the
    /// exit. Wraps KVM_RUN. Allocates nothing.
    /// </summary>
    /// <returns>A view into <c>kvm_run</c>, valid until the next call to <see cref="Run()"/> or disposal.</returns>
    /// <remarks>
    /// A signal or <see cref="RequestExit"/> makes KVM_RUN fail with EINTR;
    /// that is reported as <see cref="VcpuExitReason.Interrupted"/>, not thrown. Kicks made only to run
    /// <see cref="Invoke"/> actions are absorbed: the actions run on this thread and the guest resumes.
    /// Whatever the guest does is an exit, never an exception.
    /// <para>x86 port I/O and MMIO exits (stock KVM): the exit reaches the caller with the instruction
    /// not yet finished — RIP still points at it — and this method's next call finishes it inside
    /// KVM_RUN before any guest code runs (stores an IN's or MMIO read's data, advances RIP), unless RIP
    /// was moved meanwhile. Registers written through <see cref="X86"/> are loaded before that
    /// completion; the cache makes every write mean what it says (see <see cref="VcpuExit.Io"/> and
    /// <see cref="X86RegisterSync.Rip"/>). A HLT exit's RIP is past the <c>hlt</c>.</para>
    /// <para>Performance: the common case (a vCPU that has run before on this thread, nothing queued;
    /// on x86 only registers that travel in <c>kvm_run</c> written, on arm64 any, written back with
    /// one KVM_SET_ONE_REG each) is small enough for the JIT to inline into the calling method, so
    /// call <see cref="Run()"/> directly from the exit loop: the per-exit cost is then one
    /// interlocked operation to publish the thread to kickers, a plain store to withdraw it, the
    /// write-back, and KVM_RUN.</para>
    /// </remarks>
    /// <exception cref="KvmException">KVM_RUN failed for another reason (e.g. EFAULT for a slot whose
    /// memory vanished, EINVAL for invalid register state, ENOEXEC for an uninitialised arm64 vCPU).</exception>
    /// <exception cref="InvalidOperationException">Another thread is running this vCPU.</exception>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed or being disposed — also when
    /// <see cref="Dispose"/> on another thread ended this run (it has no exit to report).</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public VcpuExit Run()
    {
        // PERF: after KVM_RUN returns, the kernel's and the guest's work has evicted this thread's
        // caches and branch predictors, so what the path between two KVM_RUNs costs is mostly the
        // calls, cache lines and pages it touches. The common case — an x86 vCPU that has run
        // before, on a thread that has run a vCPU before, nothing queued, only kvm_run-borne
        // registers dirty — is this short inlinable block: the JIT folds it into the caller's exit
        // loop, where the P/Invoke frame setup and the thread-static base move out of the loop.
        // It has no try/finally because nothing in it throws; every other case is RunSlow.
        // AggressiveOptimization: this method gets no tier-0 profile, so the JIT never judges the
        // inlined block cold from calls made during warm-up (first runs take RunSlow) — with such
        // a profile it sometimes left the P/Invoke out of line, ~70 ns per exit.
        // arm64 has a block of its own (RunArm64): a process runs vCPUs of its own architecture on
        // a real KVM, and s_arm64Process is a constant to the optimizing JIT, which imports only the
        // block of the process's architecture: x86's inlined code is what it was (the test adds 14
        // bytes to Run's IL, which the JIT counts against the caller's inlining budget).
        if (s_arm64Process) return RunArm64();
        int me = KickSignal.PreparedThreadId;
        var core = _core;
        if (me != 0 && Volatile.Read(ref core.State) == VcpuCore.Owned(me) && CanRunFast)
        {
            // This thread owns the vCPU from its last run; only this thread changes an owned state,
            // except Dispose's terminal write after it took the vCPU. The core's entry sequence
            // publishes the thread to kickers around KVM_RUN.
            var x86 = _x86Hooks!;
            x86.FlushInline(_runAddress);
            int r = core.Enter(me);
            x86.AfterRun(r, _runAddress);
            if (r < 0) return RunOwned(me, r);
            return new VcpuExit(core, core.RunPage, KvmArchitecture.X86_64);
        }
        return RunSlow();
    }

    /// <summary>
    /// Whether <see cref="Run()"/> takes its inlined path (given the thread that owns the vCPU): an
    /// x86 vCPU without a dirty ring that has run once (its signal mask is set), no Invoke queued, not
    /// being disposed, and a register write-back that needs no ioctl. Run loops get it too.
    /// </summary>
    internal bool CanRunFast
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => _fastPath && (Volatile.Read(ref _core.InvokeCount) | Volatile.Read(ref _core.Disposing)) == 0 && _x86Hooks!.CanFlushInline;
    }

    /// <summary>An arm64 process (its KVM runs arm64 vCPUs): a constant once the optimizing JIT compiles <see cref="Run()"/>.</summary>
    private static readonly bool s_arm64Process = RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.Arm64;

    /// <summary>
    /// <see cref="Run()"/> in an arm64 process: arm64's fast path, inlined into the caller's exit loop
    /// as x86's block is, or <see cref="RunSlow"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private VcpuExit RunArm64()
    {
        int me = KickSignal.PreparedThreadId;
        var core = _core;
        if (_arm64Fast is { } arm && CanEnterArm64Fast(core, me)) return EnterArm64Fast(arm, core, me);
        return RunSlow();
    }

    /// <summary>
    /// Whether <see cref="Run()"/> takes arm64's fast path on the calling thread: an arm64 vCPU
    /// without a dirty ring that has run once on this thread and still belongs to it, no Invoke
    /// queued, not being disposed. Dirty registers do not matter (written with ONE_REG there).
    /// </summary>
    internal bool CanRunArm64Fast => _arm64Fast is not null && CanEnterArm64Fast(_core, KickSignal.PreparedThreadId);

    /// <summary>
    /// The conditions of arm64's fast path besides <c>_arm64Fast</c> (arm64, signal mask set, no dirty
    /// ring): the thread <paramref name="me"/> owns the vCPU from its last run, nothing is queued, no
    /// disposal has begun — those of Run's x86 block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool CanEnterArm64Fast(VcpuCore core, int me) =>
        me != 0 && Volatile.Read(ref core.State) == VcpuCore.Owned(me)
        && (Volatile.Read(ref core.InvokeCount) | Volatile.Read(ref core.Disposing)) == 0;

    /// <summary>
    /// arm64's fast path, once <see cref="CanEnterArm64Fast"/>: write-back, the entry sequence, the
    /// cache update, the exit view — what RunOwned does for one entry, with no try/finally, no
    /// interface dispatch and no CAS.
    /// </summary>
    /// <remarks>
    /// Unlike x86's block, the write-back may make ioctls (ONE_REG: arm64 has no sync regs) and throw;
    /// it does so before the entry, with the vCPU owned by this thread and not running — what RunOwned
    /// leaves behind in that case too. Nothing after it throws.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private VcpuExit EnterArm64Fast(Arm64RegisterSync arm, VcpuCore core, int me)
    {
        arm.BeforeRun();
        int r = core.Enter(me);
        arm.AfterRun(r, _runAddress);
        if (r < 0) return RunOwned(me, r);
        return new VcpuExit(core, core.RunPage, KvmArchitecture.Arm64);
    }

    /// <summary>
    /// Every case of <see cref="Run()"/> the inlined fast paths do not take; and arm64's fast path
    /// in an x86 process (arm64 vCPUs there run on a kernel model: the tests).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private VcpuExit RunSlow()
    {
        var core = _core;
        if (_arm64Fast is { } arm)
        {
            int tid = KickSignal.PreparedThreadId;
            if (CanEnterArm64Fast(core, tid)) return EnterArm64Fast(arm, core, tid);
        }
        // The OS thread id identifies the owner and is where kicks go.
        int me = KickSignal.PrepareCurrentThread();
        if (Volatile.Read(ref core.Disposing) != 0)
        {
            // Another thread's Dispose waits for the owner to let go: do, and say why.
            if (VcpuCore.Owner(Volatile.Read(ref core.State)) == me) core.ThrowDisposedReleasing(me);
            VcpuCore.ThrowDisposed();
        }
        // Take the vCPU (free, or its owner's thread ended) or keep it: it stays this thread's after
        // the run. The thread is published to kickers only around each KVM_RUN (RunOwned).
        core.Acquire(me);
        return RunOwned(me, 0, entered: false);
    }

    /// <summary>
    /// The general run loop, entered owning the vCPU: either before the first KVM_RUN
    /// (<paramref name="entered"/> false) or with the result <paramref name="r"/> of one the fast
    /// path made. The thread is published to kickers only around each KVM_RUN, so a kick during the
    /// rest (Invoke actions, ioctls, draining) costs no signal. The vCPU stays owned by this thread
    /// on the way out — unless another thread is disposing it, which this thread then lets do.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)] // rare: keep it out of the callers Run is inlined into
    private VcpuExit RunOwned(int me, int r, bool entered = true)
    {
        var core = _core;
        try
        {
            var run = core.RunPage;
            if (!entered)
            {
                if (Volatile.Read(ref core.Disposing) != 0) core.ThrowDisposedReleasing(me);
                if (!core.SignalMaskSet || Volatile.Read(ref core.InvokeCount) != 0) BeforeFirstEntry();
            }
            while (true)
            {
                if (!entered)
                {
                    if (_x86Hooks is { } x86) x86.BeforeRun(_runAddress);
                    else _hooks.BeforeRun();
                    r = core.Enter(me);
                    if (_x86Hooks is { } x86After) x86After.AfterRun(r, _runAddress);
                    else _hooks.AfterRun(r);
                }
                entered = false;
                if ((r < 0 || DirtyRing is not null) && !EndsRun(r)) continue;
                return new VcpuExit(core, run, Architecture);
            }
        }
        finally
        {
            // A kicker that saw the thread just before it was withdrawn may still send its signal:
            // harmless, it stays pending (blocked) until a later run drains it, and if this thread
            // ended and its tid were reused, the process-wide SIG_IGN discards it (see KickSignal).
            // Owned, not running (an exception may have left the flag set).
            Interlocked.CompareExchange(ref core.State, VcpuCore.Owned(me), VcpuCore.OwnedRunning(me));
        }
    }

    /// <summary>Run's rare work before entering: the signal mask (first run), queued Invoke actions.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void BeforeFirstEntry()
    {
        if (!_core.SignalMaskSet)
        {
            if (Architecture == KvmArchitecture.Arm64) _vm.RequireGicReadyToRun(Id);
            _core.SetSignalMask();
            _fastPath = _x86Hooks is not null && DirtyRing is null;
            _arm64Fast = DirtyRing is null ? _arm64Hooks : null;
        }
        _core.RunQueuedInvokes();
    }

    /// <summary>
    /// Run's rare outcomes: a failed or interrupted KVM_RUN, or an exit while a dirty ring is in use.
    /// Returns true when Run returns the exit now, false when it enters KVM_RUN again.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool EndsRun(int r)
    {
        if (r >= 0)
        {
            // A full dirty ring: drain the rings into the tracker, then let the guest go on.
            if (LastExitReason != (uint)VcpuExitReason.DirtyRingFull) return true;
            _vm.DirtyTracker!.OnRingFull();
            _core.RunQueuedInvokes();
            return false;
        }
        // EAGAIN: an x86 AP left KVM_MP_STATE_UNINITIALIZED (INIT/SIPI); enter again, as QEMU does.
        if (r != -Errno.EINTR && r != -Errno.EAGAIN) _core.ThrowRunFailed(r);
        // Interrupted: consume the kick signal (it stays pending after KVM_RUN).
        KickSignal.Drain();
        // Only a request (or disposal) ends the run; an Invoke kick, a stray signal or EAGAIN re-enters.
        if (Interlocked.Exchange(ref _core.ExitRequested, 0) == 0 && Volatile.Read(ref _core.Disposing) == 0)
        {
            _core.RunQueuedInvokes();
            return false;
        }
        // A Dispose on another thread kicked this run and waits for this thread to let go: it has no
        // exit to report, and kvm_run is about to be unmapped, so no view of it is returned.
        if (Volatile.Read(ref _core.Disposing) != 0) _core.ThrowDisposedReleasing(KickSignal.CurrentThreadId);
        var run = _core.RunPage;
        run[KvmRunPage.ImmediateExit] = 0;
        // KVM leaves exit_reason stale on EINTR; report the interruption itself.
        MemoryMarshal.Write(run.Slice(KvmRunPage.ExitReason, 4), (uint)VcpuExitReason.Interrupted);
        return true;
    }

    /// <summary>
    /// Runs like <see cref="Run()"/>, but returns <see cref="VcpuExitReason.Interrupted"/> once
    /// <paramref name="timeout"/> has passed (built on <see cref="RequestExit"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">
    /// A negative timeout other than <see cref="Timeout.InfiniteTimeSpan"/>, or one longer than a
    /// <see cref="Timer"/> can wait (4 294 967 294 ms).
    /// </exception>
    /// <inheritdoc cref="Run()" path="/exception"/>
    public VcpuExit Run(TimeSpan timeout)
    {
        if (timeout == Timeout.InfiniteTimeSpan) return Run();
        ArgumentOutOfRangeException.ThrowIfLessThan(timeout, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(timeout, MaxTimerWait);
        // Refuse before touching the shared timer: another thread's run must keep its own deadline.
        if (_core.IsOwnedByAnotherThread) _core.ThrowOwned(KickSignal.CurrentThreadId);
        if (Volatile.Read(ref _core.Disposing) != 0) VcpuCore.ThrowDisposed();
        var timer = _timer ??= new Timer(static s => ((Vcpu)s!).OnTimer(), this, Timeout.Infinite, Timeout.Infinite);
        lock (_timerLock)
        {
            _timerState = 1;
            _timerDeadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        }
        timer.Change(timeout, Timeout.InfiniteTimeSpan);
        bool interrupted = false;
        try
        {
            var exit = Run();
            interrupted = exit.Reason == VcpuExitReason.Interrupted;
            return exit;
        }
        finally
        {
            timer.Change(Timeout.Infinite, Timeout.Infinite);
            bool fired;
            lock (_timerLock)
            {
                fired = _timerState == 2;
                _timerState = 0;
            }
            // The timer fired after the run had already exited for another reason: withdraw its request.
            if (fired && !interrupted) CancelExitRequest();
        }
    }

    private static readonly TimeSpan MaxTimerWait = TimeSpan.FromMilliseconds(uint.MaxValue - 1);

    private void OnTimer()
    {
        lock (_timerLock)
        {
            if (_timerState != 1) return;
            // A callback of an earlier run, queued just before that run disarmed the timer, may arrive
            // during a later run; so may one that fires a little early. Neither ends this run before
            // its deadline: wait for the rest of it.
            long left = _timerDeadline - Stopwatch.GetTimestamp();
            if (left > 0)
            {
                try
                {
                    _timer?.Change(TimeSpan.FromMilliseconds(Math.Ceiling(left * 1000.0 / Stopwatch.Frequency)), Timeout.InfiniteTimeSpan);
                }
                catch (ObjectDisposedException)
                {
                    // The vCPU was disposed meanwhile: there is no run left to end.
                }
                return;
            }
            _timerState = 2;
            RequestExit();
        }
    }

    /// <summary>
    /// Runs like <see cref="Run()"/>, but returns <see cref="VcpuExitReason.Interrupted"/> when
    /// <paramref name="cancellationToken"/> is cancelled (built on <see cref="RequestExit"/>).
    /// A token already cancelled makes the run return at once.
    /// </summary>
    /// <inheritdoc cref="Run()" path="/exception"/>
    public VcpuExit Run(CancellationToken cancellationToken)
    {
        if (!cancellationToken.CanBeCanceled) return Run();
        using var registration = cancellationToken.UnsafeRegister(static s => ((Vcpu)s!).RequestExit(), this);
        return Run();
    }

    /// <summary>
    /// Makes the vCPU leave KVM_RUN: promptly if it is inside, at once if it is about to enter; a vCPU
    /// not running is unaffected except that its next <see cref="Run()"/> returns at once (with
    /// <see cref="VcpuExitReason.Interrupted"/>) unless <see cref="CancelExitRequest"/> is called first.
    /// Callable from any thread, at any moment; never blocks. Needs KVM_CAP_IMMEDIATE_EXIT.
    /// </summary>
    public void RequestExit() => _core.RequestExit();

    /// <summary>Withdraws a <see cref="RequestExit"/> that no run has consumed yet.</summary>
    public void CancelExitRequest() => Volatile.Write(ref _core.ExitRequested, 0);

    /// <summary>The raw <c>kvm_run.exit_reason</c> of the last run (stale after an EINTR).</summary>
    internal uint LastExitReason => _core.LastExitReason;
}
