using System.Diagnostics;
using KvmSharp.Devices;

namespace KvmSharp;

/// <summary>
/// A run loop for one vCPU: runs it, dispatches port I/O and MMIO exits to an <see cref="IoBus"/>,
/// and stops on HLT, shutdown, a device's request, a timeout, cancellation, <see cref="Vcpu.RequestExit"/>,
/// an unclaimed access (if so configured) or an exit it does not handle — returning why.
/// </summary>
/// <remarks>Use it on the thread that runs the vCPU; <see cref="RequestStop"/> may be called from any thread.</remarks>
public sealed class VcpuRunner
{
    private readonly Lock _lock = new();
    private int _stop;
    private int _timedOut;
    private int _cancelled;
    private bool _armed;
    private Deadline? _deadline; // the running loop's timeout, if any (under _lock)

    /// <summary>Creates a runner for <paramref name="vcpu"/> dispatching to <paramref name="bus"/>.</summary>
    public VcpuRunner(Vcpu vcpu, IoBus bus)
    {
        ArgumentNullException.ThrowIfNull(vcpu);
        ArgumentNullException.ThrowIfNull(bus);
        Vcpu = vcpu;
        Bus = bus;
    }

    /// <summary>The vCPU this runner runs.</summary>
    public Vcpu Vcpu { get; }

    /// <summary>The bus exits are dispatched to.</summary>
    public IoBus Bus { get; }

    /// <summary>What to do with accesses no device claims (default <see cref="UnclaimedAccessPolicy.Ignore"/>).</summary>
    public UnclaimedAccessPolicy UnclaimedPolicy { get; set; }

    /// <summary>Makes the loop stop with <see cref="RunStopReason.StopRequested"/>: after the current exit's handling, or by kicking the vCPU. Any thread.</summary>
    public void RequestStop()
    {
        Volatile.Write(ref _stop, 1);
        Vcpu.RequestExit();
    }

