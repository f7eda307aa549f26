namespace KvmSharp.Interop;

/// <summary>
/// The kernel seam: every syscall KvmSharp makes on KVM file descriptors and mappings goes through
/// this interface. <see cref="LinuxKernel"/> calls libc; tests substitute a model that records or
/// counts calls, injects errors, or emulates another architecture's KVM.
/// </summary>
/// <remarks>
/// Results follow the kernel's own convention: a non-negative value on success, <c>-errno</c> on
/// failure. No method throws for a failed syscall, so callers decide how to report it (see
/// <see cref="KvmException"/>). Implementations must be thread-safe.
/// </remarks>
internal interface IKernel
{
    /// <summary><c>open(path, flags | O_CLOEXEC)</c>: a file descriptor, or <c>-errno</c>.</summary>
    int Open(string path, int flags);

    /// <summary><c>close(fd)</c>: 0 or <c>-errno</c>.</summary>
    int Close(int fd);

    /// <summary><c>ioctl(fd, request, arg)</c>: the ioctl's result, or <c>-errno</c>.</summary>
    int Ioctl(int fd, KvmIoctl request, nint arg);

    /// <summary><c>mmap(NULL, length, prot, flags, fd, offset)</c>: the address, or <c>-errno</c>.</summary>
    nint Mmap(nuint length, int prot, int flags, int fd, long offset);

    /// <summary><c>munmap(addr, length)</c>: 0 or <c>-errno</c>.</summary>
    int Munmap(nint addr, nuint length);

    /// <summary><c>madvise(addr, length, advice)</c>: 0 or <c>-errno</c>.</summary>
    int Madvise(nint addr, nuint length, int advice);
}
