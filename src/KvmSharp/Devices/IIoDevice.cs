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
