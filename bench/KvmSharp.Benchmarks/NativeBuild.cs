using System.ComponentModel;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace KvmSharp.Benchmarks;

/// <summary>
/// Builds the raw C baselines: writes an embedded C source into a temporary directory, compiles it
/// with <c>gcc -O2 -Wall -Werror -shared -fPIC</c> and loads the result with <see cref="NativeLibrary.Load(string)"/>.
/// The arm64 baselines, for the arm64 lab, are cross-compiled on the host instead, before the
/// benchmark relaunches itself there (<see cref="CrossCompileForLab"/>, <see cref="PrebuiltDirectory"/>).
/// </summary>
internal static class NativeBuild
{
    /// <summary>The C sources of the arm64 benchmarks, which the arm64 lab gets prebuilt.</summary>
    public static readonly string[] Arm64Sources = ["arm64_vm.c"];

    /// <summary>The cross compiler for arm64 (Debian's gcc-aarch64-linux-gnu).</summary>
    private const string Arm64CrossCompiler = "aarch64-linux-gnu-gcc";

    /// <summary>
    /// Where the host put the libraries it cross-compiled (<c>--native-dir</c>, set by the relaunch);
    /// null: compile with gcc here.
    /// </summary>
    public static string? PrebuiltDirectory { get; set; }

    /// <summary>
    /// Loads the library built from <paramref name="resource"/> for the rest of the process: the
    /// prebuilt one if there is a <see cref="PrebuiltDirectory"/>, else compiled here (its file is
    /// deleted as soon as it is loaded: the mapping outlives it). Never unloaded.
    /// </summary>
    public static nint LoadOnce(string resource)
    {
        if (PrebuiltDirectory is { } prebuilt)
        {
            string path = Path.Combine(prebuilt, LibraryName(resource));
            if (!File.Exists(path))
                throw new InvalidOperationException($"The prebuilt baseline {path} is missing (--native-dir names the host's cross-compiled libraries).");
            return NativeLibrary.Load(path);
        }
        var (dir, lib) = Load(resource);
        DeleteDirectory(dir);
        return lib;
    }

    /// <summary>
    /// On the host, before relaunching in the arm64 lab: cross-compiles <see cref="Arm64Sources"/>
    /// with aarch64-linux-gnu-gcc into a new temporary directory (under the host's /tmp, which the lab
    /// machine sees) and returns it, for <c>--native-dir</c>. The caller deletes it.
    /// </summary>
    /// <exception cref="InvalidOperationException">The cross compiler is missing or failed (says how to install it).</exception>
    public static string CrossCompileForLab()
    {
        string dir = System.IO.Directory.CreateTempSubdirectory("kvmsharp-bench-arm64-").FullName;
        try
        {
            foreach (string resource in Arm64Sources)
                Compile(Arm64CrossCompiler, Extract(resource, dir), Path.Combine(dir, LibraryName(resource)));
            return dir;
        }
        catch
        {
            DeleteDirectory(dir);
            throw;
        }
    }

    private static string LibraryName(string resource) => "lib" + Path.GetFileNameWithoutExtension(resource) + ".so";

    /// <summary>The headers the C sources include, put beside each (embedded like them).</summary>
    private static readonly string[] Headers = ["raw_kvm.h"];

    /// <summary>Writes the embedded source <paramref name="resource"/> and <see cref="Headers"/> into <paramref name="dir"/>; returns the source's path.</summary>
    private static string Extract(string resource, string dir)
    {
        foreach (string header in Headers) WriteResource(header, dir);
        return WriteResource(resource, dir);
    }

    private static string WriteResource(string resource, string dir)
    {
        string source = Path.Combine(dir, resource);
        using var stream = typeof(NativeBuild).Assembly.GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"Embedded resource {resource} is missing.");
        using var file = File.Create(source);
        stream.CopyTo(file);
        return source;
    }

    /// <summary>
    /// Compiles the embedded resource <paramref name="resource"/> (a C file) into a shared library in
    /// a new temporary directory and loads it. The caller frees the handle and deletes the directory
    /// (see <see cref="Unload"/>).
    /// </summary>
    public static (string Directory, nint Handle) Load(string resource)
    {
        string dir = System.IO.Directory.CreateTempSubdirectory("kvmsharp-bench-").FullName;
        try
        {
            string library = Path.Combine(dir, LibraryName(resource));
            Compile("gcc", Extract(resource, dir), library);
            return (dir, NativeLibrary.Load(library));
        }
        catch
        {
            DeleteDirectory(dir);
            throw;
        }
    }

    /// <summary>Frees a library loaded by <see cref="Load"/> (if loaded) and deletes its directory.</summary>
    public static void Unload(string directory, nint handle)
    {
        if (handle != 0) NativeLibrary.Free(handle);
        DeleteDirectory(directory);
    }

    public static void DeleteDirectory(string directory)
    {
        try { System.IO.Directory.Delete(directory, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>The address of <paramref name="name"/> in <paramref name="library"/>.</summary>
    public static nint Export(nint library, string name) => NativeLibrary.GetExport(library, name);

    private static void Compile(string compiler, string source, string library)
    {
        var psi = new ProcessStartInfo(compiler)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", library, source })
            psi.ArgumentList.Add(a);

        Process process;
        try
        {
            process = Process.Start(psi) ?? throw new InvalidOperationException($"Could not start {compiler}.");
        }
        catch (Win32Exception e)
        {
            throw new InvalidOperationException(compiler == Arm64CrossCompiler
                ? $"The arm64 benchmarks run in the arm64 lab, and their raw C baselines are cross-compiled here first: they need {compiler} on PATH " +
                  "(with the arm64 kernel headers: apt-get install gcc-aarch64-linux-gnu linux-libc-dev-arm64-cross)."
                : "The raw C baselines need gcc on PATH (and the kernel headers for <linux/kvm.h>: " +
                  "apt-get install gcc linux-libc-dev).", e);
        }
        using (process)
        {
            var stderr = process.StandardError.ReadToEndAsync();
            string stdout = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0)
                throw new InvalidOperationException($"{compiler} failed (exit {process.ExitCode}):\n{stdout}{stderr.Result}");
        }
    }
}
