using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KvmSharp.Interop;
using KvmSharp.Interop.X86;
using KvmSharp.Registers;

namespace KvmSharp;

/// <summary>
/// A virtual CPU: its file descriptor, its shared <c>kvm_run</c> page, and its register cache.
/// Created by <see cref="VirtualMachine.CreateVcpu"/>.
/// </summary>
/// <remarks>
/// <para>Thread rules (QEMU's model). One thread at a time <i>owns</i> the vCPU: the thread that calls
/// <see cref="Run()"/> takes it and keeps it between runs — while it handles the exit and until its
/// next run — until it calls <see cref="ReleaseOwnership"/>, its <see cref="VcpuRunner"/> loop ends, or
/// the thread ends. Register access and <see cref="Run()"/> from any other thread while the vCPU is
/// owned throw <see cref="InvalidOperationException"/>; <see cref="Invoke"/>/<see cref="InvokeAsync"/>
/// run code on the owning thread at its next entry (kicking it if it is in the guest), never in the
/// middle of its exit handling; on a vCPU no thread owns they run on the calling thread.
/// <see cref="RequestExit"/>, <see cref="Invoke"/>, <see cref="InvokeAsync"/> and <see cref="Dispose"/>
/// may be called from any thread at any time.</para>
/// <para>Kicking: <see cref="RequestExit"/> sets <c>kvm_run.immediate_exit</c> and sends the running
/// thread the kick signal (<see cref="KickSignal"/>, by default SIGRTMAX-2), which every thread that
/// runs a vCPU keeps blocked in user space and KVM_SET_SIGNAL_MASK unblocks inside KVM_RUN. No
/// signal handler is installed, managed or native.</para>
/// </remarks>
public sealed class Vcpu : IDisposable
{
    private readonly VirtualMachine _vm;
    private readonly KvmFdHandle _fd;
    private readonly MappedMemoryHandle _run;
    private readonly nint _runAddress; // _run's address, cached: the hot path touches no other object for it
    private readonly int _runLength;
    private readonly int _fdNumber;
    private readonly StructView _syncHeader;
    private readonly IRegisterSync _registers;
    private readonly IRunHooks _hooks;
    private readonly X86RegisterSync? _x86Hooks; // _hooks when it is x86's, called without interface dispatch
    private readonly bool _nativeKernel;         // Kernel is the real one: KVM_RUN is a direct libc call
    private readonly ConcurrentQueue<InvokeItem> _invokes = new();
    private readonly Lock _timerLock = new();
    private Timer? _timer;
    private int _timerState; // 0 idle, 1 armed, 2 fired
    private long _timerDeadline; // Stopwatch timestamp at which the armed run's timeout ends
    // Ownership and kick target in one word, so that taking the vCPU and publishing the thread to
    // kickers is one interlocked operation, and so is giving both up: the low 32 bits are the OS
    // thread id of the owning thread (0 when free); RunningFlag is set while that thread is inside
    // (or about to enter) KVM_RUN. Only the owner sets or clears the flag.
    // Dispose leaves DisposedState behind for good (an owner no OS thread has), so that no CAS from
    // 0 — a fast path that checked the disposal flag just before Dispose began — can ever take a
    // disposed vCPU; owners give the vCPU up with a CAS from their own state, which never clears it.
    private long _state;
    private const long RunningFlag = 1L << 32;
    private const long DisposedState = 0xFFFF_FFFFL;
    private int _kickers;    // threads inside Kick; Dispose waits for them before unmapping kvm_run
    private int _exitRequested;
    private int _invokeCount;
    private int _holdDepth;  // run loops (VcpuRunner) in progress on the owning thread; touched only by it
    private int _invokeDepth; // Invoke queues being served inline by the thread that took the vCPU for them
    private OwnerInfo? _ownerInfo; // who took the vCPU last (slow paths only): to tell a dead owner from a busy one
    private bool _signalMaskSet;
    private bool _fastPath; // Run's inlined path applies: x86, no dirty ring, signal mask set
    private int _disposing;
    private int _disposerTid; // the thread inside Dispose (it owns the vCPU for the teardown)
    private bool _disposed;

