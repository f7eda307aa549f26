namespace KvmSharp.Lab.Provisioning;

/// <summary>
/// Makes sure a lab machine of one architecture can boot: QEMU installed, Debian's stock kernel and
/// a static busybox downloaded and unpacked into the cache, and for a foreign architecture the
/// multiarch C libraries its programs need. Prints one progress line per step it has to take and
/// nothing when everything is in place. Installing needs root; downloading does not.
/// </summary>
internal sealed class Provisioner
{
    private readonly LabOptions _options;
    private readonly LabArchitecture _arch;
    private readonly TextWriter _log;
    private readonly string _archDirectory;
    private string? _hostDebianArchitecture;
    private bool _listsUpdated;

    public Provisioner(LabOptions options, LabArchitecture architecture)
    {
        _options = options;
        _arch = architecture;
        _log = options.LogWriter;
        _archDirectory = Path.Combine(options.CacheDirectory, architecture.Name());
    }

    private string DebianArchitecture => _arch == LabArchitecture.X86_64 ? "amd64" : "arm64";
    private string QemuPackage => _arch == LabArchitecture.X86_64 ? "qemu-system-x86" : "qemu-system-arm";
    private string QemuProgram => _arch == LabArchitecture.X86_64 ? "qemu-system-x86_64" : "qemu-system-aarch64";
    private bool MayInstall => _options.MayInstall ?? Environment.IsPrivilegedProcess;

    private string HostDebianArchitecture => _hostDebianArchitecture ??=
        Programs.Find("dpkg", _options.SearchPath) is { } dpkg && Programs.Run(dpkg, ["--print-architecture"]) is (0, var output)
            ? output.Trim()
            : System.Runtime.InteropServices.RuntimeInformation.OSArchitecture == System.Runtime.InteropServices.Architecture.Arm64 ? "arm64" : "amd64";

    /// <summary>A package name qualified with the machine's architecture when that is not the host's.</summary>
    private string Qualified(string package) => DebianArchitecture == HostDebianArchitecture ? package : $"{package}:{DebianArchitecture}";

    /// <summary>Provisions what is missing and returns the machine's assets.</summary>
    /// <exception cref="LabProvisioningException">Something is missing and cannot be provisioned here.</exception>
    public LabAssets Ensure()
    {
        using var cacheLock = CacheLock.Acquire(_options.CacheDirectory, _log, TimeSpan.FromMinutes(20));
        Directory.CreateDirectory(_archDirectory);
        string qemu = EnsureQemu();
        bool foreign = DebianArchitecture != HostDebianArchitecture;
        if (foreign)
            EnsureMultiarchLibraries();
        var (image, modules) = _options.Kernel is { } custom ? CustomKernel(custom) : EnsureDebianKernel();
        string busybox = EnsureBusybox();
        string? applets = foreign ? EnsureApplets(busybox) : null;
        return new LabAssets(qemu, image, modules, busybox, applets);
    }

    /// <summary>
    /// Provisions only what a guest of the machine's architecture boots with — the kernel image
    /// (<see cref="LabOptions.Kernel"/> or Debian's) and the static busybox — and returns their paths.
    /// </summary>
    /// <exception cref="LabProvisioningException">Something is missing and cannot be provisioned here.</exception>
    public LabGuestImages EnsureGuestImages()
    {
        using var cacheLock = CacheLock.Acquire(_options.CacheDirectory, _log, TimeSpan.FromMinutes(20));
        Directory.CreateDirectory(_archDirectory);
        // A guest loads no modules from here: only the image is needed.
        string image = _options.Kernel is { } custom ? CustomKernel(custom with { ModulesDirectory = null }).Image
            : Path.Combine(EnsureDebianKernelDirectory(), "vmlinuz");
        return new LabGuestImages(_arch, image, EnsureBusybox());
    }

    private string EnsureQemu()
    {
        if (Programs.Find(QemuProgram, _options.SearchPath) is { } found)
            return found;
        Install([QemuPackage], $"{QemuProgram} (QEMU, which runs the lab machine)");
        return Programs.Find(QemuProgram, _options.SearchPath)
            ?? throw new LabProvisioningException($"{QemuPackage} was installed but {QemuProgram} is still not on PATH.", QemuProgram, $"apt-get install {QemuPackage}");
    }

