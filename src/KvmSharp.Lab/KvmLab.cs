using System.Runtime.InteropServices;
using KvmSharp.Lab.Interop;
using KvmSharp.Lab.Running;

namespace KvmSharp.Lab;

/// <summary>
/// Runs commands on a real Linux KVM: natively where this process can open <c>/dev/kvm</c>,
/// otherwise in a lab machine: a stock Debian kernel booted under QEMU's software emulation
/// (x86_64 with emulated AMD SVM, arm64 with emulated EL2), which shares the host's whole file tree,
/// so the same paths, tools and build outputs work inside. The machine is provisioned from Debian's
/// packages on first use and cached (<see cref="LabOptions.CacheDirectory"/>), and thrown away after
/// each command.
/// </summary>
/// <remarks>
/// <para>Everything in the lab is emulated: seconds there mean nothing, only ratios measured in the
/// same run do. The command runs as root in the machine, with the host's files read-write, exactly
/// like the calling user's own processes would see them (QEMU runs as that user).</para>
/// <para>Thread safety: every member may be called from any thread; each run boots its own machine.</para>
/// </remarks>
public static class KvmLab
{
    /// <summary>Set (to the machine's architecture) in the environment of every command the lab runs.</summary>
    public const string InsideVariable = "KVMSHARP_LAB_INSIDE";

    /// <summary>Internal: the relays <see cref="RelaunchIfNeeded"/> starts inside the machine (<c>guestPath=portName;…</c>).</summary>
    internal const string ForwardsVariable = "KVMSHARP_LAB_FORWARDS";

    /// <summary>The option of Microsoft.Testing.Platform that names <c>dotnet test</c>'s pipe; carried into the machine.</summary>
    internal const string DotnetTestPipeOption = "--dotnet-test-pipe";

    /// <summary>The exit code <see cref="RelaunchIfNeeded"/> returns when the lab itself failed (as <c>docker run</c> does).</summary>
    public const int LabFailureExitCode = 125;

