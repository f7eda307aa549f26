using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace KvmSharp.Benchmarks;

/// <summary>
/// The arm64 benchmarks (run in an arm64 KVM: <c>--arch arm64</c> relaunches the benchmark in the
/// arm64 lab from an x86_64 host), each against the raw C baseline of <c>arm64_vm.c</c> in the same
/// process, interleaved like the x86 ones:
/// <list type="bullet">
/// <item><c>--interleaved mmio [ROUNDS]</c>: the MMIO exit round trip (guest <c>str w0, [x1]; b back</c>).</item>
/// <item><c>--interleaved [ROUNDS]</c>: an exit handler that reads the PC and writes X0 (guest <c>str x0, [x1]; b back</c>).</item>
/// <item><c>--count-ioctls WAY [EXITS]</c>: one way's exits alone, for a tracer to count its ioctls (<see cref="Ways"/>).</item>
/// </list>
/// The restore table (<c>--restore-table</c>) runs on arm64 through <see cref="RestoreLoop"/>.
/// </summary>
internal static partial class Arm64Benchmarks
{
    /// <summary>Exits per timed batch: an arm64 exit in the lab costs several times an x86 one.</summary>
    public const int Exits = 200;

    /// <summary>The MMIO exit ways, in table order (the first is the baseline).</summary>
    public static readonly string[] MmioWays = ["mmio-rawc", "mmio-kvmsharp", "mmio-runner", "mmio-rawc-sigmask", "mmio-pinvoke-sigmask"];

    /// <summary>The register handler ways, in table order (the first is the baseline).</summary>
    public static readonly string[] RegisterWays = ["rawc", "lazy", "eager", "eager-kvmsharp", "rawc-sigmask", "pinvoke-sigmask"];

    /// <summary>Every way, by its name on the command line.</summary>
    public static IEnumerable<string> Ways => MmioWays.Concat(RegisterWays);

    public static Arm64Loop Create(string way) => way switch
    {
        "mmio-rawc" => new RawCMmio(signalMask: false),
        "mmio-rawc-sigmask" => new RawCMmio(signalMask: true),
        "mmio-kvmsharp" => new KvmSharpMmio(),
        "mmio-runner" => new RunnerMmio(),
        "mmio-pinvoke-sigmask" => new PInvokeMmio(),
        "rawc" => new RawCRegisters(eager: false, signalMask: false),
        "rawc-sigmask" => new RawCRegisters(eager: false, signalMask: true),
        "eager" => new RawCRegisters(eager: true, signalMask: false),
        "lazy" => new KvmSharpLazy(),
        "pinvoke-sigmask" => new PInvokeRegisters(),
        "eager-kvmsharp" => new KvmSharpEager(),
        _ => throw new ArgumentOutOfRangeException(nameof(way), way, $"Ways: {string.Join(", ", Ways)}."),
    };

    /// <summary>Sets up every way of <paramref name="ways"/> and times their batches round-robin (<see cref="Program.InterleavedRounds"/>).</summary>
    public static int Interleaved(string[] ways, int rounds)
    {
        var loops = new List<Arm64Loop>();
        try
        {
            foreach (var way in ways) loops.Add(Create(way));
            Program.InterleavedRounds(ways, loops.Select(l => (Action)(() => l.Run(Exits))).ToArray(), Exits, rounds);
            return 0;
        }
        finally
        {
            foreach (var loop in loops) loop.Dispose();
        }
    }

    /// <summary>One way's exits after its setup, for a tracer; prints the managed bytes they allocated.</summary>
    public static int CountIoctls(string way, int exits)
    {
        // Setup (VM, vCPU, registers) and the first exit happen in Create; EXITS exits follow.
        using var loop = Create(way);
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        loop.Run(exits);
        allocated = GC.GetAllocatedBytesForCurrentThread() - allocated;
        Console.WriteLine($"{way}: {exits} exits after setup, all checked; {allocated} managed bytes allocated by the exits");
        return 0;
    }

    /// <summary>
    /// One VM and the exit handler of one way. Construction sets the VM up and runs to the first
    /// exit, so the vCPU always sits at an exit between calls of <see cref="Run"/>.
    /// </summary>
    internal abstract class Arm64Loop : IDisposable
    {
        /// <summary>Handles the current exit and runs to the next one, <paramref name="exits"/> times (each checked).</summary>
        public abstract void Run(int exits);

