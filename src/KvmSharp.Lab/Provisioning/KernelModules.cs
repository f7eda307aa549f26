using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace KvmSharp.Lab.Provisioning;

/// <summary>
/// Finds the kernel modules a lab machine needs in a kernel's modules folder, with their
/// dependencies, in load order. Dependencies come from each module's ELF <c>.modinfo</c> section
/// (<c>depends=</c>), so neither <c>modules.dep</c> nor <c>depmod</c> is needed; modules listed in
/// <c>modules.builtin</c> are part of the kernel and skipped.
/// </summary>
internal static class KernelModules
{
    /// <summary>The modules the lab machine needs: KVM (x86: kvm_amd), virtio PCI, 9p over virtio, virtio consoles.</summary>
    public static IReadOnlyList<string> Wanted(LabArchitecture architecture) => architecture == LabArchitecture.X86_64
        ? ["kvm_amd", "virtio_pci", "9pnet_virtio", "9p", "virtio_console"]
        : ["kvm", "virtio_pci", "9pnet_virtio", "9p", "virtio_console"];

    /// <summary>A module to load: its name and file.</summary>
    public sealed record Module(string Name, string Path);

    /// <summary>
    /// Resolves <paramref name="wanted"/> and their dependencies to module files under
    /// <paramref name="modulesDirectory"/>, dependencies first.
    /// </summary>
    /// <exception cref="LabException">A module is neither built in nor present, or its file cannot be read.</exception>
    public static IReadOnlyList<Module> Resolve(string modulesDirectory, IEnumerable<string> wanted)
    {
        var builtin = new HashSet<string>(StringComparer.Ordinal);
        string builtinList = Path.Combine(modulesDirectory, "modules.builtin");
        if (File.Exists(builtinList))
            foreach (string line in File.ReadLines(builtinList))
                if (line.Length > 0)
                    builtin.Add(NameOf(line));

        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string file in Directory.EnumerateFiles(modulesDirectory, "*.ko*", SearchOption.AllDirectories))
            if (IsModuleFile(file))
                files.TryAdd(NameOf(file), file);

        var order = new List<Module>();
        var state = new Dictionary<string, bool>(StringComparer.Ordinal); // false: visiting, true: done
        foreach (string name in wanted)
            Visit(Normalize(name), new List<string>());
        return order;

