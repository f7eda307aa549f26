// LinuxGuest: boots a stock Linux kernel to a busybox shell on a 16550 serial console, on /dev/kvm
// (or in a KvmSharp.Lab machine where there is none). In a terminal, a login shell: what you type
// goes to the guest's serial port; `reboot -f` or Ctrl+] ends it. `--run "CMD"` runs one command in
// the guest, prints its output and exits with its exit status when the guest powers off; input
// piped in is a script run the same way.
//
//   dotnet run --project samples/LinuxGuest -- --run "uname -a"
//   dotnet run --project samples/LinuxGuest                  # a shell
//   echo 'cat /proc/cpuinfo' | dotnet run --project samples/LinuxGuest   # a script
//
// Options: --kernel FILE (a bzImage; default Debian's linux-image-amd64, fetched and cached the way
// KvmSharp.Lab provisions its machines), --busybox FILE (a static busybox; default Debian's
// busybox-static), --memory MiB (default 256), --cpus N (default 1), --append "ARGS" (more kernel
// parameters).
using System.Diagnostics;
using System.IO.Pipelines;
using System.Text;
using KvmSharp;
using KvmSharp.Devices;
using KvmSharp.Guests;
using KvmSharp.Lab;

string? Option(string name) => Array.IndexOf(args, name) is var i and >= 0 ? args.ElementAtOrDefault(i + 1) : null;
string? command = Option("--run");
if (Array.IndexOf(args, "--run") >= 0 && string.IsNullOrWhiteSpace(command))
    return Usage("--run needs a command");
int memoryMiB = int.TryParse(Option("--memory") ?? "256", out var m) && m >= 128 ? m : -1;
if (memoryMiB < 0) return Usage("--memory takes a number of MiB, at least 128");
int cpuCount = int.TryParse(Option("--cpus") ?? "1", out var c) && c >= 1 ? c : -1;
if (cpuCount < 0) return Usage("--cpus takes a number of vCPUs, at least 1");

// Three ways to run: --run "CMD"; a terminal (a login shell, keys to the guest); or input piped in,
// which is a script run like --run's command. In a terminal the terminal goes raw (no line editing,
// echo or signals here: the guest's shell does them) before a relaunch too: the lab then carries its
// bytes to this program inside, whose input is no terminal any more, so the variable tells it.
const string TerminalVariable = "LINUXGUEST_TERMINAL";
bool interactive = command is null && (!Console.IsInputRedirected || Environment.GetEnvironmentVariable(TerminalVariable) == "1");
using var terminal = interactive ? Terminal.Raw() : null;

// The guest is x86_64; where this process cannot open /dev/kvm, run in the x86_64 lab machine. The
// line saying where goes to stderr, so that --run's stdout is the command's output alone.
var lab = new LabOptions
{
    Log = Console.Error,
    Architecture = LabArchitecture.X86_64,
    Environment = new Dictionary<string, string?> { [TerminalVariable] = interactive ? "1" : null },
};
if (KvmLab.RelaunchIfNeeded(args, lab) is int labExitCode)
    return labExitCode;

if (command is null && !interactive)
{
    command = await new StreamReader(StandardInput()).ReadToEndAsync();
    if (string.IsNullOrWhiteSpace(command))
        return Usage("the input piped in is empty: give a script, or run in a terminal");
}

var images = Option("--kernel") is null || Option("--busybox") is null ? KvmLab.ProvisionGuestImages(lab) : null;
byte[] kernelFile = File.ReadAllBytes(Option("--kernel") ?? images!.KernelImage);
byte[] initrd = BuildInitramfs(File.ReadAllBytes(Option("--busybox") ?? images!.Busybox), command);
// In a lab machine also noxsave: QEMU's emulated SVM there loses the guest's XCR0 (KVM never sees its
// XSETBV), which can crash a kernel that uses XSAVE state. Real hardware does not need it.
string commandLine = $"{X86LinuxBoot.MinimalCommandLine} console=ttyS0 {(KvmLab.IsInsideLab ? "noxsave " : "")}{(command is null ? "" : "quiet ")}{Option("--append")}".TrimEnd();

