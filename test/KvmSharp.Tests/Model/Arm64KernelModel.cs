using System.Runtime.InteropServices;
using KvmSharp.Interop;
using KvmSharp.Registers;

namespace KvmSharp.Tests.Model;

/// <summary>
/// A strict model of arm64 KVM (arch/arm64/kvm/arm.c, guest.c, mmio.c as documented in api.rst):
/// KVM_ARM_PREFERRED_TARGET / KVM_ARM_VCPU_INIT, ONE_REG with size-checked ids, KVM_GET_REG_LIST with
/// E2BIG sizing, MP state, events, and MMIO exits completed at the next KVM_RUN (immediate_exit
/// included). Register ids are spelled out here from the uapi values, independently of
/// <see cref="Arm64RegisterIds"/>, so that the tests check the library's ids.
/// </summary>
internal sealed unsafe class Arm64KernelModel : KernelModel
{
    public const uint TargetGenericV8 = 5; // KVM_ARM_TARGET_GENERIC_V8
    public const uint ExitUnknown = 0, ExitMmio = 6;
    public const int FeaturePowerOff = 0, FeaturePsci02 = 2;
    public const ulong PstateEl1hDaifMasked = 0x3C5;
    public const ulong TimerTicksPerEntry = 0x1000;

    // Ids from the uapi values (REGSYNC.md §4), not from the library.
    public const ulong X0Id = 0x6030_0000_0010_0000, SpId = 0x6030_0000_0010_003E, PcId = 0x6030_0000_0010_0040,
        PstateId = 0x6030_0000_0010_0042, SpEl1Id = 0x6030_0000_0010_0044, ElrEl1Id = 0x6030_0000_0010_0046,
        Spsr0Id = 0x6030_0000_0010_0048, V0Id = 0x6040_0000_0010_0054, FpsrId = 0x6020_0000_0010_00D4, FpcrId = 0x6020_0000_0010_00D5;
    public const ulong TimerCtlId = 0x6030_0000_0013_DF19, TimerCntId = 0x6030_0000_0013_DF1A, TimerCvalId = 0x6030_0000_0013_DF02,
        PtimerCntId = 0x6030_0000_0013_DF01, PsciVersionId = 0x6030_0000_0014_0000, CcsidrDemuxId = 0x6020_0000_0011_0000;
    public const ulong SizeMask = 0x00F0_0000_0000_0000, CoprocMask = 0x0000_0000_0FFF_0000, CoreGroup = 0x0010_0000;

    public static ulong SysReg(int op0, int op1, int crn, int crm, int op2) =>
        0x6030_0000_0013_0000UL | (uint)(op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2);

    public static readonly ulong SctlrEl1 = SysReg(3, 0, 1, 0, 0), Ttbr0El1 = SysReg(3, 0, 2, 0, 0), Ttbr1El1 = SysReg(3, 0, 2, 0, 1),
        TcrEl1 = SysReg(3, 0, 2, 0, 2), MairEl1 = SysReg(3, 0, 10, 2, 0), VbarEl1 = SysReg(3, 0, 12, 0, 0),
        CntkctlEl1 = SysReg(3, 0, 14, 1, 0), TpidrEl0 = SysReg(3, 3, 13, 0, 2), TpidrEl1 = SysReg(3, 0, 13, 0, 4);

    public static ulong XId(int n) => X0Id + 2UL * (uint)n;

    public static ulong VId(int n) => V0Id + 4UL * (uint)n;

    public static int SizeOf(ulong id) => 1 << (int)((id & SizeMask) >> 52);

    /// <summary>Every id KVM_GET_REG_LIST reports: the core registers (as the real kernel lists them), then the others.</summary>
    public static IReadOnlyList<ulong> ListedIds { get; } = BuildIds();

    /// <summary>The non-core ids of <see cref="ListedIds"/>: what the strategy should cache as system registers.</summary>
    public static IReadOnlyList<ulong> NonCoreIds { get; } = [.. BuildIds().Where(id => (id & CoprocMask) != CoreGroup)];

