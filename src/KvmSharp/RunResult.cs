namespace KvmSharp;

/// <summary>The outcome of <see cref="VcpuRunner.Run"/>.</summary>
/// <param name="Reason">Why the loop stopped.</param>
/// <param name="LastExit">The exit reason of the last run.</param>
/// <param name="Address">For <see cref="RunStopReason.UnclaimedAccess"/>: the port or guest-physical address.</param>
/// <param name="Exits">How many exits the loop handled, the last included.</param>
public readonly record struct RunResult(RunStopReason Reason, VcpuExitReason LastExit, ulong Address, long Exits);
