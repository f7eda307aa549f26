using System.Collections;
using System.Text;
using KvmSharp.Lab.Boot;
using KvmSharp.Lab.Provisioning;

namespace KvmSharp.Lab.Running;

/// <summary>
/// The shell script the lab machine's init runs in its chroot of the host's tree: exports the
/// command's environment, enters its working folder and <c>exec</c>s it, so that the script's exit
/// code is the command's.
/// </summary>
internal static class RunScript
{
    /// <summary>Variables never carried into the machine: the shell's own bookkeeping.</summary>
    private static readonly HashSet<string> Dropped = new(StringComparer.Ordinal) { "_", "SHLVL", "PWD", "OLDPWD" };

    public static string Build(IReadOnlyList<string> command, LabOptions options, LabArchitecture arch, string runDirectory,
        LabAssets assets, IReadOnlyList<SocketForward> forwards, bool input = false)
    {
        var environment = Environment(options);
        environment[KvmLab.InsideVariable] = arch.Name();
        environment["TMPDIR"] = Path.Combine(runDirectory, "tmp");
        if (assets.AppletDirectory is { } applets)
        {
            // A foreign machine cannot run the host's /bin/sh or coreutils: busybox's applets come first.
            environment["PATH"] = applets + ":" + (environment.GetValueOrDefault("PATH") ?? "/usr/bin:/bin");
            // .NET needs ICU unless told otherwise, and the host has none for this architecture.
            environment.TryAdd("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1");
        }
        if (forwards.Count > 0)
            environment[KvmLab.ForwardsVariable] = string.Join(";", forwards.Select(f => $"{f.GuestPath}={f.PortName}"));

        var script = new StringBuilder("# Written by KvmSharp.Lab for one command; run by the lab machine's init.\n");
        foreach (var (name, value) in environment.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            if (IsName(name))
                script.Append("export ").Append(name).Append('=').Append(Quote(value)).Append('\n');
        string directory = options.WorkingDirectory ?? System.Environment.CurrentDirectory;
        script.Append("cd ").Append(Quote(directory)).Append(" || { echo ").Append(Quote($"kvmsharp-lab: cannot enter {directory} in the lab machine"))
              .Append(" >&2; exit 125; }\n");
        if (input)
        {
            // Standard input: the virtio port the host feeds (InputRelay), found by its name; else /dev/null.
            script.Append("for port in /sys/class/virtio-ports/*; do [ \"$(cat \"$port/name\" 2>/dev/null)\" = ")
                  .Append(InputRelay.PortName).Append(" ] && exec < \"/dev/${port##*/}\"; done\n");
        }
        script.Append("exec");
        foreach (string arg in command)
            script.Append(' ').Append(Quote(arg));
        script.Append('\n');
        return script.ToString();
    }

    /// <summary>This process's environment with the caller's changes applied.</summary>
    public static Dictionary<string, string> Environment(LabOptions options)
    {
        var environment = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (DictionaryEntry entry in System.Environment.GetEnvironmentVariables())
            if (entry.Key is string name && entry.Value is string value && !Dropped.Contains(name))
                environment[name] = value;
        if (options.Environment != null)
            foreach (var (name, value) in options.Environment)
            {
                if (value is null)
                    environment.Remove(name);
                else
                    environment[name] = value;
            }
        return environment;
    }

    /// <summary>A POSIX shell word that stands for <paramref name="value"/> exactly.</summary>
    public static string Quote(string value) => "'" + value.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    private static bool IsName(string name) =>
        name.Length > 0 && (char.IsAsciiLetter(name[0]) || name[0] == '_') && name.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');
}
