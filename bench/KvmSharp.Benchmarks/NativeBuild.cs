using System.ComponentModel;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace KvmSharp.Benchmarks;

/// <summary>
/// Builds the raw C baselines: writes an embedded C source into a temporary directory, compiles it
/// with <c>gcc -O2 -Wall -Werror -shared -fPIC</c> and loads the result with <see cref="NativeLibrary.Load(string)"/>.
/// </summary>
internal static class NativeBuild
{
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
            string source = Path.Combine(dir, resource);
            string library = Path.Combine(dir, "lib" + Path.GetFileNameWithoutExtension(resource) + ".so");
            using (var stream = typeof(NativeBuild).Assembly.GetManifestResourceStream(resource)
                ?? throw new InvalidOperationException($"Embedded resource {resource} is missing."))
            using (var file = File.Create(source))
            {
                stream.CopyTo(file);
            }
            Compile(source, library);
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

    private static void Compile(string source, string library)
    {
        var psi = new ProcessStartInfo("gcc")
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
            process = Process.Start(psi) ?? throw new InvalidOperationException("Could not start gcc.");
        }
        catch (Win32Exception e)
        {
            throw new InvalidOperationException(
                "The raw C baselines need gcc on PATH (and the kernel headers for <linux/kvm.h>: " +
                "apt-get install gcc linux-libc-dev).", e);
        }
        using (process)
        {
            var stderr = process.StandardError.ReadToEndAsync();
            string stdout = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0)
                throw new InvalidOperationException($"gcc failed (exit {process.ExitCode}):\n{stdout}{stderr.Result}");
        }
    }
}
