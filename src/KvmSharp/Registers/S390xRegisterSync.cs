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
public sealed partial class S390xRegisterSync : IRegisterSync, IRunHooks
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

    private readonly VcpuCore _vcpu; // the vCPU's lower half: fd, kernel seam, kvm_run, ownership gate
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

    internal S390xRegisterSync(VcpuCore vcpu)
    {
        _vcpu = vcpu;
        _kernel = vcpu.Kernel;
        var run = vcpu.RunMapping;
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
        if (_released) VcpuCore.ThrowDisposed();
        _vcpu.CheckAccess(); // refuses other threads while the vCPU is owned
    }

    private void RequireSupported(S390xRegisterSets sets)
    {
        var missing = sets & ~_supported;
        if (missing != 0)
            throw new NotSupportedException(
                $"This KVM does not offer {missing} in kvm_run (kvm_valid_regs = 0x{(ulong)_sync:X}) and has no ioctl for it.");
    }

    // ---- resets -----------------------------------------------------------------------------------

    /// <summary>Whether KVM has the normal and clear resets (KVM_CAP_S390_VCPU_RESETS; the initial reset always exists).</summary>
    /// <exception cref="KvmException">KVM_CHECK_EXTENSION failed.</exception>
    public bool SupportsNormalAndClearReset
    {
        get
        {
            if (_vcpuResets < 0)
                _vcpuResets = _vcpu.CheckVmExtension(KvmCapability.S390VcpuResets) > 0 ? 1 : 0;
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
}
