using System.Runtime.CompilerServices;
using KvmSharp.Interop;
using KvmSharp.Interop.S390x;

namespace KvmSharp.Registers;

/// <summary>
/// The s390x register cache of one vCPU. KVM keeps most of an s390x vCPU in its <c>kvm_run</c>
/// page: it stores the PSW and every block of the sync area it offers at each exit, loads the PSW at
/// each entry and loads the blocks flagged in <c>kvm_dirty_regs</c>. So reading any register after an
/// exit costs no ioctl, and a write costs none either: it is flagged and travels with the next
/// KVM_RUN. Ioctls are needed only for what the sync area lacks on this kernel, for the MP state and
/// the TOD epoch difference, and for the few reads before the first exit described below.
/// </summary>
/// <remarks>
/// <para><b>Sets.</b> One set per sync block (<see cref="S390xRegisterSets"/>; the bits are KVM's
/// <c>KVM_SYNC_*</c> bits) plus the PSW, the MP state and the epoch difference. KVM announces the
/// blocks it offers in <c>kvm_valid_regs</c>, which on s390x is an <i>output</i> filled when the vCPU is
/// created (<c>kvm_arch_vcpu_create</c> in arch/s390/kvm/kvm-s390.c): PREFIX, GPRS, ACRS, CRS, ARCH0,
/// PFAULT, DIAG318, RICCB/BPBC/GSCB/ETOKEN when the machine has the facility, and VRS or FPRS. The
/// strategy never writes <c>kvm_valid_regs</c>. What the sync area lacks moves with ioctls: ARCH0
/// with the ONE_REG ids TODPR, CPU_TIMER, CLOCK_COMP, PP and GBEA, PFAULT with PFTOKEN, PFSELECT and
/// PFCOMPARE (cached per register), VRS/FPRS with KVM_GET/SET_FPU (floating-point registers only),
/// GPRS with KVM_GET/SET_REGS, ACRS/CRS with KVM_GET/SET_SREGS. A block with no ioctl
/// (prefix, RICCB, GSCB, BPBC, etoken, DIAG318, vector registers) is unavailable when KVM does not
/// offer it: its accessors throw <see cref="NotSupportedException"/>.</para>
/// <para><b>Levels</b> (QEMU's <c>kvm_arch_put_registers</c> for s390x): Runtime = PSW, GPRs, VRS/FPRS
/// with the FPC; Reset adds ACRs, CRs, prefix, ARCH0, PFAULT, RICCB, GSCB, BPBC, etoken, DIAG318;
/// Full adds the MP state and the epoch difference (QEMU keeps those outside put_registers).</para>
/// <para><b>Before the first exit.</b> GPRs, ACRs, FPRs/VRs with the FPC, RICCB, GSCB and the etoken
/// live only in <c>kvm_run</c> (KVM uses the page itself as their storage; api.rst: "the kernel may use
/// the values in kvm_run even if the corresponding bit in kvm_dirty_regs is not set"), so they are
/// valid at all times. The PSW in <c>kvm_run</c> is what the next entry loads, so it is valid too. The
/// blocks KVM keeps elsewhere are fetched with their ioctl until the first exit has stored them: CRs
/// with KVM_GET_SREGS, ARCH0 and PFAULT with ONE_REG (the pfault token is not 0 but "invalid" on a new
/// vCPU, so trusting the zeroed page would be wrong). The prefix, BPBC and DIAG318 have no read ioctl;
/// until the first exit the strategy takes KVM's creation values, which match the zeroed page (prefix
/// 0, BPBC off, DIAG318 0). <see cref="Push"/> never hands over a set it has not read.</para>
/// <para><b>Resets</b> (<see cref="NormalReset"/>, <see cref="InitialReset"/>, <see cref="ClearReset"/>)
/// behave as "write back every dirty set, then reset, then forget what the reset changed". Blocks KVM
/// keeps in <c>kvm_run</c> are already where the reset acts on them, so a dirty GPR survives an initial
/// reset and is cleared by a clear reset, exactly as if it had been written first. Dirty CRs, ARCH0 and
/// PFAULT are written with KVM_SET_SREGS / ONE_REG before the reset (their flag in <c>kvm_dirty_regs</c>
/// would otherwise make the next entry undo the reset). A dirty prefix or BPBC, which have no ioctl, is
/// dropped by an initial or clear reset (which sets both to 0 — the same result as writing first) and
/// kept for the next entry by a normal reset (which leaves them alone). After the reset the PSW,
/// prefix and BPBC hold the architected values (0; a normal reset clears PSW.RI), written into
/// <c>kvm_run</c> by the strategy because KVM changes only its own copies of them (and the next entry
/// loads the PSW from <c>kvm_run</c>); CRs, ARCH0, PFAULT and the MP state are fetched again.</para>
/// <para><b>MP state.</b> A new vCPU is stopped and KVM_RUN starts it, until userspace first sets the
/// MP state: from then on KVM leaves starting and stopping to userspace, and KVM_RUN on a stopped vCPU
/// fails with EINVAL. Current kernels answer KVM_GET_MP_STATE on s390x with the state as the ioctl's
/// return value (5 or 7) instead of filling the struct; the strategy understands both forms.</para>
/// <para>Not thread-safe: use it on the vCPU's thread, or while the vCPU is not running.</para>
/// </remarks>
public sealed class S390xRegisterSync : IRegisterSync, IRunHooks
{
    // Offsets in struct kvm_sync_regs (Interop.S390x.kvm_sync_regs, checked against the uapi headers
    // by the layout tests) and in struct kvm_run.
    private const int PrefixOff = 0, GprsOff = 8, AcrsOff = 136, CrsOff = 200, Arch0Off = 328, PfaultOff = 368,
        VrsOff = 392, FpcOff = 1416, RiccbOff = 1472, Diag318Off = 1536, GscbOff = 1744, EtokenOff = 1776;
    private const int SyncSize = 1984, PswOff = 32;

    // The strategy's own buffer: a shadow sync area for the sets that move with ioctls, then the ioctl arguments.
    private const int ShOneReg = 2048, ShOneRegValue = 2064, ShSregs = 2112, ShFpu = 2304, ShMpState = 2448,
        ShEpoch = 2456, ShPsw = 2464, ShSize = 2560;

    private const S390xRegisterSets SyncArea = (S390xRegisterSets)0x1FFF;
    private const ulong PswMaskRi = 0x0000008000000000; // PSW bit 24, runtime instrumentation

    /// <summary>Blocks KVM keeps in <c>kvm_run</c> itself: always current there.</summary>
    private const S390xRegisterSets Resident = S390xRegisterSets.Gprs | S390xRegisterSets.Acrs | S390xRegisterSets.Vrs |
        S390xRegisterSets.Fprs | S390xRegisterSets.Riccb | S390xRegisterSets.Gscb | S390xRegisterSets.Etoken;

    /// <summary>Blocks KVM keeps elsewhere that have no read ioctl.</summary>
    private const S390xRegisterSets NoReadIoctl = S390xRegisterSets.Prefix | S390xRegisterSets.Bpbc | S390xRegisterSets.Diag318;