    private static ulong[] BuildIds()
    {
        var ids = new List<ulong>();
        for (int n = 0; n <= 30; n++) ids.Add(XId(n));
        ids.AddRange([SpId, PcId, PstateId, SpEl1Id, ElrEl1Id]);
        for (int i = 0; i < 5; i++) ids.Add(Spsr0Id + 2UL * (uint)i);
        for (int n = 0; n < 32; n++) ids.Add(VId(n));
        ids.AddRange([FpsrId, FpcrId]);
        ids.AddRange([CcsidrDemuxId, SctlrEl1, Ttbr0El1, Ttbr1El1, TcrEl1, MairEl1, VbarEl1, CntkctlEl1, TpidrEl0, TpidrEl1,
            TimerCvalId, TimerCtlId, TimerCntId, PsciVersionId]);
        // Not PTIMER_CNT: Linux 6.1 lists only the virtual timer's CTL, CNT and CVAL (guest.c,
        // copy_timer_indices) although ONE_REG accepts the physical timer's too — seen on the real
        // arm64 KVM (Arm64RegisterTests in the arm64 suite); the model listed it until then.
        return [.. ids];
    }

    private readonly Dictionary<int, Arm64ModelState> _states = [];
    private uint? _vmFeatures; // the model serves one VM per test
    private readonly Dictionary<ulong, int> _writesById = [];
    private readonly int[] _levelWrites = new int[4];

    public Arm64KernelModel()
        : base(KvmArchitecture.Arm64)
    {
        Capabilities[KvmCapability.OneReg] = 1;
        Capabilities[KvmCapability.MpState] = 1;
        Capabilities[KvmCapability.VcpuEvents] = 1;
        Capabilities[KvmCapability.ImmediateExit] = 1;
        Capabilities[KvmCapability.ArmPsci] = 1;
        Capabilities[KvmCapability.DeviceCtrl] = 1;
        Capabilities[KvmCapability.NrMemSlots] = 512;
    }

    /// <summary>The modelled state of a vCPU.</summary>
    public Arm64ModelState State(ModelVcpu v) => _states[v.Id];

    /// <summary>How many register values of <paramref name="level"/> were written (SET_ONE_REG / SET_MP_STATE / SET_VCPU_EVENTS) since the counts were last reset.</summary>
    public int LevelWrites(SyncLevel level)
    {
        return _levelWrites[(int)level];
    }

    /// <summary>How many times KVM_SET_ONE_REG wrote <paramref name="id"/> since the counts were last reset.</summary>
    public int WritesOf(ulong id)
    {
        return _writesById.GetValueOrDefault(id);
    }

    /// <summary>QEMU's levels: only the timer counters are Full; everything else (MP state and events too) is Runtime.</summary>
    public static SyncLevel LevelOf(ulong id) => id is TimerCntId or PtimerCntId ? SyncLevel.Full : SyncLevel.Runtime;

    protected override void OnCountsReset()
    {
        Array.Clear(_levelWrites);
        _writesById.Clear();
    }

    private void RecordWrite(ulong id, SyncLevel level)
    {
        _levelWrites[(int)level]++;
        _writesById[id] = _writesById.GetValueOrDefault(id) + 1;
    }

    protected override void InitVcpu(ModelVcpu vcpu) => _states[vcpu.Id] = new Arm64ModelState();

    protected override int VmIoctl(ModelVm vm, KvmIoctl request, nint arg)
    {
        if (request == KvmIoctls.Arm64.KVM_ARM_PREFERRED_TARGET)
        {
            if (arg == 0) return Violation("KVM_ARM_PREFERRED_TARGET with a null argument", Errno.EFAULT);
            new Span<byte>((void*)arg, 32).Clear();
            *(uint*)arg = TargetGenericV8;
            return 0;
        }
        return base.VmIoctl(vm, request, arg);
    }

