namespace KvmSharp.Lab.Provisioning;

/// <summary>Everything a lab machine of one architecture boots with, on the host's disk.</summary>
/// <param name="Qemu">The QEMU system emulator.</param>
/// <param name="KernelImage">The kernel QEMU boots.</param>
/// <param name="Modules">Modules to load, dependencies first.</param>
/// <param name="Busybox">A static busybox of the machine's architecture: the initramfs's tools, and the shell that starts the command.</param>
/// <param name="AppletDirectory">For a foreign architecture, a folder of busybox applet links put first on the command's PATH, so that <c>sh</c>, <c>uname</c>… run there; else null.</param>
internal sealed record LabAssets(string Qemu, string KernelImage, IReadOnlyList<KernelModules.Module> Modules, string Busybox, string? AppletDirectory);
