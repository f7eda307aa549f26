namespace KvmSharp.Lab;

/// <summary>
/// How <see cref="KvmLab"/> runs a command. Every property has a default; the environment
/// variables named below set the defaults, so that a test run can be steered without code.
/// </summary>
/// <remarks>Immutable once built (init-only properties); one instance may serve many runs.</remarks>
public sealed class LabOptions
{
    /// <summary>Name of the variable that sets <see cref="Mode"/>: <c>auto</c>, <c>native</c> or <c>lab</c>.</summary>
    public const string ModeVariable = "KVMSHARP_LAB";

    /// <summary>Name of the variable that sets <see cref="Architecture"/>: <c>x86_64</c> or <c>arm64</c>.</summary>
    public const string ArchitectureVariable = "KVMSHARP_LAB_ARCH";

    /// <summary>Name of the variable that sets <see cref="CacheDirectory"/>.</summary>
    public const string CacheVariable = "KVMSHARP_LAB_CACHE";

    /// <summary>Names of the variables that set <see cref="Kernel"/> (image, then modules folder).</summary>
    public const string KernelVariable = "KVMSHARP_LAB_KERNEL", ModulesVariable = "KVMSHARP_LAB_MODULES";

    /// <summary>
    /// The machine's architecture. Default: <c>KVMSHARP_LAB_ARCH</c>, else this process's own.
    /// Another architecture than this process's always runs in the lab.
    /// </summary>
    public LabArchitecture Architecture { get; init; } = DefaultArchitecture();

    /// <summary>Native, lab, or whichever works (default: <c>KVMSHARP_LAB</c>, else <see cref="LabMode.Auto"/>).</summary>
    public LabMode Mode { get; init; } = DefaultMode();

    /// <summary>
    /// A kernel to boot instead of Debian's. Default: <c>KVMSHARP_LAB_KERNEL</c> (and
    /// <c>KVMSHARP_LAB_MODULES</c>) when set, else null: Debian's stock kernel, provisioned and cached.
    /// </summary>
    public LabKernel? Kernel { get; init; } = DefaultKernel();

    /// <summary>
    /// Where downloaded kernels and busybox are kept: <c>KVMSHARP_LAB_CACHE</c>, else
    /// <c>$XDG_CACHE_HOME/kvmsharp-lab</c>, else <c>~/.cache/kvmsharp-lab</c>.
    /// </summary>
    public string CacheDirectory { get; init; } = DefaultCacheDirectory();

    /// <summary>How long the machine may take to boot before <see cref="LabTimeoutException"/> (default 5 minutes).</summary>
    public TimeSpan BootTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>How long the command may run before it is killed with <see cref="LabTimeoutException"/>; null (the default) for no limit.</summary>
    public TimeSpan? CommandTimeout { get; init; }

    /// <summary>The lab machine's memory in MiB (default 4096).</summary>
    public int MemoryMiB { get; init; } = 4096;

    /// <summary>The lab machine's CPUs (default: this host's, at most 4).</summary>
    public int Cpus { get; init; } = Math.Clamp(System.Environment.ProcessorCount, 1, 4);

    /// <summary>The command's working folder (default: this process's). The lab shares the host's files, so the same path works inside.</summary>
    public string? WorkingDirectory { get; init; }

    /// <summary>
    /// Variables to set (or, with a null value, to remove) in the command's environment, which
    /// otherwise is this process's own.
    /// </summary>
    public IReadOnlyDictionary<string, string?>? Environment { get; init; }

    /// <summary>
    /// Where progress lines ("lab: downloading …") and the one line saying where the command runs go
    /// (default <see cref="Console.Error"/>; <see cref="TextWriter.Null"/> silences them).
    /// </summary>
    public TextWriter? Log { get; init; }

    /// <summary>
    /// What the command reads as its standard input. Null (the default): this process's standard
    /// input — inherited natively; in a lab machine carried over a virtio serial port (unless it is
    /// <c>/dev/null</c>), where the command reads it from a character device, not a terminal.
    /// <see cref="Stream.Null"/>: no input (the command reads end of file at once). Any other stream
    /// is copied to the command as it can be read; its end is the end of the command's input. The
    /// copy runs on a thread of its own that may stay blocked in a read (of a terminal, say) after the
    /// command has ended.
    /// </summary>
    public Stream? StandardInput { get; init; }

    /// <summary>Where the command's standard output goes (default: this process's standard output).</summary>
    public Stream? StandardOutput { get; init; }

    /// <summary>Where the command's standard error goes (default: this process's standard error).</summary>
    public Stream? StandardError { get; init; }

    /// <summary>The KVM device probed for a native run (default <c>/dev/kvm</c>).</summary>
    public string DevicePath { get; init; } = "/dev/kvm";

    /// <summary>Test seam: the folders searched for programs (default <c>$PATH</c>).</summary>
    internal string? SearchPath { get; init; }

    /// <summary>Test seam: whether provisioning may install packages (default: running as root).</summary>
    internal bool? MayInstall { get; init; }

    internal TextWriter LogWriter => Log ?? Console.Error;

    private static LabArchitecture DefaultArchitecture() =>
        System.Environment.GetEnvironmentVariable(ArchitectureVariable) is { Length: > 0 } name
            ? LabArchitectures.Parse(name)
            : LabArchitectures.Host ?? LabArchitecture.X86_64;

    private static LabMode DefaultMode() => System.Environment.GetEnvironmentVariable(ModeVariable)?.ToLowerInvariant() switch
    {
        null or "" or "auto" => LabMode.Auto,
        "native" or "0" or "off" => LabMode.Native,
        "lab" or "1" or "on" or "force" => LabMode.Lab,
        var other => throw new ArgumentException($"{ModeVariable}={other} is not a lab mode: use auto, native or lab."),
    };

    private static LabKernel? DefaultKernel() =>
        System.Environment.GetEnvironmentVariable(KernelVariable) is { Length: > 0 } image
            ? new LabKernel(image, System.Environment.GetEnvironmentVariable(ModulesVariable) is { Length: > 0 } m ? m : null)
            : null;

    private static string DefaultCacheDirectory()
    {
        if (System.Environment.GetEnvironmentVariable(CacheVariable) is { Length: > 0 } explicitDir)
            return explicitDir;
        string? xdg = System.Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string root = !string.IsNullOrEmpty(xdg) ? xdg
            : Path.Combine(System.Environment.GetFolderPath(System.Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "kvmsharp-lab");
    }
}
