using System.Text;

namespace KvmSharp.Lab.Boot;

/// <summary>
/// Writes a cpio archive in the "newc" format the kernel unpacks as an initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst): per entry a 110-byte ASCII header
/// (magic <c>070701</c> and thirteen 8-digit hex fields), the NUL-terminated name padded to 4
/// bytes, then the data padded to 4 bytes; a <c>TRAILER!!!</c> entry ends it.
/// </summary>
internal sealed class CpioWriter(Stream output)
{
    private const int Directory = 0x4000, Regular = 0x8000, Symlink = 0xA000;
    private int _inode = 1;

    public void AddDirectory(string name) => Add(name, Directory | 0x1ED /* 0755 */, ReadOnlySpan<byte>.Empty);

    public void AddFile(string name, ReadOnlySpan<byte> data, bool executable) =>
        Add(name, Regular | (executable ? 0x1ED : 0x1A4) /* 0755 : 0644 */, data);

    public void AddSymlink(string name, string target) => Add(name, Symlink | 0x1FF, Encoding.UTF8.GetBytes(target));

    public void Finish() => Add("TRAILER!!!", 0, ReadOnlySpan<byte>.Empty, inode: 0);

    private void Add(string name, int mode, ReadOnlySpan<byte> data, int? inode = null)
    {
        byte[] nameBytes = Encoding.UTF8.GetBytes(name);
        var header = new StringBuilder("070701");
        foreach (long field in new long[]
                 {
                     inode ?? _inode++, mode, 0 /* uid */, 0 /* gid */, (mode & Directory) != 0 ? 2 : 1 /* nlink */,
                     0 /* mtime */, data.Length, 0, 0, 0, 0 /* dev, rdev */, nameBytes.Length + 1, 0 /* check */,
                 })
            header.Append(field.ToString("X8", System.Globalization.CultureInfo.InvariantCulture));
        output.Write(Encoding.ASCII.GetBytes(header.ToString()));
        output.Write(nameBytes);
        output.WriteByte(0);
        Pad(110 + nameBytes.Length + 1);
        output.Write(data);
        Pad(data.Length);
    }

    private void Pad(int length)
    {
        for (int i = length; i % 4 != 0; i++)
            output.WriteByte(0);
    }
}
