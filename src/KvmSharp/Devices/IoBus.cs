namespace KvmSharp.Devices;

/// <summary>
/// Maps port ranges and MMIO ranges to devices, like the kernel's <c>kvm_io_bus</c>. Lookups are
/// lock-free (a sorted, immutable snapshot); mapping and unmapping are serialised and may happen
/// while vCPUs run.
/// </summary>
public sealed class IoBus
{
    private readonly Lock _lock = new();
    private Range[] _ports = [];
    private Range[] _mmio = [];

    private readonly record struct Range(ulong Start, ulong Length, IIoDevice Device)
    {
        public ulong End => Start + Length;
    }

    /// <summary>Maps ports <paramref name="first"/> … <paramref name="first"/> + <paramref name="count"/> - 1 to <paramref name="device"/>.</summary>
    /// <exception cref="ArgumentException">The range is empty, leaves the 64 Ki port space, or overlaps a mapped range (named).</exception>
    public void MapPorts(ushort first, int count, IIoDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (count <= 0 || first + count > 0x10000)
            throw new ArgumentException($"Port range 0x{first:X}+{count} is empty or beyond port 0xFFFF.", nameof(count));
        lock (_lock) _ports = Insert(_ports, new Range(first, (ulong)count, device), "port");
    }

    /// <summary>Maps guest-physical <paramref name="address"/> … + <paramref name="length"/> - 1 to <paramref name="device"/>.</summary>
    /// <exception cref="ArgumentException">The range is empty, wraps, or overlaps a mapped range (named).</exception>
    public void MapMmio(ulong address, ulong length, IIoDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (length == 0 || address + length < address)
            throw new ArgumentException($"MMIO range 0x{address:X}+0x{length:X} is empty or wraps.", nameof(length));
        lock (_lock) _mmio = Insert(_mmio, new Range(address, length, device), "MMIO");
    }

    /// <summary>Removes every range mapped to <paramref name="device"/>; returns how many.</summary>
    public int Unmap(IIoDevice device)
    {
        lock (_lock)
        {
            int before = _ports.Length + _mmio.Length;
            _ports = [.. _ports.Where(r => r.Device != device)];
            _mmio = [.. _mmio.Where(r => r.Device != device)];
            return before - _ports.Length - _mmio.Length;
        }
    }

    private static Range[] Insert(Range[] ranges, Range add, string kind)
    {
        foreach (var r in ranges)
            if (add.Start < r.End && r.Start < add.End)
                throw new ArgumentException($"{kind} range 0x{add.Start:X}..0x{add.End - 1:X} overlaps 0x{r.Start:X}..0x{r.End - 1:X} ({r.Device.GetType().Name}).");
        return [.. ranges.Append(add).OrderBy(r => r.Start)];
    }

    /// <summary>The device claiming <paramref name="length"/> bytes at <paramref name="address"/>, and the offset into it.</summary>
    internal IIoDevice? Find(bool port, ulong address, ulong length, out ulong offset)
    {
        var ranges = Volatile.Read(ref port ? ref _ports : ref _mmio);
        int lo = 0, hi = ranges.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            var r = ranges[mid];
            if (address < r.Start) hi = mid - 1;
            else if (address >= r.End) lo = mid + 1;
            else
            {
                offset = address - r.Start;
                // An access straddling the end of the range is not claimed (as in kvm_io_bus).
                return length <= r.Length - offset ? r.Device : null;
            }
        }
        offset = 0;
        return null;
    }
}
