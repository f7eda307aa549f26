using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KvmSharp.Interop;
using KvmSharp.Interop.X86;
using KvmSharp.Registers;

namespace KvmSharp;

/// <summary>
/// A virtual CPU: its file descriptor, its shared <c>kvm_run</c> page, and its register cache.
/// Created by <see cref="VirtualMachine.CreateVcpu"/>.
/// </summary>
/// <remarks>
/// <para>Thread rules (QEMU's model). One thread at a time <i>owns</i> the vCPU: the thread that calls
/// <see cref="Run()"/> takes it and keeps it between runs — while it handles the exit and until its
/// next run — until it calls <see cref="ReleaseOwnership"/>, its <see cref="VcpuRunner"/> loop ends, or
/// the thread ends. Register access and <see cref="Run()"/> from any other thread while the vCPU is
/// owned throw <see cref="InvalidOperationException"/>; <see cref="Invoke"/>/<see cref="InvokeAsync"/>
/// run code on the owning thread at its next entry (kicking it if it is in the guest), never in the
/// middle of its exit handling; on a vCPU no thread owns they run on the calling thread.
/// <see cref="RequestExit"/>, <see cref="Invoke"/>, <see cref="InvokeAsync"/> and <see cref="Dispose"/>
/// may be called from any thread at any time.</para>
/// <para>Kicking: <see cref="RequestExit"/> sets <c>kvm_run.immediate_exit</c> and sends the running
/// thread the kick signal (<see cref="KickSignal"/>, by default SIGRTMAX-2), which every thread that
/// runs a vCPU keeps blocked in user space and KVM_SET_SIGNAL_MASK unblocks inside KVM_RUN. No
/// signal handler is installed, managed or native.</para>
/// </remarks>
public sealed partial class Vcpu : IDisposable
{
    private readonly VirtualMachine _vm;
    private readonly VcpuCore _core;   // fd, kvm_run, ownership gate, entry sequence: what the strategies get too
    private readonly nint _runAddress; // _core.RunAddress, cached: the hot path touches no other object for it
    private readonly IRegisterSync _registers;
    private readonly IRunHooks _hooks;
    private readonly X86RegisterSync? _x86Hooks; // _hooks when it is x86's, called without interface dispatch
    private readonly Arm64RegisterSync? _arm64Hooks; // _hooks when it is arm64's, called without interface dispatch
    private Arm64RegisterSync? _arm64Fast; // _arm64Hooks once Run's arm64 path applies (signal mask set, no dirty ring)
    private readonly Lock _timerLock = new();
    private Timer? _timer;
    private int _timerState; // 0 idle, 1 armed, 2 fired
    private long _timerDeadline; // Stopwatch timestamp at which the armed run's timeout ends
    private bool _fastPath; // Run's inlined path applies: x86, no dirty ring, signal mask set

    internal Vcpu(VirtualMachine vm, int id, KvmFdHandle fd, MappedMemoryHandle run, KvmFdHandle vmFd, DirtyRing? dirtyRing = null)
    {
        _vm = vm;
        DirtyRing = dirtyRing;
        Id = id;
        Architecture = vm.Architecture;
        _core = new VcpuCore(id, Architecture, vm.Kernel, fd, run, vmFd);
        _runAddress = _core.RunAddress;
        (_registers, _hooks) = Architecture switch
        {
            KvmArchitecture.X86_64 => Pair(new X86RegisterSync(_core, vm.CheckExtension(KvmCapability.SyncRegs), vm.MsrIndices, vm.XsaveSize)),
            KvmArchitecture.Arm64 => Pair(new Arm64RegisterSync(_core)),
            _ => Pair(new S390xRegisterSync(_core)),
        };
        _x86Hooks = _hooks as X86RegisterSync;
        _arm64Hooks = _hooks as Arm64RegisterSync;
        if (dirtyRing is not null) _core.OnDirtyRingFull = () => _vm.DirtyTracker!.OnRingFull();
    }

    private static (IRegisterSync, IRunHooks) Pair<T>(T strategy) where T : IRegisterSync, IRunHooks => (strategy, strategy);

    internal IKernel Kernel => _core.Kernel;

    /// <summary>The vCPU's lower half (for the VM's whole-VM operations and tests).</summary>
    internal VcpuCore Core => _core;

    /// <summary>The vCPU's dirty ring, when the VM tracks dirty pages with one.</summary>
    internal DirtyRing? DirtyRing { get; }

    internal int Fd => _core.Fd;

    /// <summary>The vCPU id given at creation (the APIC id on x86).</summary>
    public int Id { get; }

    /// <summary>
    /// The vCPU's index in its VM: how many vCPUs KVM had created before it (disposed ones included).
    /// KVM names a vCPU by it where the id does not count (arm64 KVM_IRQ_LINE, the GICv3's redistributors).
    /// </summary>
    internal int Index { get; init; }

