using System.Runtime.InteropServices;

namespace KvmSharp.Benchmarks;

/// <summary>
/// The raw C baselines: compiles the embedded <c>pio_loop.c</c> with <c>gcc -O2</c> into a shared
/// library in a temporary directory, loads it, and calls its exports through function pointers.
/// Each instance has its own copy of the library (the C side keeps one VM in static variables).
/// </summary>
internal sealed unsafe class NativePioLoop : IDisposable
{
    private readonly string? _dir;
    private readonly nint _lib;
    private readonly delegate* unmanaged<int, long> _run;
    private readonly delegate* unmanaged<int, ulong, long> _runSyncRegs;
    private readonly delegate* unmanaged<void> _useSyncRegs;
    private readonly delegate* unmanaged<ulong> _syncRip;
    private readonly delegate* unmanaged<void> _teardown;
    private readonly delegate* unmanaged<int, int> _setSignalMask;
    private bool _disposed;

    /// <summary>Sets up <see cref="GuestCode.Code"/> (the <see cref="PioExitBenchmarks"/> guest).</summary>
    public NativePioLoop() : this(GuestCode.Code) { }

    /// <summary>Sets up a VM running <paramref name="code"/> at <see cref="GuestCode.Address"/>.</summary>
    public NativePioLoop(ReadOnlySpan<byte> code)
    {
        try
        {
            (_dir, _lib) = NativeBuild.Load("pio_loop.c");
            var setup = (delegate* unmanaged<byte*, int, ulong, ulong, int, int>)NativeLibrary.GetExport(_lib, "pio_setup");
            _run = (delegate* unmanaged<int, long>)NativeLibrary.GetExport(_lib, "pio_run");
            _teardown = (delegate* unmanaged<void>)NativeLibrary.GetExport(_lib, "pio_teardown");
            _runSyncRegs = (delegate* unmanaged<int, ulong, long>)NativeLibrary.GetExport(_lib, "pio_run_sync_regs");
            _useSyncRegs = (delegate* unmanaged<void>)NativeLibrary.GetExport(_lib, "pio_use_sync_regs");
            _syncRip = (delegate* unmanaged<ulong>)NativeLibrary.GetExport(_lib, "pio_sync_rip");
            _setSignalMask = (delegate* unmanaged<int, int>)NativeLibrary.GetExport(_lib, "pio_set_signal_mask");

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

    /// <summary>
    /// Has KVM swap in the calling thread's signal mask minus <paramref name="signal"/> on every
    /// KVM_RUN (KVM_SET_SIGNAL_MASK), the kernel work KvmSharp's kick design adds to each run.
    /// </summary>
    public void SetSignalMask(int signal)
    {
        int r = _setSignalMask(signal);
        if (r < 0) throw new InvalidOperationException($"KVM_SET_SIGNAL_MASK failed: errno {-r}");
    }

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

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_teardown != null) _teardown();
        if (_dir is not null) NativeBuild.Unload(_dir, _lib);
    }
}
