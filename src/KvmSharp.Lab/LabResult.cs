namespace KvmSharp.Lab;

/// <summary>How a command run by <see cref="KvmLab.RunAsync"/> ended.</summary>
/// <param name="ExitCode">The command's exit code (128 + N when a signal N ended it).</param>
/// <param name="Location">Where it ran.</param>
/// <param name="BootTime">Time from starting QEMU until the lab machine was ready to run the
/// command; <see cref="TimeSpan.Zero"/> for a native run.</param>
/// <param name="RunTime">Time the command itself took.</param>
public sealed record LabResult(int ExitCode, LabLocation Location, TimeSpan BootTime, TimeSpan RunTime);
