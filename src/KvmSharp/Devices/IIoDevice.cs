namespace KvmSharp.Devices;

/// <summary>
/// A device on an <see cref="IoBus"/>: it handles the guest's port I/O or MMIO accesses to the range
/// it is mapped at. Offsets are relative to the start of that range, like the kernel's <c>kvm_io_bus</c>.
/// </summary>
/// <remarks>
/// Called on the vCPU's thread, from <see cref="VcpuRunner"/>; a device mapped into several vCPUs'
/// buses, or shared by one bus that several runners use, is called from several threads at once and
/// must be thread-safe. Data is in the guest's byte order (little-endian on x86).
/// </remarks>
public interface IIoDevice
{
    /// <summary>The guest reads <paramref name="data"/>.Length bytes at <paramref name="offset"/>: fill <paramref name="data"/>.</summary>
    void Read(IoContext context, ulong offset, Span<byte> data);

    /// <summary>The guest writes <paramref name="data"/> at <paramref name="offset"/>.</summary>
    void Write(IoContext context, ulong offset, ReadOnlySpan<byte> data);
}

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
}
