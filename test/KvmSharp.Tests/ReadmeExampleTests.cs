using System.Text.RegularExpressions;

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
    public void ReadmeExample_IsTheCodeInReadme()
    {
        string source = File.ReadAllText(Path.Combine(RepoRoot(), "test/KvmSharp.Tests/ReadmeExampleTests.cs"));
        var m = ExampleRegion().Match(source);
        Assert.That(m.Success, Is.True);
        string body = string.Join('\n', m.Groups[1].Value.Split('\n').Select(l => l.Length >= 8 ? l[8..] : l.Trim())).Trim();
        string readme = File.ReadAllText(Path.Combine(RepoRoot(), "README.md")).Replace("\r\n", "\n");
        Assert.That(readme, Does.Contain(body), "README's example must be the code this test runs");
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

    private static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "KvmSharp.sln"))) return d.FullName;
        throw new InvalidOperationException("KvmSharp.sln not found above " + AppContext.BaseDirectory);
    }

    [GeneratedRegex(@"// README-EXAMPLE-BEGIN\r?\n(.*?)\r?\n\s*// README-EXAMPLE-END", RegexOptions.Singleline)]
    private static partial Regex ExampleRegion();
}