        public abstract void Dispose();

        /// <summary>Creates with <paramref name="create"/>, then runs <paramref name="setup"/> on it, disposing it if that throws.</summary>
        private protected static T Make<T>(Func<T> create, Action<T> setup) where T : IDisposable
        {
            var value = create();
            try
            {
                setup(value);
                return value;
            }
            catch
            {
                value.Dispose();
                throw;
            }
        }
    }

    // ---- MMIO exit round trip ------------------------------------------------------------------

    private sealed class RawCMmio(bool signalMask) : Arm64Loop
    {
        private readonly Arm64NativeVm _vm = Make(() => new Arm64NativeVm(Arm64Guest.StoreW0Code), vm =>
        {
            if (signalMask) vm.SetSignalMask(Vcpu.KickSignalNumber);
            vm.Run(1);
        });

        public override void Run(int exits) => _vm.Run(exits);
        public override void Dispose() => _vm.Dispose();
    }

    /// <summary><see cref="Vcpu.Run"/> and the typed exit, checked: what a typical MMIO handler looks at.</summary>
    private sealed class KvmSharpMmio : Arm64Loop
    {
        private readonly Arm64Guest _guest = Make(() => new Arm64Guest(Arm64Guest.StoreW0Code), g => Arm64Guest.RunToMmio(g.Cpu));

        public override void Run(int exits)
        {
            var cpu = _guest.Cpu;
            for (int i = 0; i < exits; i++) Arm64Guest.RunToMmio(cpu);
        }

        public override void Dispose() => _guest.Dispose();
    }

    /// <summary><see cref="VcpuRunner"/> dispatching each store to a device on an MMIO range of an <see cref="Devices.IoBus"/>, which stops it after the batch.</summary>
    private sealed class RunnerMmio : Arm64Loop, Devices.IIoDevice
    {
        private readonly Arm64Guest _guest;
        private readonly VcpuRunner _runner;
        private int _left;

        public RunnerMmio()
        {
            _guest = Make(() => new Arm64Guest(Arm64Guest.StoreW0Code), g => Arm64Guest.RunToMmio(g.Cpu));
            var bus = new Devices.IoBus();
            bus.MapMmio(Arm64Guest.MmioAddress, 4, this);
            _runner = new VcpuRunner(_guest.Cpu, bus) { UnclaimedPolicy = Devices.UnclaimedAccessPolicy.Stop };
        }

        public override void Run(int exits)
        {
            if (exits == 0) return; // the device stops the runner at its last exit: none to wait for
            _left = exits;
            var result = _runner.Run();
            if (result.Reason != RunStopReason.StopRequested || result.Exits != exits)
                throw new InvalidOperationException($"The runner stopped with {result.Reason} after {result.Exits} exits (last {result.LastExit}); expected StopRequested after {exits}.");
        }

        public void Read(Devices.IoContext context, ulong offset, Span<byte> data) => data.Clear();

        public void Write(Devices.IoContext context, ulong offset, ReadOnlySpan<byte> data)
        {
            if (--_left == 0) context.RequestStop();
        }

        public override void Dispose() => _guest.Dispose();
    }

    /// <summary>
    /// The floor for a managed run loop: C# calling ioctl(KVM_RUN) through a bare P/Invoke on a vCPU
    /// KvmSharp set up and ran once (so its kick signal mask is set: compare with mmio-rawc-sigmask),
    /// checking each exit as <see cref="Arm64Guest.RunToMmio"/> does, with no library code between runs.
    /// </summary>
    private sealed unsafe partial class PInvokeMmio : Arm64Loop
    {
        private const uint KvmExitMmio = 6;
        private readonly Arm64Guest _guest = Make(() => new Arm64Guest(Arm64Guest.StoreW0Code), g => Arm64Guest.RunToMmio(g.Cpu));