    private const S390xRegisterSets RuntimeLevel = S390xRegisterSets.Psw | S390xRegisterSets.Gprs | S390xRegisterSets.Vrs | S390xRegisterSets.Fprs;
    private const S390xRegisterSets FullLevel = S390xRegisterSets.MpState | S390xRegisterSets.EpochDifference;
    private const S390xRegisterSets RegSets = S390xRegisterSets.Arch0 | S390xRegisterSets.Pfault | S390xRegisterSets.EpochDifference;

    /// <summary>The registers that have a ONE_REG id, in the order of their <c>kvm_sync_regs</c> slots.</summary>
    private enum Reg
    {
        Todpr, CpuTimer, ClockComparator, ProgramParameter, Gbea, PfaultToken, PfaultSelect, PfaultCompare, EpochDifference,
    }

    private const uint Arch0Regs = 0x1F, PfaultRegs = 0xE0, EpochRegs = 0x100;

    /// <summary>The pfault token KVM uses for "pfault handshake not set up" (KVM_S390_PFAULT_TOKEN_INVALID).</summary>
    public const ulong PfaultTokenInvalid = ulong.MaxValue;

    private readonly Vcpu _vcpu;
    private readonly IKernel _kernel;
    private readonly NativeBuffer _shadow;
    private readonly StructView _runSync, _psw, _shadowSync, _oneReg, _oneRegValue, _sregs, _fpu, _mpState, _epoch, _pswArg;
    private readonly S390xRegisterSets _sync, _supported, _alwaysValid, _volatile, _fpSet;
    private readonly uint _volatileRegs, _syncRegs;
    private S390xRegisterSets _valid, _dirty;
    private uint _regValid, _regDirty;
    private ulong _handedOver;
    private int _vcpuResets = -1;
    private bool _released;

    internal S390xRegisterSync(Vcpu vcpu, MappedMemoryHandle run)
    {
        _vcpu = vcpu;
        _kernel = vcpu.Kernel;
        _runSync = new StructView(run, KvmArchitecture.S390x.SyncRegsHeaderOffset() + 16, SyncSize);
        _psw = new StructView(run, PswOff, 16);
        _shadow = new NativeBuffer(ShSize);
        _shadowSync = new StructView(_shadow, 0, SyncSize);
        _oneReg = new StructView(_shadow, ShOneReg, 16);
        _oneRegValue = new StructView(_shadow, ShOneRegValue, 8);
        _sregs = new StructView(_shadow, ShSregs, 192);
        _fpu = new StructView(_shadow, ShFpu, 136);
        _mpState = new StructView(_shadow, ShMpState, 4);
        _epoch = new StructView(_shadow, ShEpoch, 8);
        _pswArg = new StructView(_shadow, ShPsw, 16);

        // kvm_valid_regs is KVM's output on s390x, written when it created the vCPU.
        var offered = (S390xRegisterSets)vcpu.RunValidRegs & SyncArea;
        if ((offered & S390xRegisterSets.Vrs) != 0) offered &= ~S390xRegisterSets.Fprs;
        _sync = offered;
        _fpSet = (offered & S390xRegisterSets.Vrs) != 0 ? S390xRegisterSets.Vrs : S390xRegisterSets.Fprs;
        _supported = offered | _fpSet | S390xRegisterSets.Psw | S390xRegisterSets.Gprs | S390xRegisterSets.Acrs |
            S390xRegisterSets.Crs | S390xRegisterSets.Arch0 | S390xRegisterSets.Pfault | FullLevel;
        _alwaysValid = S390xRegisterSets.Psw | (offered & (Resident | NoReadIoctl));
        _volatile = (_supported & ~offered & ~S390xRegisterSets.Psw) | FullLevel;
        _syncRegs = (IsSync(S390xRegisterSets.Arch0) ? Arch0Regs : 0) | (IsSync(S390xRegisterSets.Pfault) ? PfaultRegs : 0);
        _volatileRegs = ~_syncRegs & (Arch0Regs | PfaultRegs | EpochRegs);
        _valid = _alwaysValid;
    }

    /// <inheritdoc/>
    public KvmArchitecture Architecture => KvmArchitecture.S390x;

    /// <summary>The sync blocks KVM offers in <c>kvm_run</c> (its <c>kvm_valid_regs</c> at vCPU creation; VRS wins over FPRS).</summary>
    public S390xRegisterSets KernelSyncSets => _sync;

    /// <summary>The sets this vCPU has: the offered sync blocks, the sets with an ioctl, the PSW, MP state and epoch difference.</summary>
    public S390xRegisterSets SupportedSets => _supported;

    /// <summary>The sets the cache holds now (a ONE_REG set counts when all its registers are cached).</summary>
    public S390xRegisterSets ValidSets => _valid;

    /// <summary>The sets written since they were last handed to KVM (PSW writes need no flag and do not show here).</summary>
    public S390xRegisterSets DirtySets => _dirty | SetsOfRegs(_regDirty);

    /// <summary>The sets flagged in <c>kvm_dirty_regs</c>, which KVM loads at the next entry.</summary>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public S390xRegisterSets PendingSets
    {
        get
        {
            ThrowIfReleased();
            return (S390xRegisterSets)RunDirtyRegs & SyncArea;
        }
    }

    /// <summary>The write level of a set (see <see cref="S390xRegisterSets"/>).</summary>
    /// <exception cref="ArgumentException"><paramref name="set"/> is not exactly one set.</exception>
    public static SyncLevel LevelOf(S390xRegisterSets set)
    {
        if (set == S390xRegisterSets.None || (set & (set - 1)) != 0 || (set & ~(SyncArea | S390xRegisterSets.Psw | FullLevel)) != 0)
            throw new ArgumentException($"{set} is not a single s390x register set.", nameof(set));
        return (set & RuntimeLevel) != 0 ? SyncLevel.Runtime : (set & FullLevel) != 0 ? SyncLevel.Full : SyncLevel.Reset;
    }

    private static S390xRegisterSets SetsUpTo(SyncLevel level) => level switch
    {
        SyncLevel.Runtime => RuntimeLevel,
        SyncLevel.Reset => SyncArea | S390xRegisterSets.Psw,
        _ => SyncArea | S390xRegisterSets.Psw | FullLevel,
    };

    private bool IsSync(S390xRegisterSets set) => (_sync & set) != 0;

    private ref ulong RunDirtyRegs => ref _vcpu.RunDirtyRegs;

    private StructView Storage(S390xRegisterSets set)
    {
        ThrowIfReleased();
        return IsSync(set) ? _runSync : _shadowSync;
    }

    private StructView Psw
    {
        get
        {
            ThrowIfReleased();
            return _psw;
        }
    }

    private void ThrowIfReleased()
    {
        if (_released) ThrowHelper.ThrowObjectDisposed(_vcpu);
        _vcpu.CheckAccess(); // refuses other threads while the vCPU is owned
    }

    private void RequireSupported(S390xRegisterSets sets)
    {
        var missing = sets & ~_supported;
        if (missing != 0)
            throw new NotSupportedException(
                $"This KVM does not offer {missing} in kvm_run (kvm_valid_regs = 0x{(ulong)_sync:X}) and has no ioctl for it.");
    }

    // ---- the PSW -------------------------------------------------------------------------------

    /// <summary>The PSW mask (<c>kvm_run.psw_mask</c>; KVM loads it at every entry, so no ioctl and no flag).</summary>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public ulong PswMask { get => Psw.At<ulong>(0); set => Psw.At<ulong>(0) = value; }

