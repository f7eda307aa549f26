using KvmSharp.Devices;

namespace KvmSharp;

/// <summary>Why <see cref="VcpuRunner.Run"/> returned.</summary>
public enum RunStopReason
{
    /// <summary>The guest executed HLT (and there is no in-kernel irqchip to wait in).</summary>
    Halted,
    /// <summary>The vCPU shut down (x86 triple fault) or sent a shutdown/reset system event.</summary>
    Shutdown,
    /// <summary>A device called <see cref="IoContext.RequestStop"/>, or <see cref="VcpuRunner.RequestStop"/> was called.</summary>
    StopRequested,
    /// <summary>The timeout passed.</summary>
    Timeout,
    /// <summary>The cancellation token was cancelled.</summary>
    Cancelled,
    /// <summary><see cref="Vcpu.RequestExit"/> was called (by someone other than this runner).</summary>
    ExitRequested,
    /// <summary>An access no device claims, with <see cref="UnclaimedAccessPolicy.Stop"/>.</summary>
    UnclaimedAccess,
    /// <summary>An exit the loop does not handle (see <see cref="RunResult.LastExit"/>): internal error, debug, MSR…</summary>
    UnhandledExit,

    /// <summary>The guest asked for a system reset through a device that called
    /// <see cref="IoContext.RequestReset"/> (e.g. <see cref="ResetDevice"/>: port 0xCF9 or the keyboard
    /// controller's reset pulse); <see cref="RunResult.Address"/> is the port.</summary>
    GuestReset,
}
