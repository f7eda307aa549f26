using System.Text;
using KvmSharp.Lab.Boot;
using KvmSharp.Lab.Running;

namespace KvmSharp.Lab.Tests;

/// <summary>The files a lab machine boots with: the initramfs archive and the command's script.</summary>
public class BootFilesTests
{
    [Test]
    public void Cpio_NewcEntries_AreAlignedAndEndWithTheTrailer()
    {
        var stream = new MemoryStream();
        var cpio = new CpioWriter(stream);
        cpio.AddDirectory("bin");
        cpio.AddFile("bin/hello", "hi!\n"u8, executable: true);
        cpio.Finish();
        byte[] bytes = stream.ToArray();

        var entries = new List<(string Name, int Mode, byte[] Data)>();
        int at = 0;
        while (true)
        {
            string header = Encoding.ASCII.GetString(bytes, at, 110);
            Assert.That(header[..6], Is.EqualTo("070701"), $"newc magic at {at}");
            int Field(int i) => Convert.ToInt32(header.Substring(6 + i * 8, 8), 16);
            int nameSize = Field(11), size = Field(6);
            string name = Encoding.ASCII.GetString(bytes, at + 110, nameSize - 1);
            int data = (at + 110 + nameSize + 3) & ~3;
            entries.Add((name, Field(1), bytes[data..(data + size)]));
            at = (data + size + 3) & ~3;
            if (name == "TRAILER!!!")
                break;
        }

        Assert.That(at, Is.EqualTo(bytes.Length), "nothing after the trailer");
        Assert.That(entries.Select(e => e.Name), Is.EqualTo(new[] { "bin", "bin/hello", "TRAILER!!!" }));
        Assert.That(entries[0].Mode, Is.EqualTo(0x41ED), "directory 0755");
        Assert.That(entries[1].Mode, Is.EqualTo(0x81ED), "regular file 0755");
        Assert.That(entries[1].Data, Is.EqualTo("hi!\n"u8.ToArray()));
    }

    [Test]
    public void InitramfsBuilder_WritesTheEntriesAndATrailer_AndRefusesBadPaths()
    {
        var builder = new InitramfsBuilder().AddDirectory("bin").AddFile("init", "#!/bin/sh\n"u8, executable: true).AddSymlink("bin/sh", "/bin/busybox");
        byte[] first = builder.ToArray();
        string text = Encoding.ASCII.GetString(first);
        Assert.That(text.IndexOf("bin\0", StringComparison.Ordinal), Is.LessThan(text.IndexOf("init\0", StringComparison.Ordinal)), "in the order added");
        Assert.That(text, Does.Contain("#!/bin/sh\n").And.Contain("/bin/busybox"));
        Assert.That(text.TrimEnd('\0'), Does.EndWith("TRAILER!!!"));
        Assert.That(first.Length % 4, Is.Zero);
        builder.AddFile("more", "x"u8);
        byte[] second = builder.ToArray();
        Assert.That(Encoding.ASCII.GetString(second), Does.Contain("more\0"), "the builder goes on after ToArray");
        Assert.That(Encoding.ASCII.GetString(second).Split("TRAILER!!!").Length, Is.EqualTo(2), "one trailer");

        Assert.Throws<ArgumentException>(() => builder.AddFile("/abs", "x"u8));
        Assert.Throws<ArgumentException>(() => builder.AddFile("a/../b", "x"u8));
        Assert.Throws<ArgumentException>(() => builder.AddFile("a//b", "x"u8));
        var ex = Assert.Throws<ArgumentException>(() => builder.AddDirectory("bin"));
        Assert.That(ex!.Message, Does.Contain("'bin' was added already"));
    }

    [TestCase("plain", "'plain'")]
    [TestCase("it's", "'it'\\''s'")]
    [TestCase("$HOME `x` \"q\"", "'$HOME `x` \"q\"'")]
    [TestCase("", "''")]
    public void ShellQuoting_KeepsEveryCharacter(string value, string quoted)
    {
        Assert.That(RunScript.Quote(value), Is.EqualTo(quoted));
    }

    [Test]
    public void InitScript_ReportsEveryFailureOnTheConsole_AndPowersOff()
    {
        string init = Initramfs.InitScript;
        Assert.That(init, Does.StartWith("#!/bin/busybox sh"));
        Assert.That(init, Does.Contain("kvmsharp-lab: error: ").And.Contain("poweroff -f"));
        Assert.That(init, Does.Contain("kvmsharp-lab: ready "), "the host waits for this line");
    }
}
