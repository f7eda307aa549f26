namespace KvmSharp.Interop;

/// <summary>Linux errno values (asm-generic; the same on x86_64, arm64 and s390x) and their names.</summary>
internal static class Errno
{
    public const int EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EIO = 5, ENXIO = 6, E2BIG = 7, ENOEXEC = 8,
        EBADF = 9, EAGAIN = 11, ENOMEM = 12, EACCES = 13, EFAULT = 14, EBUSY = 16, EEXIST = 17, ENODEV = 19,
        EINVAL = 22, ENFILE = 23, EMFILE = 24, ENOTTY = 25, ENOSPC = 28, ERANGE = 34, ENOSYS = 38,
        EOPNOTSUPP = 95, ETIMEDOUT = 110;

    /// <summary>The symbolic name of <paramref name="errno"/>, e.g. <c>EINVAL</c>; <c>errno N</c> for unknown values.</summary>
    public static string Name(int errno) => errno switch
    {
        EPERM => "EPERM", ENOENT => "ENOENT", ESRCH => "ESRCH", EINTR => "EINTR", EIO => "EIO", ENXIO => "ENXIO",
        E2BIG => "E2BIG", ENOEXEC => "ENOEXEC", EBADF => "EBADF", EAGAIN => "EAGAIN", ENOMEM => "ENOMEM",
        EACCES => "EACCES", EFAULT => "EFAULT", EBUSY => "EBUSY", EEXIST => "EEXIST", ENODEV => "ENODEV",
        EINVAL => "EINVAL", ENFILE => "ENFILE", EMFILE => "EMFILE", ENOTTY => "ENOTTY", ENOSPC => "ENOSPC",
        ERANGE => "ERANGE", ENOSYS => "ENOSYS", EOPNOTSUPP => "EOPNOTSUPP", ETIMEDOUT => "ETIMEDOUT",
        _ => $"errno {errno}",
    };
}