    internal Vcpu(VirtualMachine vm, int id, KvmFdHandle fd, MappedMemoryHandle run, DirtyRing? dirtyRing = null)
    {
        _vm = vm;
        DirtyRing = dirtyRing;
        Id = id;
        _fd = fd;
        _fdNumber = fd.Fd;
        _run = run;
        _runAddress = run.DangerousGetHandle();
        _runLength = (int)run.Length;
        Kernel = vm.Kernel;
        Architecture = vm.Architecture;
        if (_runLength < Architecture.KvmRunSize())
            throw new InvalidOperationException($"KVM_GET_VCPU_MMAP_SIZE ({_runLength}) is smaller than struct kvm_run ({Architecture.KvmRunSize()}).");
        _syncHeader = new StructView(run, Architecture.SyncRegsHeaderOffset(), 16);
        (_registers, _hooks) = Architecture switch
        {
            KvmArchitecture.X86_64 => Pair(new X86RegisterSync(this, run, vm.CheckExtension(KvmCapability.SyncRegs))),
            KvmArchitecture.Arm64 => Pair(new Arm64RegisterSync(this)),
            _ => Pair(new S390xRegisterSync(this, run)),
        };
        _x86Hooks = _hooks as X86RegisterSync;
        _nativeKernel = Kernel is LinuxKernel;
    }

    private static (IRegisterSync, IRunHooks) Pair<T>(T strategy) where T : IRegisterSync, IRunHooks => (strategy, strategy);

    internal IKernel Kernel { get; }

    /// <summary>The vCPU's dirty ring, when the VM tracks dirty pages with one.</summary>
    internal DirtyRing? DirtyRing { get; }

    internal int Fd
    {
        get
        {
            if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
            return _fdNumber;
        }
    }

    /// <summary>The vCPU id given at creation (the APIC id on x86).</summary>
    public int Id { get; }

    /// <summary>The architecture of this vCPU.</summary>
    public KvmArchitecture Architecture { get; }

    /// <summary>The VM this vCPU belongs to.</summary>
    public VirtualMachine VirtualMachine => _vm;

    /// <summary>True once disposed.</summary>
    public bool IsDisposed => _disposed;

    /// <summary>Throws <see cref="ObjectDisposedException"/> once disposed (views into <c>kvm_run</c> check this).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void ThrowIfDisposed()
    {
        if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
    }

    /// <summary>True while a thread is inside <see cref="Run()"/> for this vCPU.</summary>
    public bool IsRunning => (Volatile.Read(ref _state) & RunningFlag) != 0;

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

    /// <summary>
    /// The real-time signal used to kick vCPU threads out of KVM_RUN: SIGRTMAX-2 unless changed with
    /// <see cref="SetKickSignal"/>. The .NET runtime uses SIGRTMIN; pick another if a native library in
    /// the process uses this one.
    /// </summary>
    public static int KickSignalNumber => KickSignal.Number;

    /// <summary>Chooses the kick signal; allowed only before any vCPU has run.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a real-time signal.</exception>
    /// <exception cref="InvalidOperationException">Another signal is in use already.</exception>
    public static void SetKickSignal(int signal) => KickSignal.Set(signal);

    /// <summary>The register cache, whatever the architecture (see <see cref="IRegisterSync"/>).</summary>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU (it is running): use <see cref="Invoke"/>.</exception>
    public IRegisterSync Registers
    {
        get
        {
            CheckAccess();
            return _registers;
        }
    }

