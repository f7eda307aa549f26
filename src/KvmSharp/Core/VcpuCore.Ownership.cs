using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using KvmSharp.Interop;

namespace KvmSharp;

// The ownership gate: which thread owns the vCPU, taking and giving it back, the access checks, and
// the Invoke actions the owner serves.
internal sealed partial class VcpuCore
{
    // Ownership and kick target in one word, so that taking the vCPU and publishing the thread to
    // kickers is one interlocked operation, and so is giving both up: the low 32 bits are the OS
    // thread id of the owning thread (0 when free); RunningFlag is set while that thread is inside
    // (or about to enter) KVM_RUN. Only the owner sets or clears the flag.
    // Dispose leaves DisposedState behind for good (an owner no OS thread has), so that no CAS from
    // 0 — a fast path that checked the disposal flag just before Dispose began — can ever take a
    // disposed vCPU; owners give the vCPU up with a CAS from their own state, which never clears it.
    internal long State;
    internal const long RunningFlag = 1L << 32;
    internal const long DisposedState = 0xFFFF_FFFFL;
    internal int ExitRequested; // RequestExit's flag: the next entry returns at once (immediate_exit)
    internal int InvokeCount;   // queued Invoke actions: a kick that is only for them is absorbed
    internal int Disposing;     // Dispose has begun (never cleared)
    private int _kickers;       // threads inside Kick; Dispose waits for them before unmapping kvm_run
    private int _holdDepth;     // run loops (VcpuRunner) and whole-VM operations in progress on the owning thread; touched only by it
    private int _invokeDepth;   // Invoke queues being served inline by the thread that took the vCPU for them
    private OwnerInfo? _ownerInfo; // who took the vCPU last (slow paths only): to tell a dead owner from a busy one
    private int _disposerTid;   // the thread inside Dispose (it owns the vCPU for the teardown)
    private bool _disposed;
    private readonly ConcurrentQueue<IVcpuAction> _invokes = new();

    internal static int Owner(long state) => (int)state;

    internal static long Owned(int tid) => (uint)tid;

    internal static long OwnedRunning(int tid) => (uint)tid | RunningFlag;

