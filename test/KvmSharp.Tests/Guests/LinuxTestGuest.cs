using System.Buffers;
using System.Text;
using KvmSharp.Devices;
using KvmSharp.Guests;
using KvmSharp.Lab;

namespace KvmSharp.Tests.Guests;

/// <summary>
/// Debian's stock x86_64 kernel (the lab's, from its cache) booted with <see cref="X86LinuxBoot"/>
/// on one vCPU with the in-kernel irqchip and PIT, a 16550 UART on COM1 (IRQ 4) as its console, the
/// reset device, and a busybox initramfs whose init prints <see cref="InitMarker"/> and then runs each
/// line it reads from the console, framing the output as <c>&lt;&lt;&lt;</c> … <c>&gt;&gt;&gt; status</c>;
/// at the end of its input it reboots (<c>reboot=k</c>: the run ends with <see cref="RunStopReason.GuestReset"/>).
/// </summary>
internal sealed class LinuxTestGuest : IDisposable
{
    public const string InitMarker = "KVMSHARP-INIT-OK";
    /// <summary>
    /// The guest's command line. In the lab also <c>noxsave</c>: there, QEMU's emulated SVM lets the
    /// guest's XSETBV through without KVM seeing it, so KVM's idea of the guest's XCR0 stays x87-only
    /// (CPUID 0xD reports 576 bytes; the kernel warns "XSAVE consistency problem") and KVM puts that
    /// XCR0 back at the next entry — a guest kernel using AVX or XSAVE state then faults, and about one
    /// boot in ten ended in a triple fault at that point. QEMU <c>-accel kvm</c> in the lab shows the same
    /// warning. On real hardware KVM intercepts XSETBV and none of this happens.
    /// </summary>
    public static readonly string CommandLine = X86LinuxBoot.MinimalCommandLine + " console=ttyS0" + (KvmLab.IsInsideLab ? " noxsave" : "");

    private const string InitScript = """
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mount -t proc proc /proc
        mount -t sysfs sysfs /sys
        mount -t devtmpfs devtmpfs /dev
        stty -echo
        echo "KVMSHARP-INIT-OK $(uname -r)"
        while read -r line; do
            echo "<<<"
            eval "$line"
            echo ">>> $?"
        done
        reboot -f
        """;

    private readonly StringBuilder _console = new();
    private readonly Lock _lock = new();
    private readonly Task _reader;

    public Kvm Kvm { get; }
    public VirtualMachine Vm { get; }
    public Vcpu Cpu { get; }
    public Uart16550 Uart { get; }
    public ResetDevice Reset { get; } = new();
    public LinuxBootLayout Layout { get; }
    public IReadOnlyList<Vcpu> Cpus { get; }
    public IReadOnlyList<VcpuThread> Threads { get; }
    /// <summary>The boot vCPU's thread.</summary>
    public VcpuThread Thread => Threads[0];
    public static string KernelRelease => Path.GetFileName(Path.GetDirectoryName(Images.KernelImage)!)["kernel-".Length..];

    private static LabGuestImages? s_images;
    private static byte[]? s_initrd;

    public static LabGuestImages Images => s_images ??= KvmLab.ProvisionGuestImages(new LabOptions { Architecture = LabArchitecture.X86_64 });

    public static byte[] Initrd => s_initrd ??= new InitramfsBuilder()
        .AddDirectory("bin").AddDirectory("dev").AddDirectory("proc").AddDirectory("sys")
        .AddFile("bin/busybox", File.ReadAllBytes(Images.Busybox), executable: true)
        .AddFile("init", Encoding.ASCII.GetBytes(InitScript.ReplaceLineEndings("\n") + "\n"), executable: true)
        .ToArray();

    public LinuxTestGuest(Kvm kvm, ulong memoryBytes = 256 << 20, string? commandLine = null, int cpus = 1)
    {
        Kvm = kvm;
        Vm = kvm.CreateVirtualMachine();
        try
        {
            Vm.CreateIrqChip();
            Vm.CreatePit();
            Vm.AddMemorySlot(0, memoryBytes);
            Cpus = [.. Enumerable.Range(0, cpus).Select(_ => Vm.CreateVcpu())];
            Cpu = Cpus[0];
            Layout = X86LinuxBoot.Load(Cpu, LinuxBzImage.Parse(File.ReadAllBytes(Images.KernelImage)),
                new LinuxBootOptions { CommandLine = commandLine ?? CommandLine, Initrd = Initrd });
            var vm = Vm;
            Uart = new Uart16550(level => vm.SetIrqLine(4, level));
            var bus = new IoBus();
            bus.MapPorts(0x3F8, 8, Uart);
            bus.MapPorts(ResetDevice.ResetControlPort, 1, Reset);
            bus.MapPorts(ResetDevice.KeyboardControllerPort, 1, Reset);
            _reader = Task.Run(ReadConsoleAsync);
            Threads = [.. Cpus.Select(c => new VcpuThread(c, bus))];
        }
        catch
        {
            Vm.Dispose();
            throw;
        }
    }