    /// <summary>The PSW instruction address (<c>kvm_run.psw_addr</c>; KVM loads it at every entry, so no ioctl and no flag).</summary>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public ulong PswAddress { get => Psw.At<ulong>(8); set => Psw.At<ulong>(8) = value; }

    /// <inheritdoc/>
    /// <remarks>The PSW address (<see cref="PswAddress"/>).</remarks>
    public ulong ProgramCounter { get => PswAddress; set => PswAddress = value; }

    /// <summary>
    /// Sets the PSW of a stopped vCPU, as the restart/IPL path does. Wraps KVM_S390_SET_INITIAL_PSW
    /// (which writes <c>kvm_run.psw_mask</c>/<c>psw_addr</c>). Dirty sets that move with ioctls — the MP
    /// state among them — are written first; nothing else needs flushing or forgetting, because the
    /// ioctl changes only the PSW, which the cache holds in <c>kvm_run</c> itself. Writing
    /// <see cref="PswMask"/> and <see cref="PswAddress"/> has the same effect without an ioctl.
    /// </summary>
    /// <exception cref="KvmException">EBUSY: the vCPU is not stopped (a new vCPU is stopped until its
    /// first run starts it; set <see cref="MpState"/> to <see cref="Registers.MpState.Stopped"/> first).</exception>
    public void SetInitialPsw(ulong mask, ulong address)
    {
        WriteDirtyWithIoctls();
        ref var psw = ref _pswArg.At<kvm_s390_psw>(0);
        psw.mask = mask;
        psw.addr = address;
        // KVM writes kvm_run.psw_mask/psw_addr, which is where the cache keeps the PSW.
        Call(KvmIoctls.S390x.KVM_S390_SET_INITIAL_PSW, _pswArg.Address, $"PSW mask 0x{mask:X16}, address 0x{address:X}");
    }

    // ---- general, access and control registers --------------------------------------------------

    /// <inheritdoc/>
    /// <remarks>R0–R15, from <c>kvm_run</c> (KVM_GET_REGS on a kernel without the GPRS block).</remarks>
    public ulong GetGeneralRegister(int index)
    {
        int off = GprsOff + 8 * Index(index, 15);
        return Read(S390xRegisterSets.Gprs).At<ulong>(off);
    }

    /// <inheritdoc/>
    public void SetGeneralRegister(int index, ulong value)
    {
        int off = GprsOff + 8 * Index(index, 15);
        Edit(S390xRegisterSets.Gprs).At<ulong>(off) = value;
    }

    /// <summary>Access register <paramref name="index"/> (0–15).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–15.</exception>
    /// <exception cref="KvmException">KVM_GET_SREGS failed (kernels without the ACRS block).</exception>
    public uint GetAccessRegister(int index)
    {
        int off = AcrsOff + 4 * Index(index, 15);
        return Read(S390xRegisterSets.Acrs).At<uint>(off);
    }

    /// <summary>Writes access register <paramref name="index"/> (0–15); it reaches KVM at the next entry.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–15.</exception>
    public void SetAccessRegister(int index, uint value)
    {
        int off = AcrsOff + 4 * Index(index, 15);
        Edit(S390xRegisterSets.Acrs).At<uint>(off) = value;
    }

    /// <summary>Control register <paramref name="index"/> (0–15). Before the first exit this costs one KVM_GET_SREGS.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–15.</exception>
    /// <exception cref="KvmException">KVM_GET_SREGS failed.</exception>
    public ulong GetControlRegister(int index)
    {
        int off = CrsOff + 8 * Index(index, 15);
        return Read(S390xRegisterSets.Crs).At<ulong>(off);
    }

    /// <summary>Writes control register <paramref name="index"/> (0–15); it reaches KVM at the next entry (KVM_SYNC_CRS).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–15.</exception>
    /// <exception cref="KvmException">Fetching the other control registers failed.</exception>
    public void SetControlRegister(int index, ulong value)
    {
        int off = CrsOff + 8 * Index(index, 15);
        Edit(S390xRegisterSets.Crs).At<ulong>(off) = value;
    }

    /// <summary>The prefix register (KVM_SYNC_PREFIX). KVM keeps bits 1–18 (an 8 KiB-aligned address).</summary>
    /// <exception cref="NotSupportedException">KVM does not offer the PREFIX block.</exception>
    public uint Prefix
    {
        get => (uint)Read(S390xRegisterSets.Prefix).At<ulong>(PrefixOff);
        set => Edit(S390xRegisterSets.Prefix).At<ulong>(PrefixOff) = value;
    }

    // ---- floating point and vector registers -----------------------------------------------------

    private int FprOffset(int index) => VrsOff + (_fpSet == S390xRegisterSets.Vrs ? 16 : 8) * Index(index, 15);

    /// <summary>
    /// Floating-point register <paramref name="index"/> (0–15): the leftmost doubleword of vector register
    /// <paramref name="index"/> when KVM offers VRS, else the FPRS block, else KVM_GET_FPU.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–15.</exception>
    /// <exception cref="KvmException">KVM_GET_FPU failed (kernels with neither block).</exception>
    public ulong GetFloatingPointRegister(int index)
    {
        int off = FprOffset(index);
        return Read(_fpSet).At<ulong>(off);
    }

    /// <summary>Writes floating-point register <paramref name="index"/> (0–15); it reaches KVM before the next run.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–15.</exception>
    /// <exception cref="KvmException">KVM_GET_FPU failed (kernels with neither block).</exception>
    public void SetFloatingPointRegister(int index, ulong value)
    {
        int off = FprOffset(index);
        Edit(_fpSet).At<ulong>(off) = value;
    }

    /// <summary>
    /// Vector register <paramref name="index"/> (0–31); the upper 64 bits are its leftmost doubleword
    /// (element 0 of <c>vrs[i]</c>), which is also floating-point register <paramref name="index"/> for 0–15.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–31.</exception>
    /// <exception cref="NotSupportedException">KVM does not offer the VRS block (no vector facility).</exception>
    public UInt128 GetVectorRegister(int index)
    {
        int off = VrsOff + 16 * Index(index, 31);
        var v = Read(S390xRegisterSets.Vrs);
        return new UInt128(v.At<ulong>(off), v.At<ulong>(off + 8));
    }

    /// <summary>Writes vector register <paramref name="index"/> (0–31); it reaches KVM at the next entry.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–31.</exception>
    /// <exception cref="NotSupportedException">KVM does not offer the VRS block.</exception>
    public void SetVectorRegister(int index, UInt128 value)
    {
        int off = VrsOff + 16 * Index(index, 31);
        var v = Edit(S390xRegisterSets.Vrs);
        v.At<ulong>(off) = (ulong)(value >> 64);
        v.At<ulong>(off + 8) = (ulong)value;
    }

    /// <summary>The floating-point control register (part of the VRS/FPRS set). KVM clears an FPC the machine rejects at entry.</summary>
    /// <exception cref="KvmException">KVM_GET/SET_FPU failed (kernels with neither block; SET_FPU refuses an invalid FPC with EINVAL).</exception>
    public uint Fpc
    {
        get => Read(_fpSet).At<uint>(FpcOff);
        set => Edit(_fpSet).At<uint>(FpcOff) = value;
    }

    // ---- ARCH0, PFAULT, epoch difference ---------------------------------------------------------