    protected override int VcpuIoctl(ModelVcpu vcpu, KvmIoctl request, nint arg)
    {
        var st = _states[vcpu.Id];
        if (request == KvmIoctls.KVM_RUN) return Run(vcpu, st);
        if (request == KvmIoctls.Arm64.KVM_ARM_VCPU_INIT) return VcpuInit(st, arg);
        if (request == KvmIoctls.KVM_GET_ONE_REG || request == KvmIoctls.KVM_SET_ONE_REG) return OneReg(st, request, arg);
        if (request == KvmIoctls.KVM_GET_REG_LIST) return RegList(st, arg);
        if (request == KvmIoctls.KVM_GET_MP_STATE)
        {
            *(uint*)arg = (uint)st.MpState;
            return 0;
        }
        if (request == KvmIoctls.KVM_SET_MP_STATE)
        {
            var state = (MpState)(*(uint*)arg);
            if (state is not (MpState.Runnable or MpState.Stopped or MpState.Suspended))
                return Violation($"KVM_SET_MP_STATE {state}: arm64 knows only RUNNABLE, STOPPED, SUSPENDED", Errno.EINVAL);
            st.MpState = state;
            RecordWrite(Arm64RegisterIds.MpStateKey, SyncLevel.Runtime);
            return 0;
        }
        if (request == KvmIoctls.Arm64.KVM_GET_VCPU_EVENTS)
        {
            var e = new Span<byte>((void*)arg, 64);
            e.Clear();
            e[0] = st.SErrorPending ? (byte)1 : (byte)0;
            e[1] = 1; // serror_has_esr: the modelled host has RAS
            if (st.SErrorPending) MemoryMarshal.Write(e.Slice(8, 8), st.SErrorEsr);
            return 0; // ext_dabt_pending is never reported: KVM injects it at once
        }
        if (request == KvmIoctls.Arm64.KVM_SET_VCPU_EVENTS)
        {
            var e = new ReadOnlySpan<byte>((void*)arg, 64);
            if (e.Slice(3, 5).ContainsAnyExcept((byte)0) || e.Slice(16).ContainsAnyExcept((byte)0))
                return Violation("KVM_SET_VCPU_EVENTS with non-zero padding or reserved words", Errno.EINVAL);
            bool pending = e[0] != 0, hasEsr = e[1] != 0, dabt = e[2] != 0;
            ulong esr = MemoryMarshal.Read<ulong>(e.Slice(8, 8));
            if (pending && hasEsr && (esr & ~0x1FF_FFFFUL) != 0)
                return Violation($"KVM_SET_VCPU_EVENTS with SError ESR 0x{esr:X} beyond the ISS bits", Errno.EINVAL);
            if (pending)
            {
                st.SErrorPending = true; // setting 0 never clears a pending SError
                st.SErrorEsr = hasEsr ? esr : 0;
            }
            if (dabt) st.ExtDabtInjections++;
            RecordWrite(Arm64RegisterIds.EventsKey, SyncLevel.Runtime);
            return 0;
        }
        return Violation($"{request.Name} on an arm64 vCPU fd (not modelled)", Errno.ENOTTY);
    }

    private int VcpuInit(Arm64ModelState st, nint arg)
    {
        uint target = *(uint*)arg;
        uint* features = (uint*)(arg + 4);
        if (target != TargetGenericV8)
            return Violation($"KVM_ARM_VCPU_INIT with target {target}, not the preferred {TargetGenericV8}", Errno.EINVAL);
        for (int i = 1; i < 7; i++)
            if (features[i] != 0) return Violation($"KVM_ARM_VCPU_INIT with features[{i}] = 0x{features[i]:X}", Errno.ENOENT);
        uint allowed = 1u << FeaturePowerOff | 1u << FeaturePsci02;
        if ((features[0] & ~allowed) != 0)
            return Violation($"KVM_ARM_VCPU_INIT with features 0x{features[0]:X} this host does not offer", Errno.EINVAL);
        // Every feature but POWER_OFF must be the same on all vCPUs of the VM and across re-inits.
        uint vmWide = features[0] & ~(1u << FeaturePowerOff);
        if (_vmFeatures is uint configured && configured != vmWide)
            return Violation($"KVM_ARM_VCPU_INIT with features 0x{vmWide:X}, but the VM's vCPUs use 0x{configured:X}", Errno.EINVAL);
        _vmFeatures = vmWide;

        st.Reset();
        st.Features = features[0];
        st.MpState = (features[0] & 1u << FeaturePowerOff) != 0 ? MpState.Stopped : MpState.Runnable;
        st.Initialized = true;
        st.Inits++;
        return 0;
    }

