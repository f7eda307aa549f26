using System.Diagnostics;
using KvmSharp.Registers;
using KvmSharp.Snapshots;

namespace KvmSharp.Benchmarks;

/// <summary>The ways <see cref="RestoreBenchmarks"/> puts a <see cref="DirtyPagesGuest"/> VM back into its snapshot.</summary>
public enum RestoreWay
{
    /// <summary><c>snapshot_vm.c</c>: KVM_GET_DIRTY_LOG, copy the dirty pages, the same register ioctls as KvmSharp.</summary>
    RawCGetDirtyLog,
    /// <summary><see cref="VirtualMachine.Restore"/> with <see cref="DirtyLogBackend.GetDirtyLog"/>.</summary>
    KvmSharpGetDirtyLog,
    /// <summary><c>snapshot_vm.c</c> with KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG (manual protect).</summary>
    RawCManualProtect,
    /// <summary><see cref="VirtualMachine.Restore"/> with <see cref="DirtyLogBackend.ManualProtect"/>.</summary>
    KvmSharpManualProtect,
    /// <summary><c>snapshot_vm.c</c> with the dirty ring + KVM_RESET_DIRTY_RINGS.</summary>
    RawCDirtyRing,
    /// <summary><see cref="VirtualMachine.Restore"/> with <see cref="DirtyLogBackend.DirtyRing"/>.</summary>
    KvmSharpDirtyRing,
    /// <summary>
    /// No dirty tracking: the whole saved RAM copied back over the slot, and the registers with
    /// <see cref="IRegisterSync.RestoreState"/> (what a VMM without dirty tracking does).
    /// </summary>
    FullCopy,
}

internal static class RestoreWays
{
    public static DirtyLogBackend? Backend(this RestoreWay way) => way switch
    {
        RestoreWay.RawCGetDirtyLog or RestoreWay.KvmSharpGetDirtyLog => DirtyLogBackend.GetDirtyLog,
        RestoreWay.RawCManualProtect or RestoreWay.KvmSharpManualProtect => DirtyLogBackend.ManualProtect,
        RestoreWay.RawCDirtyRing or RestoreWay.KvmSharpDirtyRing => DirtyLogBackend.DirtyRing,
        _ => null,
    };

    public static bool IsRawC(this RestoreWay way) =>
        way is RestoreWay.RawCGetDirtyLog or RestoreWay.RawCManualProtect or RestoreWay.RawCDirtyRing;

    public static RestoreWay RawC(DirtyLogBackend backend) => backend switch
    {
        DirtyLogBackend.GetDirtyLog => RestoreWay.RawCGetDirtyLog,
        DirtyLogBackend.ManualProtect => RestoreWay.RawCManualProtect,
        DirtyLogBackend.DirtyRing => RestoreWay.RawCDirtyRing,
        _ => throw new ArgumentOutOfRangeException(nameof(backend)),
    };

    public static RestoreWay KvmSharp(DirtyLogBackend backend) => RawC(backend) + 1;

    public static string Label(this RestoreWay way) => way switch
    {
        RestoreWay.FullCopy => "full copy + RestoreState",
        _ => (way.IsRawC() ? "raw C " : "KvmSharp ") + way.Backend() switch
        {
            DirtyLogBackend.GetDirtyLog => "GET_DIRTY_LOG",
            DirtyLogBackend.ManualProtect => "manual protect",
            _ => "dirty ring",
        },
    };

    /// <summary>Whether this KVM offers the way's back end (all three do on kvm-pvm), and the way exists here (no dirty ring in the arm64 raw C).</summary>
    public static bool IsAvailable(this RestoreWay way)
    {
        using var kvm = Kvm.Open();
        return way.Backend() switch
        {
            DirtyLogBackend.ManualProtect => kvm.CheckExtension(KvmCapability.ManualDirtyLogProtect2) > 0,
            DirtyLogBackend.DirtyRing when RestoreLoop.IsArm64 => false,
            DirtyLogBackend.DirtyRing => kvm.CheckExtension(KvmCapability.DirtyLogRingAcqRel) > 0 || kvm.CheckExtension(KvmCapability.DirtyLogRing) > 0,
            _ => true,
        };
    }
}

/// <summary>
/// One <see cref="DirtyPagesGuest"/> VM and one <see cref="RestoreWay"/> of putting it back into its
/// snapshot, which is taken at construction with the vCPU at the guest's exit. A cycle is
/// <see cref="Restore"/> then <see cref="Run"/> (to the exit again, dirtying the guest's pages), so
/// the VM is always at an exit between calls. Shared by <see cref="RestoreBenchmarks"/>,
/// <c>--restore-table</c> and <c>--count-ioctls restore</c> (see <see cref="Program"/>).
/// </summary>
internal abstract partial class RestoreLoop : IDisposable
{
    protected RestoreLoop(RestoreWay way, int sizeMiB, int pages)
    {
        Way = way;
        SizeMiB = sizeMiB;
        Pages = pages;
    }