    /// <summary>The x86 register cache.</summary>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not x86_64.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU: use <see cref="Invoke"/>.</exception>
    public X86RegisterSync X86
    {
        get
        {
            CheckAccess();
            return _x86Hooks ?? ThrowNotArch<X86RegisterSync>(KvmArchitecture.X86_64);
        }
    }

    /// <summary>The arm64 register cache.</summary>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not arm64.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU: use <see cref="Invoke"/>.</exception>
    public Arm64RegisterSync Arm64
    {
        get
        {
            CheckAccess();
            return _registers as Arm64RegisterSync ?? throw NotArch(KvmArchitecture.Arm64);
        }
    }

    /// <summary>The s390x register cache.</summary>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not s390x.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU: use <see cref="Invoke"/>.</exception>
    public S390xRegisterSync S390x
    {
        get
        {
            CheckAccess();
            return _registers as S390xRegisterSync ?? throw NotArch(KvmArchitecture.S390x);
        }
    }

    private PlatformNotSupportedException NotArch(KvmArchitecture wanted) =>
        new($"{wanted} registers requested on a {Architecture} vCPU.");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private T ThrowNotArch<T>(KvmArchitecture wanted) => throw NotArch(wanted);

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

    internal ref ulong RunValidRegs => ref _syncHeader.At<ulong>(0);

    internal ref ulong RunDirtyRegs => ref _syncHeader.At<ulong>(8);

    /// <summary>
    /// Whether the next <see cref="Run()"/> returns at once with <see cref="VcpuExitReason.Interrupted"/>
    /// (via <c>kvm_run.immediate_exit</c>; needs KVM_CAP_IMMEDIATE_EXIT). Setting it is
    /// <see cref="RequestExit"/>; clearing it is <see cref="CancelExitRequest"/>.
    /// </summary>
    public bool ImmediateExit
    {
        get => Volatile.Read(ref _exitRequested) != 0;
        set
        {
            if (value) RequestExit();
            else CancelExitRequest();
        }
    }

    /// <summary>
    /// Whether KVM should exit as soon as the guest can take an interrupt (<c>kvm_run.request_interrupt_window</c>).
    /// </summary>
    public bool RequestInterruptWindow
    {
        get => RunSpan()[0] != 0;
        set => RunSpan()[0] = value ? (byte)1 : (byte)0;
    }

    private Span<byte> RunSpan()
    {
        if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
        return RunPage;
    }

    /// <summary>The <c>kvm_run</c> mapping, without a disposal check (callers own the vCPU or check).</summary>
    private Span<byte> RunPage => MappedMemoryHandle.SpanAt(_runAddress, _runLength);

    /// <summary>The address of the <c>kvm_run</c> mapping, for the register strategies (which use it only while the vCPU is alive and owned).</summary>
    internal nint RunAddress => _runAddress;

    // ---- running -----------------------------------------------------------------------------

