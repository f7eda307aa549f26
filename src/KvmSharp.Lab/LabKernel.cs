namespace KvmSharp.Lab;

/// <summary>
/// A kernel of the user's choice for the lab machine, in place of Debian's.
/// </summary>
/// <param name="ImagePath">The kernel image QEMU boots: a <c>bzImage</c>/<c>vmlinuz</c> for x86_64,
/// an <c>Image</c> (or Debian's <c>vmlinuz</c>) for arm64.</param>
/// <param name="ModulesDirectory">The kernel's <c>/lib/modules/&lt;release&gt;</c> folder, from which the
/// lab takes the modules it needs (x86_64: <c>kvm_amd</c>; both: <c>virtio_pci</c>, <c>9p</c>,
/// <c>9pnet_virtio</c>, <c>virtio_console</c>) with their dependencies, read from each module's
/// <c>.modinfo</c>. Null when all of them are built in.</param>
public sealed record LabKernel(string ImagePath, string? ModulesDirectory = null);