    /// <summary>
    /// Runs until a stop condition (see <see cref="RunStopReason"/>).
    /// </summary>
    /// <param name="timeout">How long at most; <see cref="Timeout.InfiniteTimeSpan"/> (default) for no limit.</param>
    /// <param name="cancellationToken">Stops the loop when cancelled.</param>
    /// <exception cref="KvmException">KVM_RUN failed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// A negative timeout other than <see cref="Timeout.InfiniteTimeSpan"/>, or one longer than a
    /// <see cref="Timer"/> can wait (4 294 967 294 ms).
    /// </exception>
    public RunResult Run(TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        if (timeout is { } t && t != Timeout.InfiniteTimeSpan)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(t, TimeSpan.Zero, nameof(timeout));
            ArgumentOutOfRangeException.ThrowIfGreaterThan(t, TimeSpan.FromMilliseconds(uint.MaxValue - 1), nameof(timeout));
        }
        Vcpu.Hold(); // own the vCPU across exits: Invoke actions run at the next entry, not mid-handler
        try
        {
            return RunHeld(timeout, cancellationToken);
        }
        finally
        {
            Vcpu.Unhold();
        }
    }

    private RunResult RunHeld(TimeSpan? timeout, CancellationToken cancellationToken)
    {
        Volatile.Write(ref _stop, 0);
        Volatile.Write(ref _timedOut, 0);
        Volatile.Write(ref _cancelled, 0);
        Deadline? deadline = null;
        lock (_lock)
        {
            _armed = true;
            if (timeout is { } t && t != Timeout.InfiniteTimeSpan)
            {
                // Created under the lock, so that its callback (which takes the lock) sees it complete.
                _deadline = deadline = new Deadline(this, Stopwatch.GetTimestamp() + (long)(t.TotalSeconds * Stopwatch.Frequency));
                deadline.Timer = new Timer(static s => ((Deadline)s!).Runner.OnTimeout((Deadline)s), deadline, t, Timeout.InfiniteTimeSpan);
            }
        }
        var reg = cancellationToken.UnsafeRegister(static s => ((VcpuRunner)s!).OnCancel(), this);
        try
        {
            return Loop();
        }
        finally
        {
            lock (_lock)
            {
                _armed = false;
                _deadline = null;
            }
            deadline?.Timer!.Dispose();
            reg.Dispose();
            // A timeout, cancellation or stop that fired after the loop ended for another reason left
            // an exit request behind: withdraw it so that the vCPU's next run is not cut short.
            if ((_timedOut | _cancelled | _stop) != 0) Vcpu.CancelExitRequest();
        }
    }

    private RunResult Loop()
    {
        long exits = 0;
        while (true)
        {
            if (Volatile.Read(ref _stop) != 0) return new RunResult(RunStopReason.StopRequested, VcpuExitReason.Interrupted, 0, exits);
            var exit = Vcpu.Run();
            exits++;
            // Writes KVM coalesced happened before this exit: devices get them first, in order.
            if (Vcpu.VirtualMachine.UsesCoalescedWrites) Vcpu.DrainCoalescedWrites(_coalescedHandler ??= DeliverCoalesced);
            switch (exit.Reason)
            {
                case VcpuExitReason.Io:
                {
                    var data = exit.Io.Decode(out ushort port, out int size, out int count, out bool isOut);
                    if (!Dispatch(isPort: true, port, size, count, isOut, data)) return Unclaimed(VcpuExitReason.Io, port, exits);
                    break;
                }
                case VcpuExitReason.Mmio:
                {
                    var m = exit.Mmio;
                    if (!Dispatch(isPort: false, m.Address, m.Length, 1, m.IsWrite, m.Data)) return Unclaimed(exit.Reason, m.Address, exits);
                    break;
                }
                case VcpuExitReason.Hlt:
                    return new RunResult(RunStopReason.Halted, exit.Reason, 0, exits);
                case VcpuExitReason.Shutdown:
                    return new RunResult(RunStopReason.Shutdown, exit.Reason, 0, exits);
                case VcpuExitReason.SystemEvent when exit.SystemEvent.Type is SystemEventType.Shutdown or SystemEventType.Reset or SystemEventType.Crash:
                    return new RunResult(RunStopReason.Shutdown, exit.Reason, 0, exits);
                case VcpuExitReason.Interrupted:
                {
                    if (Volatile.Read(ref _timedOut) != 0) return new RunResult(RunStopReason.Timeout, exit.Reason, 0, exits);
                    if (Volatile.Read(ref _cancelled) != 0) return new RunResult(RunStopReason.Cancelled, exit.Reason, 0, exits);
                    if (Volatile.Read(ref _stop) != 0) return new RunResult(RunStopReason.StopRequested, exit.Reason, 0, exits);
                    return new RunResult(RunStopReason.ExitRequested, exit.Reason, 0, exits);
                }
                case VcpuExitReason.IrqWindowOpen:
                    break;
                default:
                    return new RunResult(RunStopReason.UnhandledExit, exit.Reason, 0, exits);
            }
            if (Volatile.Read(ref _stop) != 0) return new RunResult(RunStopReason.StopRequested, exit.Reason, 0, exits);
        }
    }

    private CoalescedWriteHandler? _coalescedHandler;

    /// <summary>A coalesced write, dispatched to its device like a write exit (one no device claims is dropped: it cannot stop the run mid-drain).</summary>
    private void DeliverCoalesced(ulong address, ReadOnlySpan<byte> data, bool isPio)
    {
        Span<byte> copy = stackalloc byte[8];
        data.CopyTo(copy);
        Dispatch(isPio, address, data.Length, 1, write: true, copy[..data.Length]);
    }

    private RunResult Unclaimed(VcpuExitReason reason, ulong address, long exits) =>
        new(RunStopReason.UnclaimedAccess, reason, address, exits);

    /// <summary>Hands each item of an access to the device claiming it; false when unclaimed under <see cref="UnclaimedAccessPolicy.Stop"/>.</summary>
    private bool Dispatch(bool isPort, ulong address, int size, int count, bool write, Span<byte> data)
    {
        var device = Bus.Find(isPort, address, (ulong)size, out ulong offset);
        var context = new IoContext(this, isPort, address);
        if (device is null)
        {
            switch (UnclaimedPolicy)
            {
                case UnclaimedAccessPolicy.Stop: return false;
                case UnclaimedAccessPolicy.ReadAllOnes: if (!write) data.Fill(0xFF); break;
                default: if (!write) data.Clear(); break;
            }
            return true;
        }
        // String I/O: every item goes to the same port.
        for (int i = 0; i < count; i++)
        {
            var item = data.Slice(i * size, size);
            if (write) device.Write(context, offset, item);
            else device.Read(context, offset, item);
        }
        return true;
    }

    /// <summary>One run's timeout: its end (a <see cref="Stopwatch"/> timestamp) and its timer.</summary>
    private sealed class Deadline(VcpuRunner runner, long at)
    {
        public readonly VcpuRunner Runner = runner;
        public readonly long At = at;
        public Timer? Timer;
    }

    private void OnTimeout(Deadline deadline)
    {
        lock (_lock)
        {
            // A late callback of an earlier run's timer (disposing a timer does not wait for a queued
            // callback) must not end this run; nor may a callback that fires a little early.
            if (!_armed || _deadline != deadline) return;
            long left = deadline.At - Stopwatch.GetTimestamp();
            if (left > 0)
            {
                deadline.Timer!.Change(TimeSpan.FromMilliseconds(Math.Ceiling(left * 1000.0 / Stopwatch.Frequency)), Timeout.InfiniteTimeSpan);
                return;
            }
            Volatile.Write(ref _timedOut, 1);
            Vcpu.RequestExit();
        }
    }

    private void OnCancel()
    {
        lock (_lock)
        {
            if (!_armed) return;
            Volatile.Write(ref _cancelled, 1);
            Vcpu.RequestExit();
        }
    }
}
