using System.ComponentModel;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace KvmSharp.Benchmarks;

/// <summary>
/// The raw C baselines: compiles the embedded <c>pio_loop.c</c> with <c>gcc -O2</c> into a shared
/// library in a temporary directory, loads it, and calls its exports through function pointers.
/// Each instance has its own copy of the library (the C side keeps one VM in static variables).
/// </summary>
internal sealed unsafe class NativePioLoop : IDisposable
{
    private readonly string _dir;
    private readonly nint _lib;
    private readonly delegate* unmanaged<int, long> _run;
    private readonly delegate* unmanaged<int, ulong, long> _runSyncRegs;
    private readonly delegate* unmanaged<void> _useSyncRegs;
    private readonly delegate* unmanaged<ulong> _syncRip;
    private readonly delegate* unmanaged<void> _teardown;
    private bool _disposed;

    /// <summary>Sets up <see cref="GuestCode.Code"/> (the <see cref="PioExitBenchmarks"/> guest).</summary>
    public NativePioLoop() : this(GuestCode.Code) { }

    /// <summary>Sets up a VM running <paramref name="code"/> at <see cref="GuestCode.Address"/>.</summary>
    public NativePioLoop(ReadOnlySpan<byte> code)
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
            _runSyncRegs = (delegate* unmanaged<int, ulong, long>)NativeLibrary.GetExport(_lib, "pio_run_sync_regs");
            _useSyncRegs = (delegate* unmanaged<void>)NativeLibrary.GetExport(_lib, "pio_use_sync_regs");
            _syncRip = (delegate* unmanaged<ulong>)NativeLibrary.GetExport(_lib, "pio_sync_rip");

            fixed (byte* c = code)
            {
                int r = setup(c, code.Length, GuestCode.Address, GuestCode.MemorySize, GuestCode.Port);
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

    /// <summary>
    /// Has KVM store the GPRs into <c>kvm_run</c> at every exit from the next one on
    /// (<c>kvm_valid_regs = KVM_SYNC_X86_REGS</c>), for <see cref="RunSyncRegs"/>.
    /// </summary>
    public void UseSyncRegs() => _useSyncRegs();

    /// <summary>RIP as KVM stored it into <c>kvm_run</c> at the last exit (after <see cref="UseSyncRegs"/>).</summary>
    public ulong SyncRip => _syncRip();

    /// <summary>
    /// Runs <paramref name="exits"/> exits of <see cref="GuestCode.OutAxCode"/> inside one native
    /// call, each handled through sync regs: read RIP (must be <paramref name="expectedRip"/>),
    /// write RAX, KVM_RUN, check the AX the guest output.
    /// </summary>
    public void RunSyncRegs(int exits, ulong expectedRip)
    {
        long r = _runSyncRegs(exits, expectedRip);
        if (r != 0) ThrowRunFailed(r);
    }

    private static void ThrowRunFailed(long r) =>
        throw new InvalidOperationException((r >> 32) switch
        {
            < 0 => $"KVM_RUN failed: errno {-r}",
            2 => $"The guest output AX 0x{(r >> 16) & 0xffff:x}, not 0x{r & 0xffff:x} (the RAX written at the previous exit).",
            3 => $"RIP at the exit was 0x{r & 0xffffffff:x}, not the same as at the first exit.",
            _ => $"Expected a PIO exit on port 0x{GuestCode.Port:x} (16 bits wide for the OUT AX guest), got exit reason {(r >> 16) & 0xffff}, port 0x{r & 0xffff:x}.",
        });

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
