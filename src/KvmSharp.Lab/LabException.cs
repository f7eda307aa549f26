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
