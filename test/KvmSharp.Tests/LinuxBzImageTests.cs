using System.Buffers.Binary;
using KvmSharp.Guests;
using KvmSharp.Lab;

namespace KvmSharp.Tests;

/// <summary>
/// <see cref="LinuxBzImage"/> on a stock kernel — Debian's linux-image-amd64, the one the x86_64 lab
/// boots (from the lab's cache) — and on images broken in each way the parser refuses.
/// </summary>
public class LinuxBzImageTests
{
    private static byte[] DebianKernel()
    {
        string cache = new LabOptions().CacheDirectory;
        string? path = Directory.Exists(Path.Combine(cache, "x86_64"))
            ? Directory.GetDirectories(Path.Combine(cache, "x86_64"), "kernel-*").Select(d => Path.Combine(d, "vmlinuz")).FirstOrDefault(File.Exists)
            : null;
        Assert.That(path, Is.Not.Null, $"the x86_64 lab's kernel is provisioned under {cache} before the suite runs there");
        return File.ReadAllBytes(path!);
    }

    [Test]
    public void DebiansKernel_ParsesAsA64BitRelocatableBzImage()
    {
        byte[] file = DebianKernel();
        var image = LinuxBzImage.Parse(file);
        Assert.That(image.ProtocolVersion, Is.GreaterThanOrEqualTo((ushort)0x020C), "6.1 speaks boot protocol 2.15");
        Assert.That((image.Has64BitEntry, image.IsRelocatable), Is.EqualTo((true, true)));
        Assert.That(image.SetupBytes, Is.EqualTo((file[0x1F1] + 1) * 512));
        Assert.That(image.Kernel.Length, Is.EqualTo(file.Length - image.SetupBytes));
        Assert.That(image.PreferredAddress, Is.EqualTo(0x100_0000UL), "CONFIG_PHYSICAL_START: 16 MiB");
        Assert.That(image.KernelAlignment, Is.EqualTo(0x20_0000u));
        Assert.That(image.CommandLineSize, Is.EqualTo(2047u));
        Assert.That(image.InitSize, Is.GreaterThan((uint)image.Kernel.Length), "decompression needs more than the compressed kernel");
        Assert.That(image.SetupHeader.Span[0], Is.EqualTo(file[0x1F1]));
    }

    [Test]
    public void BrokenImages_AreRefusedWithTheReason()
    {
        byte[] good = DebianKernel();
        Assert.That(Refusal(new byte[100]), Does.Contain("shorter than a setup header"));
        Assert.That(Refusal(With(good, b => b[0x1FE] = 0)), Does.Contain("0xAA55"));
        Assert.That(Refusal(With(good, b => b[0x202] = (byte)'X')), Does.Contain("HdrS"));
        Assert.That(Refusal(With(good, b => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(0x206), 0x0205))), Does.Contain("2.05 is too old"));
        Assert.That(Refusal(With(good, b => b[0x211] &= 0xFE)), Does.Contain("zImage"));
        Assert.That(Refusal(With(good, b => b[0x236] &= 0xFE)), Does.Contain("no 64-bit entry point"));
        Assert.That(Refusal(good[..0x300]), Does.Contain("Truncated"));
    }

    private static string Refusal(byte[] image) => Assert.Throws<ArgumentException>(() => LinuxBzImage.Parse(image))!.Message;

    private static byte[] With(byte[] image, Action<byte[]> change)
    {
        byte[] copy = (byte[])image.Clone();
        change(copy);
        return copy;
    }
}
