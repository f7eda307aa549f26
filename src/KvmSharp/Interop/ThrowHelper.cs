using System.Diagnostics.CodeAnalysis;

namespace KvmSharp.Interop;

/// <summary>Keeps throw sites out of hot methods so that they stay small and inlinable.</summary>
internal static class ThrowHelper
{
    [DoesNotReturn]
    public static void ThrowKvm(KvmIoctl ioctl, int negErrno, string? details = null) =>
        throw new KvmException(ioctl.Name, -negErrno, details);

    [DoesNotReturn]
    public static void ThrowKvm(string operation, int negErrno, string? details = null) =>
        throw new KvmException(operation, -negErrno, details);

    [DoesNotReturn]
    public static void ThrowObjectDisposed(object instance) =>
        throw new ObjectDisposedException(instance.GetType().FullName);
}
