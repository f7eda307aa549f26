using KvmSharp.Interop;
using KvmSharp.Interop.S390x;

namespace KvmSharp.Registers;

// The registers: PSW, general, access and control registers, floating point and vector registers,
// ARCH0/PFAULT/epoch-difference registers, facility blocks, MP state.
public sealed partial class S390xRegisterSync
{
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
}