    /// <summary>Everything the guest wrote to its console so far.</summary>
    public string Console
    {
        get
        {
            lock (_lock) return _console.ToString();
        }
    }

    private async Task ReadConsoleAsync()
    {
        while (true)
        {
            var result = await Uart.Output.ReadAsync().ConfigureAwait(false);
            lock (_lock)
                foreach (var segment in result.Buffer)
                    _console.Append(Encoding.Latin1.GetString(segment.Span).Replace("\r", "")); // the tty sends CR LF
            Uart.Output.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted) return;
        }
    }

    /// <summary>Waits until the console, from character <paramref name="from"/> on, holds <paramref name="text"/>; returns the index after it.</summary>
    public int WaitFor(string text, TimeSpan timeout, int from = 0)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            string console = Console;
            int i = console.IndexOf(text, Math.Min(from, console.Length), StringComparison.Ordinal);
            if (i >= 0) return i + text.Length;
            if (Threads.FirstOrDefault(t => t.Completion.IsCompleted) is { } stopped)
                Assert.Fail($"vCPU {stopped.Vcpu.Id} stopped ({stopped.Completion.Status}: {(stopped.Completion.IsCompletedSuccessfully ? stopped.Completion.Result.ToString() : stopped.Completion.Exception?.InnerException?.Message)}) before the guest wrote \"{text}\". Console:\n{Tail(console)}");
            if (DateTime.UtcNow > deadline)
                Assert.Fail($"The guest did not write \"{text}\" within {timeout.TotalSeconds:F0} s. Console:\n{Tail(console)}");
            System.Threading.Thread.Sleep(20);
        }
    }

    public static string Tail(string console) => console.Length <= 6000 ? console : "…" + console[^6000..];

    /// <summary>Boots to the init's marker (the kernel's messages before it on the console).</summary>
    public string WaitForInit(TimeSpan? timeout = null)
    {
        int end = WaitFor(InitMarker, timeout ?? TimeSpan.FromMinutes(2));
        WaitFor("\n", TimeSpan.FromSeconds(30), end);
        return Console;
    }

    /// <summary>Sends a line to the init's loop over the UART and returns its output and exit status.</summary>
    public (string Output, int Status) Run(string command, TimeSpan? timeout = null, string? input = null)
    {
        int from = Console.Length;
        Send(command + "\n" + (input is null ? "" : input + "\n"));
        int start = WaitFor("<<<\n", timeout ?? TimeSpan.FromMinutes(1), from);
        int end = WaitFor(">>> ", timeout ?? TimeSpan.FromMinutes(1), start);
        int eol = WaitFor("\n", TimeSpan.FromSeconds(30), end);
        string console = Console;
        return (console[start..(end - 4)], int.Parse(console[end..(eol - 1)], System.Globalization.CultureInfo.InvariantCulture));
    }

    public void Send(string text)
    {
        var flush = Uart.Input.WriteAsync(Encoding.ASCII.GetBytes(text)).AsTask();
        Assert.That(flush.Wait(TimeSpan.FromMinutes(1)), Is.True, "the guest takes its input");
    }

    /// <summary>Waits until a vCPU's run ends (the one that reset the machine, say) and returns how.</summary>
    public RunResult WaitForEnd(TimeSpan timeout)
    {
        var first = Task.WhenAny(Threads.Select(t => t.Completion));
        Assert.That(first.Wait(timeout), Is.True, $"the guest ended its run within {timeout.TotalSeconds:F0} s. Console:\n{Tail(Console)}");
        return first.Result.Result;
    }

    public void Dispose()
    {
        foreach (var thread in Threads) thread.Dispose();
        Uart.Dispose();
        try { _reader.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
        foreach (var cpu in Cpus) cpu.Dispose();
        Vm.Dispose();
    }
}
