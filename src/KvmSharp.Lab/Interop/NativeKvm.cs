using System.Runtime.InteropServices;

namespace KvmSharp.Lab.Interop;

/// <summary>Whether this process can use a KVM device right here, and if not, why.</summary>
internal static class NativeKvm
{
    /// <summary>
    /// Opens <paramref name="devicePath"/> read/write and asks its API version. Usable means the
    /// open succeeded and the version is 12; the reason says what failed otherwise.
    /// </summary>
    public static (bool Usable, string Reason) Probe(string devicePath)
    {
        if (!OperatingSystem.IsLinux())
            return (false, "KVM exists only on Linux");
        int fd = Libc.open(devicePath, Libc.O_RDWR | Libc.O_CLOEXEC);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            return (false, errno switch
            {
                2 => $"{devicePath} does not exist (ENOENT)",
                13 => $"{devicePath} exists but this user may not open it (EACCES)",
                1 => $"{devicePath} exists but this user may not open it (EPERM)",
                6 or 19 => $"{devicePath} has no KVM behind it (ENXIO/ENODEV)",
                _ => $"{devicePath} could not be opened (errno {errno})",
            });
        }
        try
        {
            int version = Libc.ioctl(fd, Libc.KVM_GET_API_VERSION, 0);
            return version == 12
                ? (true, $"{devicePath} works (API version 12)")
                : (false, $"{devicePath} answers KVM_GET_API_VERSION with {version}, not 12");
        }
        finally
        {
            Libc.close(fd);
        }
    }

    /// <summary>The running kernel's release, e.g. <c>6.1.0-57-amd64</c>.</summary>
    public static string KernelRelease()
    {
        try { return File.ReadAllText("/proc/sys/kernel/osrelease").Trim(); }
        catch (IOException) { return Environment.OSVersion.Version.ToString(); }
        catch (UnauthorizedAccessException) { return Environment.OSVersion.Version.ToString(); }
    }
}
