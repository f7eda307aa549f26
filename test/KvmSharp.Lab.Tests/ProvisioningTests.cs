using KvmSharp.Lab.Provisioning;

namespace KvmSharp.Lab.Tests;

/// <summary>
/// Provisioning failures say what is missing and how to get it. These run no QEMU: the program
/// search path and the permission to install are the lab's test seams, and a fake apt-get stands
/// for a package manager that refuses.
/// </summary>
public class ProvisioningTests
{
    private string _dir = null!;

    [SetUp]
    public void CreateFolder() => _dir = Directory.CreateTempSubdirectory("kvmsharp-lab-test-").FullName;

    [TearDown]
    public void RemoveFolder() => Directory.Delete(_dir, recursive: true);

    private LabOptions Options(bool mayInstall, LabArchitecture arch = LabArchitecture.X86_64) => new()
    {
        Architecture = arch,
        Mode = LabMode.Lab,
        CacheDirectory = Path.Combine(_dir, "cache"),
        SearchPath = Path.Combine(_dir, "bin"),
        MayInstall = mayInstall,
        Log = TextWriter.Null,
    };

    [TestCase(LabArchitecture.X86_64, "qemu-system-x86")]
    [TestCase(LabArchitecture.Arm64, "qemu-system-arm")]
    public void NotRoot_QemuMissing_NamesThePackageAndTheCommandThatInstallsIt(LabArchitecture arch, string package)
    {
        Directory.CreateDirectory(Path.Combine(_dir, "bin"));
        var ex = Assert.Throws<LabProvisioningException>(() => new Provisioner(Options(mayInstall: false, arch), arch).Ensure());
        Assert.That(ex!.Missing, Is.EqualTo(package));
        Assert.That(ex.InstallCommand, Is.EqualTo($"sudo apt-get install {package}"));
        Assert.That(ex.Message, Does.Contain("not root").And.Contain($"sudo apt-get install {package}"));
    }

    [Test]
    public void NoAptGet_SaysTheLabNeedsDebianPackagesOrAKernelOfYourOwn()
    {
        Directory.CreateDirectory(Path.Combine(_dir, "bin"));
        var ex = Assert.Throws<LabProvisioningException>(() => new Provisioner(Options(mayInstall: true), LabArchitecture.X86_64).Ensure());
        Assert.That(ex!.Message, Does.Contain("no apt-get").And.Contain("--kernel"));
    }

    [Test]
    public void PackageRefused_FailsWithAptGetsOwnWords()
    {
        string bin = Path.Combine(_dir, "bin");
        Directory.CreateDirectory(bin);
        string aptGet = Path.Combine(bin, "apt-get");
        File.WriteAllText(aptGet, """
            #!/bin/sh
            case "$1" in
              update) echo "Reading package lists..."; exit 0 ;;
              install) echo "E: Package 'qemu-system-x86' has no installation candidate" >&2; exit 100 ;;
            esac
            exit 1
            """);
        File.SetUnixFileMode(aptGet, (UnixFileMode)0b111_101_101);

        var ex = Assert.Throws<LabProvisioningException>(() => new Provisioner(Options(mayInstall: true), LabArchitecture.X86_64).Ensure());
        Assert.That(ex!.Missing, Is.EqualTo("qemu-system-x86"));
        Assert.That(ex.InstallCommand, Is.EqualTo("apt-get install qemu-system-x86"));
        Assert.That(ex.Message, Does.Contain("apt-get install qemu-system-x86 failed (exit 100)").And.Contain("no installation candidate"));
    }

    [Test]
    public async Task CustomKernel_ImageMissing_NamesTheFile()
    {
        string image = Path.Combine(_dir, "no-such-vmlinuz");
        var options = new LabOptions
        {
            Mode = LabMode.Lab,
            Kernel = new LabKernel(image),
            CacheDirectory = Path.Combine(_dir, "cache"),
            Log = TextWriter.Null,
        };
        var ex = await Assert.ThrowsAsync<LabProvisioningException>(() => KvmLab.RunAsync(["true"], options));
        Assert.That(ex!.Missing, Is.EqualTo(image));
        Assert.That(ex.Message, Does.Contain(image).And.Contain("does not exist"));
    }

