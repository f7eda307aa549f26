using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace KvmSharp.Interop;

/// <summary>The real kernel: each call is one libc call. Stateless and thread-safe.</summary>
internal sealed class LinuxKernel : IKernel
{
    public static readonly LinuxKernel Instance = new();

    private LinuxKernel() { }

    /// <summary>
    /// KVM_RUN on <paramref name="vcpuFd"/>, as <see cref="Ioctl"/> would issue it, for callers that
    /// know the seam is this kernel: a direct call with a constant request, so a vCPU's hot loop
    /// touches no seam object between exits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Run(int vcpuFd)
    {
        int r = Libc.ioctl(vcpuFd, KvmIoctls.KvmRunNumber, 0);
        return r >= 0 ? r : -Marshal.GetLastSystemError();
    }

    /// <summary>
    /// <see cref="Ioctl"/> by request number, for hot paths that know the seam is this kernel (the
    /// arm64 register cache's ONE_REG transfers between two runs): a direct call with a constant
    /// request, no seam dispatch and no <see cref="KvmIoctl"/> object.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int DirectIoctl(int fd, uint request, nint arg)
    {
        int r = Libc.ioctl(fd, request, arg);
        return r >= 0 ? r : -Marshal.GetLastSystemError();
    }

    private static int Result(int r) => r >= 0 ? r : -Marshal.GetLastPInvokeError();

    public int Open(string path, int flags) => Result(Libc.open(path, flags | Libc.O_CLOEXEC));

    public int Close(int fd) => Result(Libc.close(fd));

    public int Ioctl(int fd, KvmIoctl request, nint arg)
    {
        int r = Libc.ioctl(fd, request.Number, arg);
        return r >= 0 ? r : -Marshal.GetLastSystemError();
    }

    public nint Mmap(nuint length, int prot, int flags, int fd, long offset)
    {
        nint p = Libc.mmap(0, length, prot, flags, fd, offset);
        return p == -1 ? -Marshal.GetLastPInvokeError() : p;
    }

    public int Munmap(nint addr, nuint length) => Result(Libc.munmap(addr, length));

    public int Madvise(nint addr, nuint length, int advice) => Result(Libc.madvise(addr, length, advice));
}
