using System.Collections.ObjectModel;
using System.Runtime.CompilerServices;
using KvmSharp.Interop;
using KvmSharp.Interop.Arm64;

namespace KvmSharp.Registers;

/// <summary>
/// The arm64 register cache of one vCPU. arm64 KVM has no register sync regs: every register moves
/// on its own with KVM_GET/SET_ONE_REG, so the cache keeps a valid and a dirty bit per register
/// (reading the PC fetches the PC and nothing else). Core registers (X0–X30, SP, PC, PSTATE, SP_EL1,
/// ELR_EL1, SPSR, V0–V31, FPSR, FPCR) have computed ids (<see cref="Arm64RegisterIds"/>); system,
/// timer and firmware registers come from KVM_GET_REG_LIST. MP state and events move with their
/// own ioctls and belong to the saved state.
/// </summary>
/// <remarks>
/// <para>Call <see cref="Initialize"/> (KVM_ARM_VCPU_INIT) before anything else: until then KVM
/// refuses register access and runs with ENOEXEC, and this class throws
/// <see cref="InvalidOperationException"/> instead of asking it.</para>
/// <para>Levels (QEMU's <c>kvm_arm_cpreg_level</c>): the timer counters TIMER_CNT and PTIMER_CNT are
/// <see cref="SyncLevel.Full"/>, because writing them moves guest time; everything else, MP state and
/// events included, is <see cref="SyncLevel.Runtime"/>. A dirty register is always written before the
/// next run, whatever its level.</para>
/// <para>MMIO: after a KVM_EXIT_MMIO exit KVM finishes the access at the next KVM_RUN — it stores the
/// loaded value (from the exit's data) into the target register and advances the PC by 4. Reading
/// registers before that shows the faulting instruction. Before a register <i>write</i> the
/// completion could undo — any write after an MMIO read (whose target register the exit does not
/// name), a write of the PC or PSTATE after an MMIO write, a system register, MP state or events —
/// and before <see cref="SaveState"/>, <see cref="RestoreState"/> and <see cref="Initialize"/>,
/// the cache completes the access with a KVM_RUN that has <c>immediate_exit</c> set and forgets
/// what it had read, so the completion cannot overwrite the new values. Other core registers
/// written after an MMIO write reach KVM before the next run, whose entry completes the write: a
/// handler that reads the PC and writes X0 costs two ONE_REG ioctls and one KVM_RUN. Fill in the
/// data of an MMIO read before writing any register.</para>
/// <para>Not thread-safe: use it on the vCPU's thread, or while the vCPU is not running.</para>
/// </remarks>
public sealed partial class Arm64RegisterSync : IRegisterSync, IRunHooks
{
    // Core register slots, in struct kvm_regs order.
    private const int SlotSp = 31, SlotPc = 32, SlotPstate = 33, SlotSpEl1 = 34, SlotElrEl1 = 35, SlotSpsr = 36,
        SlotV = 41, SlotFpsr = 73, SlotFpcr = 74, CoreSlots = 75, SlotSize = 16;

    // The native buffer: ONE_REG argument, MP state, VCPU_INIT argument, events, then the core values.
    private const int OneRegOffset = 0, MpStateOffset = 16, InitOffset = 32, EventsOffset = 64, CoreOffset = 128,
        BufferSize = CoreOffset + CoreSlots * SlotSize;

    // offsetof(struct kvm_vcpu_init, features); the layout tests check the struct.
    private const int InitFeaturesOffset = 4;
    private const int EventsSize = 64;
    private const uint KvmExitMmio = 6;

    private static readonly ulong[] CoreIds = BuildCoreIds();

    private readonly VcpuCore _vcpu; // the vCPU's lower half: fd, kernel seam, kvm_run, ownership gate
    private readonly IKernel _kernel;
    private readonly bool _nativeKernel; // the seam is the real kernel: ONE_REG is a direct libc call (see OneReg)
    private readonly NativeBuffer _buffer;
    private readonly StructView _oneReg, _mpState, _init, _events, _core;
    // A value is valid when its epoch is the current one (AfterRun forgets everything by bumping it;
    // 64 bits never wrap) or it is dirty.
    private readonly long[] _coreEpoch = new long[CoreSlots];
    private readonly bool[] _coreDirty = new bool[CoreSlots];
    private long _epoch = 1;

    // Dirty registers (entry = core slot, or CoreSlots + system-register slot), in write order: the
    // first _dirtyCount entries. Each entry is in it at most once (its dirty flag says so), so the
    // array holds every register (it grows when the system registers become known).
    // PERF: an array and a count in this object rather than a List: the write-back before each run
    // reads them with no call (see BeforeRun).
    private int[] _dirtyEntries = new int[CoreSlots];
    private int _dirtyCount;
    private bool _mpValid, _mpDirty, _eventsValid, _eventsDirty;