    [Test]
    public void CustomKernel_ModulesFolderLacksKvm_SaysWhichModule()
    {
        string modules = Path.Combine(_dir, "modules");
        Directory.CreateDirectory(modules);
        File.WriteAllText(Path.Combine(modules, "modules.builtin"), "kernel/drivers/virtio/virtio.ko\n");
        var ex = Assert.Throws<LabException>(() => KernelModules.Resolve(modules, KernelModules.Wanted(LabArchitecture.X86_64)));
        Assert.That(ex!.Message, Does.Contain("no module 'kvm_amd'").And.Contain(modules));
    }

    [Test]
    public void ProvisionGuestImages_UsesTheCachedKernelAndBusybox_WithoutQemu()
    {
        // A cache as provisioning leaves it, and no QEMU on the search path: guest images need none.
        string arch = Path.Combine(_dir, "cache", "x86_64");
        string kernel = Path.Combine(arch, "kernel-6.1.0-99-amd64");
        Directory.CreateDirectory(Path.Combine(kernel, "modules"));
        File.WriteAllText(Path.Combine(kernel, "vmlinuz"), "kernel");
        File.WriteAllText(Path.Combine(kernel, "complete"), "");
        File.WriteAllText(Path.Combine(arch, "busybox"), "busybox");
        Directory.CreateDirectory(Path.Combine(_dir, "bin"));

        var images = KvmLab.ProvisionGuestImages(Options(mayInstall: false));
        Assert.That(images, Is.EqualTo(new LabGuestImages(LabArchitecture.X86_64, Path.Combine(kernel, "vmlinuz"), Path.Combine(arch, "busybox"))));
        Assert.That(File.Exists(Path.Combine(_dir, "cache", ".lock")), Is.True, "under the cache lock, like every provisioning");
    }

    [Test]
    public void ProvisionGuestImages_OwnKernelThatIsMissing_IsNamed()
    {
        var options = new LabOptions
        {
            Architecture = LabArchitecture.X86_64, CacheDirectory = Path.Combine(_dir, "cache"), SearchPath = Path.Combine(_dir, "bin"),
            MayInstall = false, Log = TextWriter.Null, Kernel = new LabKernel(Path.Combine(_dir, "no-such-bzImage")),
        };
        var ex = Assert.Throws<LabProvisioningException>(() => KvmLab.ProvisionGuestImages(options));
        Assert.That(ex!.Message, Does.Contain("no-such-bzImage").And.Contain("does not exist"));
    }

    [Test]
    public async Task EmptyCommand_IsRefusedBeforeAnythingStarts()
    {
        await Assert.ThrowsAsync<ArgumentException>(() => KvmLab.RunAsync([], new LabOptions { Log = TextWriter.Null }));
    }

    [Test]
    public async Task NativeMode_WithoutAUsableKvm_SaysWhy_OtherwiseRunsNatively()
    {
        var status = KvmLab.ProbeNative();
        var output = new MemoryStream();
        var log = new StringWriter();
        var options = new LabOptions { Mode = LabMode.Native, StandardOutput = output, Log = log };
        if (status.IsUsable)
        {
            var result = await KvmLab.RunAsync(["echo", "native"], options);
            Assert.That((result.ExitCode, result.Location.IsLab, result.BootTime), Is.EqualTo((0, false, TimeSpan.Zero)));
            Assert.That(System.Text.Encoding.UTF8.GetString(output.ToArray()), Is.EqualTo("native\n"));
            Assert.That(log.ToString(), Does.StartWith("KVM: native, Linux "));
        }
        else
        {
            var ex = await Assert.ThrowsAsync<LabException>(() => KvmLab.RunAsync(["echo", "native"], options));
            Assert.That(ex!.Message, Does.Contain("not usable natively").And.Contain(status.Reason));
        }
    }

    [Test]
    public void ProbeNative_MissingDevice_SaysENOENT()
    {
        var status = KvmLab.ProbeNative("/dev/kvm-that-is-not-there");
        Assert.That(status.IsUsable, Is.False);
        Assert.That(status.Reason, Does.Contain("/dev/kvm-that-is-not-there").And.Contain("ENOENT"));
    }
}