using var kvm = Kvm.Open();
if (kvm.Architecture != KvmArchitecture.X86_64)
{
    Console.Error.WriteLine($"LinuxGuest boots x86_64 kernels; this KVM is {kvm.Architecture}.");
    return 2;
}

// The machine: RAM from 0, the in-kernel interrupt controller and timer, the vCPUs (all before the
// kernel is loaded: its MP table lists them), the kernel.
using var vm = kvm.CreateVirtualMachine();
vm.CreateIrqChip();
vm.CreatePit();
vm.AddMemorySlot(0, (ulong)memoryMiB << 20, hugePages: true);
var vcpus = Enumerable.Range(0, cpuCount).Select(_ => vm.CreateVcpu()).ToList();
X86LinuxBoot.Load(vcpus[0], LinuxBzImage.Parse(kernelFile), new LinuxBootOptions { CommandLine = commandLine, Initrd = initrd });

// Its devices: COM1 on IRQ 4 as the console, and the reset that ends the run.
using var uart = new Uart16550(level => vm.SetIrqLine(4, level));
var bus = new IoBus();
bus.MapPorts(0x3F8, 8, uart);
bus.MapPorts(ResetDevice.ResetControlPort, 1, new ResetDevice());
bus.MapPorts(ResetDevice.KeyboardControllerPort, 1, new ResetDevice());

// One thread per vCPU; vCPU 0 boots, the others wait in KVM until its kernel starts them.
var cpuThreads = vcpus.Select(v => new VcpuThread(v, bus)).ToList();
var shellReady = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
var console = command is null ? CopyToTerminalAsync(uart.Output, shellReady) : CommandOutputAsync(uart.Output);
if (command is null)
    _ = ForwardInputAsync(uart.Input, cpuThreads[0], shellReady.Task);

// The run ends when one vCPU's loop does (the one that reset the machine, or vCPU 0 on Ctrl+]).
RunResult end = await await Task.WhenAny(cpuThreads.Select(t => t.Completion));
foreach (var thread in cpuThreads) thread.Dispose();
foreach (var v in vcpus) v.Dispose();
uart.Dispose();  // ends the console reader
int? status = await console;
if (end.Reason != RunStopReason.GuestReset && end.Reason != RunStopReason.StopRequested)
{
    Console.Error.WriteLine($"LinuxGuest: the guest stopped unexpectedly: {end}");
    return 1;
}
if (command is not null && status is null)
{
    Console.Error.WriteLine("LinuxGuest: the guest ended without running the command (add --append \"loglevel=7\" without quiet to see why).");
    return 1;
}
return status ?? 0;

static byte[] BuildInitramfs(byte[] busybox, string? command)
{
    var builder = new InitramfsBuilder()
        .AddDirectory("bin").AddDirectory("dev").AddDirectory("proc").AddDirectory("sys").AddDirectory("tmp").AddDirectory("root")
        .AddFile("bin/busybox", busybox, executable: true)
        .AddFile("init", Encoding.ASCII.GetBytes(Init.Script), executable: true);
    if (command is not null)
        builder.AddFile("run.sh", Encoding.UTF8.GetBytes(command + "\n"));
    return builder.ToArray();
}

// Interactive: the console as it comes; the init's banner says the shell is about to read.
static async Task<int?> CopyToTerminalAsync(PipeReader output, TaskCompletionSource shellReady)
{
    var stdout = Console.OpenStandardOutput();
    var recent = new StringBuilder();
    while (true)
    {
        var read = await output.ReadAsync();
        foreach (var segment in read.Buffer)
        {
            await stdout.WriteAsync(segment);
            if (!shellReady.Task.IsCompleted)
            {
                recent.Append(Encoding.Latin1.GetString(segment.Span));
                if (recent.ToString().Contains(Init.Banner, StringComparison.Ordinal))
                    shellReady.TrySetResult();
                else if (recent.Length > 4096)
                    recent.Remove(0, recent.Length - Init.Banner.Length);
            }
        }
        await stdout.FlushAsync();
        output.AdvanceTo(read.Buffer.End);
        if (read.IsCompleted) return null;
    }
}