    public RestoreWay Way { get; }
    public int SizeMiB { get; }
    public int Pages { get; }

    public static RestoreLoop Create(RestoreWay way, int sizeMiB, int pages)
    {
        RestoreLoop loop = way switch
        {
            RestoreWay.FullCopy => new FullCopyLoop(sizeMiB, pages),
            _ when way.IsRawC() && IsArm64 => new Arm64RawCLoop(way, sizeMiB, pages),
            _ when way.IsRawC() => new RawCLoop(way, sizeMiB, pages),
            _ => new KvmSharpLoop(way, sizeMiB, pages),
        };
        try
        {
            loop.Verify();
            return loop;
        }
        catch
        {
            loop.Dispose();
            throw;
        }
    }

    /// <summary>Runs the guest from its exit to its next exit (checked), dirtying its pages.</summary>
    public abstract void Run();

    /// <summary>Puts memory and registers back as they were in the snapshot.</summary>
    public abstract void Restore();

    /// <summary>Guest RAM, for <see cref="Verify"/>.</summary>
    protected abstract ReadOnlySpan<byte> Memory { get; }

    /// <summary>One cycle, timed: restore, then run. Returns both durations in <see cref="Stopwatch"/> ticks.</summary>
    public (long Restore, long Run) TimedCycle()
    {
        long t0 = Stopwatch.GetTimestamp();
        Restore();
        long t1 = Stopwatch.GetTimestamp();
        Run();
        long t2 = Stopwatch.GetTimestamp();
        return (t1 - t0, t2 - t1);
    }

    /// <summary>
    /// One cycle checked: after the restore every guest byte holds its snapshot value, after the run
    /// one more. Catches a restore that skipped pages (or a run that wrote none).
    /// </summary>
    public void Verify()
    {
        Restore();
        DirtyPagesGuest.CheckBytes(Memory, Pages, DirtyPagesVm.RunsInSetup);
        Run();
        DirtyPagesGuest.CheckBytes(Memory, Pages, DirtyPagesVm.RunsInSetup + 1);
    }

    public abstract void Dispose();

    private sealed class KvmSharpLoop : RestoreLoop
    {
        private readonly IDirtyPagesVm _guest;
        private readonly VmSnapshot _snapshot;

        public KvmSharpLoop(RestoreWay way, int sizeMiB, int pages) : base(way, sizeMiB, pages)
        {
            _guest = DirtyPagesVm.Create(sizeMiB, pages, way.Backend());
            try
            {
                if (_guest.Vm.DirtyTracker!.Backend != way.Backend())
                    throw new InvalidOperationException($"Asked for {way.Backend()}, got {_guest.Vm.DirtyTracker.Backend}.");
                _snapshot = _guest.Vm.CreateSnapshot();
            }
            catch
            {
                _guest.Dispose();
                throw;
            }
        }

        public override void Run() => _guest.RunToExit();
        public override void Restore() => _guest.Vm.Restore(_snapshot);
        protected override ReadOnlySpan<byte> Memory => _guest.Ram.Span;
        public override void Dispose() => _guest.Dispose();
    }

    private sealed class FullCopyLoop : RestoreLoop
    {
        private readonly IDirtyPagesVm _guest;
        private readonly RegisterState _registers;
        private readonly byte[] _image;

        public FullCopyLoop(int sizeMiB, int pages) : base(RestoreWay.FullCopy, sizeMiB, pages)
        {
            _guest = DirtyPagesVm.Create(sizeMiB, pages, backend: null);
            _registers = _guest.Cpu.Registers.SaveState(); // completes the pending exit (OUT, MMIO store), as CreateSnapshot does
            _image = _guest.Ram.Span.ToArray();
        }

        public override void Run() => _guest.RunToExit();

        public override void Restore()
        {
            // The order of VirtualMachine.Restore: registers (which completes the pending exit), then memory.
            _guest.Cpu.Registers.RestoreState(_registers);
            _image.CopyTo(_guest.Ram.Span);
        }

        protected override ReadOnlySpan<byte> Memory => _guest.Ram.Span;
        public override void Dispose() => _guest.Dispose();
    }

    private sealed class RawCLoop : RestoreLoop
    {
        private readonly NativeSnapshotVm _native;

        public RawCLoop(RestoreWay way, int sizeMiB, int pages) : base(way, sizeMiB, pages)
        {
            // KvmSharp sets the guest up (long mode, two runs to the exit); C takes over its memory
            // and registers, exactly the state KvmSharp's snapshot holds, and owns its own VM from then on.
            using var template = new DirtyPagesVm(sizeMiB, pages, backend: null);
            _native = new NativeSnapshotVm(template.Ram.Span, template.Cpu.Registers.SaveState(), way.Backend()!.Value, DirtyPagesGuest.Port);
        }

        public override void Run() => _native.Run();
        public override void Restore() => _native.Restore();
        protected override ReadOnlySpan<byte> Memory => _native.Memory;
        public override void Dispose() => _native.Dispose();
    }
}
