namespace KvmSharp.Lab;

/// <summary>
/// What a Linux guest of one architecture boots with, provisioned and cached exactly as the lab's own
/// machines are (<see cref="KvmLab.ProvisionGuestImages"/>): a stock kernel and a static busybox to
/// build an initramfs from (<see cref="InitramfsBuilder"/>).
/// </summary>
/// <param name="Architecture">The guest's architecture.</param>
/// <param name="KernelImage">The kernel image: Debian's <c>linux-image-&lt;arch&gt;</c> (on x86_64 a bzImage), or <see cref="LabOptions.Kernel"/>'s.</param>
/// <param name="Busybox">A static busybox (Debian's <c>busybox-static</c>) of that architecture.</param>
public sealed record LabGuestImages(LabArchitecture Architecture, string KernelImage, string Busybox);