        public override void Run(int exits)
        {
            int fd = _guest.Cpu.Fd;
            byte* run = (byte*)_guest.Cpu.RunAddress;
            byte* mmio = run + Interop.Arm64.kvm_run.ExitUnionOffset;
            for (int i = 0; i < exits; i++)
            {
                if (ioctl(fd, Interop.KvmIoctls.KvmRunNumber, 0) < 0) ThrowRunFailed();
                // kvm_run.mmio: phys_addr at 0, is_write at 20 (the layout tests check both structs).
                if (*(uint*)(run + Interop.KvmRunPage.ExitReason) != KvmExitMmio || *(ulong*)mmio != Arm64Guest.MmioAddress || mmio[20] == 0)
                    ThrowUnexpected(*(uint*)(run + Interop.KvmRunPage.ExitReason));
            }
        }

        public override void Dispose() => _guest.Dispose();

        [MethodImpl(MethodImplOptions.NoInlining)]
        internal static void ThrowRunFailed() =>
            throw new InvalidOperationException($"An ioctl failed: errno {System.Runtime.InteropServices.Marshal.GetLastSystemError()}");

        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void ThrowUnexpected(uint reason) =>
            throw new InvalidOperationException($"Expected an MMIO write to 0x{Arm64Guest.MmioAddress:x}, got exit reason {reason}.");

