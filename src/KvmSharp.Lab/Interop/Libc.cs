using System.Runtime.InteropServices;

namespace KvmSharp.Lab.Interop;

/// <summary>
/// The few libc calls the lab needs: probing <c>/dev/kvm</c> (open, KVM_GET_API_VERSION, close).
/// Only <see cref="NativeKvm"/> calls these.
/// </summary>
internal static partial class Libc
{
    internal const int O_RDWR = 0x2;
    internal const int O_CLOEXEC = 0x80000;

    /// <summary>KVM_GET_API_VERSION = _IO(0xAE, 0x00), the same on every architecture.</summary>
    internal const nuint KVM_GET_API_VERSION = 0xAE00;

    /// <summary>KVM_CREATE_VM = _IO(0xAE, 0x01) and KVM_CREATE_VCPU = _IO(0xAE, 0x41), the same on every architecture.</summary>
    internal const nuint KVM_CREATE_VM = 0xAE01, KVM_CREATE_VCPU = 0xAE41;

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    internal static partial int open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    internal static partial int close(int fd);

    // ioctl is variadic in C; with integer arguments the x86_64 and arm64 Linux ABIs pass them
    // exactly like a fixed-argument call.
    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    internal static partial int ioctl(int fd, nuint request, nint arg);
}
