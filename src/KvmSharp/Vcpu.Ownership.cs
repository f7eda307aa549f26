using System.Runtime.CompilerServices;
using KvmSharp.Interop;

namespace KvmSharp;

// Ownership: which thread owns the vCPU, taking and giving it back, and the access checks.
public sealed partial class Vcpu
{
    private static int Owner(long state) => (int)state;

    private static long Owned(int tid) => (uint)tid;

    private static long OwnedRunning(int tid) => (uint)tid | RunningFlag;

    /// <summary>
    /// True when a live thread other than the caller owns the vCPU (it ran it last and has not released
    /// it, or is in an Invoke action). An owner whose thread has ended does not count: the next taker
    /// takes the vCPU over.
    /// </summary>
    internal bool IsOwnedByAnotherThread
    {
        get
        {
            long state = Volatile.Read(ref _state);
            int owner = Owner(state);
            return owner != 0 && owner != KickSignal.CurrentThreadIdIfKnown && !OwnerIsGone(state);
        }
    }

    /// <summary>The thread that took the vCPU, recorded when it took it, so that a dead owner can be recognised.</summary>
    private sealed class OwnerInfo(int tid, Thread thread)
    {
        public readonly int Tid = tid;
        public readonly Thread Thread = thread;

        [ThreadStatic] private static OwnerInfo? t_self;

        /// <summary>The calling thread's record (one per thread, created once).</summary>
        public static OwnerInfo Current(int tid) => t_self is { } self && self.Tid == tid ? self : t_self = new OwnerInfo(tid, Thread.CurrentThread);
    }

    /// <summary>
    /// Whether <paramref name="state"/> names an owner whose thread has ended without releasing the vCPU
    /// (e.g. a thread that ran it and returned): such a vCPU may be taken over with a CAS from that state.
    /// </summary>
    private bool OwnerIsGone(long state)
    {
        if (state == 0 || state == DisposedState || (state & RunningFlag) != 0) return false;
        return Volatile.Read(ref _ownerInfo) is { } info && info.Tid == Owner(state) && !info.Thread.IsAlive;
    }

    /// <summary>
    /// Makes the calling thread the owner: keeps it if the thread owns the vCPU already, takes it if
    /// it is free or its owner's thread has ended; throws if another live thread owns it or it is
    /// disposed. Slow paths only (records the owner).
    /// </summary>
    private void Acquire(int me)
    {
        while (true)
        {
            long state = Volatile.Read(ref _state);
            if (state == Owned(me)) return;
            if ((state == 0 || OwnerIsGone(state)) && Interlocked.CompareExchange(ref _state, Owned(me), state) == state)
            {
                Volatile.Write(ref _ownerInfo, OwnerInfo.Current(me));
                return;
            }
            if (state != 0 && !OwnerIsGone(state)) ThrowOwned(me);
        }
    }