    /// <summary>
    /// Writes back dirty registers, runs guest code until the next exit, and returns a view of the
    /// exit. Wraps KVM_RUN. Allocates nothing.
    /// </summary>
    /// <returns>A view into <c>kvm_run</c>, valid until the next call to <see cref="Run()"/> or disposal.</returns>
    /// <remarks>
    /// A signal, <see cref="RequestExit"/> or <see cref="ImmediateExit"/> makes KVM_RUN fail with EINTR;
    /// that is reported as <see cref="VcpuExitReason.Interrupted"/>, not thrown. Kicks made only to run
    /// <see cref="Invoke"/> actions are absorbed: the actions run on this thread and the guest resumes.
    /// Whatever the guest does is an exit, never an exception.
    /// <para>x86 port I/O and MMIO exits (stock KVM): the exit reaches the caller with the instruction
    /// not yet finished — RIP still points at it — and this method's next call finishes it inside
    /// KVM_RUN before any guest code runs (stores an IN's or MMIO read's data, advances RIP), unless RIP
    /// was moved meanwhile. Registers written through <see cref="X86"/> are loaded before that
    /// completion; the cache makes every write mean what it says (see <see cref="VcpuExit.Io"/> and
    /// <see cref="X86RegisterSync.Rip"/>). A HLT exit's RIP is past the <c>hlt</c>.</para>
    /// <para>Performance: the common case (an x86 vCPU that has run before, nothing queued, only
    /// registers that travel in <c>kvm_run</c> written) is small enough for the JIT to inline into
    /// the calling method, so call <see cref="Run()"/> directly from the exit loop: the per-exit
    /// cost is then one interlocked operation to take the vCPU, one to release it, and KVM_RUN.</para>
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
        int me = KickSignal.PreparedThreadId;
        if (me != 0 && Volatile.Read(ref _state) == Owned(me) && CanRunFast)
        {
            // This thread owns the vCPU from its last run. Publish it to kickers (a full barrier: a
            // RequestExit either sees this thread or its request is seen below); only this thread
            // changes an owned state, except Dispose's terminal write after it took the vCPU.
            Interlocked.Exchange(ref _state, OwnedRunning(me));
            var x86 = _x86Hooks!;
            x86.FlushInline(_runAddress);
            int r = EnterKvmRun();
            Volatile.Write(ref _state, Owned(me));
            x86.AfterRun(r, _runAddress);
            if (r < 0) return RunOwned(me, r);
            return new VcpuExit(this, RunPage, KvmArchitecture.X86_64);
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
        get => _fastPath && (Volatile.Read(ref _invokeCount) | Volatile.Read(ref _disposing)) == 0 && _x86Hooks!.CanFlushInline;
    }

    /// <summary>Every case of <see cref="Run()"/> the inlined fast path does not take.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private VcpuExit RunSlow()
    {
        // The OS thread id identifies the owner and is where kicks go.
        int me = KickSignal.PrepareCurrentThread();
        if (Volatile.Read(ref _disposing) != 0)
        {
            // Another thread's Dispose waits for the owner to let go: do, and say why.
            if (Owner(Volatile.Read(ref _state)) == me) ThrowDisposedReleasing(me);
            ThrowHelper.ThrowObjectDisposed(this);
        }
        // Take the vCPU (free, or its owner's thread ended) or keep it: it stays this thread's after
        // the run. The thread is published to kickers only around each KVM_RUN (RunOwned).
        Acquire(me);
        return RunOwned(me, 0, entered: false);
    }

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
    /// The general run loop, entered owning the vCPU: either before the first KVM_RUN
    /// (<paramref name="entered"/> false) or with the result <paramref name="r"/> of one the fast
    /// path made. The thread is published to kickers only around each KVM_RUN, so a kick during the
    /// rest (Invoke actions, ioctls, draining) costs no signal. The vCPU stays owned by this thread
    /// on the way out — unless another thread is disposing it, which this thread then lets do.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)] // rare: keep it out of the callers Run is inlined into
    private VcpuExit RunOwned(int me, int r, bool entered = true)
    {
        try
        {
            var run = RunPage;
            if (!entered)
            {
                if (Volatile.Read(ref _disposing) != 0) ThrowDisposedReleasing(me);
                if (!_signalMaskSet || Volatile.Read(ref _invokeCount) != 0) BeforeFirstEntry();
            }
            while (true)
            {
                if (!entered)
                {
                    if (_x86Hooks is { } x86) x86.BeforeRun(_runAddress);
                    else _hooks.BeforeRun();
                    // Publish the thread (a full barrier: a RequestExit either sees it or its request
                    // is seen by EnterKvmRun), enter, withdraw.
                    Interlocked.Exchange(ref _state, OwnedRunning(me));
                    r = EnterKvmRun();
                    Volatile.Write(ref _state, Owned(me));
                    if (_x86Hooks is { } x86After) x86After.AfterRun(r, _runAddress);
                    else _hooks.AfterRun(r);
                }
                entered = false;
                if ((r < 0 || DirtyRing is not null) && !EndsRun(r)) continue;
                return new VcpuExit(this, run, Architecture);
            }
        }
        finally
        {
            // A kicker that saw the thread just before it was withdrawn may still send its signal:
            // harmless, it stays pending (blocked) until a later run drains it, and if this thread
            // ended and its tid were reused, the process-wide SIG_IGN discards it (see KickSignal).
            // Owned, not running (an exception may have left the flag set).
            Interlocked.CompareExchange(ref _state, Owned(me), OwnedRunning(me));
        }
    }

