using KvmSharp.Lab.Boot;

namespace KvmSharp.Lab;

/// <summary>
/// Builds an initramfs: a cpio archive in the "newc" format Linux unpacks into its root file system
/// at boot (<c>Documentation/driver-api/early-userspace/buffer-format.rst</c>), uncompressed. Entries
/// are owned by root, with modes 0755 (directories, executables, symbolic links) or 0644. The kernel
/// runs <c>/init</c> from it.
/// </summary>
/// <example>
/// A busybox shell as init:
/// <code>
/// var images = KvmLab.ProvisionGuestImages();
/// byte[] initrd = new InitramfsBuilder()
///     .AddDirectory("bin").AddDirectory("dev").AddDirectory("proc").AddDirectory("sys")
///     .AddFile("bin/busybox", File.ReadAllBytes(images.Busybox), executable: true)
///     .AddFile("init", "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexec sh\n"u8.ToArray(), executable: true)
///     .ToArray();
/// </code>
/// </example>
/// <remarks>Not thread-safe. Parent directories must be added before what they hold.</remarks>
public sealed class InitramfsBuilder
{
    private readonly MemoryStream _stream = new();
    private readonly CpioWriter _writer;
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);

    /// <summary>An empty archive.</summary>
    public InitramfsBuilder() => _writer = new CpioWriter(_stream);

    /// <summary>Adds a directory.</summary>
    /// <param name="path">Relative path without a leading slash, such as <c>bin</c> or <c>usr/lib</c>.</param>
    /// <exception cref="ArgumentException">The path is empty, absolute, has <c>.</c> or <c>..</c> parts, or was added already.</exception>
    public InitramfsBuilder AddDirectory(string path)
    {
        _writer.AddDirectory(Check(path));
        return this;
    }

    /// <summary>Adds a regular file.</summary>
    /// <param name="path">Relative path without a leading slash, such as <c>init</c>.</param>
    /// <param name="contents">Its bytes.</param>
    /// <param name="executable">Mode 0755 instead of 0644.</param>
    /// <exception cref="ArgumentException">The path is empty, absolute, has <c>.</c> or <c>..</c> parts, or was added already.</exception>
    public InitramfsBuilder AddFile(string path, ReadOnlySpan<byte> contents, bool executable = false)
    {
        _writer.AddFile(Check(path), contents, executable);
        return this;
    }

    /// <summary>Adds a symbolic link.</summary>
    /// <param name="path">Relative path of the link.</param>
    /// <param name="target">What it points to, as stored (e.g. <c>/bin/busybox</c>).</param>
    /// <exception cref="ArgumentException">The path is not acceptable (see <see cref="AddFile"/>) or the target is empty.</exception>
    public InitramfsBuilder AddSymlink(string path, string target)
    {
        ArgumentException.ThrowIfNullOrEmpty(target);
        _writer.AddSymlink(Check(path), target);
        return this;
    }

    /// <summary>The archive: every entry so far and the <c>TRAILER!!!</c> that ends it. The builder can go on after this.</summary>
    public byte[] ToArray()
    {
        using var copy = new MemoryStream();
        _stream.Position = 0;
        _stream.CopyTo(copy);
        _stream.Position = _stream.Length;
        new CpioWriter(copy).Finish();
        return copy.ToArray();
    }

    private string Check(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (path.StartsWith('/') || path.Split('/').Any(p => p is "" or "." or ".."))
            throw new ArgumentException($"Initramfs path '{path}' must be relative (no leading '/'), without empty, '.' or '..' parts.", nameof(path));
        if (!_names.Add(path))
            throw new ArgumentException($"Initramfs path '{path}' was added already.", nameof(path));
        return path;
    }
}