        // A bare import: no SetLastError, blittable arguments (see RawKvmVm's ioctl_hot).
        [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "ioctl")]
        internal static partial int ioctl(int fd, nuint request, nint arg);
    }

    // ---- exit handler: read the PC, write X0 ---------------------------------------------------

    /// <summary>C: GET_ONE_REG PC, SET_ONE_REG X0, KVM_RUN (or the eager 34 + 34 + 1).</summary>
    private sealed class RawCRegisters(bool eager, bool signalMask) : Arm64Loop
    {
        private readonly Arm64NativeVm _vm = Make(() => new Arm64NativeVm(Arm64Guest.StoreX0Code), vm =>
        {
            if (signalMask) vm.SetSignalMask(Vcpu.KickSignalNumber);
            vm.Run(1);
            CheckPc(vm.Pc, Arm64Guest.StoreX0Pc);
        });

        public override void Run(int exits)
        {
            if (eager) _vm.RunEager(exits, Arm64Guest.StoreX0Pc);
            else _vm.RunRegisters(exits, Arm64Guest.StoreX0Pc);
        }

        public override void Dispose() => _vm.Dispose();
    }

    /// <summary>
    /// The floor for a managed handler: C# making raw C's three ioctls (GET_ONE_REG PC, SET_ONE_REG
    /// X0, KVM_RUN) through a bare P/Invoke on a vCPU KvmSharp set up and ran once (its kick signal
    /// mask set: compare with rawc-sigmask), with no library code between them.
    /// </summary>
    private sealed unsafe class PInvokeRegisters : Arm64Loop
    {
        private const uint KvmExitMmio = 6;
        private readonly Arm64Guest _guest = Make(() => new Arm64Guest(Arm64Guest.StoreX0Code), g =>
        {
            Arm64Guest.RunToMmio(g.Cpu);
            CheckPc(g.Cpu.Arm64.Pc, Arm64Guest.StoreX0Pc);
        });
        private ulong _next;

        public override void Run(int exits)
        {
            int fd = _guest.Cpu.Fd;
            byte* run = (byte*)_guest.Cpu.RunAddress;
            byte* mmio = run + Interop.Arm64.kvm_run.ExitUnionOffset;
            ulong pcId = Registers.Arm64RegisterIds.Pc, x0Id = Registers.Arm64RegisterIds.X(0);
            ulong next = _next, value = 0;
            ulong* arg = stackalloc ulong[2]; // struct kvm_one_reg { __u64 id; __u64 addr; }
            for (int i = 0; i < exits; i++)
            {
                arg[0] = pcId;
                arg[1] = (ulong)&value;
                if (PInvokeMmio.ioctl(fd, Interop.KvmIoctls.GetOneRegNumber, (nint)arg) < 0) PInvokeMmio.ThrowRunFailed();
                CheckPc(value, Arm64Guest.StoreX0Pc);
                value = ++next;
                arg[0] = x0Id;
                if (PInvokeMmio.ioctl(fd, Interop.KvmIoctls.SetOneRegNumber, (nint)arg) < 0) PInvokeMmio.ThrowRunFailed();
                if (PInvokeMmio.ioctl(fd, Interop.KvmIoctls.KvmRunNumber, 0) < 0) PInvokeMmio.ThrowRunFailed();
                // kvm_run.mmio: len at 16, data at 8 (the layout tests check the struct).
                if (*(uint*)(run + Interop.KvmRunPage.ExitReason) != KvmExitMmio || *(uint*)(mmio + 16) != 8 || *(ulong*)(mmio + 8) != next)
                    ThrowWrongStore(*(int*)(mmio + 16), next);
            }
            _next = next;
        }

        public override void Dispose() => _guest.Dispose();
    }

    /// <summary>KvmSharp's register cache: <c>arm.Pc</c>, <c>arm.X0 = …</c>, <see cref="Vcpu.Run"/>.</summary>
    private sealed class KvmSharpLazy : Arm64Loop
    {
        private readonly Arm64Guest _guest = Make(() => new Arm64Guest(Arm64Guest.StoreX0Code), g =>
        {
            Arm64Guest.RunToMmio(g.Cpu);
            CheckPc(g.Cpu.Arm64.Pc, Arm64Guest.StoreX0Pc);
        });
        private ulong _next;

        public override void Run(int exits)
        {
            var cpu = _guest.Cpu;
            ulong next = _next;
            for (int i = 0; i < exits; i++)
            {
                // The handler under test: read the PC, write X0, run on.
                var arm = cpu.Arm64;
                CheckPc(arm.Pc, Arm64Guest.StoreX0Pc);
                arm.X0 = ++next;
                CheckStored(Arm64Guest.RunToMmio(cpu), next);
            }
            _next = next;
        }

        public override void Dispose() => _guest.Dispose();
    }

    /// <summary>
    /// The handler done eagerly with KvmSharp, as QEMU does with ONE_REG: the pending store completed
    /// (<see cref="Registers.Arm64RegisterSync.CompletePendingAccess"/>, so that writing the registers
    /// back does not rewind the PC), all of X0–X30, SP, PC, PSTATE read (one KVM_GET_ONE_REG each,
    /// since every run forgets the cache), the handler, then all of them written (one
    /// KVM_SET_ONE_REG each, at the next run).
    /// </summary>
    private sealed class KvmSharpEager : Arm64Loop
    {
        private const int Registers = 34;
        private readonly Arm64Guest _guest = Make(() => new Arm64Guest(Arm64Guest.StoreX0Code), g => Arm64Guest.RunToMmio(g.Cpu));
        private ulong _next;

        public override void Run(int exits)
        {
            var cpu = _guest.Cpu;
            ulong next = _next;
            Span<ulong> regs = stackalloc ulong[Registers];
            for (int i = 0; i < exits; i++)
            {
                var arm = cpu.Arm64;
                arm.CompletePendingAccess();
                for (int k = 0; k <= 30; k++) regs[k] = arm.GetGeneralRegister(k);
                regs[31] = arm.Sp;
                regs[32] = arm.Pc;
                regs[33] = arm.Pstate;
                // The handler: the PC is past the completed store now.
                CheckPc(regs[32], Arm64Guest.StoreX0Pc + 4);
                regs[0] = ++next;
                for (int k = 0; k <= 30; k++) arm.SetGeneralRegister(k, regs[k]);
                arm.Sp = regs[31];
                arm.Pc = regs[32];
                arm.Pstate = regs[33];
                CheckStored(Arm64Guest.RunToMmio(cpu), next);
            }
            _next = next;
        }

        public override void Dispose() => _guest.Dispose();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CheckPc(ulong pc, ulong expected)
    {
        if (pc != expected) ThrowWrongPc(pc, expected);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CheckStored(MmioExit mmio, ulong expected)
    {
        if (mmio.Length != 8 || BinaryPrimitives.ReadUInt64LittleEndian(mmio.Data) != expected) ThrowWrongStore(mmio.Length, expected);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowWrongPc(ulong pc, ulong expected) =>
        throw new InvalidOperationException($"The PC at the exit was 0x{pc:x}, not 0x{expected:x}.");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowWrongStore(int length, ulong expected) =>
        throw new InvalidOperationException($"Expected the guest to store the X0 written at the previous exit (0x{expected:x}, 8 bytes); got {length} bytes of something else.");
}
