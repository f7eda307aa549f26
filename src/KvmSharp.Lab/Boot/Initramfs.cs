using KvmSharp.Lab.Provisioning;

namespace KvmSharp.Lab.Boot;

/// <summary>
/// Builds the lab machine's initramfs: a static busybox, the modules to load (in order) and the
/// <c>/init</c> script. It is small (a few MiB) and written uncompressed, which the kernel unpacks
/// faster than gzip under emulation.
/// </summary>
internal static class Initramfs
{
    /// <summary>The init script (embedded resource <c>init.sh</c>).</summary>
    public static string InitScript { get; } = ReadInitScript();

    public static void Write(string path, LabAssets assets)
    {
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        var cpio = new CpioWriter(file);
        foreach (string dir in new[] { "bin", "dev", "proc", "sys", "mnt", "mnt/host", "lib", "lib/modules" })
            cpio.AddDirectory(dir);
        cpio.AddFile("bin/busybox", File.ReadAllBytes(assets.Busybox), executable: true);
        cpio.AddFile("init", System.Text.Encoding.UTF8.GetBytes(InitScript), executable: true);
        foreach (var module in assets.Modules)
            cpio.AddFile($"lib/modules/{module.Name}.ko", KernelModules.Load(module.Path), executable: false);
        cpio.AddFile("lib/modules/order", System.Text.Encoding.UTF8.GetBytes(string.Concat(assets.Modules.Select(m => m.Name + "\n"))), executable: false);
        cpio.Finish();
    }

    private static string ReadInitScript()
    {
        using var stream = typeof(Initramfs).Assembly.GetManifestResourceStream("init.sh")
            ?? throw new InvalidOperationException("KvmSharp.Lab was built without its init.sh resource.");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}