    /// <summary>
    /// True when a live thread other than the caller owns the vCPU (it ran it last and has not released
    /// it, or is in an Invoke action). An owner whose thread has ended does not count: the next taker
    /// takes the vCPU over.
    /// </summary>
    internal bool IsOwnedByAnotherThread
    {
        get
        {
            long state = Volatile.Read(ref State);
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
    internal bool OwnerIsGone(long state)
    {
        if (state == 0 || state == DisposedState || (state & RunningFlag) != 0) return false;
        return Volatile.Read(ref _ownerInfo) is { } info && info.Tid == Owner(state) && !info.Thread.IsAlive;
    }

    /// <summary>
    /// Makes the calling thread the owner: keeps it if the thread owns the vCPU already, takes it if
    /// it is free or its owner's thread has ended; throws if another live thread owns it or it is
    /// disposed. Slow paths only (records the owner).
    /// </summary>
    internal void Acquire(int me)
    {
        while (true)
        {
            long state = Volatile.Read(ref State);
            if (state == Owned(me)) return;
            if ((state == 0 || OwnerIsGone(state)) && Interlocked.CompareExchange(ref State, Owned(me), state) == state)
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
        long state = Volatile.Read(ref State);
        if (state != 0 && state != Owned(KickSignal.PreparedThreadId)) CheckAccessSlow();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CheckAccessSlow()
    {
        if (_disposed) ThrowDisposed();
        long state = Volatile.Read(ref State);
        int me = KickSignal.CurrentThreadIdIfKnown;
        if (Owner(state) == me && me != 0)
        {
            // The owner, between runs: a Dispose on another thread waits for this thread to let go.
            if (Volatile.Read(ref Disposing) != 0 && Volatile.Read(ref _disposerTid) != me) ThrowDisposedReleasing(me);
            return;
        }
        if (state == 0) return;
        if (OwnerIsGone(state))
        {
            Acquire(KickSignal.CurrentThreadId); // the owner's thread has ended: this one takes over
            return;
        }
        if (Volatile.Read(ref Disposing) != 0) ThrowDisposed();
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
    internal void ThrowDisposedReleasing(int me)
    {
        if (Interlocked.CompareExchange(ref State, 0, Owned(me)) != Owned(me))
            Interlocked.CompareExchange(ref State, 0, OwnedRunning(me));
        ThrowDisposed();
    }

    /// <summary>
    /// Starts a run loop (<see cref="VcpuRunner"/>) on the calling thread: takes the vCPU (or keeps it)
    /// until the matching <see cref="Unhold"/>, where the outermost loop's end releases it.
    /// </summary>
    internal void Hold()
    {
        int me = KickSignal.CurrentThreadId;
        if (Volatile.Read(ref Disposing) != 0) ThrowDisposed();
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
        if (Volatile.Read(ref Disposing) != 0) ThrowDisposed();
        if (IsOwnedByAnotherThread)
            throw new InvalidOperationException(
                $"vCPU {Id} is running or owned by thread {Owner(Volatile.Read(ref State))} (OS thread id, the thread that ran it last); pause every vCPU, or have its thread call ReleaseOwnership, before {operation}.");
        bool had = Owner(Volatile.Read(ref State)) == me;
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
        if (Owner(Volatile.Read(ref State)) != me)
        {
            // Disposed meanwhile (by this thread, or another thread took over after this one let go).
            _holdDepth = 0;
            ThrowDisposed();
        }
        if (--_holdDepth == 0) Release(Owned(me));
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void ThrowOwned(int me)
    {
        if (Volatile.Read(ref Disposing) != 0) ThrowDisposed();
        int owner = Owner(Volatile.Read(ref State));
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
    internal void Release(long owned)
    {
        Interlocked.CompareExchange(ref State, 0, owned);
        // An Invoke that queued while we owned the vCPU and failed to take it over is waiting:
        // serve it now (Dekker with Invoke: both sides use full barriers).
        if (Volatile.Read(ref InvokeCount) != 0) ServeInvokesAfterRelease();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ServeInvokesAfterRelease()
    {
        bool served = false;
        long me = Owned(KickSignal.CurrentThreadId);
        while (Volatile.Read(ref InvokeCount) != 0 && Volatile.Read(ref Disposing) == 0
               && Interlocked.CompareExchange(ref State, me, 0) == 0)
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
                Interlocked.CompareExchange(ref State, 0, me);
            }
        }
        // An action run here disposed the vCPU: the caller (Run returning an exit view into
        // kvm_run, now unmapped) must not go on as if nothing happened.
        if (served && Volatile.Read(ref Disposing) != 0) ThrowDisposed();
    }

    /// <summary>Gives up the calling thread's ownership (<see cref="Vcpu.ReleaseOwnership"/>): no effect unless it owns the vCPU.</summary>
    /// <exception cref="InvalidOperationException">Called inside a run loop or an Invoke action.</exception>
    internal void ReleaseOwnership()
    {
        int me = KickSignal.CurrentThreadIdIfKnown;
        if (me == 0 || Owner(Volatile.Read(ref State)) != me) return;
        if (_holdDepth > 0 || _invokeDepth > 0)
            throw new InvalidOperationException($"vCPU {Id}: ReleaseOwnership inside a run loop or an Invoke action; it is released when they end.");
        Release(Owned(me));
    }

    /// <summary>Whether the calling thread owns the vCPU (it may run an Invoke action inline).</summary>
    internal bool IsOwnedByCurrentThread => Owner(Volatile.Read(ref State)) == KickSignal.CurrentThreadId;

    /// <summary>
    /// Queues an Invoke action (any thread) and sees that it runs: on this thread at once if no live
    /// thread owns the vCPU, else on the owner's at its next entry or release (the owner is kicked).
    /// </summary>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed or being disposed.</exception>
    internal void Enqueue(IVcpuAction item)
    {
        if (_disposed || Volatile.Read(ref Disposing) != 0) ThrowDisposed();
        _invokes.Enqueue(item);
        Interlocked.Increment(ref InvokeCount);
        if (Volatile.Read(ref Disposing) != 0)
        {
            FailQueued(); // Dispose raced us: it may have drained the queue before our item arrived
            return;
        }
        long me = Owned(KickSignal.CurrentThreadId);
        long state = Volatile.Read(ref State);
        if ((state == 0 || OwnerIsGone(state)) && Interlocked.CompareExchange(ref State, me, state) == state)
        {
            // Nobody owns the vCPU (or its owner's thread has ended): serve the queue here, then let go.
            Volatile.Write(ref _ownerInfo, OwnerInfo.Current(KickSignal.CurrentThreadId)); // a dead owner's reused tid must not look like this one
            _invokeDepth++;
            try
            {
                RunInvokes();
            }
            finally
            {
                _invokeDepth--;
                Release(me);
            }
        }
        else
        {
            // The owner runs the queue at its next entry, or when it releases the vCPU. A kick in
            // the window where it released meanwhile reaches nobody: serve the queue then.
            Kick();
            if (Volatile.Read(ref State) == 0) ServeInvokesAfterRelease();
        }
    }

    /// <summary>Runs queued Invoke actions on this (owning) thread; throws if one disposed the vCPU.</summary>
    internal void RunQueuedInvokes()
    {
        if (Volatile.Read(ref InvokeCount) == 0) return;
        RunInvokes();
        // An action may have disposed the vCPU (touch nothing of it any more), or another thread is
        // disposing it and waits for this thread to let go.
        if (Volatile.Read(ref Disposing) != 0) ThrowDisposedReleasing(KickSignal.CurrentThreadId);
    }

    private void RunInvokes()
    {
        while (_invokes.TryDequeue(out var item))
        {
            Interlocked.Decrement(ref InvokeCount);
            item.Execute();
        }
    }

    /// <summary>Fails every queued action with <see cref="ObjectDisposedException"/> (disposal).</summary>
    internal void FailQueued()
    {
        while (_invokes.TryDequeue(out var item))
        {
            Interlocked.Decrement(ref InvokeCount);
            item.Fail(new ObjectDisposedException(DisposedName));
        }
    }
}
