using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace KvmSharp.Benchmarks;

/// <summary>
/// An arm64 VM driven by <c>arm64_vm.c</c>, the raw C baseline of every arm64 benchmark: set up as
/// KvmSharp sets up the same guest (<see cref="Arm64Guest"/>), then run and handled with plain
/// ioctls, all exits of a batch inside one native call.
/// </summary>
internal sealed unsafe class Arm64NativeVm : IDisposable
{
    /// <summary>The library, loaded once per process (each VM is a handle).</summary>
    private static readonly Lazy<Library> s_library = new(() => new Library());

    private readonly Library _lib;
    private nint _vm;
    private readonly ulong _memorySize;

    /// <param name="code">The guest, copied to <see cref="Arm64Guest.CodeAddress"/>.</param>
    /// <param name="memorySize">RAM at guest-physical 0.</param>
    /// <param name="backend">Dirty logging of the slot (null: none); <see cref="DirtyLogBackend.GetDirtyLog"/> or <see cref="DirtyLogBackend.ManualProtect"/>.</param>
    public Arm64NativeVm(ReadOnlySpan<byte> code, ulong memorySize = Arm64Guest.RamSize, DirtyLogBackend? backend = null)
    {
        _lib = s_library.Value;
        _memorySize = memorySize;
        int b = backend switch
        {
            null => -1,
            DirtyLogBackend.GetDirtyLog => 0,
            DirtyLogBackend.ManualProtect => 1,
            _ => throw new ArgumentOutOfRangeException(nameof(backend), backend, "The arm64 raw C restore has GET_DIRTY_LOG and manual protect."),
        };
        int err;
        fixed (byte* c = code)
            _vm = _lib.Setup(c, code.Length, Arm64Guest.CodeAddress, memorySize, Arm64Guest.MmioAddress, b, &err);
        if (_vm == 0) throw new InvalidOperationException($"a64_setup failed: errno {err}");
    }

    /// <summary>
    /// Has KVM swap in the calling thread's signal mask minus <paramref name="signal"/> on every
    /// KVM_RUN (KVM_SET_SIGNAL_MASK), the kernel work KvmSharp's kick design adds to each run.
    /// </summary>
    public void SetSignalMask(int signal)
    {
        int r = _lib.SetSignalMask(_vm, signal);
        if (r < 0) throw new InvalidOperationException($"KVM_SET_SIGNAL_MASK failed: errno {-r}");
    }

    /// <summary><paramref name="exits"/> MMIO exit round trips (each checked) inside one native call.</summary>
    public void Run(int exits) => Check(_lib.Run(_vm, exits));

    /// <summary>The PC now (one KVM_GET_ONE_REG).</summary>
    public ulong Pc
    {
        get
        {
            ulong pc = _lib.Pc(_vm);
            if (pc > unchecked((ulong)-4096)) throw new InvalidOperationException($"KVM_GET_ONE_REG (PC) failed: errno {-(long)pc}");
            return pc;
        }
    }

    /// <summary>
    /// <paramref name="exits"/> exits of <see cref="Arm64Guest.StoreX0Code"/>, each handled with the
    /// fewest ioctls: GET_ONE_REG PC (must be <paramref name="expectedPc"/>), SET_ONE_REG X0, KVM_RUN.
    /// </summary>
    public void RunRegisters(int exits, ulong expectedPc) => Check(_lib.RunRegs(_vm, exits, expectedPc));

    /// <summary>The same handler done eagerly: X0–X30, SP, PC, PSTATE fetched before and all written back after, one ONE_REG each.</summary>
    public void RunEager(int exits, ulong expectedPc) => Check(_lib.RunEager(_vm, exits, expectedPc));

    /// <summary>Takes the snapshot <see cref="Restore"/> returns to (at an exit); returns the number of registers saved.</summary>
    public int Snapshot()
    {
        int r = _lib.Snapshot(_vm);
        if (r < 0) throw new InvalidOperationException($"a64_snapshot failed: errno {-r}");
        return _lib.RegisterCount(_vm);
    }

    /// <summary>Back to the snapshot (see <c>a64_restore</c>); returns the number of pages copied.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int Restore()
    {
        int r = _lib.Restore(_vm);
        if (r < 0) ThrowRestoreFailed(r);
        return r;
    }

    /// <summary>Guest RAM.</summary>
    public Span<byte> Memory => new((void*)_lib.Memory(_vm), checked((int)_memorySize));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Check(long r)
    {
        if (r != 0) ThrowRunFailed(r);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowRunFailed(long r) =>
        throw new InvalidOperationException((r >> 32) switch
        {
            < 0 => $"a KVM ioctl failed: errno {-r}",
            2 => $"The guest stored 0x{r & 0xffffffff:x} (low 32 bits), not the X0 written at the previous exit.",
            3 => $"The PC at the exit was 0x{r & 0xffffffff:x}, not the store's.",
            _ => $"Expected an MMIO write to 0x{Arm64Guest.MmioAddress:x}, got exit reason {(r >> 16) & 0xffff} (is_write {r & 1}).",
        });

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowRestoreFailed(int r) => throw new InvalidOperationException($"a64_restore failed: errno {-r}");

    public void Dispose()
    {
        if (_vm == 0) return;
        _lib.Teardown(_vm);
        _vm = 0;
    }

    private sealed class Library
    {
        public readonly delegate* unmanaged<byte*, int, ulong, ulong, ulong, int, int*, nint> Setup;
        public readonly delegate* unmanaged<nint, int, int> SetSignalMask;
        public readonly delegate* unmanaged<nint, int, long> Run;
        public readonly delegate* unmanaged<nint, ulong> Pc;
        public readonly delegate* unmanaged<nint, int, ulong, long> RunRegs;
        public readonly delegate* unmanaged<nint, int, ulong, long> RunEager;
        public readonly delegate* unmanaged<nint, int> Snapshot;
        public readonly delegate* unmanaged<nint, int> Restore;
        public readonly delegate* unmanaged<nint, int> RegisterCount;
        public readonly delegate* unmanaged<nint, byte*> Memory;
        public readonly delegate* unmanaged<nint, void> Teardown;

        public Library()
        {
            nint lib = NativeBuild.LoadOnce("arm64_vm.c");
            Setup = (delegate* unmanaged<byte*, int, ulong, ulong, ulong, int, int*, nint>)NativeBuild.Export(lib, "a64_setup");
            SetSignalMask = (delegate* unmanaged<nint, int, int>)NativeBuild.Export(lib, "a64_set_signal_mask");
            Run = (delegate* unmanaged<nint, int, long>)NativeBuild.Export(lib, "a64_run");
            Pc = (delegate* unmanaged<nint, ulong>)NativeBuild.Export(lib, "a64_pc");
            RunRegs = (delegate* unmanaged<nint, int, ulong, long>)NativeBuild.Export(lib, "a64_run_regs");
            RunEager = (delegate* unmanaged<nint, int, ulong, long>)NativeBuild.Export(lib, "a64_run_eager");
            Snapshot = (delegate* unmanaged<nint, int>)NativeBuild.Export(lib, "a64_snapshot");
            Restore = (delegate* unmanaged<nint, int>)NativeBuild.Export(lib, "a64_restore");
            RegisterCount = (delegate* unmanaged<nint, int>)NativeBuild.Export(lib, "a64_register_count");
            Memory = (delegate* unmanaged<nint, byte*>)NativeBuild.Export(lib, "a64_memory");
            Teardown = (delegate* unmanaged<nint, void>)NativeBuild.Export(lib, "a64_teardown");
        }
    }
}
