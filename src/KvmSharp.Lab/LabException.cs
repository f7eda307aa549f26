namespace KvmSharp.Lab;

/// <summary>
/// The lab could not run the command: no usable KVM where one was demanded, QEMU failed to start,
/// the machine did not boot, or it ended without reporting the command's exit code. The message
/// says what happened and ends with the last lines of the machine's console where there was one.
/// </summary>
public class LabException : Exception
{
    /// <summary>Creates the exception.</summary>
    public LabException(string message) : base(message) { }

    /// <summary>Creates the exception with its cause.</summary>
    public LabException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>The last lines the lab machine printed on its console, if it started.</summary>
    public string? ConsoleTail { get; init; }
}

/// <summary>
/// Something the lab needs is missing and could not be provisioned (not root, no <c>apt-get</c>, a
/// package refused or absent). <see cref="Missing"/> names it and <see cref="InstallCommand"/> is
/// the command that installs it.
/// </summary>
public sealed class LabProvisioningException : LabException
{
    /// <summary>Creates the exception.</summary>
    public LabProvisioningException(string message, string missing, string? installCommand) : base(message)
    {
        Missing = missing;
        InstallCommand = installCommand;
    }

    /// <summary>What is missing: a program, a package, a kernel file.</summary>
    public string Missing { get; }

    /// <summary>The command that provides it (e.g. <c>apt-get install qemu-system-x86</c>), when there is one.</summary>
    public string? InstallCommand { get; }
}

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