    private int OneReg(Arm64ModelState st, KvmIoctl request, nint arg)
    {
        if (!st.Initialized) return Violation($"{request.Name} before KVM_ARM_VCPU_INIT", Errno.ENOEXEC);
        ulong id = *(ulong*)arg;
        byte* addr = (byte*)*(ulong*)(arg + 8);
        if (!st.Regs.TryGetValue(id, out var value))
        {
            // guest.c: a core id with a bad offset or size is EINVAL; other unknown ids are ENOENT.
            int errno = (id & CoprocMask) == CoreGroup ? Errno.EINVAL : Errno.ENOENT;
            foreach (var known in st.Regs.Keys)
            {
                if ((known & ~SizeMask) == (id & ~SizeMask))
                    return Violation($"{request.Name} 0x{id:X16}: {SizeOf(id)} bytes in the id, the register has {SizeOf(known)}", errno);
            }
            return Violation($"{request.Name} of unknown register 0x{id:X16}", errno);
        }
        if (addr == null) return Violation($"{request.Name} 0x{id:X16} with a null address", Errno.EFAULT);
        int size = SizeOf(id);
        var bytes = new Span<byte>(addr, size);
        if (request == KvmIoctls.KVM_GET_ONE_REG)
        {
            Span<byte> all = stackalloc byte[16];
            MemoryMarshal.Write(all, in value);
            all[..size].CopyTo(bytes);
            return 0;
        }
        Span<byte> buffer = stackalloc byte[16];
        buffer.Clear();
        bytes.CopyTo(buffer);
        var written = MemoryMarshal.Read<UInt128>(buffer);
        if (id == PstateId)
        {
            ulong mode = (ulong)written & 0x1F;
            if (mode is not (0x0 or 0x4 or 0x5)) // EL0t, EL1t, EL1h: no EL2 (no NV), no AArch32 (no EL1_32BIT)
                return Violation($"KVM_SET_ONE_REG PSTATE 0x{(ulong)written:X}: mode 0x{mode:X} is not valid for this vCPU", Errno.EINVAL);
        }
        if (id == PsciVersionId && (ulong)written is not (0x2 or 0x1_0000 or 0x1_0001))
            return Violation($"KVM_SET_ONE_REG PSCI_VERSION 0x{(ulong)written:X}", Errno.EINVAL);
        st.Regs[id] = written;
        RecordWrite(id, LevelOf(id));
        return 0;
    }

    private int RegList(Arm64ModelState st, nint arg)
    {
        if (!st.Initialized) return Violation("KVM_GET_REG_LIST before KVM_ARM_VCPU_INIT", Errno.ENOEXEC);
        ulong n = *(ulong*)arg;
        *(ulong*)arg = (ulong)ListedIds.Count;
        st.RegListCalls++;
        if (n < (ulong)ListedIds.Count) return -Errno.E2BIG;
        for (int i = 0; i < ListedIds.Count; i++) ((ulong*)(arg + 8))[i] = ListedIds[i];
        return 0;
    }

    private int Run(ModelVcpu vcpu, Arm64ModelState st)
    {
        if (!st.Initialized) return -Errno.ENOEXEC; // a test runs before init on purpose: not a violation
        ref uint exitReason = ref vcpu.RunField<uint>(8);
        // kvm_arch_vcpu_ioctl_run: finish an MMIO access first (guarded by mmio_needed), then look at immediate_exit.
        if (exitReason == ExitMmio && st.MmioNeeded) CompleteMmio(vcpu, st);
        if (vcpu.RunField<byte>(1) != 0) return -Errno.EINTR;
        if (st.MpState == MpState.Stopped)
            return Violation("KVM_RUN on a STOPPED (powered-off) vCPU: the real kernel blocks until a PSCI CPU_ON", Errno.EINTR);
        var guest = vcpu.Guest ?? throw new InvalidOperationException("The test ran the vCPU without installing a Guest callback.");
        exitReason = ExitUnknown;
        st.Regs[TimerCntId] += TimerTicksPerEntry;
        st.Regs[PtimerCntId] += TimerTicksPerEntry;
        vcpu.Entries++;
        exitReason = guest(vcpu);
        return 0;
    }