    /// <summary>The TOD programmable register (ARCH0; else ONE_REG KVM_REG_S390_TODPR).</summary>
    /// <exception cref="KvmException">The ONE_REG ioctl failed.</exception>
    public uint TodProgrammableRegister { get => (uint)GetReg(Reg.Todpr); set => SetReg(Reg.Todpr, value); }

    /// <summary>The CPU timer (ARCH0; else ONE_REG KVM_REG_S390_CPU_TIMER). KVM counts it down while the guest runs.</summary>
    /// <exception cref="KvmException">The ONE_REG ioctl failed.</exception>
    public ulong CpuTimer { get => GetReg(Reg.CpuTimer); set => SetReg(Reg.CpuTimer, value); }

    /// <summary>The clock comparator (ARCH0; else ONE_REG KVM_REG_S390_CLOCK_COMP).</summary>
    /// <exception cref="KvmException">The ONE_REG ioctl failed.</exception>
    public ulong ClockComparator { get => GetReg(Reg.ClockComparator); set => SetReg(Reg.ClockComparator, value); }

    /// <summary>The program parameter (ARCH0; else ONE_REG KVM_REG_S390_PP).</summary>
    /// <exception cref="KvmException">The ONE_REG ioctl failed.</exception>
    public ulong ProgramParameter { get => GetReg(Reg.ProgramParameter); set => SetReg(Reg.ProgramParameter, value); }

    /// <summary>The guest breaking-event address (ARCH0; else ONE_REG KVM_REG_S390_GBEA).</summary>
    /// <exception cref="KvmException">The ONE_REG ioctl failed.</exception>
    public ulong BreakingEventAddress { get => GetReg(Reg.Gbea); set => SetReg(Reg.Gbea, value); }

    /// <summary>The pfault token (PFAULT; else ONE_REG KVM_REG_S390_PFTOKEN); <see cref="PfaultTokenInvalid"/> when pfault is off.</summary>
    /// <exception cref="KvmException">The ONE_REG ioctl failed.</exception>
    public ulong PfaultToken { get => GetReg(Reg.PfaultToken); set => SetReg(Reg.PfaultToken, value); }

    /// <summary>The pfault select mask (PFAULT; else ONE_REG KVM_REG_S390_PFSELECT).</summary>
    /// <exception cref="KvmException">The ONE_REG ioctl failed.</exception>
    public ulong PfaultSelect { get => GetReg(Reg.PfaultSelect); set => SetReg(Reg.PfaultSelect, value); }

    /// <summary>The pfault compare mask (PFAULT; else ONE_REG KVM_REG_S390_PFCOMPARE).</summary>
    /// <exception cref="KvmException">The ONE_REG ioctl failed.</exception>
    public ulong PfaultCompare { get => GetReg(Reg.PfaultCompare); set => SetReg(Reg.PfaultCompare, value); }

    /// <summary>
    /// The difference between the guest's TOD clock and the host's (ONE_REG KVM_REG_S390_EPOCHDIFF; level
    /// Full, like a TSC: written only by <see cref="PostInit"/> and <see cref="RestoreState"/> unless set here).
    /// </summary>
    /// <exception cref="KvmException">The ONE_REG ioctl failed.</exception>
    public ulong EpochDifference { get => GetReg(Reg.EpochDifference); set => SetReg(Reg.EpochDifference, value); }

    // ---- facility blocks -------------------------------------------------------------------------

    /// <summary>
    /// Branch-prediction blocking (KVM_SYNC_BPBC): the <c>bpbc : 1</c> bit-field, bit 0x80 of byte 1420 of
    /// the sync area (GCC allocates bit-fields from the most significant bit on s390x).
    /// </summary>
    /// <exception cref="NotSupportedException">KVM does not offer BPBC (facility 82).</exception>
    public bool BranchPredictionBlocking
    {
        get => (Read(S390xRegisterSets.Bpbc).At<byte>(kvm_sync_regs.BpbcByteOffset) & kvm_sync_regs.BpbcBit) != 0;
        set
        {
            ref byte b = ref Edit(S390xRegisterSets.Bpbc).At<byte>(kvm_sync_regs.BpbcByteOffset);
            b = value ? (byte)(b | kvm_sync_regs.BpbcBit) : (byte)(b & ~kvm_sync_regs.BpbcBit);
        }
    }

    /// <summary>The DIAGNOSE 0x318 control-program name and version code (KVM_SYNC_DIAG318).</summary>
    /// <exception cref="NotSupportedException">KVM does not offer DIAG318.</exception>
    public ulong Diag318
    {
        get => Read(S390xRegisterSets.Diag318).At<ulong>(Diag318Off);
        set => Edit(S390xRegisterSets.Diag318).At<ulong>(Diag318Off) = value;
    }

    /// <summary>The etoken (KVM_SYNC_ETOKEN).</summary>
    /// <exception cref="NotSupportedException">KVM does not offer ETOKEN (facility 156).</exception>
    public ulong Etoken
    {
        get => Read(S390xRegisterSets.Etoken).At<ulong>(EtokenOff);
        set => Edit(S390xRegisterSets.Etoken).At<ulong>(EtokenOff) = value;
    }

    /// <summary>The etoken extension (KVM_SYNC_ETOKEN).</summary>
    /// <exception cref="NotSupportedException">KVM does not offer ETOKEN (facility 156).</exception>
    public ulong EtokenExtension
    {
        get => Read(S390xRegisterSets.Etoken).At<ulong>(EtokenOff + 8);
        set => Edit(S390xRegisterSets.Etoken).At<ulong>(EtokenOff + 8) = value;
    }

    /// <summary>The 64-byte runtime-instrumentation controls block (KVM_SYNC_RICCB). Read-only: use <see cref="EditRuntimeInstrumentationControls"/>.</summary>
    /// <exception cref="NotSupportedException">KVM does not offer RICCB (facility 64).</exception>
    public ReadOnlySpan<byte> RuntimeInstrumentationControls => Read(S390xRegisterSets.Riccb).Span.Slice(RiccbOff, 64);

    /// <summary>The runtime-instrumentation controls block for writing (marked dirty; KVM enables RI at the next entry when its valid bit is set).</summary>
    /// <exception cref="NotSupportedException">KVM does not offer RICCB (facility 64).</exception>
    public Span<byte> EditRuntimeInstrumentationControls() => Edit(S390xRegisterSets.Riccb).Span.Slice(RiccbOff, 64);

    /// <summary>The 32-byte guarded-storage control block (KVM_SYNC_GSCB). Read-only: use <see cref="EditGuardedStorageControls"/>.</summary>
    /// <exception cref="NotSupportedException">KVM does not offer GSCB (facility 133).</exception>
    public ReadOnlySpan<byte> GuardedStorageControls => Read(S390xRegisterSets.Gscb).Span.Slice(GscbOff, 32);

    /// <summary>The guarded-storage control block for writing (marked dirty; KVM enables GS at the next entry when it is in use).</summary>
    /// <exception cref="NotSupportedException">KVM does not offer GSCB (facility 133).</exception>
    public Span<byte> EditGuardedStorageControls() => Edit(S390xRegisterSets.Gscb).Span.Slice(GscbOff, 32);

    // ---- MP state ----------------------------------------------------------------------------------

