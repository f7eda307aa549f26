using System.Text.RegularExpressions;
using KvmSharp.Devices;
using KvmSharp.Guests;

namespace KvmSharp.Tests;

/// <summary>README's usage example, compiled and run here; a second test keeps README and this copy identical.</summary>
public partial class ReadmeExampleTests : KvmTestBase
{
    [Test]
    public void ReadmeExample_RunsAndPrintsWhatTheGuestWrote()
    {
        var output = new StringWriter();
        var previous = Console.Out;
        Console.SetOut(output);
        try
        {
            Example();
        }
        finally
        {
            Console.SetOut(previous);
        }
        Assert.That(output.ToString(), Is.EqualTo("port 0x10: 42" + Environment.NewLine));
    }

    [Test]
    public void ReadmeExample_IsTheCodeInReadme() => AssertInReadme(ExampleRegion(), "README's example must be the code this test runs");

    /// <summary>The region of this file that <paramref name="region"/> matches, unindented, appears in README verbatim.</summary>
    private static void AssertInReadme(Regex region, string because)
    {
        string source = File.ReadAllText(Path.Combine(RepoRoot(), "test/KvmSharp.Tests/ReadmeExampleTests.cs"));
        var m = region.Match(source);
        Assert.That(m.Success, Is.True);
        string body = string.Join('\n', m.Groups[1].Value.Split('\n').Select(l => l.Length >= 8 ? l[8..] : l.Trim())).Trim();
        string readme = File.ReadAllText(Path.Combine(RepoRoot(), "README.md")).Replace("\r\n", "\n");
        Assert.That(readme, Does.Contain(body), because);
    }

    private static void Example()
    {
        // README-EXAMPLE-BEGIN
        using var kvm = Kvm.Open();
        using var vm = kvm.CreateVirtualMachine();
        var ram = vm.AddMemorySlot(guestPhysicalAddress: 0, size: 0x1000);
        ram.Write(0x100, [0xB0, 0x2A, 0xE6, 0x10, 0xF4]); // mov al, 42; out 0x10, al; hlt
        using var cpu = vm.CreateVcpu();
        ref var sregs = ref cpu.X86.EditSpecialRegisters();
        sregs.Cs.Base = 0;                                 // real mode, CS:IP = 0000:0100
        sregs.Cs.Selector = 0;
        cpu.X86.Rip = 0x100;

        while (true)
        {
            var exit = cpu.Run();                          // a view into kvm_run: no copy, no allocation
            if (exit.Reason == VcpuExitReason.Io)
                Console.WriteLine($"port 0x{exit.Io.Port:X}: {exit.Io.Data[0]}");
            else if (exit.Reason == VcpuExitReason.Hlt)
                break;
        }
        // README-EXAMPLE-END
    }

    /// <summary>
    /// README's "boot Linux in ten lines", kept compiling against the public API (the test below keeps
    /// README and this copy identical). Its calls run in <see cref="LinuxBootTests"/>, with the lab's
    /// extra <c>noxsave</c>, which this verbatim copy cannot add.
    /// </summary>
    [Test]
    public void LinuxExample_IsTheCodeInReadme() => AssertInReadme(LinuxExampleRegion(), "README's Linux example must be the code compiled here");

    private static RunResult LinuxExample()
    {
        // README-LINUX-BEGIN
        using var kvm = Kvm.Open();
        using var vm = kvm.CreateVirtualMachine();
        vm.CreateIrqChip(); vm.CreatePit();                       // before the vCPU
        vm.AddMemorySlot(0, 256 << 20, hugePages: true);         // RAM in transparent huge pages, as QEMU
        using var vcpu = vm.CreateVcpu();
        X86LinuxBoot.Load(vcpu, LinuxBzImage.Parse(File.ReadAllBytes("bzImage")), new LinuxBootOptions
            { CommandLine = X86LinuxBoot.MinimalCommandLine + " console=ttyS0", Initrd = File.ReadAllBytes("initramfs.cpio") });
        using var uart = new Uart16550(level => vm.SetIrqLine(4, level));
        var bus = new IoBus(); bus.MapPorts(0x3F8, 8, uart); bus.MapPorts(ResetDevice.KeyboardControllerPort, 1, new ResetDevice());
        _ = uart.Output.CopyToAsync(Console.OpenStandardOutput());
        RunResult end = new VcpuRunner(vcpu, bus).Run();          // RunStopReason.GuestReset when the guest reboots or powers off
        // README-LINUX-END
        return end;
    }

    private static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "KvmSharp.sln"))) return d.FullName;
        throw new InvalidOperationException("KvmSharp.sln not found above " + AppContext.BaseDirectory);
    }

    [GeneratedRegex(@"// README-EXAMPLE-BEGIN\r?\n(.*?)\r?\n\s*// README-EXAMPLE-END", RegexOptions.Singleline)]
    private static partial Regex ExampleRegion();

    [GeneratedRegex(@"// README-LINUX-BEGIN\r?\n(.*?)\r?\n\s*// README-LINUX-END", RegexOptions.Singleline)]
    private static partial Regex LinuxExampleRegion();
}