    private static void CompleteMmio(ModelVcpu vcpu, Arm64ModelState st)
    {
        st.MmioNeeded = false;
        if (!st.MmioIsWrite && st.MmioRegister != 31)
        {
            ulong data = vcpu.RunField<ulong>(40);
            if (st.MmioLength < 8) data &= (1UL << (8 * st.MmioLength)) - 1;
            st.Regs[XId(st.MmioRegister)] = data;
        }
        st.Pc += 4;
        st.Completions++;
    }

    /// <summary>
    /// Ends the guest's run with an MMIO exit for the instruction at PC that accesses
    /// <paramref name="length"/> bytes at <paramref name="address"/> through X<paramref name="register"/>
    /// (31 = XZR): fills <c>kvm_run.mmio</c> (a store's data from the register) and leaves the access
    /// pending until the next KVM_RUN.
    /// </summary>
    public uint MmioExit(ModelVcpu vcpu, ulong address, int length, bool isWrite, int register)
    {
        var st = _states[vcpu.Id];
        vcpu.RunField<ulong>(32) = address;
        vcpu.RunField<ulong>(40) = 0;
        if (isWrite && register != 31)
        {
            ulong value = st.X(register);
            if (length < 8) value &= (1UL << (8 * length)) - 1;
            vcpu.RunField<ulong>(40) = value;
        }
        vcpu.RunField<uint>(48) = (uint)length;
        vcpu.RunField<byte>(52) = isWrite ? (byte)1 : (byte)0;
        st.MmioNeeded = true;
        st.MmioIsWrite = isWrite;
        st.MmioRegister = register;
        st.MmioLength = length;
        return ExitMmio;
    }
}

/// <summary>One modelled arm64 vCPU: register values by ONE_REG id, MP state, events, the pending MMIO access.</summary>
internal sealed class Arm64ModelState
{
    public bool Initialized { get; set; }
    public uint Features { get; set; }
    public int Inits { get; set; }
    public int RegListCalls { get; set; }
    public Dictionary<ulong, UInt128> Regs { get; } = [];
    public MpState MpState { get; set; } = MpState.Runnable;
    public bool SErrorPending { get; set; }
    public ulong SErrorEsr { get; set; }
    public int ExtDabtInjections { get; set; }

    // vcpu->mmio_needed and the decoded access.
    public bool MmioNeeded { get; set; }
    public bool MmioIsWrite { get; set; }
    public int MmioRegister { get; set; }
    public int MmioLength { get; set; }
    public int Completions { get; set; }

    public Arm64ModelState() => Reset();

    /// <summary>What KVM_ARM_VCPU_INIT does to the registers: zero, PSTATE EL1h with DAIF masked, some reset values.</summary>
    public void Reset()
    {
        foreach (ulong id in Arm64KernelModel.ListedIds) Regs[id] = 0;
        Regs[Arm64KernelModel.PtimerCntId] = 0; // unlisted, but ONE_REG reaches it
        Regs[Arm64KernelModel.PstateId] = Arm64KernelModel.PstateEl1hDaifMasked;
        Regs[Arm64KernelModel.SctlrEl1] = 0x30D0_0800;
        Regs[Arm64KernelModel.CcsidrDemuxId] = 0x7003_E01A;
        Regs[Arm64KernelModel.TimerCntId] = 0x10_0000;
        Regs[Arm64KernelModel.PtimerCntId] = 0x20_0000;
        Regs[Arm64KernelModel.PsciVersionId] = 0x1_0001;
        SErrorPending = false;
        SErrorEsr = 0;
    }

    public ulong Pc
    {
        get => (ulong)Regs[Arm64KernelModel.PcId];
        set => Regs[Arm64KernelModel.PcId] = value;
    }

    public ulong X(int n) => n == 31 ? 0 : (ulong)Regs[Arm64KernelModel.XId(n)];

    public void SetX(int n, ulong value)
    {
        if (n != 31) Regs[Arm64KernelModel.XId(n)] = value;
    }

    public ulong Get(ulong id) => (ulong)Regs[id];
}