    /// <inheritdoc/>
    /// <remarks>
    /// s390x knows <see cref="Registers.MpState.Stopped"/> and <see cref="Registers.MpState.Operating"/>;
    /// KVM refuses <see cref="Registers.MpState.CheckStop"/> and <see cref="Registers.MpState.Load"/> (the
    /// latter outside protected virtualization) with ENXIO. A write reaches KVM before the next run (or at
    /// <see cref="Invalidate"/>, <see cref="Push"/>, a reset); from then on KVM no longer starts a stopped
    /// vCPU by itself, and KVM_RUN on a stopped vCPU fails with EINVAL.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException">A state that is not an s390x one.</exception>
    public MpState MpState
    {
        get
        {
            ThrowIfReleased(); // also when cached: the cache lives in memory freed at disposal
            Fetch(S390xRegisterSets.MpState);
            return (MpState)_mpState.At<uint>(0);
        }
        set
        {
            if (value is not (MpState.Stopped or MpState.Operating or MpState.CheckStop or MpState.Load))
                throw new ArgumentOutOfRangeException(nameof(value), value, "s390x MP states are Stopped, Operating, CheckStop and Load.");
            ThrowIfReleased();
            _mpState.At<uint>(0) = (uint)value;
            _valid |= S390xRegisterSets.MpState;
            _dirty |= S390xRegisterSets.MpState;
        }
    }

    // ---- resets -----------------------------------------------------------------------------------

    /// <summary>Whether KVM has the normal and clear resets (KVM_CAP_S390_VCPU_RESETS; the initial reset always exists).</summary>
    /// <exception cref="KvmException">KVM_CHECK_EXTENSION failed.</exception>
    public bool SupportsNormalAndClearReset
    {
        get
        {
            if (_vcpuResets < 0)
                _vcpuResets = _vcpu.VirtualMachine.CheckExtension(KvmCapability.S390VcpuResets) > 0 ? 1 : 0;
            return _vcpuResets == 1;
        }
    }

    /// <summary>
    /// CPU reset as the Principles of Operation define it (pending interrupts cleared, pfault token
    /// invalid, RI controls cleared; a vCPU not under user-controlled state is stopped). Wraps
    /// KVM_S390_NORMAL_RESET; needs KVM_CAP_S390_VCPU_RESETS. Dirty sets are written first (see the class
    /// remarks); afterwards the pfault values and MP state are fetched again.
    /// </summary>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_S390_VCPU_RESETS.</exception>
    /// <exception cref="KvmException">Writing dirty sets or the reset failed.</exception>
    public void NormalReset()
    {
        RequireVcpuResets(KvmIoctls.S390x.KVM_S390_NORMAL_RESET);
        Reset(KvmIoctls.S390x.KVM_S390_NORMAL_RESET, initial: false);
    }

    /// <summary>
    /// Initial CPU reset (a normal reset, then PSW, prefix, CPU timer, clock comparator, TOD programmable
    /// register, program parameter, FPC and BPBC zero, breaking-event address 1, control registers
    /// zero except CR0 = 0xE0 and CR14 = 0xC2000000; the CPU stays in z/Architecture mode). Wraps
    /// KVM_S390_INITIAL_RESET. Dirty sets are written first (see the class remarks); a dirty GPR, ACR
    /// or FPR survives, as the reset does not touch them.
    /// </summary>
    /// <exception cref="KvmException">Writing dirty sets or the reset failed.</exception>
    public void InitialReset() => Reset(KvmIoctls.S390x.KVM_S390_INITIAL_RESET, initial: true);

    /// <summary>
    /// Clear reset (an initial reset, then GPRs, ACRs, vector registers, the guarded-storage block and
    /// the etoken zero). Wraps KVM_S390_CLEAR_RESET; needs KVM_CAP_S390_VCPU_RESETS. Dirty sets are
    /// written first, so the registers it clears end up zero even when written just before.
    /// </summary>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_S390_VCPU_RESETS.</exception>
    /// <exception cref="KvmException">Writing dirty sets or the reset failed.</exception>
    public void ClearReset()
    {
        RequireVcpuResets(KvmIoctls.S390x.KVM_S390_CLEAR_RESET);
        Reset(KvmIoctls.S390x.KVM_S390_CLEAR_RESET, initial: true);
    }

    private void RequireVcpuResets(KvmIoctl ioctl)
    {
        if (!SupportsNormalAndClearReset)
            throw new NotSupportedException($"{ioctl.Name} needs KVM_CAP_S390_VCPU_RESETS (Linux 5.7), which this KVM lacks.");
    }

    private void Reset(KvmIoctl ioctl, bool initial)
    {
        FlushWithIoctls(resetClearsPrefixAndBpbc: initial);
        Call(ioctl, 0);
        // Forget what the reset may have changed behind the cache. The blocks that live in kvm_run were
        // changed in place; the PSW, prefix and BPBC get the architected values here, so that they do
        // not depend on whether this kernel also updates kvm_run (Linux 5.7 and later do for the PSW).
        _valid &= _alwaysValid;
        _regValid = 0;
        // The normal reset clears PSW.RI in KVM's copy only; the next entry would load it back from kvm_run.
        Psw.At<ulong>(0) &= ~PswMaskRi;
        if (initial)
        {
            Psw.At<ulong>(0) = 0;
            Psw.At<ulong>(8) = 0;
            if (IsSync(S390xRegisterSets.Prefix)) _runSync.At<ulong>(PrefixOff) = 0;
            if (IsSync(S390xRegisterSets.Bpbc)) _runSync.At<byte>(kvm_sync_regs.BpbcByteOffset) &= unchecked((byte)~kvm_sync_regs.BpbcBit);
        }
    }

    // ---- the engine ------------------------------------------------------------------------------

