using System.Diagnostics;
using System.Text;

namespace KvmSharp.Lab.Provisioning;

/// <summary>Finding programs on a search path and running short helper commands (apt-get, dpkg-deb).</summary>
internal static class Programs
{
    /// <summary>The full path of <paramref name="name"/> on <paramref name="searchPath"/> (default <c>$PATH</c>), or null.</summary>
    public static string? Find(string name, string? searchPath = null)
    {
        if (name.Contains('/'))
            return File.Exists(name) ? name : null;
        searchPath ??= Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/bin:/usr/bin:/bin";
        foreach (string dir in searchPath.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(dir, name);
            if (File.Exists(candidate))
                return candidate;
        }
        return null;
    }

    /// <summary>Runs a helper to completion, capturing its interleaved output.</summary>
    /// <exception cref="LabException">The program could not be started.</exception>
    public static (int ExitCode, string Output) Run(string file, IEnumerable<string> arguments, string? workingDirectory = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (string a in arguments)
            psi.ArgumentList.Add(a);
        if (environment != null)
            foreach (var (k, v) in environment)
                psi.Environment[k] = v;
        var output = new StringBuilder();
        using var process = new Process { StartInfo = psi };
        process.OutputDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        try
        {
            process.Start();
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new LabException($"Could not start {file}: {e.Message}", e);
        }
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        process.WaitForExit();
        lock (output)
            return (process.ExitCode, output.ToString());
    }

    /// <summary>The last <paramref name="lines"/> non-empty lines of <paramref name="text"/>, indented, for error messages.</summary>
    public static string Tail(string text, int lines = 12)
    {
        var all = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return string.Join("\n", all.Skip(Math.Max(0, all.Length - lines)).Select(l => "  " + l));
    }
}
