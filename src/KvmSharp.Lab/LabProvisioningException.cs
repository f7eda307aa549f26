namespace KvmSharp.Lab;

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