    // System registers: KVM_GET_REG_LIST minus core and SVE ids, U32/U64 only; fetched on first need.
    private ulong[]? _sysIds;
    private ReadOnlyCollection<ulong>? _sysIdsView;
    private Dictionary<ulong, int>? _sysIndex;
    private NativeBuffer? _sysBuffer;
    private StructView _sys;
    private long[] _sysEpoch = [];
    private bool[] _sysDirty = [];

    private bool _initialized;
    private bool _pendingAccess;
    private bool _pendingIsWrite; // the pending access is an MMIO write (kvm_run.mmio.is_write)
    // kvm_run.mmio.is_write (arm64): the exit union's offset plus the field's (HotPathLayoutTests check it).
    internal const int MmioIsWriteOffset = Interop.Arm64.kvm_run.ExitUnionOffset + 20;
    private uint _target;

    internal Arm64RegisterSync(VcpuCore vcpu)
    {
        _vcpu = vcpu;
        _kernel = vcpu.Kernel;
        _nativeKernel = vcpu.NativeKernel;
        _buffer = new NativeBuffer(BufferSize);
        _oneReg = new StructView(_buffer, OneRegOffset, 16);
        _mpState = new StructView(_buffer, MpStateOffset, 4);
        _init = new StructView(_buffer, InitOffset, 32);
        _events = new StructView(_buffer, EventsOffset, EventsSize);
        _core = new StructView(_buffer, CoreOffset, CoreSlots * SlotSize);
    }

    private static ulong[] BuildCoreIds()
    {
        var ids = new ulong[CoreSlots];
        for (int n = 0; n <= 30; n++) ids[n] = Arm64RegisterIds.X(n);
        ids[SlotSp] = Arm64RegisterIds.Sp;
        ids[SlotPc] = Arm64RegisterIds.Pc;
        ids[SlotPstate] = Arm64RegisterIds.Pstate;
        ids[SlotSpEl1] = Arm64RegisterIds.SpEl1;
        ids[SlotElrEl1] = Arm64RegisterIds.ElrEl1;
        for (int i = 0; i < 5; i++) ids[SlotSpsr + i] = Arm64RegisterIds.Spsr(i);
        for (int n = 0; n < 32; n++) ids[SlotV + n] = Arm64RegisterIds.V(n);
        ids[SlotFpsr] = Arm64RegisterIds.Fpsr;
        ids[SlotFpcr] = Arm64RegisterIds.Fpcr;
        return ids;
    }

    /// <inheritdoc/>
    public KvmArchitecture Architecture => KvmArchitecture.Arm64;

    /// <summary>The core register ids (X0–X30, SP, PC, PSTATE, SP_EL1, ELR_EL1, SPSR[0–4], V0–V31, FPSR, FPCR), in <c>struct kvm_regs</c> order.</summary>
    public static IReadOnlyList<ulong> CoreRegisterIds { get; } = Array.AsReadOnly(CoreIds);

    /// <summary>True once <see cref="Initialize"/> succeeded.</summary>
    public bool IsInitialized => _initialized;

    /// <summary>The target KVM_ARM_PREFERRED_TARGET named and <see cref="Initialize"/> used (0 before).</summary>
    public uint Target => _target;

    /// <summary>
    /// True between an MMIO exit and the KVM_RUN that completes it (the next run, or the completion
    /// this cache starts before a register write). While true, registers read show the faulting instruction.
    /// </summary>
    public bool HasPendingAccess => _pendingAccess;

    // ---- bring-up ------------------------------------------------------------------------------

    /// <summary>
    /// Initializes the vCPU: asks the VM for its preferred target (KVM_ARM_PREFERRED_TARGET), then
    /// calls KVM_ARM_VCPU_INIT with PSCI 0.2 enabled (and POWER_OFF when asked). Wraps
    /// KVM_ARM_PREFERRED_TARGET and KVM_ARM_VCPU_INIT. Calling it again resets the vCPU (as QEMU does
    /// at system reset); the features other than POWER_OFF must stay the same.
    /// </summary>
    /// <param name="powerOff">Start the vCPU powered off (MP state STOPPED) until a PSCI CPU_ON or
    /// a write of <see cref="MpState"/> makes it runnable.</param>
    /// <remarks>Dirty registers are written first and the whole cache is then forgotten, since the
    /// init resets every register; a pending MMIO access is completed before that.</remarks>
    /// <exception cref="KvmException">An ioctl failed (e.g. EINVAL for a target or feature set KVM refuses).</exception>
    public void Initialize(bool powerOff = false)
    {
        _vcpu.CheckAccess();
        if (_initialized)
        {
            if (_pendingAccess) CompletePendingAccessCore();
            Flush();
        }

        _init.Span.Clear();
        int r = _kernel.Ioctl(_vcpu.VmFd, KvmIoctls.Arm64.KVM_ARM_PREFERRED_TARGET, _init.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.Arm64.KVM_ARM_PREFERRED_TARGET, r, $"for vcpu {_vcpu.Id}");

        uint features = 1u << kvm_vcpu_init.KVM_ARM_VCPU_PSCI_0_2;
        if (powerOff) features |= 1u << kvm_vcpu_init.KVM_ARM_VCPU_POWER_OFF;
        _init.At<uint>(InitFeaturesOffset) = features;
        uint target = _init.At<kvm_vcpu_init>(0).target;
        r = _kernel.Ioctl(_vcpu.Fd, KvmIoctls.Arm64.KVM_ARM_VCPU_INIT, _init.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.Arm64.KVM_ARM_VCPU_INIT, r, $"vcpu {_vcpu.Id}, target {target}, features 0x{features:X}");

        _target = target;
        _initialized = true;
        _pendingAccess = false;
        ForgetValues();
    }

