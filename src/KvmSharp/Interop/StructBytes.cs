using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace KvmSharp.Interop;

/// <summary>
/// Copies uapi structs to and from raw bytes, for state that is kept as the kernel gave it (device
/// state in snapshots): the bytes are exactly the struct's layout, which the layout tests check.
/// </summary>
internal static class StructBytes
{
    /// <summary>A new array holding the bytes of <paramref name="value"/>.</summary>
    public static byte[] ToArray<T>(in T value) where T : unmanaged =>
        MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)).ToArray();

    /// <summary>
    /// <c>ioctl(fd, request, &amp;argument)</c> for a request that fills a struct (a state getter);
    /// returns the struct's bytes as the kernel left them.
    /// </summary>
    /// <exception cref="KvmException">The ioctl failed; the message names it and <paramref name="details"/>.</exception>
    public static byte[] IoctlGet<T>(this IKernel kernel, int fd, KvmIoctl request, T argument, string? details = null) where T : unmanaged
    {
        Pass(kernel, fd, request, ref argument, details);
        return ToArray(in argument);
    }

    /// <summary><c>ioctl(fd, request, &amp;argument)</c> for a request that reads a struct (a state setter).</summary>
    /// <exception cref="KvmException">The ioctl failed; the message names it and <paramref name="details"/>.</exception>
    public static void IoctlSet<T>(this IKernel kernel, int fd, KvmIoctl request, T argument, string? details = null) where T : unmanaged =>
        Pass(kernel, fd, request, ref argument, details);

    private static void Pass<T>(IKernel kernel, int fd, KvmIoctl request, ref T argument, string? details) where T : unmanaged
    {
        int r = kernel.Ioctl(fd, request, ref argument);
        if (r < 0) ThrowHelper.ThrowKvm(request, r, details);
    }

    /// <summary>A <typeparamref name="T"/> read from <paramref name="bytes"/>, which must be exactly its size.</summary>
    /// <param name="bytes">The struct's bytes.</param>
    /// <param name="cName">The C struct's name, for the error message.</param>
    /// <exception cref="ArgumentException"><paramref name="bytes"/> is not <c>sizeof(T)</c> long.</exception>
    public static T Read<T>(ReadOnlySpan<byte> bytes, string cName) where T : unmanaged
    {
        if (bytes.Length != Unsafe.SizeOf<T>())
            throw new ArgumentException($"A struct {cName} is {Unsafe.SizeOf<T>()} bytes; got {bytes.Length}.", nameof(bytes));
        return MemoryMarshal.Read<T>(bytes);
    }
}