    /// <summary>Throws when another thread owns the vCPU (register caches call this on every fetch and write).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void CheckAccess()
    {
        // PERF: one field and one thread-static read inline. Free (0) or owned by this thread passes;
        // a disposed vCPU is never either (DisposedState), nor is one being disposed by another thread.
        long state = Volatile.Read(ref _state);
        if (state != 0 && state != Owned(KickSignal.PreparedThreadId)) CheckAccessSlow();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CheckAccessSlow()
    {
        if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
        long state = Volatile.Read(ref _state);
        int me = KickSignal.CurrentThreadIdIfKnown;
        if (Owner(state) == me && me != 0)
        {
            // The owner, between runs: a Dispose on another thread waits for this thread to let go.
            if (Volatile.Read(ref _disposing) != 0 && Volatile.Read(ref _disposerTid) != me) ThrowDisposedReleasing(me);
            return;
        }
        if (state == 0) return;
        if (OwnerIsGone(state))
        {
            Acquire(KickSignal.CurrentThreadId); // the owner's thread has ended: this one takes over
            return;
        }
        if (Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
        ThrowWrongThread(Owner(state));
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ThrowWrongThread(int owner) =>
        throw new InvalidOperationException(
            $"vCPU {Id} is owned by thread {owner} (OS thread id), which ran it last (or is in an Invoke action); access its registers from that thread, through Vcpu.Invoke/InvokeAsync, or after that thread calls Vcpu.ReleaseOwnership.");

    /// <summary>
    /// The owner lets go of a vCPU that another thread is disposing (that Dispose waits for it) and
    /// throws <see cref="ObjectDisposedException"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ThrowDisposedReleasing(int me)
    {
        if (Interlocked.CompareExchange(ref _state, 0, Owned(me)) != Owned(me))
            Interlocked.CompareExchange(ref _state, 0, OwnedRunning(me));
        ThrowHelper.ThrowObjectDisposed(this);
    }

    /// <summary>
    /// Starts a run loop (<see cref="VcpuRunner"/>) on the calling thread: takes the vCPU (or keeps it)
    /// until the matching <see cref="Unhold"/>, where the outermost loop's end releases it.
    /// </summary>
    internal void Hold()
    {
        int me = KickSignal.CurrentThreadId;
        if (Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
        Acquire(me);
        _holdDepth++;
    }

    /// <summary>
    /// Takes the vCPU for a whole-VM operation (snapshot, restore) on the calling thread, so that no
    /// other thread runs it meanwhile; returns whether the thread owned it already (pass that to
    /// <see cref="GiveBackFromVm"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">Another live thread owns the vCPU (running it, or between its runs).</exception>
    internal bool TakeForVm(string operation)
    {
        int me = KickSignal.CurrentThreadId;
        if (Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
        if (IsOwnedByAnotherThread)
            throw new InvalidOperationException(
                $"vCPU {Id} is running or owned by thread {Owner(Volatile.Read(ref _state))} (OS thread id, the thread that ran it last); pause every vCPU, or have its thread call ReleaseOwnership, before {operation}.");
        bool had = Owner(Volatile.Read(ref _state)) == me;
        Acquire(me);
        _holdDepth++;
        return had;
    }

    /// <summary>Ends <see cref="TakeForVm"/>: releases the vCPU unless the thread owned it before.</summary>
    internal void GiveBackFromVm(bool had)
    {
        if (--_holdDepth == 0 && !had) Release(Owned(KickSignal.CurrentThreadId));
    }

    /// <summary>Ends a <see cref="Hold"/>; the outermost loop's end releases the vCPU (serving queued Invoke actions).</summary>
    internal void Unhold()
    {
        int me = KickSignal.CurrentThreadId;
        if (Owner(Volatile.Read(ref _state)) != me)
        {
            // Disposed meanwhile (by this thread, or another thread took over after this one let go).
            _holdDepth = 0;
            ThrowHelper.ThrowObjectDisposed(this);
        }
        if (--_holdDepth == 0) Release(Owned(me));
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ThrowOwned(int me)
    {
        if (Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
        int owner = Owner(Volatile.Read(ref _state));
        if (owner == me)
            throw new InvalidOperationException($"vCPU {Id} is already owned by this thread (Run called from inside an Invoke action or recursively).");
        throw new InvalidOperationException(
            $"vCPU {Id} is owned by thread {owner} (OS thread id: the thread that ran it last, or one snapshotting or restoring its VM); one thread runs a vCPU at a time. Run it from that thread, or have that thread call Vcpu.ReleaseOwnership first.");
    }

    /// <summary>
    /// Gives up ownership, held as <paramref name="owned"/> (a CAS: a vCPU disposed meanwhile, by an
    /// action of this thread, stays disposed); runs any Invoke actions queued meanwhile (on this
    /// thread) before leaving.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Release(long owned)
    {
        Interlocked.CompareExchange(ref _state, 0, owned);
        // An Invoke that queued while we owned the vCPU and failed to take it over is waiting:
        // serve it now (Dekker with Invoke: both sides use full barriers).
        if (Volatile.Read(ref _invokeCount) != 0) ServeInvokesAfterRelease();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ServeInvokesAfterRelease()
    {
        bool served = false;
        long me = Owned(KickSignal.CurrentThreadId);
        while (Volatile.Read(ref _invokeCount) != 0 && Volatile.Read(ref _disposing) == 0
               && Interlocked.CompareExchange(ref _state, me, 0) == 0)
        {
            served = true;
            Volatile.Write(ref _ownerInfo, OwnerInfo.Current(KickSignal.CurrentThreadId));
            _invokeDepth++;
            try
            {
                RunInvokes();
            }
            finally
            {
                _invokeDepth--;
                Interlocked.CompareExchange(ref _state, 0, me);
            }
        }
        // An action run here disposed the vCPU: the caller (Run returning an exit view into
        // kvm_run, now unmapped) must not go on as if nothing happened.
        if (served && Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
    }

    /// <summary>
    /// Gives up the calling thread's ownership of the vCPU. The thread that calls <see cref="Run()"/>
    /// owns the vCPU from then on — between runs too, while it handles the exit — so that
    /// <see cref="Invoke"/> from other threads waits for its next run instead of cutting in. A thread
    /// that will not run the vCPU again (a thread-pool thread whose work item ends, a loop that hands
    /// the vCPU to another thread) calls this; it is not needed at the end of a
    /// <see cref="VcpuRunner"/> loop, after a thread ends, or before <see cref="Dispose"/> on the same
    /// thread. Queued <see cref="Invoke"/> actions run here before it returns. No effect when the
    /// calling thread does not own the vCPU.
    /// </summary>
    /// <exception cref="InvalidOperationException">Called inside a <see cref="VcpuRunner"/> loop or an Invoke action.</exception>
    public void ReleaseOwnership()
    {
        int me = KickSignal.CurrentThreadIdIfKnown;
        if (me == 0 || Owner(Volatile.Read(ref _state)) != me) return;
        if (_holdDepth > 0 || _invokeDepth > 0)
            throw new InvalidOperationException($"vCPU {Id}: ReleaseOwnership inside a run loop or an Invoke action; it is released when they end.");
        Release(Owned(me));
    }
}
