namespace KvmSharp;

/// <summary>KVM cannot be used here; <see cref="Reason"/> says why.</summary>
public sealed class KvmUnavailableException : KvmException
{
    internal KvmUnavailableException(KvmUnavailableReason reason, string path, string operation, int errno, string message)
        : base(message, operation, errno, path)
    {
        Reason = reason;
        Path = path;
    }

    /// <summary>Which of the known reasons applies.</summary>
    public KvmUnavailableReason Reason { get; }

    /// <summary>The device path that was tried.</summary>
    public string Path { get; }
}
