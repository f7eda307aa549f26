namespace KvmSharp.Devices;

/// <summary>What a device learns about the access it handles, and how it stops the run loop.</summary>
public readonly ref struct IoContext
{
    private readonly VcpuRunner _runner;

    internal IoContext(VcpuRunner runner, bool isPort, ulong address)
    {
        _runner = runner;
        IsPort = isPort;
        Address = address;
    }

    /// <summary>The vCPU that made the access. Its registers may be read and written here (this is its thread).</summary>
    public Vcpu Vcpu => _runner.Vcpu;

    /// <summary>True for port I/O, false for MMIO.</summary>
    public bool IsPort { get; }

    /// <summary>The absolute port or guest-physical address of the access.</summary>
    public ulong Address { get; }

    /// <summary>Makes <see cref="VcpuRunner.Run"/> return <see cref="RunStopReason.StopRequested"/> after this access completes.</summary>
    public void RequestStop() => _runner.RequestStop();

    /// <summary>
    /// The guest asked for a system reset: makes <see cref="VcpuRunner.Run"/> return
    /// <see cref="RunStopReason.GuestReset"/>, with this access's address, after this access completes.
    /// </summary>
    public void RequestReset() => _runner.RequestReset(Address);
}
