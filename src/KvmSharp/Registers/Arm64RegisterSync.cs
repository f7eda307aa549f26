using System.Collections.ObjectModel;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
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
/// registers before that shows the faulting instruction. Before the first register <i>write</i>
/// after such an exit (and before <see cref="SaveState"/>, <see cref="RestoreState"/> and
/// <see cref="Initialize"/>) the cache completes the access with a KVM_RUN that has
/// <c>immediate_exit</c> set and forgets what it had read, so the completion cannot overwrite the new
/// values. Fill in the data of an MMIO read before writing any register.</para>
/// <para>Not thread-safe: use it on the vCPU's thread, or while the vCPU is not running.</para>
/// </remarks>
public sealed class Arm64RegisterSync : IRegisterSync, IRunHooks
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

    private readonly Vcpu _vcpu;
    private readonly IKernel _kernel;
    private readonly NativeBuffer _buffer;
    private readonly StructView _oneReg, _mpState, _init, _events, _core;
    // A value is valid when its epoch is the current one (AfterRun forgets everything by bumping it;
    // 64 bits never wrap) or it is dirty.
    private readonly long[] _coreEpoch = new long[CoreSlots];
    private readonly bool[] _coreDirty = new bool[CoreSlots];
    private long _epoch = 1;

    // Dirty registers (entry = core slot, or CoreSlots + system-register slot), in write order.
    private readonly List<int> _dirty = [];
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
    private uint _target;

    internal Arm64RegisterSync(Vcpu vcpu)
    {
        _vcpu = vcpu;
        _kernel = vcpu.Kernel;
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
        int r = _kernel.Ioctl(_vcpu.VirtualMachine.Fd, KvmIoctls.Arm64.KVM_ARM_PREFERRED_TARGET, _init.Address);
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

    // ---- core registers ------------------------------------------------------------------------

#pragma warning disable CS1591 // register names document themselves
    public ulong X0 { get => GetGeneralRegister(0); set => SetGeneralRegister(0, value); }
    public ulong X1 { get => GetGeneralRegister(1); set => SetGeneralRegister(1, value); }
    public ulong X2 { get => GetGeneralRegister(2); set => SetGeneralRegister(2, value); }
    public ulong X3 { get => GetGeneralRegister(3); set => SetGeneralRegister(3, value); }
    public ulong X4 { get => GetGeneralRegister(4); set => SetGeneralRegister(4, value); }
    public ulong X5 { get => GetGeneralRegister(5); set => SetGeneralRegister(5, value); }
    public ulong X6 { get => GetGeneralRegister(6); set => SetGeneralRegister(6, value); }
    public ulong X7 { get => GetGeneralRegister(7); set => SetGeneralRegister(7, value); }
    public ulong X8 { get => GetGeneralRegister(8); set => SetGeneralRegister(8, value); }
    public ulong X9 { get => GetGeneralRegister(9); set => SetGeneralRegister(9, value); }
    public ulong X10 { get => GetGeneralRegister(10); set => SetGeneralRegister(10, value); }
    public ulong X11 { get => GetGeneralRegister(11); set => SetGeneralRegister(11, value); }
    public ulong X12 { get => GetGeneralRegister(12); set => SetGeneralRegister(12, value); }
    public ulong X13 { get => GetGeneralRegister(13); set => SetGeneralRegister(13, value); }
    public ulong X14 { get => GetGeneralRegister(14); set => SetGeneralRegister(14, value); }
    public ulong X15 { get => GetGeneralRegister(15); set => SetGeneralRegister(15, value); }
    public ulong X16 { get => GetGeneralRegister(16); set => SetGeneralRegister(16, value); }
    public ulong X17 { get => GetGeneralRegister(17); set => SetGeneralRegister(17, value); }
    public ulong X18 { get => GetGeneralRegister(18); set => SetGeneralRegister(18, value); }
    public ulong X19 { get => GetGeneralRegister(19); set => SetGeneralRegister(19, value); }
    public ulong X20 { get => GetGeneralRegister(20); set => SetGeneralRegister(20, value); }
    public ulong X21 { get => GetGeneralRegister(21); set => SetGeneralRegister(21, value); }
    public ulong X22 { get => GetGeneralRegister(22); set => SetGeneralRegister(22, value); }
    public ulong X23 { get => GetGeneralRegister(23); set => SetGeneralRegister(23, value); }
    public ulong X24 { get => GetGeneralRegister(24); set => SetGeneralRegister(24, value); }
    public ulong X25 { get => GetGeneralRegister(25); set => SetGeneralRegister(25, value); }
    public ulong X26 { get => GetGeneralRegister(26); set => SetGeneralRegister(26, value); }
    public ulong X27 { get => GetGeneralRegister(27); set => SetGeneralRegister(27, value); }
    public ulong X28 { get => GetGeneralRegister(28); set => SetGeneralRegister(28, value); }
    public ulong X29 { get => GetGeneralRegister(29); set => SetGeneralRegister(29, value); }
    public ulong X30 { get => GetGeneralRegister(30); set => SetGeneralRegister(30, value); }
#pragma warning restore CS1591

    /// <summary>SP_EL0 (<c>regs.sp</c>). Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong Sp { get => ReadCore<ulong>(SlotSp); set => WriteCore<ulong>(SlotSp) = value; }

    /// <summary>The program counter. Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong Pc { get => ReadCore<ulong>(SlotPc); set => WriteCore<ulong>(SlotPc) = value; }

    /// <summary>PSTATE (NZCV, DAIF, the exception level and SP selection in M[3:0]). Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <remarks>KVM refuses (EINVAL, at the next write-back) a mode the vCPU cannot be in, e.g. EL2 without nested virtualisation.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong Pstate { get => ReadCore<ulong>(SlotPstate); set => WriteCore<ulong>(SlotPstate) = value; }

    /// <summary>SP_EL1. Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong SpEl1 { get => ReadCore<ulong>(SlotSpEl1); set => WriteCore<ulong>(SlotSpEl1) = value; }

    /// <summary>ELR_EL1. Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong ElrEl1 { get => ReadCore<ulong>(SlotElrEl1); set => WriteCore<ulong>(SlotElrEl1) = value; }

    /// <summary>FPSR (32 bits). Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public uint Fpsr { get => ReadCore<uint>(SlotFpsr); set => WriteCore<uint>(SlotFpsr) = value; }

    /// <summary>FPCR (32 bits). Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public uint Fpcr { get => ReadCore<uint>(SlotFpcr); set => WriteCore<uint>(SlotFpcr) = value; }

    /// <summary>Banked SPSR <paramref name="index"/> (0 EL1, 1 ABT, 2 UND, 3 IRQ, 4 FIQ). Wraps KVM_GET_ONE_REG.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not in 0–4.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong GetSpsr(int index) => ReadCore<ulong>(SpsrSlot(index));

    /// <summary>Writes banked SPSR <paramref name="index"/> (0–4); it reaches KVM before the next run. Wraps KVM_SET_ONE_REG.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not in 0–4.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">Completing a pending MMIO access failed.</exception>
    public void SetSpsr(int index, ulong value) => WriteCore<ulong>(SpsrSlot(index)) = value;

    private static int SpsrSlot(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 4u, nameof(index));
        return SlotSpsr + index;
    }

    /// <summary>SIMD/FP register V<paramref name="index"/> (0–31), 128 bits. Wraps KVM_GET_ONE_REG.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not in 0–31.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed (EINVAL when the vCPU has SVE, whose Z registers replace the V ids).</exception>
    public UInt128 GetV(int index) => ReadCore<UInt128>(VSlot(index));

    /// <summary>Writes SIMD/FP register V<paramref name="index"/> (0–31); it reaches KVM before the next run. Wraps KVM_SET_ONE_REG.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not in 0–31.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">Completing a pending MMIO access failed.</exception>
    public void SetV(int index, UInt128 value) => WriteCore<UInt128>(VSlot(index)) = value;

    private static int VSlot(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 31u, nameof(index));
        return SlotV + index;
    }

    /// <inheritdoc/>
    /// <remarks>PC. Wraps KVM_GET/SET_ONE_REG.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    public ulong ProgramCounter { get => Pc; set => Pc = value; }

    /// <inheritdoc/>
    /// <remarks>X0–X30 (0–30). Wraps KVM_GET_ONE_REG.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    public ulong GetGeneralRegister(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 30u, nameof(index));
        return ReadCore<ulong>(index);
    }

    /// <inheritdoc/>
    /// <remarks>X0–X30 (0–30); the value reaches KVM before the next run. Wraps KVM_SET_ONE_REG.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    public void SetGeneralRegister(int index, ulong value)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 30u, nameof(index));
        WriteCore<ulong>(index) = value;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private T ReadCore<T>(int slot) where T : unmanaged
    {
        RequireReady();
        if (_coreEpoch[slot] != _epoch && !_coreDirty[slot]) Fetch(slot);
        return _core.At<T>(slot * SlotSize);
    }

    /// <summary>Marks a core register valid and dirty and returns its cache slot (no fetch: ONE_REG writes whole registers).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref T WriteCore<T>(int slot) where T : unmanaged
    {
        BeginWrite();
        _coreEpoch[slot] = _epoch;
        if (!_coreDirty[slot])
        {
            _coreDirty[slot] = true;
            _dirty.Add(slot);
        }
        return ref _core.At<T>(slot * SlotSize);
    }

    // ---- system registers ----------------------------------------------------------------------

    /// <summary>
    /// The system, timer and firmware registers of this vCPU: KVM_GET_REG_LIST minus core and SVE
    /// ids, 32- and 64-bit ones only (what QEMU keeps in its cpreg list). Fetched once, on first
    /// need. Wraps KVM_GET_REG_LIST.
    /// </summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public IReadOnlyList<ulong> SystemRegisterIds
    {
        get
        {
            RequireReady();
            EnsureRegisterList();
            return _sysIdsView!;
        }
    }

    /// <summary>A register of <see cref="SystemRegisterIds"/> (a 32-bit one zero-extended). Wraps KVM_GET_ONE_REG.</summary>
    /// <exception cref="ArgumentException"><paramref name="id"/> is not in <see cref="SystemRegisterIds"/>.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong GetSystemRegister(ulong id)
    {
        int slot = SystemSlot(id);
        if (_sysEpoch[slot] != _epoch && !_sysDirty[slot]) Fetch(CoreSlots + slot);
        return _sys.At<ulong>(8 * slot);
    }

    /// <summary>Writes a register of <see cref="SystemRegisterIds"/>; it reaches KVM before the next run, whatever its level. Wraps KVM_SET_ONE_REG.</summary>
    /// <exception cref="ArgumentException"><paramref name="id"/> is not in <see cref="SystemRegisterIds"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The register is 32 bits wide and <paramref name="value"/> is not.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">Completing a pending MMIO access failed.</exception>
    public void SetSystemRegister(ulong id, ulong value)
    {
        int slot = SystemSlot(id);
        if (Arm64RegisterIds.SizeOf(id) == 4)
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, uint.MaxValue, nameof(value));
        BeginWrite();
        _sys.At<ulong>(8 * slot) = value;
        _sysEpoch[slot] = _epoch;
        if (!_sysDirty[slot])
        {
            _sysDirty[slot] = true;
            _dirty.Add(CoreSlots + slot);
        }
    }

    /// <summary>
    /// The virtual counter CNTVCT_EL0 (<see cref="Arm64RegisterIds.TimerCnt"/>, level Full: a push
    /// below Full never writes it back unless it was set here). Wraps KVM_GET/SET_ONE_REG.
    /// </summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong TimerCounter
    {
        get => GetSystemRegister(Arm64RegisterIds.TimerCnt);
        set => SetSystemRegister(Arm64RegisterIds.TimerCnt, value);
    }

    private int SystemSlot(ulong id)
    {
        RequireReady();
        EnsureRegisterList();
        if (!_sysIndex!.TryGetValue(id, out int slot))
        {
            string why = Arm64RegisterIds.IsCore(id)
                ? "it is a core register: use the typed accessors (X0–X30, Pc, GetV, …)"
                : "KVM_GET_REG_LIST does not list it for this vCPU";
            throw new ArgumentException($"Register {Arm64RegisterIds.Name(id)} (0x{id:X16}) is not a system register of this vCPU: {why}.", nameof(id));
        }
        return slot;
    }

    private void EnsureRegisterList()
    {
        if (_sysIds is not null) return;
        RequireReady();
        var ids = FetchRegisterList().Where(IsCachedSystemRegister).ToArray();
        _sysBuffer = new NativeBuffer(Math.Max(8, 8 * ids.Length));
        _sys = new StructView(_sysBuffer, 0, 8 * ids.Length);
        _sysEpoch = new long[ids.Length];
        _sysDirty = new bool[ids.Length];
        _sysIndex = new Dictionary<ulong, int>(ids.Length);
        for (int i = 0; i < ids.Length; i++) _sysIndex[ids[i]] = i;
        _sysIdsView = Array.AsReadOnly(ids);
        _sysIds = ids;
    }

    private static bool IsCachedSystemRegister(ulong id)
    {
        if ((id & Arm64RegisterIds.ArchMask) != Arm64RegisterIds.Arch) return false;
        ulong group = Arm64RegisterIds.GroupOf(id);
        if (group == Arm64RegisterIds.Core || group == Arm64RegisterIds.Sve) return false;
        ulong size = id & Arm64RegisterIds.SizeMask;
        return size == Arm64RegisterIds.SizeU32 || size == Arm64RegisterIds.SizeU64;
    }

    /// <summary>KVM_GET_REG_LIST: a first call with n = 0 fails with E2BIG and writes the count; then the real call.</summary>
    private ulong[] FetchRegisterList()
    {
        int n = 0;
        for (int attempt = 0; ; attempt++)
        {
            int bytes = 8 + 8 * n;
            using var buffer = new NativeBuffer(bytes);
            var view = new StructView(buffer, 0, bytes);
            view.At<kvm_reg_list>(0).n = (ulong)n;
            int r = _kernel.Ioctl(_vcpu.Fd, KvmIoctls.KVM_GET_REG_LIST, view.Address);
            ulong count = view.At<kvm_reg_list>(0).n;
            if (r == -Errno.E2BIG && attempt < 3 && count > (ulong)n && count <= 1 << 20)
            {
                n = (int)count; // the list's length, written by KVM even when it refuses
                continue;
            }
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_GET_REG_LIST, r, $"vcpu {_vcpu.Id}, n {n}");
            int got = (int)Math.Min(count, (ulong)n);
            return MemoryMarshal.Cast<byte, ulong>(view.Span.Slice(8, 8 * got)).ToArray();
        }
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

    // ---- the engine ----------------------------------------------------------------------------

    private ulong IdOf(int entry) => entry < CoreSlots ? CoreIds[entry] : _sysIds![entry - CoreSlots];

    private nint AddressOf(int entry) =>
        entry < CoreSlots ? _core.Address + entry * SlotSize : _sys.Address + (entry - CoreSlots) * 8;

    private void Fetch(int entry)
    {
        OneReg(KvmIoctls.KVM_GET_ONE_REG, entry);
        if (entry < CoreSlots) _coreEpoch[entry] = _epoch;
        else _sysEpoch[entry - CoreSlots] = _epoch;
    }

    private void Write(int entry)
    {
        OneReg(KvmIoctls.KVM_SET_ONE_REG, entry);
        if (entry < CoreSlots) _coreDirty[entry] = false;
        else _sysDirty[entry - CoreSlots] = false;
    }

    /// <summary>KVM_GET_ONE_REG or KVM_SET_ONE_REG of register <paramref name="entry"/>, to or from its cache slot.</summary>
    private void OneReg(KvmIoctl ioctl, int entry)
    {
        ulong id = IdOf(entry);
        ref var arg = ref _oneReg.At<kvm_one_reg>(0);
        arg.id = id;
        arg.addr = (ulong)AddressOf(entry);
        int r = _kernel.Ioctl(_vcpu.Fd, ioctl, _oneReg.Address);
        if (r < 0) ThrowHelper.ThrowKvm(ioctl, r, Details(id));
    }

    private string Details(ulong id) => $"vcpu {_vcpu.Id}, register {Arm64RegisterIds.Name(id)} (0x{id:X16})";

    private bool HasDirty => _dirty.Count != 0 || _mpDirty || _eventsDirty;

    /// <summary>Writes every dirty register (in write order), then events, then MP state. A failure leaves the unwritten ones dirty.</summary>
    private void Flush()
    {
        int done = 0;
        try
        {
            for (; done < _dirty.Count; done++) Write(_dirty[done]);
        }
        finally
        {
            _dirty.RemoveRange(0, done);
        }
        if (_eventsDirty)
        {
            int r = _kernel.Ioctl(_vcpu.Fd, KvmIoctls.Arm64.KVM_SET_VCPU_EVENTS, _events.Address);
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.Arm64.KVM_SET_VCPU_EVENTS, r, $"vcpu {_vcpu.Id}");
            _eventsDirty = false;
        }
        if (_mpDirty)
        {
            int r = _kernel.Ioctl(_vcpu.Fd, KvmIoctls.KVM_SET_MP_STATE, _mpState.Address);
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_SET_MP_STATE, r, $"vcpu {_vcpu.Id}, state {(MpState)_mpState.At<kvm_mp_state>(0).mp_state}");
            _mpDirty = false;
        }
    }

    /// <summary>Forgets every cached value that is not dirty (dirty ones are newer than KVM's).</summary>
    private void ForgetValues()
    {
        _epoch++;
        _mpValid = _mpDirty;
        _eventsValid = _eventsDirty;
    }

    private bool CoreValid(int slot) => _coreEpoch[slot] == _epoch || _coreDirty[slot];

    private bool SysValid(int slot) => _sysEpoch[slot] == _epoch || _sysDirty[slot];

    /// <inheritdoc/>
    /// <remarks>Fetches, one KVM_GET_ONE_REG each, every core and system register not cached, then MP state and events.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    public void Synchronize()
    {
        RequireReady();
        EnsureRegisterList();
        for (int i = 0; i < CoreSlots; i++)
            if (!CoreValid(i)) Fetch(i);
        for (int i = 0; i < _sysEpoch.Length; i++)
            if (!SysValid(i)) Fetch(CoreSlots + i);
        if (!_eventsValid) FetchEvents();
        if (!_mpValid) FetchMpState();
    }

    /// <inheritdoc/>
    /// <remarks>
    /// Only TIMER_CNT and PTIMER_CNT are <see cref="SyncLevel.Full"/>; everything else, MP state and
    /// events included, is <see cref="SyncLevel.Runtime"/>, so <c>Push(Runtime)</c> and
    /// <c>Push(Reset)</c> write the same registers. Registers never read are not written.
    /// </remarks>
    public void Push(SyncLevel level)
    {
        _vcpu.CheckAccess();
        for (int i = 0; i < CoreSlots; i++)
        {
            if (CoreValid(i) && !_coreDirty[i])
            {
                _coreDirty[i] = true;
                _dirty.Add(i);
            }
        }
        for (int i = 0; i < _sysEpoch.Length; i++)
        {
            if (SysValid(i) && !_sysDirty[i] && Arm64RegisterIds.LevelOf(_sysIds![i]) <= level)
            {
                _sysDirty[i] = true;
                _dirty.Add(CoreSlots + i);
            }
        }
        _eventsDirty |= _eventsValid;
        _mpDirty |= _mpValid;
        Flush();
    }

    /// <inheritdoc cref="IRegisterSync.PostReset"/>
    public void PostReset() => Push(SyncLevel.Reset);

    /// <inheritdoc cref="IRegisterSync.PostInit"/>
    public void PostInit() => Push(SyncLevel.Full);

    /// <inheritdoc/>
    public void Invalidate()
    {
        _vcpu.CheckAccess();
        Flush();
        ForgetValues();
    }

    /// <inheritdoc/>
    /// <remarks>
    /// A pending MMIO access is completed first (as <c>api.rst</c> asks before saving state), so the
    /// state never holds a half-done instruction. Keys: the ONE_REG id of every core and system
    /// register, <see cref="Arm64RegisterIds.MpStateKey"/> and <see cref="Arm64RegisterIds.EventsKey"/>.
    /// </remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    public RegisterState SaveState()
    {
        RequireReady();
        if (_pendingAccess) CompletePendingAccessCore();
        Synchronize();
        var sets = new SortedDictionary<ulong, byte[]>();
        for (int i = 0; i < CoreSlots; i++) sets[CoreIds[i]] = Bytes(i).ToArray();
        for (int i = 0; i < _sysIds!.Length; i++) sets[_sysIds[i]] = Bytes(CoreSlots + i).ToArray();
        sets[Arm64RegisterIds.MpStateKey] = _mpState.Span.ToArray();
        sets[Arm64RegisterIds.EventsKey] = _events.Span.ToArray();
        return new RegisterState(KvmArchitecture.Arm64, sets);
    }

    private Span<byte> Bytes(int entry) => entry < CoreSlots
        ? _core.Span.Slice(entry * SlotSize, Arm64RegisterIds.SizeOf(CoreIds[entry]))
        : _sys.Span.Slice((entry - CoreSlots) * 8, Arm64RegisterIds.SizeOf(_sysIds![entry - CoreSlots]));

    /// <inheritdoc/>
    /// <remarks>Writes every register (one KVM_SET_ONE_REG each, TIMER_CNT included), events and MP state now.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    public void RestoreState(RegisterState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state.Architecture != KvmArchitecture.Arm64)
            throw new ArgumentException($"Cannot restore {state.Architecture} registers into an arm64 vCPU.", nameof(state));
        RequireReady();
        EnsureRegisterList();
        int expected = CoreSlots + _sysIds!.Length + 2;
        for (int e = 0; e < CoreSlots + _sysIds.Length; e++)
            Require(state, IdOf(e), Bytes(e).Length);
        Require(state, Arm64RegisterIds.MpStateKey, 4);
        Require(state, Arm64RegisterIds.EventsKey, EventsSize);
        if (state.Sets.Count() != expected)
        {
            ulong extra = state.Sets.First(k => k != Arm64RegisterIds.MpStateKey && k != Arm64RegisterIds.EventsKey && !CoreIds.Contains(k) && !_sysIndex!.ContainsKey(k));
            throw new ArgumentException($"The state holds register {Arm64RegisterIds.Name(extra)} (0x{extra:X16}), which this vCPU does not have.", nameof(state));
        }

        BeginWrite();
        _dirty.Clear();
        for (int e = 0; e < CoreSlots + _sysIds.Length; e++)
        {
            _ = state.TryGet(IdOf(e), out var bytes);
            bytes.CopyTo(Bytes(e));
            _dirty.Add(e);
        }
        Array.Fill(_coreEpoch, _epoch);
        Array.Fill(_coreDirty, true);
        Array.Fill(_sysEpoch, _epoch);
        Array.Fill(_sysDirty, true);
        _ = state.TryGet(Arm64RegisterIds.MpStateKey, out var mp);
        mp.CopyTo(_mpState.Span);
        _ = state.TryGet(Arm64RegisterIds.EventsKey, out var events);
        events.CopyTo(_events.Span);
        _mpValid = _mpDirty = _eventsValid = _eventsDirty = true;
        Flush();
    }

    private static void Require(RegisterState state, ulong key, int size)
    {
        if (!state.TryGet(key, out var bytes) || bytes.Length != size)
            throw new ArgumentException($"The state lacks register {Arm64RegisterIds.Name(key)} (0x{key:X16}) or it is not {size} bytes.", nameof(state));
    }

    [DoesNotReturn]
    private static void ThrowNotInitialized() =>
        throw new InvalidOperationException("The arm64 vCPU is not initialized; call Initialize first: KVM returns ENOEXEC before KVM_ARM_VCPU_INIT.");

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void IRunHooks.BeforeRun()
    {
        if (HasDirty) Flush();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void IRunHooks.AfterRun(int result)
    {
        // arm64 has no sync regs: the run may have changed every register. A KVM_RUN that returns
        // (EINTR included) has completed any earlier MMIO access; a new MMIO exit leaves one pending.
        ForgetValues();
        _pendingAccess = result >= 0 && _vcpu.LastExitReason == KvmExitMmio;
    }

    void IRunHooks.Release()
    {
        _buffer.Dispose();
        _sysBuffer?.Dispose();
    }
}
