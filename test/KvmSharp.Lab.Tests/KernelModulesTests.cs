using System.Buffers.Binary;
using System.Text;
using KvmSharp.Lab.Provisioning;

namespace KvmSharp.Lab.Tests;

/// <summary>Module dependencies come from each module's ELF .modinfo section; built-in modules are skipped.</summary>
public class KernelModulesTests
{
    private string _dir = null!;

    [SetUp]
    public void CreateFolder() => _dir = Directory.CreateTempSubdirectory("kvmsharp-lab-modules-").FullName;

    [TearDown]
    public void RemoveFolder() => Directory.Delete(_dir, recursive: true);

    /// <summary>A minimal ELF64 little-endian relocatable file with one .modinfo section.</summary>
    internal static byte[] Module(string name, params string[] depends)
    {
        byte[] shstrtab = Encoding.ASCII.GetBytes("\0.shstrtab\0.modinfo\0");
        byte[] modinfo = Encoding.ASCII.GetBytes($"license=GPL\0depends={string.Join(',', depends)}\0name={name}\0vermagic=6.1.0 SMP\0");
        int shoff = 64 + shstrtab.Length + modinfo.Length;
        var elf = new byte[shoff + 3 * 64];
        elf[0] = 0x7F; elf[1] = (byte)'E'; elf[2] = (byte)'L'; elf[3] = (byte)'F';
        elf[4] = 2; elf[5] = 1; elf[6] = 1;                                   // ELF64, little-endian, version 1
        BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan(0x10), 1);       // ET_REL
        BinaryPrimitives.WriteUInt64LittleEndian(elf.AsSpan(0x28), (ulong)shoff);
        BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan(0x34), 64);      // e_ehsize
        BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan(0x3A), 64);      // e_shentsize
        BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan(0x3C), 3);       // e_shnum
        BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan(0x3E), 1);       // e_shstrndx
        shstrtab.CopyTo(elf, 64);
        modinfo.CopyTo(elf, 64 + shstrtab.Length);
        Section(1, nameOffset: 1, type: 3, offset: 64, size: shstrtab.Length);
        Section(2, nameOffset: 11, type: 1, offset: 64 + shstrtab.Length, size: modinfo.Length);
        return elf;

        void Section(int index, int nameOffset, int type, int offset, int size)
        {
            var header = elf.AsSpan(shoff + index * 64, 64);
            BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)nameOffset);
            BinaryPrimitives.WriteUInt32LittleEndian(header[4..], (uint)type);
            BinaryPrimitives.WriteUInt64LittleEndian(header[24..], (ulong)offset);
            BinaryPrimitives.WriteUInt64LittleEndian(header[32..], (ulong)size);
        }
    }

    private void Add(string relativePath, string name, params string[] depends)
    {
        string path = Path.Combine(_dir, relativePath);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, Module(name, depends));
    }

    [Test]
    public void Resolve_LoadsDependenciesFirst_SkipsBuiltins_AndMapsDashesToUnderscores()
    {
        Add("kernel/arch/x86/kvm/kvm-amd.ko", "kvm_amd", "kvm", "ccp");
        Add("kernel/arch/x86/kvm/kvm.ko", "kvm", "irqbypass");
        Add("kernel/virt/lib/irqbypass.ko", "irqbypass");
        Add("kernel/drivers/crypto/ccp/ccp.ko", "ccp");
        Add("kernel/fs/9p/9p.ko", "9p", "9pnet", "netfs");
        Add("kernel/net/9p/9pnet.ko", "9pnet");
        File.WriteAllText(Path.Combine(_dir, "modules.builtin"), "kernel/fs/netfs/netfs.ko\n");

        var order = KernelModules.Resolve(_dir, ["kvm-amd", "9p"]).Select(m => m.Name).ToList();

        Assert.That(order, Is.EqualTo(new[] { "irqbypass", "kvm", "ccp", "kvm_amd", "9pnet", "9p" }));
    }

    [Test]
    public void Resolve_MissingDependency_NamesWhoNeedsIt()
    {
        Add("kernel/fs/9p/9p.ko", "9p", "9pnet");
        var ex = Assert.Throws<LabException>(() => KernelModules.Resolve(_dir, ["9p"]));
        Assert.That(ex!.Message, Does.Contain("'9p' needs '9pnet'"));
    }

    [Test]
    public void Resolve_ACycle_IsReported()
    {
        Add("a.ko", "a", "b");
        Add("b.ko", "b", "a");
        var ex = Assert.Throws<LabException>(() => KernelModules.Resolve(_dir, ["a"]));
        Assert.That(ex!.Message, Does.Contain("cycle").And.Contain("a -> b -> a"));
    }

    [Test]
    public void ModInfo_OfAFileThatIsNotElf_SaysSo()
    {
        var ex = Assert.Throws<LabException>(() => KernelModules.ModInfo("not an ELF file at all, just text......................................"u8, "x.ko").ToList());
        Assert.That(ex!.Message, Does.Contain("x.ko is not an ELF64"));
    }

    [Test]
    public void Load_CompressedWithXz_IsRefusedWithAHint()
    {
        string path = Path.Combine(_dir, "kvm.ko.xz");
        File.WriteAllBytes(path, [0xFD, (byte)'7', (byte)'z', (byte)'X', (byte)'Z', 0]);
        var ex = Assert.Throws<LabException>(() => KernelModules.Load(path));
        Assert.That(ex!.Message, Does.Contain("unxz"));
    }
}