    /// <summary>
    /// Sets <c>immediate_exit</c> and issues KVM_RUN (the caller owns the vCPU, its thread published,
    /// registers written back). Returns KVM_RUN's result, or -errno.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int EnterKvmRun()
    {
        // The request flags are the truth: a stale immediate_exit from an earlier kick is cleared; a
        // request, a queued Invoke or a disposal begun before this point makes KVM_RUN return at once. A kick racing with this write
        // saw the published thread, so its signal (blocked here, pending) interrupts KVM_RUN.
        KvmRunPage.WriteByte(_runAddress, KvmRunPage.ImmediateExit,
            (Volatile.Read(ref _exitRequested) | Volatile.Read(ref _invokeCount) | Volatile.Read(ref _disposing)) != 0 ? (byte)1 : (byte)0);
        return _nativeKernel ? LinuxKernel.Run(_fdNumber) : Kernel.Ioctl(_fdNumber, KvmIoctls.KVM_RUN, 0);
    }

    /// <summary>Run's rare work before entering: the signal mask (first run), queued Invoke actions.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void BeforeFirstEntry()
    {
        if (!_signalMaskSet) SetSignalMask();
        RunQueuedInvokes();
    }

    /// <summary>Runs queued Invoke actions on this (owning) thread; throws if one disposed the vCPU.</summary>
    private void RunQueuedInvokes()
    {
        if (Volatile.Read(ref _invokeCount) == 0) return;
        RunInvokes();
        // An action may have disposed the vCPU (touch nothing of it any more), or another thread is
        // disposing it and waits for this thread to let go.
        if (Volatile.Read(ref _disposing) != 0) ThrowDisposedReleasing(KickSignal.CurrentThreadId);
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
            RunQueuedInvokes();
            return false;
        }
        // EAGAIN: an x86 AP left KVM_MP_STATE_UNINITIALIZED (INIT/SIPI); enter again, as QEMU does.
        if (r != -Errno.EINTR && r != -Errno.EAGAIN) ThrowRunFailed(r);
        // Interrupted: consume the kick signal (it stays pending after KVM_RUN).
        KickSignal.Drain();
        // Only a request (or disposal) ends the run; an Invoke kick, a stray signal or EAGAIN re-enters.
        if (Interlocked.Exchange(ref _exitRequested, 0) == 0 && Volatile.Read(ref _disposing) == 0)
        {
            RunQueuedInvokes();
            return false;
        }
        // A Dispose on another thread kicked this run and waits for this thread to let go: it has no
        // exit to report, and kvm_run is about to be unmapped, so no view of it is returned.
        if (Volatile.Read(ref _disposing) != 0) ThrowDisposedReleasing(KickSignal.CurrentThreadId);
        var run = RunPage;
        run[KvmRunPage.ImmediateExit] = 0;
        // KVM leaves exit_reason stale on EINTR; report the interruption itself.
        MemoryMarshal.Write(run.Slice(KvmRunPage.ExitReason, 4), (uint)VcpuExitReason.Interrupted);
        return true;
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
        if (IsOwnedByAnotherThread) ThrowOwned(KickSignal.CurrentThreadId);
        if (Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
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
    public void RequestExit()
    {
        if (Volatile.Read(ref _disposing) != 0) return;
        Volatile.Write(ref _exitRequested, 1);
        Kick();
    }

    /// <summary>Withdraws a <see cref="RequestExit"/> that no run has consumed yet.</summary>
    public void CancelExitRequest() => Volatile.Write(ref _exitRequested, 0);

    /// <summary>immediate_exit, then the signal to the thread inside KVM_RUN, if any.</summary>
    private void Kick()
    {
        // Counted before the disposal check: Dispose waits for every kicker that got past it before
        // it unmaps kvm_run, so this write never hits freed memory.
        Interlocked.Increment(ref _kickers);
        try
        {
            if (Volatile.Read(ref _disposing) != 0) return;
            KickUnchecked();
        }
        finally
        {
            Interlocked.Decrement(ref _kickers);
        }
    }

    private void KickUnchecked()
    {
        KvmRunPage.WriteByte(_runAddress, KvmRunPage.ImmediateExit, 1);
        Interlocked.MemoryBarrier(); // immediate_exit is visible before we look for the thread
        long state = Volatile.Read(ref _state);
        if ((state & RunningFlag) != 0) KickSignal.Send(Owner(state));
    }

    /// <summary>Tells KVM to unblock the kick signal inside KVM_RUN (once per vCPU; the calling thread blocks it already).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private unsafe void SetSignalMask()
    {
        using var buf = new NativeBuffer(sizeof(kvm_signal_mask) + Libc.KernelSigsetBytes);
        var view = new StructView(buf, 0, (int)buf.ByteLength);
        view.At<kvm_signal_mask>(0).len = Libc.KernelSigsetBytes;
        view.At<ulong>(sizeof(kvm_signal_mask)) = KickSignal.RunMask();
        int r = Kernel.Ioctl(_fdNumber, KvmIoctls.KVM_SET_SIGNAL_MASK, view.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_SET_SIGNAL_MASK, r, $"vcpu {Id}, unblocking signal {KickSignal.Number} inside KVM_RUN");
        _signalMaskSet = true;
        _fastPath = _x86Hooks is not null && DirtyRing is null;
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

    // ---- Invoke --------------------------------------------------------------------------------

    /// <summary>
    /// Runs <paramref name="action"/> on the thread that owns the vCPU, at its next entry into the
    /// guest (QEMU's <c>run_on_cpu</c>): a running vCPU is kicked out of KVM_RUN, the action runs on its
    /// thread, and the guest resumes (the run does not return for this); an owner between two runs —
    /// handling an exit — runs it when it next calls <see cref="Run()"/>, never in the middle of its
    /// handler. If no thread owns the vCPU (or its owner's thread has ended), the action runs on the
    /// calling thread. Waits for the action; rethrows its exception. An owner that will not run the
    /// vCPU again must <see cref="ReleaseOwnership"/>, or this waits for it.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public void Invoke(Action<Vcpu> action)
    {
        ArgumentNullException.ThrowIfNull(action);
        if (Owner(Volatile.Read(ref _state)) == KickSignal.CurrentThreadId)
        {
            if (Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
            action(this); // already on the owning thread (e.g. from an exit handler or another action)
            return;
        }
        var item = new InvokeItem(action, async: false);
        Enqueue(item);
        item.Wait();
    }

    /// <summary>
    /// Like <see cref="Invoke"/>, but returns a task that completes (or faults) when the action has run.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public Task InvokeAsync(Action<Vcpu> action)
    {
        ArgumentNullException.ThrowIfNull(action);
        var item = new InvokeItem(action, async: true);
        Enqueue(item);
        return item.Task!;
    }

    private void Enqueue(InvokeItem item)
    {
        if (_disposed || Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
        _invokes.Enqueue(item);
        Interlocked.Increment(ref _invokeCount);
        if (Volatile.Read(ref _disposing) != 0)
        {
            FailQueued(); // Dispose raced us: it may have drained the queue before our item arrived
            return;
        }
        long me = Owned(KickSignal.CurrentThreadId);
        long state = Volatile.Read(ref _state);
        if ((state == 0 || OwnerIsGone(state)) && Interlocked.CompareExchange(ref _state, me, state) == state)
        {
            // Nobody owns the vCPU (or its owner's thread has ended): serve the queue here, then let go.
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
            if (Volatile.Read(ref _state) == 0) ServeInvokesAfterRelease();
        }
    }

    private void RunInvokes()
    {
        while (_invokes.TryDequeue(out var item))
        {
            Interlocked.Decrement(ref _invokeCount);
            item.Execute(this);
        }
    }

    private void FailQueued()
    {
        while (_invokes.TryDequeue(out var item))
        {
            Interlocked.Decrement(ref _invokeCount);
            item.Fail(new ObjectDisposedException(GetType().FullName));
        }
    }

    private sealed class InvokeItem(Action<Vcpu> action, bool async)
    {
        private readonly ManualResetEventSlim? _done = async ? null : new ManualResetEventSlim();
        private readonly TaskCompletionSource? _tcs = async ? new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) : null;
        private Exception? _error;

        public Task? Task => _tcs?.Task;

        public void Execute(Vcpu vcpu)
        {
            try
            {
                action(vcpu);
                _tcs?.TrySetResult();
            }
            catch (Exception e)
            {
                _error = e;
                _tcs?.TrySetException(e);
            }
            finally
            {
                _done?.Set();
            }
        }

        public void Fail(Exception e)
        {
            _error = e;
            _tcs?.TrySetException(e);
            _done?.Set();
        }

        public void Wait()
        {
            _done!.Wait();
            _done.Dispose();
            if (_error is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(_error).Throw();
        }
    }

    /// <summary>
    /// Enters KVM_RUN with <c>immediate_exit</c> set, so that KVM completes a pending I/O or MMIO
    /// access (and advances the PC past it) without running guest code. Used by the register
    /// strategies before they write registers the completion would clobber. Bypasses the cache hooks.
    /// </summary>
    /// <exception cref="InvalidOperationException">Completing the access produced a new exit (a string I/O
    /// or MMIO instruction that needs more data): handle exits until the instruction is done first.</exception>
    internal void CompletePendingAccess()
    {
        var run = RunSpan();
        run[KvmRunPage.ImmediateExit] = 1; // Run recomputes it from the request flag before every entry
        int r = Kernel.Ioctl(_fdNumber, KvmIoctls.KVM_RUN, 0);
        run[KvmRunPage.ImmediateExit] = 0;
        if (r >= 0)
            throw new InvalidOperationException(
                $"vCPU {Id}: completing the pending I/O or MMIO access produced another exit ({(VcpuExitReason)LastExitReason}); a string or split access needs more handling before registers can be saved or written.");
        if (r != -Errno.EINTR) ThrowRunFailed(r);
        // PERF: no signal drain here (a syscall): a kick that arrived meanwhile stays pending and
        // makes the next real KVM_RUN return EINTR, which Run drains and re-enters.
    }

    /// <summary>The raw <c>kvm_run.exit_reason</c> of the last run (stale after an EINTR).</summary>
    internal uint LastExitReason => MemoryMarshal.Read<uint>(RunPage.Slice(KvmRunPage.ExitReason, 4));

    /// <summary>The vCPU's <c>kvm_run</c> mapping, for the register strategies' views.</summary>
    internal MappedMemoryHandle RunMapping => _run;

    private void ThrowRunFailed(int r) =>
        ThrowHelper.ThrowKvm(KvmIoctls.KVM_RUN, r, $"vcpu {Id}");

    /// <summary>
    /// Sets the CPUID leaves the guest sees (x86). Wraps KVM_SET_CPUID2. Call before the first run;
    /// <see cref="Kvm.GetSupportedCpuid"/> gives what KVM allows.
    /// </summary>
    /// <exception cref="KvmException">The ioctl failed (e.g. E2BIG for too many leaves).</exception>
    public unsafe void SetCpuid(ReadOnlySpan<CpuidEntry> entries)
    {
        _vm.Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SetCpuid));
        int bytes = sizeof(kvm_cpuid2) + entries.Length * sizeof(kvm_cpuid_entry2);
        using var buf = new NativeBuffer(bytes);
        var view = new StructView(buf, 0, bytes);
        view.At<kvm_cpuid2>(0).nent = (uint)entries.Length;
        for (int i = 0; i < entries.Length; i++)
        {
            var e = entries[i];
            view.At<kvm_cpuid_entry2>(sizeof(kvm_cpuid2) + i * sizeof(kvm_cpuid_entry2)) = new kvm_cpuid_entry2
            {
                function = e.Function, index = e.Index, flags = e.Flags,
                eax = e.Eax, ebx = e.Ebx, ecx = e.Ecx, edx = e.Edx,
            };
        }
        int r = Kernel.Ioctl(Fd, KvmIoctls.X86.KVM_SET_CPUID2, view.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.X86.KVM_SET_CPUID2, r, $"vcpu {Id}, {entries.Length} entries");
    }

    /// <summary>
    /// Releases the vCPU: unmaps <c>kvm_run</c>, closes the fd and removes the vCPU from its VM.
    /// Idempotent; callable from any thread. A disposed vCPU can never be entered again; every later
    /// use throws <see cref="ObjectDisposedException"/>, and pending Invoke actions fail with it.
    /// </summary>
    /// <remarks>
    /// If another thread owns the vCPU, it is served like <see cref="Invoke"/>: a running vCPU is
    /// kicked, and this call waits until the owner lets go — its interrupted run, or its next
    /// <see cref="Run()"/> or register access, throws <see cref="ObjectDisposedException"/> on its
    /// thread — so nothing is unmapped or closed while the owner may still use an exit view or an
    /// ioctl. An owner that ended, or called <see cref="ReleaseOwnership"/>, is not waited for. So do
    /// not dispose, from another thread, a vCPU whose owner thread lives on without running it again
    /// (release it there first).
    /// </remarks>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposing, 1) != 0)
        {
            while (!Volatile.Read(ref _disposed)) Thread.Sleep(1); // another thread is disposing: wait for it
            return;
        }
        int me = KickSignal.CurrentThreadId;
        Volatile.Write(ref _disposerTid, me);
        bool ownedByMe = Owner(Volatile.Read(ref _state)) == me;
        if (!ownedByMe)
        {
            // Another thread owns the vCPU (running it, or between runs: handling an exit, whose views
            // must stay mapped): kick it and wait until it lets go — at its next Run or register
            // access, which then throw ObjectDisposedException, at ReleaseOwnership, or when its
            // thread has ended.
            var spin = new SpinWait();
            while (true)
            {
                long state = Volatile.Read(ref _state);
                if ((state == 0 || OwnerIsGone(state)) && Interlocked.CompareExchange(ref _state, Owned(me), state) == state) break;
                KickUnchecked(); // the mapping is alive: only this thread unmaps it, below
                spin.SpinOnce(sleep1Threshold: 20);
            }
        }
        // Kickers that passed the disposal check before it was set finish their write first.
        while (Volatile.Read(ref _kickers) != 0) Thread.Yield();
        FailQueued();
        _timer?.Dispose();
        // Leave the VM (and its dirty tracker) before the ring and kvm_run go away.
        _vm.OnVcpuDisposed(this);
        _hooks.Release();
        DirtyRing?.Dispose();
        _run.Dispose();
        _fd.Dispose();
        Volatile.Write(ref _disposed, true);
        // Terminal: never 0 again, whoever owned it (a run of this thread that disposed the vCPU from
        // an Invoke action releases with a CAS that now fails).
        Volatile.Write(ref _state, DisposedState);
    }
}
