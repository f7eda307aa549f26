using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KvmSharp.Registers;

namespace KvmSharp.Benchmarks;

/// <summary>
/// A VM driven by <c>snapshot_vm.c</c> (the raw C baseline of <see cref="RestoreBenchmarks"/> and of
/// <c>--kick-latency</c>), rebuilt from a guest that KvmSharp set up: its memory image and its
/// register sets (KVM's own structs, from <see cref="IRegisterSync.SaveState"/>). So both sides run
/// the very same guest from the very same state; the C side then does everything with plain ioctls.
/// </summary>
internal sealed unsafe class NativeSnapshotVm : IDisposable
{
    // The register sets in snapshot_vm.c's order (enum SET_REGS … SET_RESET_MSRS).
    private static readonly X86RegisterSets[] SetOrder =
    [
        X86RegisterSets.Gprs, X86RegisterSets.Sregs, X86RegisterSets.Events, X86RegisterSets.Xcrs, X86RegisterSets.MpState,
        X86RegisterSets.Xsave, X86RegisterSets.DebugRegs, X86RegisterSets.RuntimeMsrs, X86RegisterSets.ResetMsrs,
    ];

    /// <summary>The library, built once per process; its file is deleted as soon as it is loaded.</summary>
    private static readonly Lazy<Library> s_library = new(() => new Library());

    private readonly Library _lib;
    private nint _vm;
    private readonly ulong _memorySize;

    /// <param name="image">Guest RAM (one slot at guest-physical 0), copied.</param>
    /// <param name="registers">The vCPU's registers, as KvmSharp saved them.</param>
    /// <param name="backend">How dirty pages are fetched (not <see cref="DirtyLogBackend.Auto"/>).</param>
    /// <param name="port">Every run must end with a PIO exit on this port (<see cref="Run"/> checks it).</param>
    public NativeSnapshotVm(ReadOnlySpan<byte> image, RegisterState registers, DirtyLogBackend backend, ushort port)
    {
        _lib = s_library.Value;
        _memorySize = (ulong)image.Length;
        int code = backend switch
        {
            DirtyLogBackend.GetDirtyLog => 0,
            DirtyLogBackend.ManualProtect => 1,
            DirtyLogBackend.DirtyRing => 2,
            _ => throw new ArgumentOutOfRangeException(nameof(backend), backend, "Name the back end."),
        };
        var blobs = SetOrder.Select(s => registers.Get((ulong)s).ToArray()).ToArray();
        var handles = blobs.Select(b => GCHandle.Alloc(b, GCHandleType.Pinned)).ToArray();
        try
        {
            nint* sets = stackalloc nint[SetOrder.Length];
            int* lens = stackalloc int[SetOrder.Length];
            for (int i = 0; i < SetOrder.Length; i++)
            {
                sets[i] = handles[i].AddrOfPinnedObject();
                lens[i] = blobs[i].Length;
            }
            int err;
            fixed (byte* img = image)
                _vm = _lib.Setup(img, _memorySize, code, 4096 /* KvmSharp's default ring */, sets, lens, port, &err);
            if (_vm == 0) throw new InvalidOperationException($"sv_setup failed: errno {err}");
        }
        finally
        {
            foreach (var h in handles) h.Free();
        }
    }

    /// <summary>One KVM_RUN, which must end with the PIO exit on the port given at construction.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Run()
    {
        long r = _lib.Run(_vm);
        if (r != 0) ThrowRunFailed(r);
    }

    /// <summary>Back to the snapshot (see <c>snapshot_vm.c</c>); returns the number of pages copied.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int Restore()
    {
        int r = _lib.Restore(_vm);
        if (r < 0) ThrowRestoreFailed(r);
        return r;
    }

    /// <summary>Guest RAM.</summary>
    public Span<byte> Memory => new((void*)_lib.Memory(_vm), checked((int)_memorySize));

    /// <summary>
    /// <paramref name="latencyNs"/>.Length kicks of a vCPU spinning in guest code, the raw C way (a
    /// pthread in KVM_RUN, tgkill, KVM_SET_SIGNAL_MASK, sigtimedwait): see <c>sv_kick_latency</c>.
    /// </summary>
    public void KickLatency(int signal, int maxWaitMicroseconds, uint seed, Span<long> latencyNs)
    {
        fixed (long* l = latencyNs)
        {
            long r = _lib.KickLatency(_vm, latencyNs.Length, signal, maxWaitMicroseconds, seed, l);
            if (r != 0)
                throw new InvalidOperationException(r < 0 ? $"sv_kick_latency failed: errno {-r}" : $"sv_kick_latency: the guest exited (reason {r & 0xffffffff}) instead of spinning.");
        }
    }

    public void Dispose()
    {
        if (_vm == 0) return;
        _lib.Teardown(_vm);
        _vm = 0;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowRunFailed(long r) =>
        throw new InvalidOperationException(r < 0
            ? $"KVM_RUN failed: errno {-r}"
            : $"Expected a PIO exit, got exit reason {(r >> 16) & 0xffff}, port 0x{r & 0xffff:x}.");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowRestoreFailed(int r) => throw new InvalidOperationException($"sv_restore failed: errno {-r}");

    private sealed class Library
    {
        public readonly delegate* unmanaged<byte*, ulong, int, int, nint*, int*, int, int*, nint> Setup;
        public readonly delegate* unmanaged<nint, long> Run;
        public readonly delegate* unmanaged<nint, int> Restore;
        public readonly delegate* unmanaged<nint, byte*> Memory;
        public readonly delegate* unmanaged<nint, int, int, int, uint, long*, long> KickLatency;
        public readonly delegate* unmanaged<nint, void> Teardown;

        public Library()
        {
            // PERF: one build per process (gcc takes ~0.3 s; the table makes dozens of VMs).
            nint lib = NativeBuild.LoadOnce("snapshot_vm.c");
            Setup = (delegate* unmanaged<byte*, ulong, int, int, nint*, int*, int, int*, nint>)NativeBuild.Export(lib, "sv_setup");
            Run = (delegate* unmanaged<nint, long>)NativeBuild.Export(lib, "sv_run");
            Restore = (delegate* unmanaged<nint, int>)NativeBuild.Export(lib, "sv_restore");
            Memory = (delegate* unmanaged<nint, byte*>)NativeBuild.Export(lib, "sv_memory");
            KickLatency = (delegate* unmanaged<nint, int, int, int, uint, long*, long>)NativeBuild.Export(lib, "sv_kick_latency");
            Teardown = (delegate* unmanaged<nint, void>)NativeBuild.Export(lib, "sv_teardown");
        }
    }
}
