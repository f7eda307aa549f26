using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace KvmSharp.Interop;

/// <summary>
/// The signal that kicks a vCPU thread out of KVM_RUN. A thread that runs a vCPU keeps it blocked
/// in user space; KVM_SET_SIGNAL_MASK unblocks it only inside KVM_RUN, where it makes KVM_RUN
/// return EINTR. Afterwards it is still pending (blocked again) and is consumed with
/// <c>sigtimedwait</c>. No handler is ever installed, managed or native: the process-wide
/// disposition is SIG_IGN. That still interrupts KVM_RUN — the kernel never ignores a signal in a
/// task's saved mask (<c>real_blocked</c>, where KVM keeps the thread's mask during the run) — while a
/// late kick that reaches a thread which does not block it (the tid reused by a new thread) is
/// discarded instead of killing the process.
/// </summary>
internal static unsafe class KickSignal
{
    private static int s_signal;

    // The calling thread's OS id, cached: 0 until first asked for; negative (-tid) while the thread
    // does not block the kick signal; positive once it does (it has run a vCPU).
    [ThreadStatic] private static int t_id;

    /// <summary>The signal number: SIGRTMAX - 2 unless set before first use.</summary>
    public static int Number
    {
        get
        {
            if (s_signal == 0) Interlocked.CompareExchange(ref s_signal, Libc.__libc_current_sigrtmax() - 2, 0);
            return s_signal;
        }
    }

    /// <summary>Sets the signal; only before any vCPU has run.</summary>
    public static void Set(int signal)
    {
        int min = Libc.__libc_current_sigrtmin(), max = Libc.__libc_current_sigrtmax();
        if (signal < min || signal > max)
            throw new ArgumentOutOfRangeException(nameof(signal), signal, $"The kick signal must be a real-time signal, {min}..{max} here.");
        if (Interlocked.CompareExchange(ref s_signal, signal, 0) != 0 && s_signal != signal)
            throw new InvalidOperationException($"The kick signal is {s_signal} already: set it before the first vCPU runs.");
    }

    /// <summary>
    /// Blocks the kick signal in the calling thread (once per thread) and returns the thread's OS id.
    /// PERF: both are cached per thread, so a run costs no extra syscall; the check is one thread-static read.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int PrepareCurrentThread()
    {
        int id = t_id;
        return id > 0 ? id : PrepareSlow();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int PrepareSlow()
    {
        BlockInCurrentThread();
        return t_id = Libc.gettid();
    }

    /// <summary>The calling thread's OS id if it blocks the kick signal already (has run a vCPU), else 0.</summary>
    public static int PreparedThreadId
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            int id = t_id;
            return id > 0 ? id : 0;
        }
    }

    /// <summary>The calling thread's OS id (cached per thread; the signal mask is left alone).</summary>
    public static int CurrentThreadId
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            int id = t_id;
            return id > 0 ? id : id < 0 ? -id : CurrentThreadIdSlow();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int CurrentThreadIdSlow()
    {
        int tid = Libc.gettid();
        t_id = -tid;
        return tid;
    }

    /// <summary>
    /// The calling thread's OS id if it was ever asked for, else 0: enough to tell whether the calling
    /// thread is one that took something with <see cref="CurrentThreadId"/> or <see cref="PrepareCurrentThread"/>.
    /// </summary>
    public static int CurrentThreadIdIfKnown
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            int id = t_id;
            return id >= 0 ? id : -id;
        }
    }

    private static int s_ignored;
    private static readonly Lock s_lock = new();

    /// <summary>Sets the kick signal's disposition to SIG_IGN once per process (see the type's remarks).</summary>
    private static void IgnoreProcessWide()
    {
        if (Volatile.Read(ref s_ignored) != 0) return;
        lock (s_lock)
        {
            if (s_ignored != 0) return;
            nint old = Libc.signal(Number, Libc.SIG_IGN);
            if (old != Libc.SIG_DFL && old != Libc.SIG_IGN)
            {
                Libc.signal(Number, old); // someone else's handler: leave it, and say so
                throw new InvalidOperationException(
                    $"Signal {Number} has a handler installed by another component; choose a free real-time signal with Vcpu.SetKickSignal before the first run.");
            }
            s_ignored = 1;
        }
    }

    private static void BlockInCurrentThread()
    {
        IgnoreProcessWide();
        byte* set = stackalloc byte[Libc.UserSigsetBytes];
        new Span<byte>(set, Libc.UserSigsetBytes).Clear();
        AddTo(new Span<byte>(set, Libc.UserSigsetBytes), Number);
        // SAFETY: set points to a zeroed glibc sigset_t on the stack; oldset may be null.
        int r = Libc.pthread_sigmask(Libc.SIG_BLOCK, set, null);
        if (r != 0) throw new KvmException("pthread_sigmask", r, $"blocking signal {Number}");
    }

    /// <summary>
    /// The calling thread's signal mask without the kick signal, in the kernel's 8-byte format, for
    /// KVM_SET_SIGNAL_MASK: the mask KVM applies while the vCPU is inside KVM_RUN.
    /// </summary>
    public static ulong RunMask()
    {
        byte* current = stackalloc byte[Libc.UserSigsetBytes];
        // SAFETY: a null set only queries the mask into 'current', a glibc sigset_t on the stack.
        int r = Libc.pthread_sigmask(Libc.SIG_BLOCK, null, current);
        if (r != 0) throw new KvmException("pthread_sigmask", r, "querying the thread's signal mask");
        ulong mask = MemoryMarshal.Read<ulong>(new ReadOnlySpan<byte>(current, Libc.KernelSigsetBytes));
        return mask & ~(1UL << (Number - 1));
    }

    /// <summary>Consumes every pending kick signal of the calling thread (never blocks).</summary>
    public static void Drain()
    {
        byte* set = stackalloc byte[Libc.UserSigsetBytes];
        byte* info = stackalloc byte[128];
        new Span<byte>(set, Libc.UserSigsetBytes).Clear();
        AddTo(new Span<byte>(set, Libc.UserSigsetBytes), Number);
        long* zero = stackalloc long[2] { 0, 0 };
        // SAFETY: set/info/zero are stack buffers of the sizes glibc expects (sigset_t, siginfo_t, timespec).
        while (Libc.sigtimedwait(set, info, zero) > 0) { }
    }

    // PERF: the process id, read once. glibc does not cache getpid (since 2.25), so asking at every
    // kick cost a syscall on the kick path; a .NET process never forks without exec, so it is fixed.
    private static readonly int s_pid = Libc.getpid();

    /// <summary>Sends the kick signal to thread <paramref name="tid"/> of this process; false if it is gone.</summary>
    public static bool Send(int tid) => Libc.tgkill(s_pid, tid, Number) == 0;

    /// <summary>
    /// glibc's sigset_t is an array of unsigned longs with signal n at bit (n-1) % 64 of word (n-1) / 64,
    /// so the bit is set on the word, not the byte: the byte differs on big-endian s390x.
    /// </summary>
    private static void AddTo(Span<byte> set, int signal) =>
        MemoryMarshal.Cast<byte, ulong>(set)[(signal - 1) / 64] |= 1UL << ((signal - 1) % 64);
}