    /// <summary>The C libraries a dynamically linked program of the machine's architecture (such as .NET) needs in the shared host tree.</summary>
    private void EnsureMultiarchLibraries()
    {
        string[] packages = ["libc6", "libstdc++6", "libgcc-s1", "zlib1g"];
        var qualified = packages.Select(Qualified).ToArray();
        if (Programs.Find("dpkg-query", _options.SearchPath) is { } query
            && Programs.Run(query, ["-W", "-f=${Status}\n", .. qualified]) is (0, var status)
            && status.Split('\n', StringSplitOptions.RemoveEmptyEntries).Count(s => s.EndsWith(" installed", StringComparison.Ordinal)) == qualified.Length)
            return;
        EnsureForeignArchitecture();
        Install(qualified, $"the {DebianArchitecture} C libraries that {DebianArchitecture} programs in the lab need");
    }

    private void EnsureForeignArchitecture()
    {
        string dpkg = Programs.Find("dpkg", _options.SearchPath) ?? throw NoApt($"{DebianArchitecture} packages");
        if (Programs.Run(dpkg, ["--print-foreign-architectures"]).Output.Split('\n').Any(a => a.Trim() == DebianArchitecture))
            return;
        if (!MayInstall)
            throw new LabProvisioningException(
                $"The lab needs Debian's {DebianArchitecture} packages, but dpkg does not know that architecture yet and this process is not root.",
                $"dpkg architecture {DebianArchitecture}", $"sudo dpkg --add-architecture {DebianArchitecture} && sudo apt-get update");
        _log.WriteLine($"lab: adding the {DebianArchitecture} package architecture (dpkg --add-architecture {DebianArchitecture})");
        var (code, output) = Programs.Run(dpkg, ["--add-architecture", DebianArchitecture]);
        if (code != 0)
            throw new LabProvisioningException($"dpkg --add-architecture {DebianArchitecture} failed (exit {code}):\n{Programs.Tail(output)}",
                $"dpkg architecture {DebianArchitecture}", $"dpkg --add-architecture {DebianArchitecture}");
        _listsUpdated = false;
        UpdateLists();
    }

    private (string Image, IReadOnlyList<KernelModules.Module> Modules) CustomKernel(LabKernel kernel)
    {
        if (!File.Exists(kernel.ImagePath))
            throw new LabProvisioningException($"The lab kernel image {kernel.ImagePath} does not exist.", kernel.ImagePath, null);
        if (kernel.ModulesDirectory is null)
            return (kernel.ImagePath, []);
        if (!Directory.Exists(kernel.ModulesDirectory))
            throw new LabProvisioningException($"The lab kernel's modules folder {kernel.ModulesDirectory} does not exist.", kernel.ModulesDirectory, null);
        return (kernel.ImagePath, KernelModules.Resolve(kernel.ModulesDirectory, KernelModules.Wanted(_arch)));
    }

    /// <summary>
    /// Debian's kernel, cached as <c>kernel-&lt;release&gt;/</c> holding <c>vmlinuz</c>, the needed
    /// modules and <c>modules.builtin</c>. A cached kernel is used as it is, without asking apt, so the
    /// lab works offline once provisioned.
    /// </summary>
    private (string Image, IReadOnlyList<KernelModules.Module> Modules) EnsureDebianKernel()
    {
        string cached = EnsureDebianKernelDirectory();
        string modulesDir = Path.Combine(cached, "modules");
        return (Path.Combine(cached, "vmlinuz"), KernelModules.Resolve(modulesDir, KernelModules.Wanted(_arch)));
    }

    /// <summary>The cached Debian kernel's folder (<c>kernel-&lt;release&gt;/</c>), downloaded first if there is none.</summary>
    private string EnsureDebianKernelDirectory()
    {
        var cached = Directory.EnumerateDirectories(_archDirectory, "kernel-*")
            .Where(d => File.Exists(Path.Combine(d, "vmlinuz")) && File.Exists(Path.Combine(d, "complete")))
            .OrderByDescending(d => d, StringComparer.Ordinal)
            .FirstOrDefault();
        return cached ?? DownloadDebianKernel();
    }

