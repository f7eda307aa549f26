using System.Runtime.CompilerServices;

namespace KvmSharp.Benchmarks;

/// <summary>The ways <see cref="RegisterSyncBenchmarks"/> handles an exit that reads RIP and writes RAX.</summary>
public enum RegisterSyncWay
{
    /// <summary>C, sync regs: RIP and RAX in <c>kvm_run</c>, <c>kvm_dirty_regs</c> flagged; one ioctl (KVM_RUN) per exit.</summary>
    RawCSyncRegs,
    /// <summary>KvmSharp's register cache with sync regs (the default where KVM has them): <c>x86.Rip</c>, <c>x86.Rax = …</c>, <see cref="Vcpu.Run"/>.</summary>
    KvmSharpLazy,
    /// <summary>C# over bare libc imports, as a naive VMM: KVM_GET_REGS, KVM_SET_REGS, KVM_RUN per exit.</summary>
    RawEager,
    /// <summary>KvmSharp with <see cref="Registers.X86RegisterSync.UseSyncRegs"/> = false: the cache fetches with KVM_GET_REGS and writes back with KVM_SET_REGS.</summary>
    KvmSharpEager,
    /// <summary>
    /// <see cref="RawCSyncRegs"/> plus the kernel work KvmSharp's kick design adds to every KVM_RUN:
    /// the kick signal unblocked inside it with KVM_SET_SIGNAL_MASK. Splits KvmSharp's gap to raw C
    /// into kernel work and library work.
    /// </summary>
    RawCSyncRegsSignalMask,
    /// <summary><see cref="KvmSharpLazy"/>'s handler in a device on an <see cref="Devices.IoBus"/>, run by <see cref="VcpuRunner"/> (the recommended loop).</summary>
    KvmSharpRunnerLazy,
}

/// <summary>
/// One VM running <see cref="GuestCode.OutAxCode"/> and the exit handler of one
/// <see cref="RegisterSyncWay"/>. Construction sets the VM up and runs to the first exit, so the
/// vCPU always sits at an exit between calls of <see cref="Run"/>. Every exit is checked: RIP must
/// be what it was at the first exit, and the guest must output the RAX written at the exit before.
/// Shared by the benchmarks and by <c>--count-ioctls</c> (see <see cref="Program"/>).
/// </summary>
internal abstract class RegisterSyncLoop : IDisposable
{
    /// <summary>The value last written to RAX (the guest outputs its low 16 bits at the next exit).</summary>
    private protected ulong Next;

    /// <summary>RIP at every exit (as at the first; see <see cref="GuestCode.CheckOutAxExitRip"/>).</summary>
    public ulong ExitRip { get; private protected set; }

    public static RegisterSyncLoop Create(RegisterSyncWay way) => way switch
    {
        RegisterSyncWay.RawCSyncRegs => new RawC(signalMask: false),
        RegisterSyncWay.RawCSyncRegsSignalMask => new RawC(signalMask: true),
        RegisterSyncWay.KvmSharpLazy => new KvmSharpLoop<WithSyncRegs>(),
        RegisterSyncWay.RawEager => new Raw(),
        RegisterSyncWay.KvmSharpEager => new KvmSharpLoop<WithoutSyncRegs>(),
        RegisterSyncWay.KvmSharpRunnerLazy => new RunnerLoop(),
        _ => throw new ArgumentOutOfRangeException(nameof(way)),
    };

    /// <summary>Handles the current exit and runs to the next one, <paramref name="exits"/> times.</summary>
    public abstract void Run(int exits);

    public abstract void Dispose();

    [MethodImpl(MethodImplOptions.NoInlining)]
    private protected static void ThrowWrongRip(ulong rip, ulong expected) =>
        throw new InvalidOperationException($"RIP at the exit was 0x{rip:x}, not 0x{expected:x} as at the first exit.");

    /// <summary>Sync regs in C: the baseline.</summary>
    private sealed class RawC : RegisterSyncLoop
    {
        private readonly NativePioLoop _native;

        public RawC(bool signalMask)
        {
            _native = new NativePioLoop(GuestCode.OutAxCode);
            try
            {
                if (signalMask) _native.SetSignalMask(Vcpu.KickSignalNumber);
                _native.UseSyncRegs();
                _native.Run(1);
                ExitRip = GuestCode.CheckOutAxExitRip(_native.SyncRip);
            }
            catch
            {
                _native.Dispose();
                throw;
            }
        }

        public override void Run(int exits) => _native.RunSyncRegs(exits, ExitRip);

        public override void Dispose() => _native.Dispose();
    }

    /// <summary>GET_REGS / SET_REGS / KVM_RUN over bare libc imports.</summary>
    private sealed class Raw : RegisterSyncLoop
    {
        private readonly RawKvmVm _raw;

        public Raw()
        {
            _raw = new RawKvmVm(GuestCode.OutAxCode);
            try
            {
                _raw.RunOneExit();
                ExitRip = GuestCode.CheckOutAxExitRip(_raw.GetRip());
            }
            catch
            {
                _raw.Dispose();
                throw;
            }
        }

        public override void Run(int exits)
        {
            var raw = _raw;
            ulong rip = ExitRip, next = Next;
            for (int i = 0; i < exits; i++)
                raw.HandleExitWithRegsIoctls(rip, ++next);
            Next = next;
        }

        public override void Dispose() => _raw.Dispose();
    }

    private interface ISyncRegsChoice
    {
        static abstract bool UseSyncRegs { get; }
    }

    private struct WithSyncRegs : ISyncRegsChoice
    {
        public static bool UseSyncRegs => true;
    }