    /// <summary>True in a process the lab started inside a lab machine.</summary>
    public static bool IsInsideLab => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(InsideVariable));

    /// <summary>Opens <paramref name="devicePath"/> read/write and asks its API version: can this process use KVM here?</summary>
    public static NativeKvmStatus ProbeNative(string devicePath = "/dev/kvm")
    {
        var (usable, reason) = NativeKvm.Probe(devicePath);
        return new NativeKvmStatus(usable, reason);
    }

    /// <summary>
    /// Provisions a stock kernel and a static busybox for a guest of <see cref="LabOptions.Architecture"/>
    /// — the same files, downloaded from Debian's packages and cached the same way, that lab machines
    /// boot with — without starting anything. Offline once cached; inside a lab machine the host's
    /// cache is used.
    /// </summary>
    /// <param name="options">Architecture, cache folder and an optional own kernel (<see cref="LabOptions.Kernel"/>); defaults when null.</param>
    /// <exception cref="LabProvisioningException">A file is missing and cannot be provisioned here (no apt, not root, no network); the message says how to get it.</exception>
    public static LabGuestImages ProvisionGuestImages(LabOptions? options = null)
    {
        options ??= new LabOptions();
        return new Provisioning.Provisioner(options, options.Architecture).EnsureGuestImages();
    }

    /// <summary>
    /// Runs <paramref name="command"/> on a real KVM of <see cref="LabOptions.Architecture"/> and
    /// returns how it ended. Natively (starting no QEMU) when the mode allows it, the architecture
    /// is this process's and <c>/dev/kvm</c> works; otherwise in a fresh lab machine, provisioned
    /// first if needed. Writes one line saying where it runs to <see cref="LabOptions.Log"/>, and the
    /// command's output to <see cref="LabOptions.StandardOutput"/>/<see cref="LabOptions.StandardError"/>
    /// as it comes.
    /// </summary>
    /// <param name="command">The program and its arguments, as for <c>execvp</c>; in a foreign-architecture machine
    /// the program must be of that architecture (busybox's applets are first on its PATH).</param>
    /// <param name="options">How and where; defaults when null.</param>
    /// <param name="cancellationToken">Kills the command (and QEMU) and throws <see cref="OperationCanceledException"/>.</param>
    /// <exception cref="ArgumentException"><paramref name="command"/> is empty.</exception>
    /// <exception cref="LabProvisioningException">Something the lab needs is missing and cannot be provisioned here.</exception>
    /// <exception cref="LabTimeoutException">The machine did not boot, or the command did not end, in time; QEMU was killed.</exception>
    /// <exception cref="LabException">The mode demands native KVM and there is none, QEMU failed, or the machine ended without an exit code.</exception>
    public static Task<LabResult> RunAsync(IReadOnlyList<string> command, LabOptions? options = null, CancellationToken cancellationToken = default) =>
        RunCoreAsync(command, options ?? new LabOptions(), [], carryInput: true, cancellationToken);

    // forwardedArguments: indexes of arguments that name host Unix sockets to carry into a lab
    // machine (each is replaced there by the path where the machine's relay listens); ignored natively.
    // carryInput: false gives a lab machine's command no standard input whatever the options say.
    private static async Task<LabResult> RunCoreAsync(IReadOnlyList<string> command, LabOptions options, IReadOnlyList<int> forwardedArguments,
        bool carryInput, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(command);
        if (command.Count == 0 || string.IsNullOrEmpty(command[0]))
            throw new ArgumentException("The command is empty: give at least the program to run.", nameof(command));
        if (ResolveNative(options) is { } location)
            return await NativeRun.RunAsync(command, options, location, cancellationToken).ConfigureAwait(false);
        return await LabMachine.RunAsync(command, options, options.Architecture, forwardedArguments, carryInput, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// The first line of a program that needs KVM: returns null when this process can use KVM
    /// (natively, or because it already runs inside a lab machine), after writing the line that says
    /// where to <see cref="LabOptions.Log"/> (natively only: the lab wrote it for a relaunched process).
    /// Otherwise runs this same program, with <paramref name="args"/>, in a lab machine, and returns
    /// its exit code, for <c>Main</c> to return: <c>if (KvmLab.RelaunchIfNeeded(args) is int code) return code;</c>
    /// </summary>
    /// <remarks>
    /// <para>Under <c>dotnet test</c> (Microsoft.Testing.Platform), the test application's pipe to
    /// <c>dotnet test</c> (<c>--dotnet-test-pipe</c>) is carried into the machine over a virtio serial
    /// port, so results, filters and the summary work exactly as for a native run.</para>
    /// <para>This process's standard input (<see cref="LabOptions.StandardInput"/>) is carried to the
    /// relaunched program, which reads it from a character device, not a terminal: a program that
    /// wants a raw terminal sets this process's terminal up before the call.</para>
    /// <para>For a machine of another architecture (e.g. arm64 on an x86_64 host) the program must
    /// have a build for it in <c>lab-linux-arm64/</c> beside itself: the KvmSharp.Lab package's build
    /// targets publish one when the project sets <c>KvmLabArchitecture</c> to <c>arm64</c>.</para>
    /// <para>Inside a lab machine this also keeps one VM with one vCPU open for the rest of the
    /// process (three fds), which spares the machine's kernel from patching itself each time the
    /// program's first VM comes or its last one goes: under QEMU's multi-threaded emulation that
    /// patching can freeze the machine. A command run with <see cref="RunAsync"/> that creates and
    /// destroys many VMs should do the same.</para>
    /// <para>Ctrl+C or SIGTERM kill the machine; the call then returns 130 or 143.</para>
    /// </remarks>
    /// <param name="args">This program's arguments, as <c>Main</c> received them.</param>
    /// <param name="options">How and where; defaults when null.</param>
    /// <returns>Null to go on here; else the exit code of the relaunched program, or
    /// <see cref="LabFailureExitCode"/> after writing the reason to <see cref="LabOptions.Log"/> when the lab could not run it.</returns>
    public static int? RelaunchIfNeeded(string[] args, LabOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(args);
        if (IsInsideLab)
        {
            SocketRelay.StartFromEnvironment();
            KvmKeepAlive.Start();
            return null;
        }
        options ??= new LabOptions();
        var log = options.LogWriter;
        try
        {
            if (ResolveNative(options) is { } location)
            {
                log.WriteLine(location.ToString());
                log.Flush();
                return null;
            }
            var command = CurrentCommand(options.Architecture).Concat(args).ToList();
            var forwards = new List<int>();
            int pipe = Array.IndexOf(args, DotnetTestPipeOption);
            if (pipe >= 0 && pipe + 1 < args.Length)
                forwards.Add(command.Count - args.Length + pipe + 1);

            using var signals = new SignalCancellation();
            try
            {
                // Under dotnet test the test application reads no input: its standard input stays here.
                return RunCoreAsync(command, options, forwards, carryInput: pipe < 0, signals.Token).GetAwaiter().GetResult().ExitCode;
            }
            catch (OperationCanceledException) when (signals.ExitCode != 0)
            {
                log.WriteLine("lab: interrupted; the lab machine was stopped");
                return signals.ExitCode;
            }
        }
        catch (LabException e)
        {
            log.WriteLine($"lab: error: {e.Message}");
            log.Flush();
            return LabFailureExitCode;
        }
    }

    /// <summary>Where this process can use KVM natively for <paramref name="options"/>, or null for the lab.</summary>
    /// <exception cref="LabException">The mode is native and KVM is not usable here.</exception>
    private static LabLocation? ResolveNative(LabOptions options)
    {
        bool sameArchitecture = LabArchitectures.Host == options.Architecture;
        if (options.Mode == LabMode.Lab)
            return null;
        var status = sameArchitecture ? ProbeNative(options.DevicePath) : null;
        if (status is { IsUsable: true })
            return new LabLocation(false, options.Architecture, NativeKvm.KernelRelease());
        if (options.Mode == LabMode.Native)
            throw new LabException(sameArchitecture
                ? $"KVM is not usable natively here: {status!.Reason}, and the lab mode is native ({LabOptions.ModeVariable}=native)."
                : $"An {options.Architecture.Name()} KVM cannot run natively in this {LabArchitectures.Host?.Name() ?? RuntimeInformation.ProcessArchitecture.ToString()} process, and the lab mode is native.");
        return null;
    }

    /// <summary>The command line that starts this program again, for a machine of <paramref name="architecture"/>.</summary>
    private static IReadOnlyList<string> CurrentCommand(LabArchitecture architecture)
    {
        string processPath = Environment.ProcessPath ?? throw new LabException("This process has no executable path to relaunch.");
        // Started as `dotnet app.dll`, the first command-line argument is the application's assembly.
        string entry = Environment.GetCommandLineArgs()[0];
        bool viaMuxer = Path.GetFileNameWithoutExtension(processPath) == "dotnet";
        if (LabArchitectures.Host == architecture)
            return viaMuxer && !string.IsNullOrEmpty(entry) ? [processPath, entry] : [processPath];

        // Another architecture: the build of this program for it, published beside this one.
        string name = System.Reflection.Assembly.GetEntryAssembly()?.GetName().Name
            ?? throw new LabException("This process has no entry assembly to relaunch.");
        string rid = architecture == LabArchitecture.Arm64 ? "linux-arm64" : "linux-x64";
        string foreign = Path.Combine(AppContext.BaseDirectory, $"lab-{rid}", name);
        if (!File.Exists(foreign))
            throw new LabException(
                $"This program needs an {architecture.Name()} KVM, so it must run in an {architecture.Name()} lab machine, but it has no {rid} build at {foreign}. " +
                $"Set <KvmLabArchitecture>{architecture.Name()}</KvmLabArchitecture> in its project (KvmSharp.Lab's build targets then publish one there), or publish it there yourself (dotnet publish -r {rid} --self-contained).");
        return [foreign];
    }
}