    private string DownloadDebianKernel()
    {
        string meta = Qualified($"linux-image-{DebianArchitecture}");
        string package = ResolveKernelPackage(meta);
        string release = package.Split(':')[0]["linux-image-".Length..];
        string target = Path.Combine(_archDirectory, $"kernel-{release}");
        string work = Path.Combine(_archDirectory, $".unpack-{Environment.ProcessId}");
        DeleteDirectory(work);
        Directory.CreateDirectory(work);
        try
        {
            string deb = Download(package, work, $"Debian's {DebianArchitecture} kernel");
            _log.WriteLine($"lab: unpacking {Path.GetFileName(deb)}");
            string tree = Path.Combine(work, "tree");
            Unpack(deb, tree);
            string image = Path.Combine(tree, "boot", $"vmlinuz-{release}");
            string modules = Path.Combine(tree, "lib", "modules", release);
            if (!File.Exists(image) || !Directory.Exists(modules))
                throw new LabProvisioningException($"{Path.GetFileName(deb)} holds no boot/vmlinuz-{release} with lib/modules/{release}.", package, $"apt-get download {package}");

            // Keep only what the lab loads: the image, the modules it needs and the built-in list.
            string staging = Path.Combine(work, "kernel");
            string stagingModules = Path.Combine(staging, "modules");
            Directory.CreateDirectory(stagingModules);
            File.Copy(image, Path.Combine(staging, "vmlinuz"));
            string builtin = Path.Combine(modules, "modules.builtin");
            if (File.Exists(builtin))
                File.Copy(builtin, Path.Combine(stagingModules, "modules.builtin"));
            foreach (var module in KernelModules.Resolve(modules, KernelModules.Wanted(_arch)))
                File.WriteAllBytes(Path.Combine(stagingModules, module.Name + ".ko"), KernelModules.Load(module.Path));
            File.WriteAllText(Path.Combine(staging, "package"), package + "\n");
            File.WriteAllText(Path.Combine(staging, "complete"), "");
            DeleteDirectory(target);
            Directory.Move(staging, target);
            return target;
        }
        finally
        {
            DeleteDirectory(work);
        }
    }

    /// <summary>The versioned kernel package the metapackage (e.g. <c>linux-image-amd64</c>) depends on.</summary>
    private string ResolveKernelPackage(string meta)
    {
        string aptCache = Programs.Find("apt-cache", _options.SearchPath) ?? throw NoApt(meta);
        for (int attempt = 0; ; attempt++)
        {
            var (code, output) = Programs.Run(aptCache, ["depends", meta]);
            var dependency = output.Split('\n')
                .Select(l => l.Trim())
                .FirstOrDefault(l => l.StartsWith("Depends: linux-image-", StringComparison.Ordinal));
            if (code == 0 && dependency != null)
                return dependency["Depends: ".Length..].Trim();
            if (attempt == 0 && MayInstall && !_listsUpdated)
            {
                if (DebianArchitecture != HostDebianArchitecture)
                    EnsureForeignArchitecture();
                UpdateLists();
                continue;
            }
            throw new LabProvisioningException(
                $"apt knows no {meta} package, so the lab cannot find Debian's kernel (apt-cache depends {meta}: exit {code}).\n{Programs.Tail(output)}",
                meta, MayInstall ? "apt-get update" : "sudo apt-get update");
        }
    }

    private string EnsureBusybox()
    {
        string path = Path.Combine(_archDirectory, "busybox");
        if (File.Exists(path))
            return path;
        string work = Path.Combine(_archDirectory, $".busybox-{Environment.ProcessId}");
        DeleteDirectory(work);
        Directory.CreateDirectory(work);
        try
        {
            string deb = Download(Qualified("busybox-static"), work, $"a static {DebianArchitecture} busybox");
            string tree = Path.Combine(work, "tree");
            Unpack(deb, tree);
            string binary = Path.Combine(tree, "bin", "busybox");
            if (!File.Exists(binary))
                throw new LabProvisioningException($"{Path.GetFileName(deb)} holds no bin/busybox.", "busybox-static", $"apt-get download {Qualified("busybox-static")}");
            File.Copy(binary, path + ".tmp", overwrite: true);
            if (!OperatingSystem.IsWindows())
                File.SetUnixFileMode(path + ".tmp", (UnixFileMode)0b111_101_101);
            File.Move(path + ".tmp", path, overwrite: true);
            return path;
        }
        finally
        {
            DeleteDirectory(work);
        }
    }

