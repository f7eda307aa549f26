using System.Diagnostics;

namespace KvmSharp.Tests.Interop;

internal sealed record CompileResult(int ExitCode, string StdOut, string StdErr, string SourcePath);

/// <summary>
/// A C compiler plus one architecture's uapi headers (Debian's linux-libc-dev packages). The host gcc
/// reads the cross headers with <c>-nostdinc</c>: kvm.h needs no libc, and x86_64, arm64 and s390x are
/// all LP64 with natural alignment, so sizes and offsets match the target's. Bit-field order does not
/// (s390x is big-endian); that needs the real cross compiler, <see cref="S390xCross"/>.
/// </summary>
internal sealed record UapiToolchain(string Compiler, string CompilerPackage, string[] IncludeDirs, string HeaderPackage, string[] Defines)
{
    public static UapiToolchain ForHeaders(string arch) => arch switch
    {
        "x86_64" => new("gcc", "gcc", ["/usr/include/x86_64-linux-gnu", "/usr/include"], "linux-libc-dev", []),
        // The arch macros select the 64-bit definitions (e.g. s390's __BITS_PER_LONG) in the cross headers.
        "arm64" => new("gcc", "gcc", ["/usr/aarch64-linux-gnu/include"], "linux-libc-dev-arm64-cross", ["__aarch64__"]),
        "s390x" => new("gcc", "gcc", ["/usr/s390x-linux-gnu/include"], "linux-libc-dev-s390x-cross", ["__s390__", "__s390x__"]),
        _ => throw new ArgumentOutOfRangeException(nameof(arch), arch, "Unknown architecture."),
    };

    /// <summary>The s390x cross compiler, for what only the target ABI can tell (bit-field allocation).</summary>
    public static UapiToolchain S390xCross { get; } =
        new("s390x-linux-gnu-gcc", "gcc-s390x-linux-gnu", ["/usr/s390x-linux-gnu/include"], "linux-libc-dev-s390x-cross", []);

    /// <summary>Why this toolchain cannot run here (naming the Debian package to install), or <c>null</c>.</summary>
    public string? Missing()
    {
        if (FindOnPath(Compiler) is null)
            return $"'{Compiler}' was not found on PATH: install the Debian package {CompilerPackage} (apt-get install -y {CompilerPackage}).";
        foreach (var header in (string[])["linux/kvm.h", "asm/kvm.h"])
        {
            if (!IncludeDirs.Any(dir => File.Exists(Path.Combine(dir, header))))
                return $"<{header}> was not found in {string.Join(", ", IncludeDirs)}: install the Debian package {HeaderPackage} (apt-get install -y {HeaderPackage}).";
        }
        return null;
    }

    /// <summary>Compiles <paramref name="source"/> (written to a temp file, kept if the compiler fails) with the given extra arguments.</summary>
    public CompileResult Compile(string source, string name, params string[] args)
    {
        var dir = Directory.CreateTempSubdirectory("kvmsharp-layout-");
        var path = Path.Combine(dir.FullName, name + ".c");
        File.WriteAllText(path, source);

        var start = new ProcessStartInfo(FindOnPath(Compiler) ?? Compiler)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("-nostdinc");
        foreach (var include in IncludeDirs)
            start.ArgumentList.Add("-I" + include);
        foreach (var define in Defines)
            start.ArgumentList.Add("-D" + define);
        foreach (var arg in args)
            start.ArgumentList.Add(arg);
        start.ArgumentList.Add("-x");
        start.ArgumentList.Add("c");
        start.ArgumentList.Add(path);

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            process.Kill();
            throw new TimeoutException($"{Compiler} did not finish compiling {path} within 2 minutes.");
        }
        var result = new CompileResult(process.ExitCode, stdout.GetAwaiter().GetResult(), stderr.GetAwaiter().GetResult(), path);
        if (result.ExitCode == 0)
            dir.Delete(recursive: true);
        return result;
    }

    private static string? FindOnPath(string file) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, file))
            .FirstOrDefault(File.Exists);
}