// --run: only what the command printed, and its exit status from the marker after it.
static async Task<int?> CommandOutputAsync(PipeReader output)
{
    const string Begin = "@@linuxguest-run@@\n", End = "@@linuxguest-exit@@ ";
    var text = new StringBuilder();
    int printed = -1;
    var stdout = Console.Out;
    while (true)
    {
        var read = await output.ReadAsync();
        foreach (var segment in read.Buffer)
            text.Append(Encoding.UTF8.GetString(segment.Span));
        output.AdvanceTo(read.Buffer.End);
        string all = text.ToString();
        if (printed < 0 && all.IndexOf(Begin, StringComparison.Ordinal) is var b and >= 0)
            printed = b + Begin.Length;
        if (printed >= 0)
        {
            int end = all.IndexOf("\n" + End, printed - 1, StringComparison.Ordinal);
            int upTo = end >= 0 ? end + 1 : Math.Max(printed, all.LastIndexOf('\n') + 1);
            stdout.Write(all[printed..upTo]);
            stdout.Flush();
            printed = upTo;
            if (end >= 0 && all.IndexOf('\n', end + 1) is var eol and > 0
                && int.TryParse(all[(end + 1 + End.Length)..eol], out int status))
                return status;
        }
        if (read.IsCompleted) return null;
    }
}

// Interactive: keystrokes to the guest's serial port, held until its shell is up (the serial
// driver's start-up empties the UART's FIFO: earlier keys could be lost); Ctrl+] or the end of the
// input stops the VM.
static async Task ForwardInputAsync(PipeWriter input, VcpuThread cpu, Task shellReady)
{
    var stdin = StandardInput();
    var buffer = new byte[256];
    bool waited = false;
    while (await stdin.ReadAsync(buffer) is int n and > 0)
    {
        if (!waited)
        {
            await shellReady;
            waited = true;
        }
        int stop = Array.IndexOf(buffer, (byte)0x1D, 0, n);
        await input.WriteAsync(buffer.AsMemory(0, stop >= 0 ? stop : n));
        if (stop >= 0) break;
    }
    cpu.Stop();
}

// File descriptor 0 as it is. Not Console.OpenStandardInput(): on a terminal .NET reads that a line
// at a time through its own line editor, so Ctrl+] (or any key before Enter) would not arrive.
static Stream StandardInput() => new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(0, ownsHandle: false), FileAccess.Read, bufferSize: 0);

static int Usage(string problem)
{
    Console.Error.WriteLine($"LinuxGuest: {problem}.\nusage: LinuxGuest [--run \"CMD\"] [--kernel bzImage] [--busybox FILE] [--memory MiB] [--cpus N] [--append \"ARGS\"]");
    return 2;
}

/// <summary>The terminal in raw mode (no line editing or echo: the guest's shell does both) until disposed.</summary>
sealed class Terminal : IDisposable
{
    private readonly string _saved;
    private Terminal(string saved) => _saved = saved;

    public static Terminal? Raw()
    {
        if (Console.IsInputRedirected) return null;
        string saved = Stty("-g").Trim();
        Stty("raw -echo");
        return new Terminal(saved);
    }

    public void Dispose() => Stty(_saved);

    private static string Stty(string arguments)
    {
        var start = new ProcessStartInfo("stty", arguments) { RedirectStandardOutput = true, UseShellExecute = false };
        using var process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return output;
    }
}

// /init: mounts the usual file systems, then runs /run.sh between two markers (--run) or a login
// shell on the serial port; `reboot -f` then ends the VM (reboot=k: the keyboard controller's reset).
static class Init
{
    public const string Banner = "LinuxGuest: busybox on ";

    public const string Script = """
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        export PATH=/bin HOME=/root
        mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev
        if [ -f /run.sh ]; then
            stty -onlcr
            echo "@@linuxguest-run@@"
            sh /run.sh < /dev/null
            echo "@@linuxguest-exit@@ $?"
        else
            echo "LinuxGuest: busybox on $(uname -sr); 'reboot -f' or Ctrl+] ends the VM."
            setsid cttyhack sh -l
        fi
        reboot -f

        """;
}