    private struct WithoutSyncRegs : ISyncRegsChoice
    {
        public static bool UseSyncRegs => false;
    }

    /// <summary>
    /// KvmSharp's register cache, with or without sync regs: the same handler source either way. Generic
    /// over a struct so that each way gets its own machine code: in one process (the interleaved mode,
    /// BenchmarkDotNet's in-process toolchain) a shared method would carry the other way's profile,
    /// which a real program, with one configuration per exit loop, does not have.
    /// </summary>
    private sealed class KvmSharpLoop<TChoice> : RegisterSyncLoop where TChoice : struct, ISyncRegsChoice
    {
        private readonly KvmSharpGuest _guest;

        public KvmSharpLoop()
        {
            bool useSyncRegs = TChoice.UseSyncRegs;
            _guest = new KvmSharpGuest(GuestCode.OutAxCode);
            try
            {
                var x86 = _guest.Vcpu.X86;
                if (useSyncRegs && !x86.KernelSupportsSyncRegs)
                    throw new NotSupportedException("This KVM lacks KVM_CAP_SYNC_REGS, which the lazy case measures.");
                x86.UseSyncRegs = useSyncRegs;
                CheckExit(_guest.Vcpu.Run(), null);
                ExitRip = GuestCode.CheckOutAxExitRip(x86.Rip);
            }
            catch
            {
                _guest.Dispose();
                throw;
            }
        }

        public override void Run(int exits)
        {
            var cpu = _guest.Vcpu;
            ulong expectedRip = ExitRip, next = Next;
            for (int i = 0; i < exits; i++)
            {
                // The handler under test: read RIP, write RAX, run on.
                var x86 = cpu.X86;
                ulong rip = x86.Rip;
                if (rip != expectedRip) ThrowWrongRip(rip, expectedRip);
                x86.Rax = ++next;
                CheckExit(cpu.Run(), (ushort)next);
            }
            Next = next;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void CheckExit(VcpuExit exit, ushort? expected)
        {
            if (exit.Reason != VcpuExitReason.Io) ThrowWrongExit(exit.ToString());
            var io = exit.Io;
            if (io.Port != GuestCode.Port || io.Size != 2 || (expected is { } e && io.Value != e))
                ThrowWrongIo(io.Port, io.Size, io.Value, expected);
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void ThrowWrongExit(string reason) =>
            throw new InvalidOperationException($"Expected a PIO exit on port 0x{GuestCode.Port:x}, got {reason}.");

        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void ThrowWrongIo(ushort port, int size, uint value, ushort? expected) =>
            throw new InvalidOperationException(
                $"Expected a 2-byte OUT of 0x{expected:x} (the RAX written at the previous exit) to port 0x{GuestCode.Port:x}, got {size} bytes of 0x{value:x} to port 0x{port:x}.");

        public override void Dispose() => _guest.Dispose();
    }

    /// <summary>
    /// The lazy handler as a port device under <see cref="VcpuRunner"/>: each OUT reaches it with the
    /// vCPU at the exit; it checks the value and RIP, writes RAX, and stops the runner after the batch.
    /// </summary>
    private sealed class RunnerLoop : RegisterSyncLoop, Devices.IIoDevice
    {
        private readonly KvmSharpGuest _guest;
        private readonly VcpuRunner _runner;
        private int _left;

        public RunnerLoop()
        {
            _guest = new KvmSharpGuest(GuestCode.OutAxCode);
            try
            {
                var cpu = _guest.Vcpu;
                if (!cpu.X86.KernelSupportsSyncRegs)
                    throw new NotSupportedException("This KVM lacks KVM_CAP_SYNC_REGS, which the lazy case measures.");
                var bus = new Devices.IoBus();
                bus.MapPorts(GuestCode.Port, 2, this); // the guest writes AX: two ports (a range the access straddles does not claim it)
                _runner = new VcpuRunner(cpu, bus) { UnclaimedPolicy = Devices.UnclaimedAccessPolicy.Stop }; // a miss fails the batch instead of spinning
                var exit = cpu.Run();
                if (exit.Reason != VcpuExitReason.Io || exit.Io.Port != GuestCode.Port)
                    throw new InvalidOperationException($"Expected a PIO exit on port 0x{GuestCode.Port:x}, got {exit.ToString()}.");
                ExitRip = GuestCode.CheckOutAxExitRip(cpu.X86.Rip);
                cpu.X86.Rax = ++Next; // the first exit's handling; the runner's first run goes on from it
            }
            catch
            {
                _guest.Dispose();
                throw;
            }
        }

        public override void Run(int exits)
        {
            _left = exits;
            var result = _runner.Run();
            if (result.Reason != RunStopReason.StopRequested || result.Exits != exits)
                throw new InvalidOperationException($"The runner stopped with {result.Reason} after {result.Exits} exits (last {result.LastExit}); expected StopRequested after {exits}.");
        }

        public void Read(Devices.IoContext context, ulong offset, Span<byte> data) => data.Clear();

        public void Write(Devices.IoContext context, ulong offset, ReadOnlySpan<byte> data)
        {
            // The handler under test: check what the guest wrote, read RIP, write RAX.
            if (data.Length != 2 || System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(data) != (ushort)Next)
                throw new InvalidOperationException($"Expected a 2-byte OUT of 0x{(ushort)Next:x}, got {data.Length} bytes.");
            var x86 = context.Vcpu.X86;
            ulong rip = x86.Rip;
            if (rip != ExitRip) ThrowWrongRip(rip, ExitRip);
            x86.Rax = ++Next;
            if (--_left == 0) context.RequestStop();
        }

        public override void Dispose() => _guest.Dispose();
    }
}
