using System.Diagnostics;
using System.Text;
using KvmSharp.Lab.Provisioning;

namespace KvmSharp.Lab.Tests;

/// <summary>
/// Commands run in real lab machines (the lab mode is forced, so these test the lab even where
/// /dev/kvm works): exit codes, output, environment, timeouts, cancellation, parent death, a custom
/// kernel, both architectures. After each, no QEMU of this process is left.
/// </summary>
[NonParallelizable]
public class LabRunTests
{
    private static readonly TimeSpan Generous = TimeSpan.FromMinutes(5);

    private sealed class Output
    {
        public MemoryStream Stdout { get; } = new();
        public MemoryStream Stderr { get; } = new();
        public SignallingWriter Log { get; } = new();
        public string Out => Encoding.UTF8.GetString(Stdout.ToArray());
        public string Err => Encoding.UTF8.GetString(Stderr.ToArray());
    }

    /// <summary>A log that says when a line containing some text has been written to it.</summary>
    internal sealed class SignallingWriter : TextWriter
    {
        private readonly StringBuilder _text = new();
        private readonly ManualResetEventSlim _whereLine = new();
        public override Encoding Encoding => Encoding.UTF8;
        public override void Write(char value)
        {
            lock (_text)
            {
                _text.Append(value);
                if (value == '\n' && _text.ToString().Contains("KVM: ", StringComparison.Ordinal))
                    _whereLine.Set();
            }
        }
        public bool WaitForWhereLine(TimeSpan timeout) => _whereLine.Wait(timeout);
        public override string ToString()
        {
            lock (_text)
                return _text.ToString();
        }
    }

    private static LabOptions Options(Output output, LabArchitecture arch = LabArchitecture.X86_64) => new()
    {
        Architecture = arch,
        Mode = LabMode.Lab,
        StandardInput = Stream.Null,
        StandardOutput = output.Stdout,
        StandardError = output.Stderr,
        Log = output.Log,
        BootTimeout = Generous,
    };

    [TearDown]
    public void NoQemuIsLeft()
    {
        Assert.That(LabProcesses.QemuChildrenOf(Environment.ProcessId), Is.Empty, "no QEMU of this process outlives a run");
    }