    /// <summary>The busybox applets a command in a foreign-architecture machine finds first on its PATH.</summary>
    internal static readonly string[] Applets =
    [
        "sh", "ash", "awk", "basename", "cat", "chmod", "cp", "cut", "date", "dd", "df", "dirname", "dmesg", "du",
        "echo", "env", "expr", "false", "find", "free", "grep", "head", "hostname", "id", "kill", "ln", "ls",
        "md5sum", "mkdir", "mktemp", "mv", "nproc", "printf", "ps", "pwd", "readlink", "realpath", "rm", "rmdir",
        "sed", "seq", "sha256sum", "sleep", "sort", "stat", "tail", "tee", "test", "time", "timeout", "touch",
        "tr", "true", "uname", "uniq", "uptime", "wc", "which", "xargs",
    ];

    private string EnsureApplets(string busybox)
    {
        string dir = Path.Combine(_archDirectory, "bin");
        if (File.Exists(Path.Combine(dir, ".complete")))
            return dir;
        Directory.CreateDirectory(dir);
        foreach (string applet in Applets)
        {
            string link = Path.Combine(dir, applet);
            if (File.Exists(link) || Directory.Exists(link))
                File.Delete(link);
            File.CreateSymbolicLink(link, busybox);
        }
        File.WriteAllText(Path.Combine(dir, ".complete"), "");
        return dir;
    }

    private string Download(string package, string directory, string what)
    {
        string aptGet = Programs.Find("apt-get", _options.SearchPath) ?? throw NoApt(package);
        _log.WriteLine($"lab: downloading {package} ({what})");
        for (int attempt = 0; ; attempt++)
        {
            var (code, output) = Programs.Run(aptGet, ["download", package], directory);
            var deb = Directory.EnumerateFiles(directory, "*.deb").FirstOrDefault();
            if (code == 0 && deb != null)
                return deb;
            if (attempt == 0 && MayInstall && !_listsUpdated)
            {
                UpdateLists();
                continue;
            }
            throw new LabProvisioningException($"apt-get download {package} failed (exit {code}):\n{Programs.Tail(output)}", package, $"apt-get download {package}");
        }
    }

    private void Unpack(string deb, string directory)
    {
        string dpkgDeb = Programs.Find("dpkg-deb", _options.SearchPath)
            ?? throw new LabProvisioningException("dpkg-deb is missing, so the lab cannot unpack Debian packages.", "dpkg-deb", "apt-get install dpkg");
        var (code, output) = Programs.Run(dpkgDeb, ["-x", deb, directory]);
        if (code != 0)
            throw new LabProvisioningException($"dpkg-deb -x {Path.GetFileName(deb)} failed (exit {code}):\n{Programs.Tail(output)}", Path.GetFileName(deb), null);
    }

    private void Install(string[] packages, string what)
    {
        string list = string.Join(' ', packages);
        if (!MayInstall)
            throw new LabProvisioningException(
                $"The lab needs {what}, which is not installed, and this process is not root, so it cannot install it. Install it with: sudo apt-get install {list}",
                list, $"sudo apt-get install {list}");
        string aptGet = Programs.Find("apt-get", _options.SearchPath) ?? throw NoApt(list);
        for (int attempt = 0; ; attempt++)
        {
            _log.WriteLine($"lab: installing {list} (apt-get install)");
            var (code, output) = Programs.Run(aptGet, ["install", "-y", "-q", "--no-install-recommends", .. packages], null,
                new Dictionary<string, string> { ["DEBIAN_FRONTEND"] = "noninteractive" });
            if (code == 0)
                return;
            if (attempt == 0 && !_listsUpdated)
            {
                UpdateLists();
                continue;
            }
            throw new LabProvisioningException($"apt-get install {list} failed (exit {code}):\n{Programs.Tail(output)}", list, $"apt-get install {list}");
        }
    }

    private void UpdateLists()
    {
        if (_listsUpdated)
            return;
        string aptGet = Programs.Find("apt-get", _options.SearchPath) ?? throw NoApt("package lists");
        _log.WriteLine("lab: updating the package lists (apt-get update)");
        var (code, output) = Programs.Run(aptGet, ["update", "-q"]);
        if (code != 0)
            throw new LabProvisioningException($"apt-get update failed (exit {code}):\n{Programs.Tail(output)}", "package lists", "apt-get update");
        _listsUpdated = true;
    }

    private LabProvisioningException NoApt(string missing) => new(
        $"The lab provisions {missing} from Debian's packages, but this machine has no apt-get. Install {QemuProgram} yourself and give the lab a kernel (LabOptions.Kernel, or --kernel and --modules).",
        missing, null);

    private static void DeleteDirectory(string path)
    {
        if (Directory.Exists(path))
            Directory.Delete(path, recursive: true);
    }
}
