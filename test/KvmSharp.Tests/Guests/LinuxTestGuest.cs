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
/// line it reads from the console, framing the output as <c>&lt;&lt;&lt;</c> … <c>&gt;&gt;&gt; status</c>
/// (from init on, only kernel messages of error level or worse reach the console, so that a warning
/// printed meanwhile does not land in a command's output);
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
        dmesg -n 4
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

    /// <summary>Creates the VM and starts its vCPUs; <see cref="Boot"/> also waits for the init.</summary>
    public LinuxTestGuest(Kvm kvm, ulong memoryBytes = 256 << 20, string? commandLine = null, int cpus = 1)
    {
        Kvm = kvm;
        Vm = kvm.CreateVirtualMachine();
        try
        {
            Vm.CreateIrqChip();
            Vm.CreatePit();
            Vm.AddMemorySlot(0, memoryBytes, hugePages: true);
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
        if (TryWaitFor(text, timeout, from, out int end) is { } failure)
            Assert.Fail(failure);
        return end;
    }

    /// <summary><see cref="WaitFor"/> without asserting: null when the text came, else why not (with a <see cref="Diagnose"/> report).</summary>
    private string? TryWaitFor(string text, TimeSpan timeout, int from, out int end)
    {
        var deadline = DateTime.UtcNow + timeout;
        end = -1;
        while (true)
        {
            string console = Console;
            int i = console.IndexOf(text, Math.Min(from, console.Length), StringComparison.Ordinal);
            if (i >= 0)
            {
                end = i + text.Length;
                return null;
            }
            if (Threads.FirstOrDefault(t => t.Completion.IsCompleted) is { } stopped)
            {
                System.Threading.Thread.Sleep(200); // the console reader's last bytes
                return $"vCPU {stopped.Vcpu.Id} stopped ({stopped.Completion.Status}: {(stopped.Completion.IsCompletedSuccessfully ? stopped.Completion.Result.ToString() : stopped.Completion.Exception?.InnerException?.Message)}) before the guest wrote \"{text}\". Console:\n{Tail(Console)}\n{Diagnose()}";
            }
            if (DateTime.UtcNow > deadline)
                return $"The guest did not write \"{text}\" within {timeout.TotalSeconds:F0} s. Console:\n{Tail(console)}\n{Diagnose()}";
            System.Threading.Thread.Sleep(20);
        }
    }

    /// <summary>
    /// A guest booted to its init's marker. In a lab machine a boot that fails before the marker (the
    /// guest triple-faults, or has not reached its init after a minute) is tried once more, after writing why
    /// to standard error: QEMU's emulation of nested SVM there loses a boot now and then (README, "The
    /// lab's emulated CPU"); with real KVM, and on a second failure, the test fails with the report.
    /// </summary>
    public static LinuxTestGuest Boot(Kvm kvm, ulong memoryBytes = 256 << 20, string? commandLine = null, int cpus = 1)
    {
        for (int attempt = 1; ; attempt++)
        {
            bool mayRetry = attempt == 1 && KvmLab.IsInsideLab;
            var guest = new LinuxTestGuest(kvm, memoryBytes, commandLine, cpus);
            string? failure = guest.TryWaitFor(InitMarker, TimeSpan.FromSeconds(mayRetry ? 60 : 120), 0, out int end)
                ?? guest.TryWaitFor("\n", TimeSpan.FromSeconds(30), end, out _);
            if (failure is null)
                return guest;
            guest.Dispose();
            if (!mayRetry)
                Assert.Fail(failure);
            System.Console.Error.WriteLine($"lab: a Linux guest's boot failed in {TestContext.CurrentContext.Test.Name}; booting it once more. {failure}");
        }
    }

    /// <summary>
    /// What a stalled guest was doing, for the failure message: each vCPU thread's scheduler state, CPU
    /// time over one second and kernel stack (is it spinning in the guest, blocked in KVM, or blocked
    /// in this process?), then — paused — each vCPU's RIP, flags, control registers, events and MP
    /// state, and in a lab machine the tail of its kernel log.
    /// </summary>
    public string Diagnose()
    {
        var report = new StringBuilder("Diagnosis:\n");
        try
        {
            var tasks = Directory.GetDirectories("/proc/self/task")
                .Select(d => (Dir: d, Comm: File.ReadAllText(Path.Combine(d, "comm")).Trim()))
                .Where(t => t.Comm.StartsWith("vCPU", StringComparison.Ordinal)).ToArray();
            var before = tasks.Select(t => CpuTicks(t.Dir)).ToArray();
            System.Threading.Thread.Sleep(1000);
            for (int i = 0; i < tasks.Length; i++)
            {
                string stat = File.ReadAllText(Path.Combine(tasks[i].Dir, "stat"));
                string state = stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[0];
                string stack = File.Exists(Path.Combine(tasks[i].Dir, "stack")) ? File.ReadAllText(Path.Combine(tasks[i].Dir, "stack")) : "";
                report.Append($"thread {tasks[i].Comm} ({Path.GetFileName(tasks[i].Dir)}): state {state}, {CpuTicks(tasks[i].Dir) - before[i]} ticks in 1 s\n{stack}");
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            report.Append($"(threads: {e.Message})\n");
        }
        var pause = Task.Run(() => VcpuThread.PauseAll(Threads));
        if (!pause.Wait(TimeSpan.FromSeconds(10)))
            report.Append("the vCPUs did not pause within 10 s\n");
        else
        {
            foreach (var cpu in Cpus)
            {
                try
                {
                    var x = cpu.X86;
                    var s = x.SpecialRegisters;
                    var ev = x.Events;
                    report.Append($"vCPU {cpu.Id}: RIP {x.Rip:X16} RSP {x.Rsp:X16} RFLAGS {x.Rflags:X} CR0 {s.Cr0:X} CR3 {s.Cr3:X} CR4 {s.Cr4:X} EFER {s.Efer:X} CS {s.Cs.Selector:X} "
                        + $"MP {x.MpState} exc {ev.ExceptionInjected}/{ev.ExceptionPending}/{ev.ExceptionNr} irq {ev.InterruptInjected}/{ev.InterruptNr} shadow {ev.InterruptShadow} nmi {ev.NmiPending}/{ev.NmiMasked}\n");
                    // Where an interrupt could be stuck: the local APIC's requested and in-service
                    // vectors and its timer (a TSC deadline against the TSC).
                    var apic = cpu.GetLapic();
                    string Vectors(Func<int, bool> set) => string.Join(",", Enumerable.Range(16, 240).Where(set).Select(v => v.ToString("X2")));
                    report.Append($"  LAPIC: IRR [{Vectors(apic.IsRequested)}] ISR [{Vectors(apic.IsInService)}] TPR {apic.TaskPriority:X} LVT timer {apic.LvtTimer:X} "
                        + $"TMICT {apic.TimerInitialCount:X} TMCCT {apic.TimerCurrentCount:X} TSC deadline {cpu.ReadMsrDirect(X86DeviceState.MsrTscDeadline):X} TSC {cpu.ReadMsrDirect(KvmSharp.Registers.X86RegisterSync.MsrTsc):X}\n");
                }
                catch (Exception e) when (e is KvmException or InvalidOperationException)
                {
                    report.Append($"vCPU {cpu.Id}: {e.Message}\n");
                }
            }
            try
            {
                var ioApic = Vm.GetIoApic();
                report.Append($"IOAPIC pin 4: {ioApic[4]} (IRR {ioApic.Irr:X}); UART state {Convert.ToHexString(Uart.CaptureState())}\n");
            }
            catch (Exception e) when (e is KvmException or InvalidOperationException or ObjectDisposedException)
            {
                report.Append($"IOAPIC/UART: {e.Message}\n");
            }
            VcpuThread.ResumeAll(Threads);
        }
        if (KvmLab.IsInsideLab)
        {
            try
            {
                using var dmesg = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("dmesg") { RedirectStandardOutput = true })!;
                var lines = dmesg.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
                dmesg.WaitForExit();
                report.Append("lab kernel log (tail):\n").AppendJoin('\n', lines.TakeLast(25)).Append('\n');
            }
            catch (System.ComponentModel.Win32Exception e)
            {
                report.Append($"(dmesg: {e.Message})\n");
            }
        }
        return report.ToString();

        static long CpuTicks(string dir)
        {
            string stat = File.ReadAllText(Path.Combine(dir, "stat"));
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture); // utime, stime
        }
    }

    public static string Tail(string console) => console.Length <= 6000 ? console : "…" + console[^6000..];

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
