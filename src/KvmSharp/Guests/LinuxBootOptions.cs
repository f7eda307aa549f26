namespace KvmSharp.Guests;

/// <summary>What <see cref="X86LinuxBoot.Load"/> gives the kernel besides the image itself.</summary>
public sealed class LinuxBootOptions
{
    /// <summary>
    /// The kernel command line (ASCII; default empty). At most the image's
    /// <see cref="LinuxBzImage.CommandLineSize"/> bytes. A guest without ACPI, such as one booted this
    /// way, powers off through a reboot: add <c>reboot=k</c> (the keyboard controller's reset, which
    /// <see cref="Devices.ResetDevice"/> turns into <see cref="RunStopReason.GuestReset"/>) and
    /// <c>panic=-1</c> (reboot at once on a panic), as Firecracker does.
    /// </summary>
    public string CommandLine { get; init; } = "";

    /// <summary>An initial RAM disk (e.g. a cpio initramfs), or empty for none (default).</summary>
    public ReadOnlyMemory<byte> Initrd { get; init; }

    /// <summary>
    /// Guest-physical address to load the protected-mode kernel at, or null (default) for the image's
    /// <see cref="LinuxBzImage.PreferredAddress"/>. Another address needs a relocatable kernel, aligned
    /// to its <see cref="LinuxBzImage.KernelAlignment"/>.
    /// </summary>
    public ulong? KernelAddress { get; init; }
}