    /// <summary>The architecture of this vCPU.</summary>
    public KvmArchitecture Architecture { get; }

    /// <summary>The VM this vCPU belongs to.</summary>
    public VirtualMachine VirtualMachine => _vm;

    /// <summary>True once disposed.</summary>
    public bool IsDisposed => _core.IsDisposed;

    /// <summary>True while a thread is inside <see cref="Run()"/> for this vCPU.</summary>
    public bool IsRunning => (Volatile.Read(ref _core.State) & VcpuCore.RunningFlag) != 0;

    /// <summary>
    /// The real-time signal used to kick vCPU threads out of KVM_RUN: SIGRTMAX-2 unless changed with
    /// <see cref="SetKickSignal"/>. The .NET runtime uses SIGRTMIN; pick another if a native library in
    /// the process uses this one.
    /// </summary>
    public static int KickSignalNumber => KickSignal.Number;

    /// <summary>Chooses the kick signal; allowed only before any vCPU has run.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a real-time signal.</exception>
    /// <exception cref="InvalidOperationException">Another signal is in use already.</exception>
    public static void SetKickSignal(int signal) => KickSignal.Set(signal);

    /// <summary>The register cache, whatever the architecture (see <see cref="IRegisterSync"/>).</summary>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU (it is running): use <see cref="Invoke"/>.</exception>
    public IRegisterSync Registers
    {
        get
        {
            CheckAccess();
            return _registers;
        }
    }

    /// <summary>The x86 register cache.</summary>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not x86_64.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU: use <see cref="Invoke"/>.</exception>
    public X86RegisterSync X86
    {
        get
        {
            CheckAccess();
            return _x86Hooks ?? ThrowNotArch<X86RegisterSync>(KvmArchitecture.X86_64);
        }
    }

    /// <summary>The arm64 register cache.</summary>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not arm64.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU: use <see cref="Invoke"/>.</exception>
    public Arm64RegisterSync Arm64
    {
        get
        {
            CheckAccess();
            return _arm64Hooks ?? ThrowNotArch<Arm64RegisterSync>(KvmArchitecture.Arm64);
        }
    }

    /// <summary>The s390x register cache.</summary>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not s390x.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU: use <see cref="Invoke"/>.</exception>
    public S390xRegisterSync S390x
    {
        get
        {
            CheckAccess();
            return _registers as S390xRegisterSync ?? throw NotArch(KvmArchitecture.S390x);
        }
    }

    private PlatformNotSupportedException NotArch(KvmArchitecture wanted) =>
        new($"{wanted} registers requested on a {Architecture} vCPU.");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private T ThrowNotArch<T>(KvmArchitecture wanted) => throw NotArch(wanted);

    internal ref ulong RunDirtyRegs => ref _core.RunDirtyRegs;

    /// <summary>
    /// Whether an exit is requested that no run has consumed yet: the next <see cref="Run()"/> then
    /// returns at once with <see cref="VcpuExitReason.Interrupted"/> (it sets <c>kvm_run.immediate_exit</c>;
    /// needs KVM_CAP_IMMEDIATE_EXIT). <see cref="RequestExit"/> sets it, a run or
    /// <see cref="CancelExitRequest"/> clears it. Any thread.
    /// </summary>
    public bool IsExitRequested => Volatile.Read(ref _core.ExitRequested) != 0;

    /// <summary>
    /// Whether the next runs should exit (<see cref="VcpuExitReason.IrqWindowOpen"/>) as soon as the
    /// guest can take an interrupt: <c>kvm_run.request_interrupt_window</c>, read by KVM at each entry,
    /// for a user-space interrupt controller (x86 without an in-kernel irqchip) that injects
    /// interrupts itself. A plain field of <c>kvm_run</c>, not a request to another thread: set it on
    /// the thread that owns the vCPU, between runs.
    /// </summary>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU.</exception>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public bool RequestInterruptWindow
    {
        get
        {
            CheckAccess();
            return _core.RunSpan()[0] != 0;
        }
        set
        {
            CheckAccess();
            _core.RunSpan()[0] = value ? (byte)1 : (byte)0;
        }
    }

    /// <summary>
    /// Delivers the guest writes KVM has queued in its coalesced ring
    /// (<see cref="VirtualMachine.AddCoalescedMmio"/>) to <paramref name="handler"/>, oldest first,
    /// and gives their ring entries back to KVM. Call it at every exit before handling the exit (as
    /// <see cref="VcpuRunner"/> does), so that a device sees the writes in the order the guest made
    /// them. The ring is the VM's: draining through any of its vCPUs empties it (calls are serialised).
    /// </summary>
    /// <returns>How many writes were delivered (0 when the VM has no zones).</returns>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU.</exception>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public int DrainCoalescedWrites(CoalescedWriteHandler handler)
    {
        ArgumentNullException.ThrowIfNull(handler);
        CheckAccess();
        return _vm.DrainCoalesced(_core.RunPage, handler);
    }

