using System.Diagnostics;

namespace KvmSharp.Interop;

/// <summary>
/// Ioctls whose argument is one uapi struct the caller holds (usually a local): the memory-view
/// layer passes its address, so that callers need no pointers.
/// </summary>
internal static class IoctlArgument
{
    /// <summary>
    /// <c>ioctl(fd, request, &amp;argument)</c> through <paramref name="kernel"/>: the kernel reads
    /// <paramref name="argument"/> and, for a read request, writes it in place. Returns the ioctl's
    /// result, or <c>-errno</c> (see <see cref="IKernel.Ioctl"/>).
    /// </summary>
    public static unsafe int Ioctl<T>(this IKernel kernel, int fd, KvmIoctl request, ref T argument) where T : unmanaged
    {
        Debug.Assert(request.ArgumentSize == sizeof(T), $"{request} does not take a {typeof(T).Name} ({sizeof(T)} bytes).");
        // SAFETY: `fixed` pins the argument (a no-op for a local) for the whole synchronous call, and
        // the request's encoded size is sizeof(T) (asserted above), so the kernel touches that struct only.
        fixed (T* p = &argument)
            return kernel.Ioctl(fd, request, (nint)p);
    }
}
