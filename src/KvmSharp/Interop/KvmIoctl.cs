namespace KvmSharp.Interop;

/// <summary>
/// One KVM ioctl request: its C macro name (used in error messages and by the layout tests) and
/// its number, computed with the kernel's <c>_IOC</c> encoding, which is the asm-generic one
/// (<c>dir&lt;&lt;30 | size&lt;&lt;16 | type&lt;&lt;8 | nr</c>, write = 1, read = 2) on x86_64, arm64 and s390x.
/// </summary>
internal sealed class KvmIoctl
{
    private const uint KVMIO = 0xAE;
    private const uint IOC_NONE = 0, IOC_WRITE = 1, IOC_READ = 2;

    private KvmIoctl(string name, uint number)
    {
        Name = name;
        Number = number;
    }

    /// <summary>The C macro name, e.g. <c>KVM_RUN</c>.</summary>
    public string Name { get; }

    /// <summary>The request number passed to <c>ioctl(2)</c>.</summary>
    public uint Number { get; }

    /// <summary>The argument size encoded in <see cref="Number"/> (<c>_IOC_SIZE</c>).</summary>
    public int ArgumentSize => (int)(Number >> 16 & 0x3FFF);

    internal static uint Encode(uint dir, uint nr, int size)
    {
        if ((uint)size >= 1u << 14)
            throw new ArgumentOutOfRangeException(nameof(size), size, "ioctl argument size does not fit _IOC_SIZEBITS (14).");
        return dir << 30 | (uint)size << 16 | KVMIO << 8 | nr;
    }

    /// <summary><c>_IO(KVMIO, nr)</c>.</summary>
    public static KvmIoctl IO(string name, uint nr) => new(name, Encode(IOC_NONE, nr, 0));

    /// <summary><c>_IOR(KVMIO, nr, T)</c>.</summary>
    public static KvmIoctl IOR<T>(string name, uint nr) where T : unmanaged => new(name, Encode(IOC_READ, nr, SizeOf<T>()));

    /// <summary><c>_IOW(KVMIO, nr, T)</c>.</summary>
    public static KvmIoctl IOW<T>(string name, uint nr) where T : unmanaged => new(name, Encode(IOC_WRITE, nr, SizeOf<T>()));

    /// <summary><c>_IOWR(KVMIO, nr, T)</c>.</summary>
    public static KvmIoctl IOWR<T>(string name, uint nr) where T : unmanaged => new(name, Encode(IOC_READ | IOC_WRITE, nr, SizeOf<T>()));

    /// <summary>An <c>_IOC</c> with an explicit size, for C types KvmSharp does not mirror (<c>__u32</c>, <c>__u64</c> arguments).</summary>
    public static KvmIoctl IOC(string name, bool read, bool write, uint nr, int size) =>
        new(name, Encode((read ? IOC_READ : 0) | (write ? IOC_WRITE : 0), nr, size));

    // SAFETY: sizeof only reads the type's size; no memory is touched.
    private static unsafe int SizeOf<T>() where T : unmanaged => sizeof(T);

    /// <inheritdoc/>
    public override string ToString() => $"{Name} (0x{Number:X8})";
}
