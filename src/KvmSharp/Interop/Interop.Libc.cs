using System.Runtime.InteropServices;

namespace KvmSharp.Interop;

/// <summary>
/// Raw libc imports. Only <see cref="LinuxKernel"/> calls these; everything else goes through
/// <see cref="IKernel"/>. Each import sets errno, read with <see cref="Marshal.GetLastPInvokeError"/>.
/// </summary>
internal static partial class Libc
{
    internal const int O_RDWR = 0x2;
    internal const int O_CLOEXEC = 0x80000;

    internal const int PROT_NONE = 0x0;
    internal const int PROT_READ = 0x1;
    internal const int PROT_WRITE = 0x2;
    internal const int MAP_SHARED = 0x01;
    internal const int MAP_PRIVATE = 0x02;
    internal const int MAP_ANONYMOUS = 0x20;
    internal const int MAP_NORESERVE = 0x4000;
    internal const int MADV_DONTNEED = 4;
    internal const int MADV_DONTFORK = 10;
    internal const int MADV_HUGEPAGE = 14;

    [LibraryImport(Name, EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    internal static partial int open(string path, int flags);

    [LibraryImport(Name, EntryPoint = "close", SetLastError = true)]
    internal static partial int close(int fd);

    // ioctl is variadic in C; on the System V x86_64 and AAPCS64/s390x Linux ABIs a variadic call
    // with integer/pointer arguments passes them exactly like a fixed-argument call, so binding it
    // with a fixed third argument is sound on every architecture KvmSharp supports.
    // PERF: no SetLastError. Its stub clears errno before every call and reads it after (two extra
    // native calls, ~90 ns per ioctl measured here); LinuxKernel reads errno only when the call
    // failed, right after it returns, which is exactly when the generated stub would have read it.
    [LibraryImport(Name, EntryPoint = "ioctl")]
    internal static partial int ioctl(int fd, nuint request, nint arg);

    [LibraryImport(Name, EntryPoint = "mmap", SetLastError = true)]
    internal static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport(Name, EntryPoint = "munmap", SetLastError = true)]
    internal static partial int munmap(nint addr, nuint length);

    [LibraryImport(Name, EntryPoint = "madvise", SetLastError = true)]
    internal static partial int madvise(nint addr, nuint length, int advice);
}
