namespace KvmSharp.Lab;

/// <summary>
/// The lab machine did not boot within <see cref="LabOptions.BootTimeout"/>, or the command did not
/// end within <see cref="LabOptions.CommandTimeout"/>. QEMU (or the native process) has been
/// killed when this is thrown.
/// </summary>
public sealed class LabTimeoutException : LabException
{
    /// <summary>Creates the exception.</summary>
    public LabTimeoutException(string message, bool duringBoot, TimeSpan timeout) : base(message)
    {
        DuringBoot = duringBoot;
        Timeout = timeout;
    }

    /// <summary>True when the machine did not become ready; false when the command overran.</summary>
    public bool DuringBoot { get; }

    /// <summary>The limit that was exceeded.</summary>
    public TimeSpan Timeout { get; }
}