    [Test]
    public void ExitCode_Output_Environment_AndFolder_AreThoseOfTheCommand()
    {
        var output = new Output();
        string folder = Directory.CreateTempSubdirectory("kvmsharp-lab-cwd-").FullName;
        try
        {
            var options = new LabOptions
            {
                Architecture = LabArchitecture.X86_64,
                Mode = LabMode.Lab,
                StandardInput = Stream.Null,
                StandardOutput = output.Stdout,
                StandardError = output.Stderr,
                Log = output.Log,
                BootTimeout = Generous,
                WorkingDirectory = folder,
                Environment = new Dictionary<string, string?> { ["LAB_TEST_VALUE"] = "it's \"quoted\" $HOME", ["HOME"] = null },
            };
            // No input (Stream.Null): cat reads end of file at once.
            var result = KvmLab.RunAsync(["sh", "-c", "cat; echo out; echo err >&2; echo \"$LAB_TEST_VALUE\"; pwd; echo \"home=${HOME-unset}\"; test -c /dev/kvm && echo kvm; exit 42"], options)
                .GetAwaiter().GetResult();

            Assert.That(result.ExitCode, Is.EqualTo(42));
            Assert.That(output.Out, Is.EqualTo($"out\nit's \"quoted\" $HOME\n{folder}\nhome=unset\nkvm\n"));
            Assert.That(output.Err, Is.EqualTo("err\n"));
            Assert.That(result.Location.IsLab, Is.True);
            Assert.That(result.Location.Architecture, Is.EqualTo(LabArchitecture.X86_64));
            Assert.That(output.Log.ToString(), Does.Contain($"KVM: lab x86_64, Linux {result.Location.KernelRelease} under QEMU TCG (nested SVM)"));
            Assert.That(result.BootTime, Is.GreaterThan(TimeSpan.Zero));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Test]
    public void StandardInput_ReachesTheCommandOverItsPort_AndItsEndIsEndOfFile()
    {
        var output = new Output();
        // More than a socket buffer and a virtio queue hold, so the machine's reads must keep pace with the host's writes.
        byte[] bulk = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Range(0, 40_000).Select(i => $"line {i}\n")));
        var input = new MemoryStream([.. Encoding.ASCII.GetBytes("first\nsecond\n"), .. bulk]);
        var options = new LabOptions
        {
            Architecture = LabArchitecture.X86_64,
            Mode = LabMode.Lab,
            StandardInput = input,
            StandardOutput = output.Stdout,
            StandardError = output.Stderr,
            Log = output.Log,
            BootTimeout = Generous,
        };
        var result = KvmLab.RunAsync(["sh", "-c", "test -t 0 && echo tty; read a; read b; echo \"$b,$a\"; cat | sha256sum; echo end"], options)
            .GetAwaiter().GetResult();
        string sha = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bulk));
        Assert.That((result.ExitCode, output.Out), Is.EqualTo((0, $"second,first\n{sha}  -\nend\n")),
            "the lines in order, every byte after them, and then end of file (else cat would wait for ever); not a terminal");
    }

    [Test]
    public void CommandNotFound_Is127_WithTheShellsMessage()
    {
        var output = new Output();
        var result = KvmLab.RunAsync(["no-such-program-kvmsharp"], Options(output)).GetAwaiter().GetResult();
        Assert.That(result.ExitCode, Is.EqualTo(127));
        Assert.That(output.Err, Does.Contain("no-such-program-kvmsharp"));
    }

    [Test]
    public async Task CommandTimeout_KillsQemu_AndSaysSo()
    {
        var output = new Output();
        var options = new LabOptions
        {
            Mode = LabMode.Lab,
            Log = output.Log,
            StandardOutput = output.Stdout,
            StandardError = output.Stderr,
            BootTimeout = Generous,
            CommandTimeout = TimeSpan.FromSeconds(3),
        };
        var ex = await Assert.ThrowsAsync<LabTimeoutException>(() => KvmLab.RunAsync(["sh", "-c", "echo started; sleep 600"], options));
        Assert.That(ex!.DuringBoot, Is.False);
        Assert.That(ex.Timeout, Is.EqualTo(TimeSpan.FromSeconds(3)));
        Assert.That(ex.Message, Does.Contain("did not end within 3 s").And.Contain("QEMU was killed"));
        Assert.That(output.Out, Is.EqualTo("started\n"), "output up to the timeout still arrives");
    }

    [Test]
    public async Task BootTimeout_KillsQemu_AndShowsTheConsole()
    {
        var output = new Output();
        var options = new LabOptions { Mode = LabMode.Lab, Log = output.Log, BootTimeout = TimeSpan.FromMilliseconds(300) };
        var ex = await Assert.ThrowsAsync<LabTimeoutException>(() => KvmLab.RunAsync(["true"], options));
        Assert.That(ex!.DuringBoot, Is.True);
        Assert.That(ex.Message, Does.Contain("did not become ready within"));
    }

    [Test]
    public void Cancellation_KillsQemu_AndThrowsOperationCanceled()
    {
        var output = new Output();
        using var cancel = new CancellationTokenSource();
        var run = KvmLab.RunAsync(["sleep", "600"], Options(output), cancel.Token);
        Assert.That(output.Log.WaitForWhereLine(Generous), Is.True, "the machine booted");
        cancel.Cancel();
        Assert.That(() => run.GetAwaiter().GetResult(), Throws.InstanceOf<OperationCanceledException>());
    }

    [Test]
    public void ParentDeath_TakesQemuWithIt()
    {
        // The lab's command line in a child process; SIGKILL it while its machine runs. QEMU, orphaned,
        // would be adopted by pid 1, and a pid 1 that does not reap (some CI containers) would keep it as
        // a zombie forever: so this process adopts it instead (PR_SET_CHILD_SUBREAPER) and reaps it.
        string lab = Path.Combine(AppContext.BaseDirectory, "KvmSharp.Lab.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (string arg in new[] { lab, "--lab", "--", "sleep", "600" })
            psi.ArgumentList.Add(arg);
        Assert.That(LabProcesses.SetChildSubreaper(true), Is.True, "prctl(PR_SET_CHILD_SUBREAPER)");
        int qemu = 0;
        try
        {
            using var cli = Process.Start(psi)!;
            try
            {
                Assert.That(LabProcesses.WaitUntil(() => (qemu = LabProcesses.QemuChildrenOf(cli.Id).FirstOrDefault()) != 0, Generous),
                    Is.True, "the child started QEMU");
                cli.Kill();
                cli.WaitForExit();
                Assert.That(LabProcesses.WaitUntil(() => !LabProcesses.IsRunning(qemu), TimeSpan.FromSeconds(30)), Is.True,
                    $"QEMU (pid {qemu}) died with its parent (PR_SET_PDEATHSIG through setpriv)");
            }
            finally
            {
                if (!cli.HasExited)
                    cli.Kill(entireProcessTree: true);
            }
        }
        finally
        {
            if (qemu != 0)
                LabProcesses.Reap(qemu);
            LabProcesses.SetChildSubreaper(false);
        }
        Assert.That(File.Exists($"/proc/{qemu}/stat") && LabProcesses.QemuChildrenOf(Environment.ProcessId).Contains(qemu), Is.False,
            "the orphaned QEMU was reaped, not left a zombie");
    }

    [Test]
    public void Arm64_TheMachineHasArm64Kvm_AndBusyboxAppletsComeFirst()
    {
        var output = new Output();
        var result = KvmLab.RunAsync(["sh", "-c", "uname -m; test -c /dev/kvm && echo kvm; exit 7"], Options(output, LabArchitecture.Arm64))
            .GetAwaiter().GetResult();
        Assert.That(result.ExitCode, Is.EqualTo(7));
        Assert.That(output.Out, Is.EqualTo("aarch64\nkvm\n"));
        Assert.That(result.Location.Architecture, Is.EqualTo(LabArchitecture.Arm64));
        Assert.That(output.Log.ToString(), Does.Contain("KVM: lab arm64, Linux ").And.Contain("under QEMU TCG (emulated EL2)"));
    }

    [Test]
    public void InsideTheLab_TheLabRunsNatively_AndStartsNoQemu()
    {
        var output = new Output();
        string lab = Path.Combine(AppContext.BaseDirectory, "KvmSharp.Lab.dll");
        var result = KvmLab.RunAsync(["dotnet", lab, "--", "sh", "-c", "echo inner"], Options(output)).GetAwaiter().GetResult();
        Assert.That(result.ExitCode, Is.EqualTo(0), output.Err);
        Assert.That(output.Out, Is.EqualTo("inner\n"));
        Assert.That(output.Err, Does.Contain($"KVM: native, Linux {result.Location.KernelRelease}"),
            "the lab's command line, run where /dev/kvm works, runs natively");
    }

    [Test]
    public void CustomKernel_BootsFromTheGivenImageAndModules()
    {
        // Debian's kernel, as provisioned, given to the lab as if it were the user's own.
        var assets = new Provisioner(new LabOptions { Log = TextWriter.Null }, LabArchitecture.X86_64).Ensure();
        string modules = Path.GetDirectoryName(assets.Modules[0].Path)!;
        var output = new Output();
        var options = new LabOptions
        {
            Mode = LabMode.Lab,
            Kernel = new LabKernel(assets.KernelImage, modules),
            StandardOutput = output.Stdout,
            StandardError = output.Stderr,
            Log = output.Log,
            BootTimeout = Generous,
        };
        var result = KvmLab.RunAsync(["uname", "-r"], options).GetAwaiter().GetResult();
        Assert.That(result.ExitCode, Is.EqualTo(0));
        Assert.That(output.Out.Trim(), Is.EqualTo(result.Location.KernelRelease));
    }
}
