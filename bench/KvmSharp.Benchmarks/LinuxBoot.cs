using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using KvmSharp.Devices;
using KvmSharp.Guests;
using KvmSharp.Lab;

namespace KvmSharp.Benchmarks;

/// <summary>
/// <c>--linux-boot [ROUNDS]</c>: boots the same kernel (Debian's, from the lab's provisioning) with
/// the same busybox initramfs and command line, ROUNDS times each way, alternating: with KvmSharp
/// (<see cref="X86LinuxBoot"/>, a UART, the reset device) and with <c>qemu-system-x86_64 -accel kvm</c>
/// (<c>-M pc</c>, SeaBIOS, its own loader). The init prints a marker and reboots. Reported per way,
/// medians: wall time from start to the marker (KvmSharp: from creating the VM, loading included;
/// QEMU: from starting the process, its device model and firmware included) and the guest's own
/// uptime when the kernel ran <c>/init</c> (its printk time stamp: the kernel's boot alone, firmware
/// excluded).
/// </summary>
internal static class LinuxBoot
{
    private const string Marker = "BENCH-INIT-MARKER";
    private const string InitScript = "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox echo " + Marker + "\n/bin/busybox reboot -f\n";
    private static readonly Regex RunInit = new(@"\[\s*(\d+\.\d+)\] Run /init as init process", RegexOptions.Compiled);

    public static int Run(string[] args)
    {
        int rounds = 3;
        if (args.Length > 1 || (args.Length == 1 && (!int.TryParse(args[0], out rounds) || rounds < 1)))
        {
            Console.Error.WriteLine("usage: --linux-boot [ROUNDS (default 3)]");
            return 2;
        }
        var images = KvmLab.ProvisionGuestImages(new LabOptions { Architecture = LabArchitecture.X86_64 });
        byte[] kernel = File.ReadAllBytes(images.KernelImage);
        byte[] initrd = new InitramfsBuilder()
            .AddDirectory("bin").AddDirectory("proc")
            .AddFile("bin/busybox", File.ReadAllBytes(images.Busybox), executable: true)
            .AddFile("init", Encoding.ASCII.GetBytes(InitScript), executable: true)
            .ToArray();
        // noxsave in the lab: its emulated SVM loses the guest's XCR0 (see LinuxTestGuest in the tests); both ways get it.
        string commandLine = X86LinuxBoot.MinimalCommandLine + " console=ttyS0" + (KvmLab.IsInsideLab ? " noxsave" : "");
        string? qemu = FindQemu();
        if (qemu is null)
        {
            Console.Error.WriteLine("qemu-system-x86_64 is not on PATH (apt-get install qemu-system-x86).");
            return 1;
        }
        string initrdFile = Path.Combine(Path.GetTempPath(), $"linux-boot-{Environment.ProcessId}.cpio");
        File.WriteAllBytes(initrdFile, initrd);
        try
        {
            var results = new Dictionary<string, List<(double Wall, double Uptime)>> { ["KvmSharp"] = [], ["QEMU -accel kvm"] = [] };
            for (int round = 0; round < rounds; round++)
            {
                results["KvmSharp"].Add(BootKvmSharp(kernel, initrd, commandLine));
                results["QEMU -accel kvm"].Add(BootQemu(qemu, images.KernelImage, initrdFile, commandLine));
                Console.Error.WriteLine($"round {round + 1}/{rounds} done");
            }
            Console.WriteLine($"Linux boot to /init, {rounds} rounds each, medians (kernel {Path.GetFileName(Path.GetDirectoryName(images.KernelImage))}, 256 MiB, 1 vCPU):");
            Console.WriteLine($"{"way",-18} {"start→marker (s)",18} {"guest uptime at /init (s)",26}");
            foreach (var (way, r) in results)
                Console.WriteLine($"{way,-18} {Median(r.Select(x => x.Wall)),18:F2} {Median(r.Select(x => x.Uptime)),26:F2}");
            double ratio = Median(results["KvmSharp"].Select(x => x.Wall)) / Median(results["QEMU -accel kvm"].Select(x => x.Wall));
            Console.WriteLine($"KvmSharp / QEMU, start→marker: {ratio:F2}×");
            return 0;
        }
        finally
        {
            File.Delete(initrdFile);
        }
    }