    /// <summary>
    /// Enables a vCPU capability with its arguments, as api.rst describes each (e.g.
    /// <see cref="KvmCapability.HypervEnforceCpuid"/>). Wraps KVM_ENABLE_CAP on the vCPU fd; needs
    /// KVM_CAP_ENABLE_CAP. VM-wide capabilities go to <see cref="VirtualMachine.EnableCapability"/>.
    /// </summary>
    /// <exception cref="KvmException">KVM refused (e.g. EINVAL for a capability it does not offer on vCPUs; the message names the capability and the arguments).</exception>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU.</exception>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public void EnableCapability(KvmCapability capability, ulong arg0 = 0, ulong arg1 = 0, ulong arg2 = 0, ulong arg3 = 0)
    {
        CheckAccess();
        var enable = kvm_enable_cap.With((uint)capability, arg0, arg1, arg2, arg3);
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_ENABLE_CAP, ref enable);
        if (r < 0)
            ThrowHelper.ThrowKvm(KvmIoctls.KVM_ENABLE_CAP, r, $"vcpu {Id}, {capability} ({(int)capability}), args 0x{arg0:X}, 0x{arg1:X}, 0x{arg2:X}, 0x{arg3:X}");
    }

    /// <summary>
    /// The vCPU's file descriptor, for an ioctl KvmSharp lacks (the escape hatch; see README,
    /// "Raw ioctls"). Do not close it, and hold it with <see cref="SafeHandle.DangerousAddRef"/> /
    /// <see cref="SafeHandle.DangerousRelease"/> around the call so that a concurrent
    /// <see cref="Dispose"/> cannot close it under you. KvmSharp does not see what a raw ioctl
    /// changes: around a raw ioctl that reads or sets registers or MP state, call
    /// <see cref="IRegisterSync.Invalidate"/> on <see cref="Registers"/> before (pending writes reach
    /// KVM first) and after (the cache forgets what it held); use it on the thread that owns the vCPU.
    /// </summary>
    public SafeHandle SafeHandle => _core.FdHandle;

    /// <summary>The address of the <c>kvm_run</c> mapping, for the register strategies (which use it only while the vCPU is alive and owned).</summary>
    internal nint RunAddress => _runAddress;

    /// <summary>
    /// Sets the CPUID leaves the guest sees (x86). Wraps KVM_SET_CPUID2. Call before the first run;
    /// <see cref="Kvm.GetSupportedCpuid"/> gives what KVM allows.
    /// </summary>
    /// <exception cref="KvmException">The ioctl failed (e.g. E2BIG for too many leaves).</exception>
    public void SetCpuid(ReadOnlySpan<CpuidEntry> entries)
    {
        _vm.Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SetCpuid));
        int bytes = kvm_cpuid2.EntryOffset(entries.Length);
        using var buf = new NativeBuffer(bytes);
        var view = new StructView(buf, 0, bytes);
        view.At<kvm_cpuid2>(0).nent = (uint)entries.Length;
        for (int i = 0; i < entries.Length; i++)
        {
            var e = entries[i];
            view.At<kvm_cpuid_entry2>(kvm_cpuid2.EntryOffset(i)) = new kvm_cpuid_entry2
            {
                function = e.Function, index = e.Index, flags = e.Flags,
                eax = e.Eax, ebx = e.Ebx, ecx = e.Ecx, edx = e.Edx,
            };
        }
        int r = Kernel.Ioctl(Fd, KvmIoctls.X86.KVM_SET_CPUID2, view.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.X86.KVM_SET_CPUID2, r, $"vcpu {Id}, {entries.Length} entries");
    }

    /// <summary>
    /// Releases the vCPU: unmaps <c>kvm_run</c>, closes the fd and removes the vCPU from its VM.
    /// Idempotent; callable from any thread. A disposed vCPU can never be entered again; every later
    /// use throws <see cref="ObjectDisposedException"/>, and pending Invoke actions fail with it.
    /// </summary>
    /// <remarks>
    /// If another thread owns the vCPU, it is served like <see cref="Invoke"/>: a running vCPU is
    /// kicked, and this call waits until the owner lets go — its interrupted run, or its next
    /// <see cref="Run()"/> or register access, throws <see cref="ObjectDisposedException"/> on its
    /// thread — so nothing is unmapped or closed while the owner may still use an exit view or an
    /// ioctl. An owner that ended, or called <see cref="ReleaseOwnership"/>, is not waited for. So do
    /// not dispose, from another thread, a vCPU whose owner thread lives on without running it again
    /// (release it there first).
    /// </remarks>
    public void Dispose()
    {
        if (!_core.BeginDispose()) return; // another thread disposed it
        _timer?.Dispose();
        // Leave the VM (and its dirty tracker) before the ring and kvm_run go away.
        _vm.OnVcpuDisposed(this);
        _hooks.Release();
        DirtyRing?.Dispose();
        _core.ReleaseResources();
    }
}
