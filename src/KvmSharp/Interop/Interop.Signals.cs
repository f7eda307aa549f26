using System.Runtime.InteropServices;

namespace KvmSharp.Interop;

/// <summary>
/// Thread and signal imports for kicking a vCPU out of KVM_RUN. These act on threads, not on KVM
/// file descriptors, so they are not part of the kernel seam.
/// </summary>
// SAFETY: unsafe for the pointer parameters only; KickSignal, the only caller, passes stack buffers
// of the sizes glibc expects (see its SAFETY comments).
internal static unsafe partial class Libc
{
    internal const int SIG_BLOCK = 0, SIG_UNBLOCK = 1, SIG_SETMASK = 2;

    /// <summary>glibc's <c>sigset_t</c> is 1024 bits; the kernel's (and KVM_SET_SIGNAL_MASK's) is 64.</summary>
    internal const int UserSigsetBytes = 128, KernelSigsetBytes = 8;

    [LibraryImport(Name, EntryPoint = "gettid")]
    internal static partial int gettid();

    [LibraryImport(Name, EntryPoint = "getpid")]
    internal static partial int getpid();

    [LibraryImport(Name, EntryPoint = "tgkill", SetLastError = true)]
    internal static partial int tgkill(int tgid, int tid, int sig);

    [LibraryImport(Name, EntryPoint = "pthread_sigmask")]
    internal static partial int pthread_sigmask(int how, byte* set, byte* oldset);

    [LibraryImport(Name, EntryPoint = "sigtimedwait", SetLastError = true)]
    internal static partial int sigtimedwait(byte* set, byte* info, long* timeout);

    internal const nint SIG_DFL = 0, SIG_IGN = 1, SIG_ERR = -1;

    [LibraryImport(Name, EntryPoint = "signal")]
    internal static partial nint signal(int signum, nint handler);

    [LibraryImport(Name, EntryPoint = "__libc_current_sigrtmin")]
    internal static partial int __libc_current_sigrtmin();

    [LibraryImport(Name, EntryPoint = "__libc_current_sigrtmax")]
    internal static partial int __libc_current_sigrtmax();
}
