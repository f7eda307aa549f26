using System.Runtime.InteropServices;

namespace KvmSharp.Interop;

/// <summary>
/// eventfd imports for <see cref="EventFd"/>. Like the signal imports they act on a file
/// descriptor KVM does not own, so they are not part of the kernel seam.
/// </summary>
internal static partial class Libc
{
    internal const int EFD_SEMAPHORE = 0x1, EFD_NONBLOCK = 0x800, EFD_CLOEXEC = 0x80000;
    internal const short POLLIN = 0x1;

    [LibraryImport(Name, EntryPoint = "eventfd", SetLastError = true)]
    internal static partial int eventfd(uint initval, int flags);

    /// <summary><c>read(fd, &amp;value, 8)</c>: an eventfd's counter (and reset, or minus one in semaphore mode).</summary>
    [LibraryImport(Name, EntryPoint = "read", SetLastError = true)]
    internal static partial nint read(int fd, ref ulong value, nuint count);

    /// <summary><c>write(fd, &amp;value, 8)</c>: adds to an eventfd's counter.</summary>
    [LibraryImport(Name, EntryPoint = "write", SetLastError = true)]
    internal static partial nint write(int fd, in ulong value, nuint count);

    /// <summary><c>struct pollfd</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport(Name, EntryPoint = "poll", SetLastError = true)]
    internal static partial int poll([In, Out] PollFd[] fds, nuint nfds, int timeout);
}