        void Visit(string name, List<string> chain)
        {
            if (builtin.Contains(name) || (state.TryGetValue(name, out bool done) && done))
                return;
            if (state.ContainsKey(name))
                throw new LabException($"Kernel modules depend on each other in a cycle: {string.Join(" -> ", chain)} -> {name}.");
            if (!files.TryGetValue(name, out string? file))
                throw new LabException(chain.Count == 0
                    ? $"The kernel in {modulesDirectory} has no module '{name}' and does not list it as built in (modules.builtin); the lab needs it."
                    : $"Kernel module '{chain[^1]}' needs '{name}', which is neither in {modulesDirectory} nor built in.");
            state[name] = false;
            chain.Add(name);
            foreach (string dependency in Depends(file))
                Visit(dependency, chain);
            chain.RemoveAt(chain.Count - 1);
            state[name] = true;
            order.Add(new Module(name, file));
        }
    }

    /// <summary>The module's bytes, decompressed if it is a <c>.ko.gz</c>.</summary>
    /// <exception cref="LabException">An <c>.xz</c> or <c>.zst</c> module (busybox insmod cannot load those, and .NET cannot unpack them).</exception>
    public static byte[] Load(string file)
    {
        if (file.EndsWith(".ko", StringComparison.Ordinal))
            return File.ReadAllBytes(file);
        if (file.EndsWith(".ko.gz", StringComparison.Ordinal))
        {
            using var gz = new GZipStream(File.OpenRead(file), CompressionMode.Decompress);
            using var ms = new MemoryStream();
            gz.CopyTo(ms);
            return ms.ToArray();
        }
        throw new LabException($"{file} is compressed in a format the lab cannot unpack; give it modules as .ko or .ko.gz (e.g. `unxz` / `unzstd` them).");
    }

    /// <summary>The <c>depends=</c> list of a module's <c>.modinfo</c> section.</summary>
    public static IReadOnlyList<string> Depends(string file)
    {
        foreach (string entry in ModInfo(Load(file), file))
            if (entry.StartsWith("depends=", StringComparison.Ordinal))
                return entry["depends=".Length..].Split(',', StringSplitOptions.RemoveEmptyEntries).Select(Normalize).ToArray();
        return [];
    }

    /// <summary>The NUL-separated <c>key=value</c> strings of an ELF64 little-endian module's <c>.modinfo</c> section.</summary>
    /// <exception cref="LabException">Not an ELF64 little-endian file, or no <c>.modinfo</c> section.</exception>
    public static IEnumerable<string> ModInfo(ReadOnlySpan<byte> elf, string file)
    {
        if (elf.Length < 64 || !elf[..4].SequenceEqual((ReadOnlySpan<byte>)[0x7F, (byte)'E', (byte)'L', (byte)'F']) || elf[4] != 2 || elf[5] != 1)
            throw new LabException($"{file} is not an ELF64 little-endian kernel module.");
        ulong shoff = BinaryPrimitives.ReadUInt64LittleEndian(elf[0x28..]);
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(elf[0x3A..]);
        int shnum = BinaryPrimitives.ReadUInt16LittleEndian(elf[0x3C..]);
        int shstrndx = BinaryPrimitives.ReadUInt16LittleEndian(elf[0x3E..]);
        if (shentsize < 64 || shstrndx >= shnum || shoff + (ulong)(shnum * shentsize) > (ulong)elf.Length)
            throw new LabException($"{file} has a malformed ELF section table.");
        var names = Section(elf, shoff, shentsize, shstrndx, file);
        for (int i = 0; i < shnum; i++)
        {
            var header = elf.Slice(checked((int)shoff + i * shentsize), 64);
            int nameOffset = (int)BinaryPrimitives.ReadUInt32LittleEndian(header);
            if (nameOffset >= names.Length)
                continue;
            var name = names[nameOffset..];
            int end = name.IndexOf((byte)0);
            if (end < 0 || !name[..end].SequenceEqual(".modinfo"u8))
                continue;
            string text = Encoding.UTF8.GetString(Section(elf, shoff, shentsize, i, file));
            return text.Split('\0', StringSplitOptions.RemoveEmptyEntries);
        }
        throw new LabException($"{file} has no .modinfo section: not a kernel module.");
    }

    private static ReadOnlySpan<byte> Section(ReadOnlySpan<byte> elf, ulong shoff, int shentsize, int index, string file)
    {
        var header = elf.Slice(checked((int)shoff + index * shentsize), 64);
        ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(header[24..]);
        ulong size = BinaryPrimitives.ReadUInt64LittleEndian(header[32..]);
        if (offset + size > (ulong)elf.Length)
            throw new LabException($"{file}: ELF section {index} lies outside the file.");
        return elf.Slice((int)offset, (int)size);
    }

    private static bool IsModuleFile(string path) =>
        path.EndsWith(".ko", StringComparison.Ordinal) || path.EndsWith(".ko.gz", StringComparison.Ordinal)
        || path.EndsWith(".ko.xz", StringComparison.Ordinal) || path.EndsWith(".ko.zst", StringComparison.Ordinal);

    /// <summary>The module name of a path such as <c>kernel/arch/x86/kvm/kvm-amd.ko.gz</c>: <c>kvm_amd</c>.</summary>
    public static string NameOf(string path)
    {
        string name = Path.GetFileName(path.Trim());
        int ko = name.IndexOf(".ko", StringComparison.Ordinal);
        return Normalize(ko >= 0 ? name[..ko] : name);
    }

    private static string Normalize(string name) => name.Replace('-', '_');
}
