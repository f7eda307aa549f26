using System.ComponentModel;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace KvmSharp.Benchmarks;

/// <summary>
/// The raw C baseline: compiles the embedded <c>pio_loop.c</c> with <c>gcc -O2</c> into a shared
/// library in a temporary directory, loads it, and calls its exports through function pointers.
/// </summary>
internal sealed unsafe class NativePioLoop : IDisposable
{
    private readonly string _dir;
    private readonly nint _lib;
    private readonly delegate* unmanaged<int, long> _run;
    private readonly delegate* unmanaged<void> _teardown;
    private bool _disposed;

    public NativePioLoop()
    {
        _dir = Directory.CreateTempSubdirectory("kvmsharp-bench-").FullName;
        try
        {
            string source = Path.Combine(_dir, "pio_loop.c");
            string library = Path.Combine(_dir, "libpio_loop.so");
            using (var resource = typeof(NativePioLoop).Assembly.GetManifestResourceStream("pio_loop.c")
                ?? throw new InvalidOperationException("Embedded resource pio_loop.c is missing."))
            using (var file = File.Create(source))
            {
                resource.CopyTo(file);
            }
            Compile(source, library);

            _lib = NativeLibrary.Load(library);
            var setup = (delegate* unmanaged<byte*, int, ulong, ulong, int, int>)NativeLibrary.GetExport(_lib, "pio_setup");
            _run = (delegate* unmanaged<int, long>)NativeLibrary.GetExport(_lib, "pio_run");
            _teardown = (delegate* unmanaged<void>)NativeLibrary.GetExport(_lib, "pio_teardown");

            fixed (byte* code = GuestCode.Code)
            {
                int r = setup(code, GuestCode.Code.Length, GuestCode.Address, GuestCode.MemorySize, GuestCode.Port);
                if (r < 0) throw new InvalidOperationException($"pio_setup failed: errno {-r}");
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Runs <paramref name="exits"/> PIO exits inside one native call.</summary>
    public void Run(int exits)
    {
        long r = _run(exits);
        if (r != 0) ThrowRunFailed(r);
    }

    private static void ThrowRunFailed(long r) =>
        throw new InvalidOperationException(r < 0
            ? $"KVM_RUN failed: errno {-r}"
            : $"Expected a PIO exit on port 0x{GuestCode.Port:x}, got exit reason {(r >> 16) & 0xffff}, port 0x{r & 0xffff:x}.");

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
                "The raw C baseline needs gcc on PATH (and the kernel headers for <linux/kvm.h>: " +
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

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_teardown != null) _teardown();
        if (_lib != 0) NativeLibrary.Free(_lib);
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