    private static (double, double) BootKvmSharp(byte[] kernelFile, byte[] initrd, string commandLine)
    {
        var clock = Stopwatch.StartNew();
        using var kvm = Kvm.Open();
        using var vm = kvm.CreateVirtualMachine();
        vm.CreateIrqChip();
        vm.CreatePit();
        vm.AddMemorySlot(0, 256 << 20, hugePages: true);
        using var cpu = vm.CreateVcpu();
        X86LinuxBoot.Load(cpu, LinuxBzImage.Parse(kernelFile), new LinuxBootOptions { CommandLine = commandLine, Initrd = initrd });
        using var uart = new Uart16550(level => vm.SetIrqLine(4, level));
        var reset = new ResetDevice();
        var bus = new IoBus();
        bus.MapPorts(0x3F8, 8, uart);
        bus.MapPorts(ResetDevice.KeyboardControllerPort, 1, reset);
        var console = new StringBuilder();
        double wall = -1;
        var reader = Task.Run(async () =>
        {
            while (true)
            {
                var read = await uart.Output.ReadAsync();
                foreach (var segment in read.Buffer) console.Append(Encoding.Latin1.GetString(segment.Span));
                uart.Output.AdvanceTo(read.Buffer.End);
                if (wall < 0 && console.ToString().Contains(Marker)) wall = clock.Elapsed.TotalSeconds;
                if (read.IsCompleted) return;
            }
        });
        var result = new VcpuRunner(cpu, bus).Run(TimeSpan.FromMinutes(5));
        uart.Dispose();
        reader.Wait(TimeSpan.FromSeconds(10));
        if (result.Reason != RunStopReason.GuestReset || wall < 0)
            throw new InvalidOperationException($"KvmSharp's boot ended with {result} before the marker. Console:\n{console}");
        SaveConsole("kvmsharp", $"exits to user space: {result.Exits}\n{console}");
        return (wall, Uptime(console.ToString()));
    }

    private static (double, double) BootQemu(string qemu, string kernel, string initrd, string commandLine)
    {
        var start = new ProcessStartInfo(qemu)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        foreach (string a in new[]
                 {
                     "-accel", "kvm", "-M", "pc", "-cpu", "host", "-m", "256", "-smp", "1", "-nographic", "-nodefaults", "-no-reboot",
                     "-serial", "stdio", "-kernel", kernel, "-initrd", initrd, "-append", commandLine,
                 })
            start.ArgumentList.Add(a);
        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start)!;
        // A guest that never reboots must not hang the benchmark: QEMU is killed after 5 minutes.
        using var limit = new Timer(_ => { try { process.Kill(); } catch (InvalidOperationException) { } }, null, TimeSpan.FromMinutes(5), Timeout.InfiniteTimeSpan);
        var console = new StringBuilder();
        double wall = -1;
        var stderr = process.StandardError.ReadToEndAsync();
        var buffer = new char[4096];
        int n;
        while ((n = process.StandardOutput.Read(buffer, 0, buffer.Length)) > 0)
        {
            console.Append(buffer, 0, n);
            if (wall < 0 && console.ToString().Contains(Marker)) wall = clock.Elapsed.TotalSeconds;
        }
        if (!process.WaitForExit(TimeSpan.FromMinutes(5))) process.Kill();
        if (wall < 0)
            throw new InvalidOperationException($"QEMU's boot ended (exit {process.ExitCode}) before the marker. {stderr.Result}\nConsole:\n{console}");
        SaveConsole("qemu", console.ToString());
        return (wall, Uptime(console.ToString()));
    }

    /// <summary>The last round's console of each way, for comparing where the time went (beside BenchmarkDotNet's
    /// artifacts: a lab machine's temporary folder does not outlive it).</summary>
    private static void SaveConsole(string way, string console)
    {
        Directory.CreateDirectory("BenchmarkDotNet.Artifacts");
        File.WriteAllText(Path.Combine("BenchmarkDotNet.Artifacts", $"linux-boot-{way}.txt"), console);
    }

    private static double Uptime(string console) =>
        RunInit.Match(console) is { Success: true } m ? double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : double.NaN;

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static string? FindQemu() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':').Select(d => Path.Combine(d, "qemu-system-x86_64")).FirstOrDefault(File.Exists);
}