    private static int Index(int index, int max)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, (uint)max, nameof(index));
        return index;
    }

    private StructView Read(S390xRegisterSets set)
    {
        if ((_valid & set) == 0) Fetch(set);
        return Storage(set);
    }

    private StructView Edit(S390xRegisterSets set)
    {
        Fetch(set);
        _dirty |= set;
        return Storage(set);
    }

    /// <summary>Fetches the given sets unless cached. A dirty set is valid, so it is never overwritten.</summary>
    /// <exception cref="NotSupportedException">A set this vCPU does not have.</exception>
    /// <exception cref="KvmException">A get ioctl failed; the sets fetched before it stay cached.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Fetch(S390xRegisterSets sets)
    {
        var missing = sets & ~_valid;
        if (missing != 0) FetchSlow(missing);
    }

    private void FetchSlow(S390xRegisterSets missing)
    {
        RequireSupported(missing);
        ThrowIfReleased();
        if ((missing & S390xRegisterSets.Gprs) != 0)
        {
            Call(KvmIoctls.S390x.KVM_GET_REGS, _shadowSync.Address + GprsOff);
            _valid |= S390xRegisterSets.Gprs;
        }
        if ((missing & (S390xRegisterSets.Acrs | S390xRegisterSets.Crs)) != 0)
            FetchSregs(missing & (S390xRegisterSets.Acrs | S390xRegisterSets.Crs));
        if ((missing & S390xRegisterSets.Fprs) != 0)
            FetchFpu();
        uint regs = (((missing & S390xRegisterSets.Arch0) != 0 ? Arch0Regs : 0) | ((missing & S390xRegisterSets.Pfault) != 0 ? PfaultRegs : 0)
            | ((missing & S390xRegisterSets.EpochDifference) != 0 ? EpochRegs : 0)) & ~_regValid;
        if (regs != 0) FetchRegs(regs);
        if ((missing & S390xRegisterSets.MpState) != 0)
            FetchMpState();
    }

    private void FetchSregs(S390xRegisterSets missing)
    {
        Call(KvmIoctls.S390x.KVM_GET_SREGS, _sregs.Address);
        // Copy only what is missing: the other may be dirty. kvm_sregs is {u32 acrs[16]; u64 crs[16]}.
        if ((missing & S390xRegisterSets.Acrs) != 0)
            _sregs.Span[..64].CopyTo(Storage(S390xRegisterSets.Acrs).Span.Slice(AcrsOff, 64));
        if ((missing & S390xRegisterSets.Crs) != 0)
            _sregs.Span.Slice(64, 128).CopyTo(Storage(S390xRegisterSets.Crs).Span.Slice(CrsOff, 128));
        _valid |= missing;
    }

    private void WriteSregs()
    {
        Fetch(S390xRegisterSets.Acrs | S390xRegisterSets.Crs); // KVM_SET_SREGS writes both
        Storage(S390xRegisterSets.Acrs).Span.Slice(AcrsOff, 64).CopyTo(_sregs.Span[..64]);
        Storage(S390xRegisterSets.Crs).Span.Slice(CrsOff, 128).CopyTo(_sregs.Span.Slice(64, 128));
        Call(KvmIoctls.S390x.KVM_SET_SREGS, _sregs.Address);
    }

    private void FetchFpu()
    {
        // kvm_fpu is {u32 fpc; u64 fprs[16]}; the shadow keeps the FPRS layout of the sync area.
        Call(KvmIoctls.S390x.KVM_GET_FPU, _fpu.Address);
        _fpu.Span.Slice(8, 128).CopyTo(_shadowSync.Span.Slice(VrsOff, 128));
        _shadowSync.At<uint>(FpcOff) = _fpu.At<uint>(0);
        _valid |= S390xRegisterSets.Fprs;
    }

    private void WriteFpu()
    {
        _shadowSync.Span.Slice(VrsOff, 128).CopyTo(_fpu.Span.Slice(8, 128));
        _fpu.At<uint>(0) = _shadowSync.At<uint>(FpcOff);
        Call(KvmIoctls.S390x.KVM_SET_FPU, _fpu.Address);
    }

    private void FetchMpState()
    {
        var ioctl = KvmIoctls.KVM_GET_MP_STATE;
        int r = _kernel.Ioctl(_vcpu.Fd, ioctl, _mpState.Address);
        if (r < 0) ThrowHelper.ThrowKvm(ioctl, r, $"vcpu {_vcpu.Id}");
        // arch/s390/kvm/kvm-s390.c returns the state as the ioctl's value and leaves the struct alone
        // (kvm_main.c copies it out only on 0); a kernel that fills the struct returns 0.
        if (r > 0) _mpState.At<uint>(0) = (uint)r;
        _valid |= S390xRegisterSets.MpState;
    }

    // ONE_REG registers --------------------------------------------------------------------------------

    private static S390xRegisterSets SetOf(Reg r) => r switch
    {
        <= Reg.Gbea => S390xRegisterSets.Arch0,
        <= Reg.PfaultCompare => S390xRegisterSets.Pfault,
        _ => S390xRegisterSets.EpochDifference,
    };

    private static uint RegsOf(S390xRegisterSets set) =>
        ((set & S390xRegisterSets.Arch0) != 0 ? Arch0Regs : 0) | ((set & S390xRegisterSets.Pfault) != 0 ? PfaultRegs : 0)
        | ((set & S390xRegisterSets.EpochDifference) != 0 ? EpochRegs : 0);

    private static S390xRegisterSets SetsOfRegs(uint regs) =>
        ((regs & Arch0Regs) != 0 ? S390xRegisterSets.Arch0 : 0) | ((regs & PfaultRegs) != 0 ? S390xRegisterSets.Pfault : 0)
        | ((regs & EpochRegs) != 0 ? S390xRegisterSets.EpochDifference : 0);

    private static ulong RegId(Reg r) => r switch
    {
        Reg.Todpr => 0x5020000000000001,            // KVM_REG_S390_TODPR (U32)
        Reg.EpochDifference => 0x5030000000000002,  // KVM_REG_S390_EPOCHDIFF
        Reg.CpuTimer => 0x5030000000000003,         // KVM_REG_S390_CPU_TIMER
        Reg.ClockComparator => 0x5030000000000004,  // KVM_REG_S390_CLOCK_COMP
        Reg.PfaultToken => 0x5030000000000005,      // KVM_REG_S390_PFTOKEN
        Reg.PfaultCompare => 0x5030000000000006,    // KVM_REG_S390_PFCOMPARE
        Reg.PfaultSelect => 0x5030000000000007,     // KVM_REG_S390_PFSELECT
        Reg.ProgramParameter => 0x5030000000000008, // KVM_REG_S390_PP
        _ => 0x5030000000000009,                    // KVM_REG_S390_GBEA
    };

    private static string RegName(Reg r) => r switch
    {
        Reg.Todpr => "KVM_REG_S390_TODPR",
        Reg.EpochDifference => "KVM_REG_S390_EPOCHDIFF",
        Reg.CpuTimer => "KVM_REG_S390_CPU_TIMER",
        Reg.ClockComparator => "KVM_REG_S390_CLOCK_COMP",
        Reg.PfaultToken => "KVM_REG_S390_PFTOKEN",
        Reg.PfaultCompare => "KVM_REG_S390_PFCOMPARE",
        Reg.PfaultSelect => "KVM_REG_S390_PFSELECT",
        Reg.ProgramParameter => "KVM_REG_S390_PP",
        _ => "KVM_REG_S390_GBEA",
    };

    // The slot of a register: its kvm_sync_regs field (todpr, cputm, ckc, pp, gbea, pft, pfs, pfc are
    // consecutive u64s from offset 328), in kvm_run or the shadow; the epoch difference has its own.
    private ref ulong Slot(Reg r)
    {
        if (r == Reg.EpochDifference) return ref _epoch.At<ulong>(0);
        return ref Storage(SetOf(r)).At<ulong>(Arch0Off + 8 * (int)r);
    }

    private ulong GetReg(Reg r)
    {
        ThrowIfReleased(); // also when cached: the cache lives in memory freed at disposal
        uint bit = 1u << (int)r;
        if ((_regValid & bit) == 0) FetchRegs(bit);
        return Slot(r);
    }

    private void SetReg(Reg r, ulong value)
    {
        ThrowIfReleased();
        var set = SetOf(r);
        if (IsSync(set))
        {
            // The block travels whole: every register of it must hold KVM's value before it is flagged.
            Fetch(set);
            Slot(r) = value;
            _dirty |= set;
            return;
        }
        uint bit = 1u << (int)r;
        Slot(r) = value;
        _regValid |= bit;
        _regDirty |= bit;
        UpdateRegSets();
    }

    private void FetchRegs(uint regs)
    {
        for (int i = 0; i <= (int)Reg.EpochDifference; i++)
        {
            if ((regs & (1u << i)) == 0) continue;
            var r = (Reg)i;
            OneReg(KvmIoctls.KVM_GET_ONE_REG, r);
            Slot(r) = r == Reg.Todpr ? _oneRegValue.At<uint>(0) : _oneRegValue.At<ulong>(0);
            _regValid |= 1u << i;
        }
        UpdateRegSets();
    }

    private void WriteRegs(uint regs)
    {
        for (int i = 0; i <= (int)Reg.EpochDifference; i++)
        {
            if ((regs & (1u << i)) == 0) continue;
            var r = (Reg)i;
            if (r == Reg.Todpr) _oneRegValue.At<uint>(0) = (uint)Slot(r);
            else _oneRegValue.At<ulong>(0) = Slot(r);
            OneReg(KvmIoctls.KVM_SET_ONE_REG, r);
            _regDirty &= ~(1u << i);
        }
    }

    private void OneReg(KvmIoctl ioctl, Reg r)
    {
        ref var one = ref _oneReg.At<kvm_one_reg>(0);
        one.id = RegId(r);
        one.addr = (ulong)_oneRegValue.Address;
        Call(ioctl, _oneReg.Address, RegName(r));
    }

    private void UpdateRegSets()
    {
        foreach (var set in (ReadOnlySpan<S390xRegisterSets>)[S390xRegisterSets.Arch0, S390xRegisterSets.Pfault, S390xRegisterSets.EpochDifference])
        {
            uint regs = RegsOf(set);
            if ((_regValid & regs) == regs) _valid |= set;
            else _valid &= ~set;
        }
    }

    private void Call(KvmIoctl ioctl, nint arg, string? what = null)
    {
        int r = _kernel.Ioctl(_vcpu.Fd, ioctl, arg);
        if (r < 0) ThrowHelper.ThrowKvm(ioctl, r, what is null ? $"vcpu {_vcpu.Id}" : $"vcpu {_vcpu.Id}, {what}");
    }

    // Write-back ------------------------------------------------------------------------------------

    /// <summary>Writes every dirty set that moves with an ioctl: registers first, the MP state last.</summary>
    private void WriteDirtyWithIoctls()
    {
        ThrowIfReleased();
        var d = _dirty & ~_sync;
        if ((d & S390xRegisterSets.Gprs) != 0)
        {
            Call(KvmIoctls.S390x.KVM_SET_REGS, _shadowSync.Address + GprsOff);
            _dirty &= ~S390xRegisterSets.Gprs;
        }
        if ((d & (S390xRegisterSets.Acrs | S390xRegisterSets.Crs)) != 0)
        {
            WriteSregs();
            _dirty &= ~(S390xRegisterSets.Acrs | S390xRegisterSets.Crs);
        }
        if ((d & S390xRegisterSets.Fprs) != 0)
        {
            WriteFpu();
            _dirty &= ~S390xRegisterSets.Fprs;
        }
        if (_regDirty != 0) WriteRegs(_regDirty);
        if ((d & S390xRegisterSets.MpState) != 0)
        {
            Call(KvmIoctls.KVM_SET_MP_STATE, _mpState.Address, $"MP state {(MpState)_mpState.At<uint>(0)}");
            _dirty &= ~S390xRegisterSets.MpState;
        }
    }

    /// <summary>
    /// Writes back everything an ioctl can carry, now, including sync blocks flagged for a run that has not
    /// loaded them: CRs with KVM_SET_SREGS, ARCH0 and PFAULT with ONE_REG. What has no ioctl (GPRs and
    /// the other blocks KVM keeps in kvm_run, prefix, BPBC, DIAG318) stays flagged for the next entry.
    /// </summary>
    private void FlushWithIoctls(bool resetClearsPrefixAndBpbc)
    {
        ThrowIfReleased();
        ulong pending = RunDirtyRegs;
        if (pending != 0)
        {
            _dirty |= (S390xRegisterSets)pending & _sync;
            RunDirtyRegs = 0;
        }
        var syncDirty = _dirty & _sync;
        if ((syncDirty & S390xRegisterSets.Crs) != 0)
        {
            WriteSregs();
            _dirty &= ~S390xRegisterSets.Crs;
        }
        if ((syncDirty & S390xRegisterSets.Arch0) != 0)
        {
            WriteRegs(Arch0Regs);
            _dirty &= ~S390xRegisterSets.Arch0;
        }
        if ((syncDirty & S390xRegisterSets.Pfault) != 0)
        {
            WriteRegs(PfaultRegs);
            _dirty &= ~S390xRegisterSets.Pfault;
        }
        if (resetClearsPrefixAndBpbc) _dirty &= ~(S390xRegisterSets.Prefix | S390xRegisterSets.Bpbc);
        WriteDirtyWithIoctls();
        // Hand the rest over now, so that it is visible in kvm_dirty_regs as pending.
        var rest = _dirty & _sync;
        RunDirtyRegs |= (ulong)rest;
        _dirty &= ~rest;
    }

    /// <inheritdoc/>
    /// <remarks>Fetches every set this vCPU has (<see cref="SupportedSets"/>).</remarks>
    public void Synchronize() => Fetch(_supported);

    /// <summary>Marks sets as changed so that they are written back before the next run (fetching them first if needed).</summary>
    /// <exception cref="NotSupportedException">A set this vCPU does not have.</exception>
    /// <exception cref="KvmException">Fetching failed.</exception>
    public void MarkDirty(S390xRegisterSets sets)
    {
        Fetch(sets);
        MarkValidDirty(sets);
    }

    private void MarkValidDirty(S390xRegisterSets sets)
    {
        var nonSyncRegSets = sets & RegSets & ~_sync;
        _regDirty |= RegsOf(nonSyncRegSets) & _regValid;
        _dirty |= sets & ~nonSyncRegSets & ~S390xRegisterSets.Psw;
    }

    /// <inheritdoc/>
    /// <remarks>
    /// Sync blocks are flagged and loaded by KVM at the next entry; the sets that move with ioctls (ONE_REG,
    /// FPU, MP state at Full) are written now. Only sets the cache holds are pushed: one never read (a sync
    /// block before the first exit, say) is left as KVM has it. The PSW needs nothing: KVM always loads it.
    /// </remarks>
    public void Push(SyncLevel level)
    {
        var sets = SetsUpTo(level) & _supported;
        var nonSyncRegSets = sets & RegSets & ~_sync;
        _regDirty |= RegsOf(nonSyncRegSets) & _regValid;
        MarkValidDirty(sets & _valid & ~nonSyncRegSets);
        WriteDirtyWithIoctls();
    }

    /// <inheritdoc cref="IRegisterSync.PostReset"/>
    public void PostReset() => Push(SyncLevel.Reset);

    /// <inheritdoc cref="IRegisterSync.PostInit"/>
    public void PostInit() => Push(SyncLevel.Full);

    /// <inheritdoc/>
    /// <remarks>
    /// Dirty CRs, ARCH0 and PFAULT are written with their ioctls and forgotten like the other sets KVM keeps
    /// outside <c>kvm_run</c>. Blocks with no ioctl stay flagged in <c>kvm_dirty_regs</c> and stay cached:
    /// <c>kvm_run</c> holds exactly what KVM will load, and the blocks KVM keeps in <c>kvm_run</c> are its own state.
    /// </remarks>
    public void Invalidate()
    {
        FlushWithIoctls(resetClearsPrefixAndBpbc: false);
        _valid &= _alwaysValid;
        _regValid = 0;
    }

    // Save and restore ------------------------------------------------------------------------------

    private static readonly S390xRegisterSets[] StateOrder =
    [
        S390xRegisterSets.Psw, S390xRegisterSets.Prefix, S390xRegisterSets.Gprs, S390xRegisterSets.Acrs, S390xRegisterSets.Crs,
        S390xRegisterSets.Arch0, S390xRegisterSets.Pfault, S390xRegisterSets.Vrs, S390xRegisterSets.Fprs, S390xRegisterSets.Riccb,
        S390xRegisterSets.Gscb, S390xRegisterSets.Bpbc, S390xRegisterSets.Etoken, S390xRegisterSets.Diag318,
        S390xRegisterSets.EpochDifference, S390xRegisterSets.MpState,
    ];

    // Where a set's bytes are: (view, offset, length) pieces; a VRS/FPRS set carries its FPC after the registers.
    private (StructView View, int Offset, int Length, int Offset2, int Length2) Layout(S390xRegisterSets set) => set switch
    {
        S390xRegisterSets.Psw => (Psw, 0, 16, 0, 0),
        S390xRegisterSets.Prefix => (Storage(set), PrefixOff, 8, 0, 0),
        S390xRegisterSets.Gprs => (Storage(set), GprsOff, 128, 0, 0),
        S390xRegisterSets.Acrs => (Storage(set), AcrsOff, 64, 0, 0),
        S390xRegisterSets.Crs => (Storage(set), CrsOff, 128, 0, 0),
        S390xRegisterSets.Arch0 => (Storage(set), Arch0Off, 40, 0, 0),
        S390xRegisterSets.Pfault => (Storage(set), PfaultOff, 24, 0, 0),
        S390xRegisterSets.Vrs => (Storage(set), VrsOff, 512, FpcOff, 4),
        S390xRegisterSets.Fprs => (Storage(set), VrsOff, 128, FpcOff, 4),
        S390xRegisterSets.Riccb => (Storage(set), RiccbOff, 64, 0, 0),
        S390xRegisterSets.Gscb => (Storage(set), GscbOff, 32, 0, 0),
        S390xRegisterSets.Bpbc => (Storage(set), kvm_sync_regs.BpbcByteOffset, 1, 0, 0),
        S390xRegisterSets.Etoken => (Storage(set), EtokenOff, 16, 0, 0),
        S390xRegisterSets.Diag318 => (Storage(set), Diag318Off, 8, 0, 0),
        S390xRegisterSets.EpochDifference => (_epoch, 0, 8, 0, 0),
        S390xRegisterSets.MpState => (_mpState, 0, 4, 0, 0),
        _ => throw new ArgumentOutOfRangeException(nameof(set), set, "not a single register set"),
    };

    private byte[] CopyOut(S390xRegisterSets set)
    {
        var (view, off, len, off2, len2) = Layout(set);
        var bytes = new byte[len + len2];
        view.Span.Slice(off, len).CopyTo(bytes);
        if (len2 != 0) view.Span.Slice(off2, len2).CopyTo(bytes.AsSpan(len));
        if (set == S390xRegisterSets.Bpbc) bytes[0] = (bytes[0] & kvm_sync_regs.BpbcBit) != 0 ? (byte)1 : (byte)0;
        return bytes;
    }

    private void CopyIn(S390xRegisterSets set, byte[] bytes)
    {
        var (view, off, len, off2, len2) = Layout(set);
        if (set == S390xRegisterSets.Bpbc)
        {
            ref byte b = ref view.At<byte>(off);
            b = bytes[0] != 0 ? (byte)(b | kvm_sync_regs.BpbcBit) : (byte)(b & ~kvm_sync_regs.BpbcBit);
            return;
        }
        bytes.AsSpan(0, len).CopyTo(view.Span.Slice(off, len));
        if (len2 != 0) bytes.AsSpan(len, len2).CopyTo(view.Span.Slice(off2, len2));
    }

    private int SizeOf(S390xRegisterSets set)
    {
        var (_, _, len, _, len2) = Layout(set);
        return len + len2;
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The keys are <see cref="S390xRegisterSets"/> values: every sync block KVM offers, the sets that
    /// move with ioctls, the PSW, the epoch difference and the MP state. VRS and FPRS carry the FPC after
    /// the registers; BPBC is one byte, 0 or 1.
    /// </remarks>
    public RegisterState SaveState()
    {
        ThrowIfReleased();
        Synchronize();
        var sets = new SortedDictionary<ulong, byte[]>();
        foreach (var set in StateOrder)
            if ((_supported & set) != 0) sets[(ulong)set] = CopyOut(set);
        return new RegisterState(KvmArchitecture.S390x, sets);
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The sync blocks are flagged in <c>kvm_dirty_regs</c> and cost no ioctl; KVM loads them at the next
    /// entry. The ONE_REG registers, FPU fallback, epoch difference and MP state are written now. The
    /// state must have exactly the sets this vCPU has (<see cref="SupportedSets"/>).
    /// </remarks>
    public void RestoreState(RegisterState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        ThrowIfReleased();
        if (state.Architecture != KvmArchitecture.S390x)
            throw new ArgumentException($"Cannot restore {state.Architecture} registers into an s390x vCPU.", nameof(state));
        foreach (ulong key in state.Sets)
        {
            if ((_supported & (S390xRegisterSets)key) == 0 || (key & (key - 1)) != 0)
                throw new ArgumentException($"The state holds register set {(S390xRegisterSets)key}, which this vCPU cannot load (it has {_supported}).", nameof(state));
        }
        foreach (var set in StateOrder)
        {
            if ((_supported & set) == 0) continue;
            if (!state.TryGet((ulong)set, out var bytes) || bytes.Length != SizeOf(set))
                throw new ArgumentException($"The state lacks register set {set} or it has another size.", nameof(state));
        }
        foreach (var set in StateOrder)
        {
            if ((_supported & set) == 0) continue;
            _ = state.TryGet((ulong)set, out var bytes);
            CopyIn(set, bytes);
        }
        _valid = _supported;
        _regValid = Arch0Regs | PfaultRegs | EpochRegs;
        MarkValidDirty(_supported);
        WriteDirtyWithIoctls();
    }

    // Run hooks -------------------------------------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void IRunHooks.BeforeRun()
    {
        if (_dirty != 0 || _regDirty != 0) FlushForRun();
        _handedOver = RunDirtyRegs;
    }

    private void FlushForRun()
    {
        var hand = _dirty & _sync;
        if (hand != 0)
        {
            RunDirtyRegs |= (ulong)hand;
            _dirty &= ~hand;
        }
        if (_dirty != 0 || _regDirty != 0) WriteDirtyWithIoctls();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void IRunHooks.AfterRun(int result)
    {
        // KVM zeroes kvm_dirty_regs in sync_regs and always follows it with store_regs, which writes every
        // block it offers. An early failure (immediate_exit, a stopped vCPU) leaves the flags and kvm_run alone.
        if (RunDirtyRegs == 0 && (_handedOver != 0 || result >= 0))
        {
            _valid |= _sync;
            _regValid |= _syncRegs;
        }
        // Whatever moves with an ioctl may have changed while the guest ran (the guest can stop itself or set its clock).
        _valid &= ~_volatile;
        _regValid &= ~_volatileRegs;
        _handedOver = 0;
    }

    void IRunHooks.Release()
    {
        _released = true;
        _shadow.Dispose();
    }
}
