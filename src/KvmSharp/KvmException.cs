namespace KvmSharp;

/// <summary>
/// A system call on a KVM file descriptor failed. Carries the errno, its name, the operation
/// (usually the ioctl's C name, such as <c>KVM_SET_USER_MEMORY_REGION</c>) and the arguments that matter.
/// </summary>
public class KvmException : IOException
{
    /// <summary>Creates an exception for a failed <paramref name="operation"/>.</summary>
    /// <param name="operation">The ioctl or syscall name, e.g. <c>KVM_RUN</c> or <c>mmap</c>.</param>
    /// <param name="errno">The positive errno value.</param>
    /// <param name="details">The arguments that matter, e.g. <c>slot 1, gpa 0x100000, size 0x2000</c>; may be null.</param>
    public KvmException(string operation, int errno, string? details = null)
        : base(Format(operation, errno, details), errno)
    {
        Operation = operation;
        Errno = errno;
        Details = details;
    }

    /// <summary>Creates an exception with a custom message.</summary>
    protected KvmException(string message, string operation, int errno, string? details)
        : base(message, errno)
    {
        Operation = operation;
        Errno = errno;
        Details = details;
    }

    /// <summary>The ioctl or syscall that failed, e.g. <c>KVM_CREATE_VCPU</c>.</summary>
    public string Operation { get; }

    /// <summary>The positive errno value (0 when the failure was not a syscall error).</summary>
    public int Errno { get; }

    /// <summary>The errno's symbolic name, e.g. <c>EINVAL</c>.</summary>
    public string ErrnoName => Interop.Errno.Name(Errno);

    /// <summary>The arguments that matter for this call, or null.</summary>
    public string? Details { get; }

    private static string Format(string operation, int errno, string? details) =>
        details is null
            ? $"{operation} failed: {Interop.Errno.Name(errno)} ({errno})"
            : $"{operation} failed: {Interop.Errno.Name(errno)} ({errno}); {details}";
}
