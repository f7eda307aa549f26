using System.Buffers.Binary;

namespace KvmSharp.Guests;

/// <summary>
/// An x86 Linux kernel image (bzImage) as the boot protocol describes it
/// (<c>Documentation/arch/x86/boot.rst</c>): the setup header's fields a loader needs, and where the
/// protected-mode kernel starts in the file. Parsing checks everything a 64-bit load relies on, so a
/// file that is not a bzImage, or one too old to boot that way, is refused with the reason.
/// </summary>
/// <remarks>Immutable; holds the image's bytes (not copied).</remarks>
public sealed class LinuxBzImage
{
    /// <summary>The oldest boot protocol accepted: 2.06 (<c>cmdline_size</c>; 64-bit entry needs 2.12's <c>xloadflags</c> as well).</summary>
    public const ushort MinimumProtocol = 0x0206;

    private const int SetupSectsOffset = 0x1F1, BootFlagOffset = 0x1FE, HeaderOffset = 0x202, VersionOffset = 0x206,
        LoadFlagsOffset = 0x211, InitrdAddrMaxOffset = 0x22C, KernelAlignmentOffset = 0x230, RelocatableOffset = 0x234,
        XLoadFlagsOffset = 0x236, CmdlineSizeOffset = 0x238, PrefAddressOffset = 0x258, InitSizeOffset = 0x260,
        HeaderEnd = 0x264;
    private const uint HdrS = 0x53726448; // "HdrS"
    private const ushort BootFlag = 0xAA55;
    private const byte LoadedHigh = 0x01;
    private const ushort XlfKernel64 = 0x01;

    private readonly ReadOnlyMemory<byte> _image;

    private LinuxBzImage(ReadOnlyMemory<byte> image)
    {
        _image = image;
        var b = image.Span;
        int setupSects = b[SetupSectsOffset] == 0 ? 4 : b[SetupSectsOffset];
        SetupBytes = (setupSects + 1) * 512;
        ProtocolVersion = BinaryPrimitives.ReadUInt16LittleEndian(b[VersionOffset..]);
        InitrdAddressMax = BinaryPrimitives.ReadUInt32LittleEndian(b[InitrdAddrMaxOffset..]);
        KernelAlignment = BinaryPrimitives.ReadUInt32LittleEndian(b[KernelAlignmentOffset..]);
        IsRelocatable = b[RelocatableOffset] != 0;
        XLoadFlags = ProtocolVersion >= 0x020C ? BinaryPrimitives.ReadUInt16LittleEndian(b[XLoadFlagsOffset..]) : (ushort)0;
        CommandLineSize = BinaryPrimitives.ReadUInt32LittleEndian(b[CmdlineSizeOffset..]);
        PreferredAddress = ProtocolVersion >= 0x020A ? BinaryPrimitives.ReadUInt64LittleEndian(b[PrefAddressOffset..]) : 0x10_0000;
        InitSize = ProtocolVersion >= 0x020A ? BinaryPrimitives.ReadUInt32LittleEndian(b[InitSizeOffset..]) : 0;
    }

    /// <summary>The boot protocol version (e.g. 0x020F for 2.15).</summary>
    public ushort ProtocolVersion { get; }

    /// <summary>Bytes of the real-mode setup at the start of the file (<c>(setup_sects + 1) * 512</c>); the protected-mode kernel follows.</summary>
    public int SetupBytes { get; }

    /// <summary>The protected-mode kernel: what is loaded at <see cref="PreferredAddress"/>.</summary>
    public ReadOnlyMemory<byte> Kernel => _image[SetupBytes..];

    /// <summary>
    /// The setup header's bytes as the file has them, from 0x1F1 to its end as the header's own jump
    /// says (0x202 + the byte at 0x201), to copy into the zero page at the same offset.
    /// </summary>
    public ReadOnlyMemory<byte> SetupHeader => _image[SetupSectsOffset..Math.Max(HeaderEnd, Math.Min(0x202 + _image.Span[0x201], _image.Length))];

    /// <summary>The highest address an initrd's last byte may have (<c>initrd_addr_max</c>).</summary>
    public uint InitrdAddressMax { get; }

    /// <summary>The alignment a relocatable kernel needs (<c>kernel_alignment</c>).</summary>
    public uint KernelAlignment { get; }

    /// <summary>Whether the kernel may be loaded elsewhere than <see cref="PreferredAddress"/> (<c>relocatable_kernel</c>).</summary>
    public bool IsRelocatable { get; }

    /// <summary><c>xloadflags</c> (protocol 2.12+): bit 0 says the kernel has the 64-bit entry point.</summary>
    public ushort XLoadFlags { get; }

    /// <summary>Whether the kernel has the 64-bit entry point, at load address + 0x200 (<c>XLF_KERNEL_64</c>).</summary>
    public bool Has64BitEntry => (XLoadFlags & XlfKernel64) != 0;

    /// <summary>The longest command line the kernel takes, in bytes without the terminating NUL (<c>cmdline_size</c>).</summary>
    public uint CommandLineSize { get; }

    /// <summary>Where the kernel wants to be loaded (<c>pref_address</c>; 1 MiB before protocol 2.10).</summary>
    public ulong PreferredAddress { get; }

    /// <summary>The memory the kernel needs from its load address on while it decompresses (<c>init_size</c>; 0 before protocol 2.10).</summary>
    public uint InitSize { get; }

    /// <summary>
    /// Reads a bzImage's setup header and checks that a 64-bit loader can boot it: the boot-sector
    /// flag and "HdrS" magic, protocol ≥ 2.06, a kernel loaded high (bzImage, not zImage), the
    /// 64-bit entry point, and a file long enough for its setup and kernel.
    /// </summary>
    /// <exception cref="ArgumentException">The bytes are not such a bzImage; the message says what is wrong.</exception>
    public static LinuxBzImage Parse(ReadOnlyMemory<byte> image)
    {
        var b = image.Span;
        if (b.Length < HeaderEnd)
            throw new ArgumentException($"Not a bzImage: {b.Length} bytes is shorter than a setup header (0x{HeaderEnd:X}).", nameof(image));
        if (BinaryPrimitives.ReadUInt16LittleEndian(b[BootFlagOffset..]) != BootFlag)
            throw new ArgumentException("Not a bzImage: no 0xAA55 boot flag at 0x1FE.", nameof(image));
        if (BinaryPrimitives.ReadUInt32LittleEndian(b[HeaderOffset..]) != HdrS)
            throw new ArgumentException("Not a bzImage: no \"HdrS\" setup header magic at 0x202 (a kernel older than boot protocol 2.00, or not a kernel).", nameof(image));
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(b[VersionOffset..]);
        if (version < MinimumProtocol)
            throw new ArgumentException($"Boot protocol {version >> 8}.{version & 0xFF:D2} is too old: KvmSharp loads 2.06 and later.", nameof(image));
        if ((b[LoadFlagsOffset] & LoadedHigh) == 0)
            throw new ArgumentException("A zImage (loaded low): only bzImages (LOADED_HIGH) are supported.", nameof(image));
        var parsed = new LinuxBzImage(image);
        if (!parsed.Has64BitEntry)
            throw new ArgumentException($"The kernel has no 64-bit entry point (xloadflags 0x{parsed.XLoadFlags:X}, protocol {version >> 8}.{version & 0xFF:D2}): boot a 64-bit kernel of protocol 2.12 or later.", nameof(image));
        if (b.Length <= parsed.SetupBytes)
            throw new ArgumentException($"Truncated bzImage: {b.Length} bytes, but the setup alone is {parsed.SetupBytes}.", nameof(image));
        return parsed;
    }
}