    // ---- MP state and events -------------------------------------------------------------------

    /// <inheritdoc/>
    /// <remarks>
    /// On arm64 only <see cref="MpState.Runnable"/>, <see cref="MpState.Stopped"/> (powered off by
    /// PSCI CPU_OFF or <see cref="Initialize"/>) and <see cref="MpState.Suspended"/>
    /// (KVM_CAP_ARM_SYSTEM_SUSPEND) exist. A write reaches KVM before the next run. Wraps KVM_GET/SET_MP_STATE.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException">Another state is written.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    public MpState MpState
    {
        get
        {
            RequireReady();
            if (!_mpValid) FetchMpState();
            return (MpState)_mpState.At<kvm_mp_state>(0).mp_state;
        }
        set
        {
            if (value is not (MpState.Runnable or MpState.Stopped or MpState.Suspended))
                throw new ArgumentOutOfRangeException(nameof(value), value, "arm64 vCPUs are only RUNNABLE, STOPPED or SUSPENDED.");
            BeginWrite();
            _mpState.At<kvm_mp_state>(0).mp_state = (uint)value;
            _mpValid = true;
            _mpDirty = true;
        }
    }

    /// <summary>Pending SError / external data abort. A write reaches KVM before the next run. Wraps KVM_GET/SET_VCPU_EVENTS.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public Arm64VcpuEvents Events
    {
        get
        {
            RequireReady();
            if (!_eventsValid) FetchEvents();
            ref var e = ref _events.At<kvm_vcpu_events>(0);
            return new Arm64VcpuEvents(e.serror_pending != 0, e.serror_has_esr != 0, e.ext_dabt_pending != 0, e.serror_esr);
        }
        set
        {
            BeginWrite();
            _events.Span.Clear(); // padding and reserved words must be zero
            ref var e = ref _events.At<kvm_vcpu_events>(0);
            e.serror_pending = value.SErrorPending ? (byte)1 : (byte)0;
            e.serror_has_esr = value.SErrorHasEsr ? (byte)1 : (byte)0;
            e.ext_dabt_pending = value.ExtDabtPending ? (byte)1 : (byte)0;
            e.serror_esr = value.SErrorEsr;
            _eventsValid = true;
            _eventsDirty = true;
        }
    }

    private void FetchMpState()
    {
        int r = _kernel.Ioctl(_vcpu.Fd, KvmIoctls.KVM_GET_MP_STATE, _mpState.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_GET_MP_STATE, r, $"vcpu {_vcpu.Id}");
        _mpValid = true;
    }

    private void FetchEvents()
    {
        int r = _kernel.Ioctl(_vcpu.Fd, KvmIoctls.Arm64.KVM_GET_VCPU_EVENTS, _events.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.Arm64.KVM_GET_VCPU_EVENTS, r, $"vcpu {_vcpu.Id}");
        _eventsValid = true;
    }

    // ---- MMIO completion -------------------------------------------------------------------------

    /// <summary>
    /// Completes a pending MMIO access now, if there is one: runs KVM_RUN with <c>immediate_exit</c>
    /// set, so KVM stores a load's data into its register and advances the PC without running guest
    /// code, then forgets what the cache had read. Register writes, <see cref="SaveState"/>,
    /// <see cref="RestoreState"/> and <see cref="Initialize"/> do this on their own. Wraps KVM_RUN.
    /// </summary>
    /// <exception cref="KvmException">KVM_RUN failed with something other than EINTR.</exception>
    public void CompletePendingAccess()
    {
        _vcpu.CheckAccess();
        if (_pendingAccess) CompletePendingAccessCore();
    }

    /// <summary>The caller may use the registers: it owns the vCPU (or nobody does) and the vCPU is initialized.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void RequireReady()
    {
        _vcpu.CheckAccess();
        if (!_initialized) ThrowNotInitialized();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void BeginWrite()
    {
        RequireReady();
        if (_pendingAccess) CompletePendingAccessCore();
    }

    private void CompletePendingAccessCore()
    {
        _vcpu.CompletePendingAccess();
        _pendingAccess = false;
        // The completion moved the PC (and loaded a register): what was read before it is stale.
        ForgetValues();
    }
}
