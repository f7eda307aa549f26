using System.Globalization;
using KvmSharp.Lab.Provisioning;
using KvmSharp.Lab.Running;

namespace KvmSharp.Lab;

/// <summary>The command line: <c>kvmsharp-lab [options] [--] COMMAND [ARG…]</c>.</summary>
internal static class Program
{
    private const string Usage = """
        Usage: kvmsharp-lab [options] [--] COMMAND [ARG...]

        Runs COMMAND on a real Linux KVM: natively where /dev/kvm works, otherwise in a stock Debian
        kernel booted under QEMU (provisioned from Debian's packages on first use and cached). The
        machine shares this host's files, so paths work the same inside. Prints one line saying where
        it runs (on standard error), streams the command's output, and exits with its exit code.

        Options:
          --arch x86_64|arm64     the machine's architecture (default: this host's, or $KVMSHARP_LAB_ARCH)
          --mode auto|native|lab  native if /dev/kvm works, always native, or always the lab (default: auto, or $KVMSHARP_LAB)
          --lab                   the same as --mode lab
          --kernel IMAGE          boot this kernel instead of Debian's
          --modules DIR           ... with the modules in DIR (its /lib/modules/RELEASE folder)
          --timeout SECONDS       kill the command after this long (exit 124)
          --boot-timeout SECONDS  give up booting after this long (default 300; exit 124)
          --memory MIB            the machine's memory (default 4096)
          --cpus N                the machine's CPUs (default: this host's, at most 4)
          --cache DIR             where kernels and busybox are cached (default: $XDG_CACHE_HOME/kvmsharp-lab)
          --quiet                 no progress lines and no where-line
          --provision             only provision the lab for the architecture, then exit
          --where                 print where COMMAND would run (native or lab), then exit
          -h, --help              this text

        Exit codes: the command's own; 124 timeout; 125 the lab failed (the reason is printed); 130 interrupted.
        """;

    public static int Main(string[] args)
    {
        LabArchitecture? arch = null;
        LabMode? mode = null;
        string? kernel = null, modules = null, cache = null;
        TimeSpan? timeout = null, bootTimeout = null;
        int? memory = null, cpus = null;
        bool quiet = false, provisionOnly = false, whereOnly = false;
        int i = 0;
        try
        {
            for (; i < args.Length; i++)
            {
                string a = args[i];
                if (a == "--")
                {
                    i++;
                    break;
                }
                if (!a.StartsWith('-'))
                    break;
                switch (a)
                {
                    case "-h" or "--help": Console.Out.Write(Usage); return 0;
                    case "--arch": arch = LabArchitectures.Parse(Value(args, ref i)); break;
                    case "--mode":
                        mode = Value(args, ref i).ToLowerInvariant() switch
                        {
                            "auto" => LabMode.Auto,
                            "native" => LabMode.Native,
                            "lab" => LabMode.Lab,
                            var m => throw new ArgumentException($"--mode {m}: use auto, native or lab."),
                        };
                        break;
                    case "--lab": mode = LabMode.Lab; break;
                    case "--kernel": kernel = Path.GetFullPath(Value(args, ref i)); break;
                    case "--modules": modules = Path.GetFullPath(Value(args, ref i)); break;
                    case "--timeout": timeout = Seconds(Value(args, ref i), a); break;
                    case "--boot-timeout": bootTimeout = Seconds(Value(args, ref i), a); break;
                    case "--memory": memory = Number(Value(args, ref i), a); break;
                    case "--cpus": cpus = Number(Value(args, ref i), a); break;
                    case "--cache": cache = Path.GetFullPath(Value(args, ref i)); break;
                    case "--quiet": quiet = true; break;
                    case "--provision": provisionOnly = true; break;
                    case "--where": whereOnly = true; break;
                    default: throw new ArgumentException($"Unknown option {a}.");
                }
            }
            if (modules != null && kernel == null)
                throw new ArgumentException("--modules goes with --kernel.");
            if (i >= args.Length && !provisionOnly)
                throw new ArgumentException("No command given.");
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"kvmsharp-lab: {e.Message}");
            Console.Error.WriteLine("Try kvmsharp-lab --help.");
            return 2;
        }

        var defaults = new LabOptions();
        var options = new LabOptions
        {
            Architecture = arch ?? defaults.Architecture,
            Mode = mode ?? defaults.Mode,
            Kernel = kernel != null ? new LabKernel(kernel, modules) : defaults.Kernel,
            CacheDirectory = cache ?? defaults.CacheDirectory,
            CommandTimeout = timeout,
            BootTimeout = bootTimeout ?? defaults.BootTimeout,
            MemoryMiB = memory ?? defaults.MemoryMiB,
            Cpus = cpus ?? defaults.Cpus,
            Log = quiet ? TextWriter.Null : Console.Error,
        };

        using var signals = new SignalCancellation();
        try
        {
            if (provisionOnly)
            {
                new Provisioner(options, options.Architecture).Ensure();
                Console.Error.WriteLine($"lab: {options.Architecture.Name()} is provisioned in {options.CacheDirectory}");
                return 0;
            }
            if (whereOnly)
            {
                var status = KvmLab.ProbeNative(options.DevicePath);
                bool native = options.Mode != LabMode.Lab && status.IsUsable && LabArchitectures.Host == options.Architecture;
                Console.Out.WriteLine(native
                    ? $"native: {status.Reason}"
                    : $"lab {options.Architecture.Name()}: {(options.Mode == LabMode.Lab ? "the lab mode is forced" : status.Reason)}");
                return 0;
            }
            var result = KvmLab.RunAsync(args[i..], options, signals.Token).GetAwaiter().GetResult();
            return result.ExitCode;
        }
        catch (OperationCanceledException) when (signals.ExitCode != 0)
        {
            Console.Error.WriteLine("kvmsharp-lab: interrupted; the lab machine was stopped");
            return signals.ExitCode;
        }
        catch (LabTimeoutException e)
        {
            Console.Error.WriteLine($"kvmsharp-lab: {e.Message}");
            return 124;
        }
        catch (LabException e)
        {
            Console.Error.WriteLine($"kvmsharp-lab: {e.Message}");
            return KvmLab.LabFailureExitCode;
        }
    }

    private static string Value(string[] args, ref int i) =>
        ++i < args.Length ? args[i] : throw new ArgumentException($"{args[i - 1]} needs a value.");

    private static int Number(string text, string option) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0
            ? n : throw new ArgumentException($"{option} {text}: give a positive whole number.");

    private static TimeSpan Seconds(string text, string option) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double s) && s > 0
            ? TimeSpan.FromSeconds(s) : throw new ArgumentException($"{option} {text}: give a positive number of seconds.");
}
