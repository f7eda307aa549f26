using KvmSharp.Interop;
using KvmSharp.Registers;
using S390 = KvmSharp.Interop.S390x;
using Sync = KvmSharp.Interop.S390x.kvm_sync_regs;

namespace KvmSharp.Tests.Model;

/// <summary>
/// The state the s390x model keeps for one vCPU: what SIE and arch/s390/kvm/kvm-s390.c hold, whether
/// in the SIE block or (for the blocks KVM keeps in <c>kvm_run</c>) as loaded at the last entry.
/// The guest callback reads and writes it.
/// </summary>
internal sealed class S390xModelCpu
{
    public const ulong PfaultTokenInvalid = ulong.MaxValue;

    public ulong PswMask, PswAddr;
    public uint Prefix;
    public readonly ulong[] Gprs = new ulong[16];
    public readonly uint[] Acrs = new uint[16];
    public readonly ulong[] Crs = new ulong[16];
    public uint Todpr;
    public ulong CpuTimer, ClockComparator, ProgramParameter, Gbea;
    public ulong PfaultToken = PfaultTokenInvalid, PfaultSelect, PfaultCompare;

    /// <summary><c>vrs[i][j]</c> at <c>2 * i + j</c>; FPR i is <c>Vrs[2 * i]</c> (its leftmost doubleword).</summary>
    public readonly ulong[] Vrs = new ulong[64];

    public uint Fpc;
    public readonly byte[] Riccb = new byte[64];
    public readonly ulong[] Gscb = new ulong[4];
    public ulong Etoken, EtokenExtension;
    public bool Bpbc;
    public ulong Diag318;
    public ulong EpochDifference;

    /// <summary>A new vCPU is stopped (CPUSTAT_STOPPED); KVM_RUN starts it unless userspace controls the CPU state.</summary>
    public bool Stopped = true;

    /// <summary><c>kvm_dirty_regs</c> as the last entry found it.</summary>
    public ulong LastEntryDirtyRegs;

    /// <summary>What the model last wrote into each <c>kvm_run</c> block KVM keeps elsewhere (to catch unflagged writes).</summary>
    internal readonly Dictionary<ulong, byte[]> Published = [];
}

/// <summary>
/// A strict model of s390x KVM, following arch/s390/kvm/kvm-s390.c: <c>kvm_valid_regs</c> is set at
/// vCPU creation (an output); KVM_RUN returns -EINTR for <c>immediate_exit</c> before touching
/// anything, refuses unknown sync bits with -EINVAL, starts a stopped vCPU unless userspace has taken
/// over the CPU state (then refuses it with -EINVAL), loads the PSW always, the blocks it keeps in
/// <c>kvm_run</c> (GPRs, ACRs, FP/vector registers, RICCB, GSCB, etoken) always and the others only
/// when flagged, zeroes <c>kvm_dirty_regs</c>, runs the guest and stores everything back. ONE_REG knows
/// the nine s390 ids; GET_MP_STATE answers with the state as its return value (as mainline does) or,
/// optionally, in the struct; resets do what kvm-s390.c's resets do. Anything the real kernel refuses
/// is recorded in <see cref="KernelModel.Violations"/>, and so is a write to a non-resident block in
/// <c>kvm_run</c> without its dirty bit (KVM would silently ignore it).
/// </summary>
internal sealed unsafe class S390xKernelModel : KernelModel
{
    public const ulong PREFIX = Sync.KVM_SYNC_PREFIX, GPRS = Sync.KVM_SYNC_GPRS, ACRS = Sync.KVM_SYNC_ACRS, CRS = Sync.KVM_SYNC_CRS,
        ARCH0 = Sync.KVM_SYNC_ARCH0, PFAULT = Sync.KVM_SYNC_PFAULT, VRS = Sync.KVM_SYNC_VRS, RICCB = Sync.KVM_SYNC_RICCB,
        FPRS = Sync.KVM_SYNC_FPRS, GSCB = Sync.KVM_SYNC_GSCB, BPBC = Sync.KVM_SYNC_BPBC, ETOKEN = Sync.KVM_SYNC_ETOKEN,
        DIAG318 = Sync.KVM_SYNC_DIAG318;

    /// <summary>KVM_SYNC_S390_VALID_FIELDS.</summary>
    public const ulong ValidFields = 0x1FFF;

    /// <summary>What current KVM offers on a machine with the vector facility but without facilities 64/82/133/156.</summary>
    public const ulong DefaultValidRegs = PREFIX | GPRS | ACRS | CRS | ARCH0 | PFAULT | DIAG318 | VRS;

    /// <summary>Everything: vector registers and the RI, BPBC, GS and etoken facilities.</summary>
    public const ulong AllValidRegs = DefaultValidRegs | RICCB | BPBC | GSCB | ETOKEN;

    // kvm_run and kvm_sync_regs offsets.
    public const int ImmediateExitOff = 1, ExitReasonOff = 8, PswMaskOff = 32, PswAddrOff = 40, ExitUnionOff = 48,
        ValidRegsOff = 304, DirtyRegsOff = 312, SyncOff = 320;
    public const int PrefixOff = 0, GprsOff = 8, AcrsOff = 136, CrsOff = 200, TodprOff = 328, CputmOff = 336, CkcOff = 344,
        PpOff = 352, GbeaOff = 360, PftOff = 368, PfsOff = 376, PfcOff = 384, VrsOff = 392, FpcOff = 1416,
        RiccbOff = 1472, Diag318Off = 1536, GscbOff = 1744, EtokenOff = 1776;

    public const ulong IdTodpr = 0x5020000000000001, IdEpochDiff = 0x5030000000000002, IdCpuTimer = 0x5030000000000003,
        IdClockComp = 0x5030000000000004, IdPfToken = 0x5030000000000005, IdPfCompare = 0x5030000000000006,
        IdPfSelect = 0x5030000000000007, IdPp = 0x5030000000000008, IdGbea = 0x5030000000000009;

    private const ulong CR0InitialMask = 0xE0, CR14InitialMask = 0xC2000000, PswMaskRi = 0x0000008000000000;

    // The blocks KVM keeps elsewhere (loaded only when flagged) and those it keeps in kvm_run (always loaded).
    private static readonly ulong[] StoredBlocks = [PREFIX, CRS, ARCH0, PFAULT, BPBC, DIAG318];
    private static readonly ulong[] ResidentBlocks = [GPRS, ACRS, VRS, FPRS, RICCB, GSCB, ETOKEN];

    private readonly Dictionary<ModelVcpu, S390xModelCpu> _cpus = [];
    private readonly int[] _levelWrites = new int[4];

    /// <param name="validRegs">What KVM puts in <c>kvm_valid_regs</c> at creation (GPRS and ACRS at least).</param>
    /// <param name="vcpuResets">KVM_CAP_S390_VCPU_RESETS: the normal and clear reset ioctls exist.</param>
    /// <param name="getMpStateFillsStruct">False: KVM_GET_MP_STATE returns the state as its value (mainline);
    /// true: it fills the struct and returns 0 (as a proposed fix does).</param>
    public S390xKernelModel(ulong validRegs = DefaultValidRegs, bool vcpuResets = true, bool getMpStateFillsStruct = false)
        : base(KvmArchitecture.S390x)
    {
        if ((validRegs & (GPRS | ACRS)) != (GPRS | ACRS) || (validRegs & ~ValidFields) != 0)
            throw new ArgumentException("KVM always offers GPRS and ACRS, and no bits outside KVM_SYNC_S390_VALID_FIELDS.", nameof(validRegs));
        ValidRegs = validRegs;
        VcpuResets = vcpuResets;
        GetMpStateFillsStruct = getMpStateFillsStruct;
        Capabilities[KvmCapability.SyncRegs] = 1;
        Capabilities[KvmCapability.OneReg] = 1;
        Capabilities[KvmCapability.MpState] = 1;
        Capabilities[KvmCapability.ImmediateExit] = 1;
        Capabilities[KvmCapability.S390Psw] = 1;
        if ((validRegs & VRS) != 0) Capabilities[KvmCapability.S390VectorRegisters] = 1;
        if (vcpuResets) Capabilities[KvmCapability.S390VcpuResets] = 1;
    }

    public ulong ValidRegs { get; }

    public bool VcpuResets { get; }

    public bool GetMpStateFillsStruct { get; }

    /// <summary>kvm->arch.user_cpu_state_ctrl: set by the first KVM_SET_MP_STATE.</summary>
    public bool UserCpuStateControl { get; private set; }

    public S390xModelCpu Cpu(ModelVcpu vcpu) => _cpus[vcpu];

    /// <summary>How many register values of exactly <paramref name="level"/> userspace handed to the model since <see cref="KernelModel.ResetCounts"/>.</summary>
    public int LevelWrites(SyncLevel level)
    {
        return _levelWrites[(int)level];
    }

    private void Wrote(SyncLevel level, int values) => _levelWrites[(int)level] += values;

    protected override void OnCountsReset() => Array.Clear(_levelWrites);

    protected override void InitVcpu(ModelVcpu vcpu) => _cpus[vcpu] = new S390xModelCpu();

    protected override void OnRunMapped(ModelVcpu vcpu)
    {
        // kvm_arch_vcpu_create: kvm_valid_regs is KVM's output; the page itself is zeroed.
        vcpu.RunField<ulong>(ValidRegsOff) = ValidRegs;
        var c = Cpu(vcpu);
        foreach (ulong b in StoredBlocks) c.Published[b] = RunBytes(vcpu, b);
    }

    protected override int VcpuIoctl(ModelVcpu vcpu, KvmIoctl request, nint arg)
    {
        try
        {
            return Dispatch(vcpu, Cpu(vcpu), request, arg);
        }
        finally
        {
        }
    }

    private int Dispatch(ModelVcpu v, S390xModelCpu c, KvmIoctl request, nint arg)
    {
        if (request == KvmIoctls.KVM_RUN) return Run(v, c);
        if (request == KvmIoctls.KVM_GET_ONE_REG || request == KvmIoctls.KVM_SET_ONE_REG) return OneReg(c, request, arg);
        if (request == KvmIoctls.KVM_GET_MP_STATE)
        {
            uint state = c.Stopped ? (uint)MpState.Stopped : (uint)MpState.Operating;
            if (!GetMpStateFillsStruct) return (int)state; // kvm_arch_vcpu_ioctl_get_mpstate returns it; kvm_main.c copies nothing
            if (arg == 0) return Violation("KVM_GET_MP_STATE with a null struct", Errno.EFAULT);
            *(uint*)arg = state;
            return 0;
        }
        if (request == KvmIoctls.KVM_SET_MP_STATE) return SetMpState(c, arg);
        if (request == KvmIoctls.S390x.KVM_GET_REGS)
        {
            new ReadOnlySpan<byte>(v.Run + SyncOff + GprsOff, 128).CopyTo(new Span<byte>((void*)arg, 128));
            return 0;
        }
        if (request == KvmIoctls.S390x.KVM_SET_REGS)
        {
            new ReadOnlySpan<byte>((void*)arg, 128).CopyTo(new Span<byte>(v.Run + SyncOff + GprsOff, 128));
            Wrote(SyncLevel.Runtime, 16);
            return 0;
        }
        if (request == KvmIoctls.S390x.KVM_GET_SREGS)
        {
            // kvm_arch_vcpu_ioctl_get_sregs: ACRs from kvm_run (their home), CRs from the SIE block.
            new ReadOnlySpan<byte>(v.Run + SyncOff + AcrsOff, 64).CopyTo(new Span<byte>((void*)arg, 64));
            for (int i = 0; i < 16; i++) ((ulong*)(arg + 64))[i] = c.Crs[i];
            return 0;
        }
        if (request == KvmIoctls.S390x.KVM_SET_SREGS)
        {
            new ReadOnlySpan<byte>((void*)arg, 64).CopyTo(new Span<byte>(v.Run + SyncOff + AcrsOff, 64));
            for (int i = 0; i < 16; i++) c.Crs[i] = ((ulong*)(arg + 64))[i];
            Wrote(SyncLevel.Reset, 32);
            return 0;
        }
        if (request == KvmIoctls.S390x.KVM_GET_FPU) return GetFpu(v, c, arg);
        if (request == KvmIoctls.S390x.KVM_SET_FPU) return SetFpu(v, c, arg);
        if (request == KvmIoctls.S390x.KVM_S390_SET_INITIAL_PSW)
        {
            if (!c.Stopped) return Violation("KVM_S390_SET_INITIAL_PSW on a vCPU that is not stopped", Errno.EBUSY);
            var psw = (S390.kvm_s390_psw*)arg;
            v.RunField<ulong>(PswMaskOff) = psw->mask;
            v.RunField<ulong>(PswAddrOff) = psw->addr;
            Wrote(SyncLevel.Runtime, 2);
            return 0;
        }
        if (request == KvmIoctls.S390x.KVM_S390_INITIAL_RESET)
        {
            InitialReset(v, c);
            return 0;
        }
        if (request == KvmIoctls.S390x.KVM_S390_NORMAL_RESET || request == KvmIoctls.S390x.KVM_S390_CLEAR_RESET)
        {
            // Before KVM_CAP_S390_VCPU_RESETS these ioctls did not exist: kvm_arch_vcpu_ioctl's default.
            if (!VcpuResets) return Violation($"{request.Name} without KVM_CAP_S390_VCPU_RESETS", Errno.ENOTTY);
            if (request == KvmIoctls.S390x.KVM_S390_NORMAL_RESET) NormalReset(v, c);
            else ClearReset(v, c);
            return 0;
        }
        // KVM_GET_REG_LIST and everything else: kvm_arch_vcpu_ioctl's default case.
        return Violation($"{request.Name} on an s390x vCPU", Errno.ENOTTY);
    }

    // ---- KVM_RUN ----------------------------------------------------------------------------------

    private int Run(ModelVcpu v, S390xModelCpu c)
    {
        if (v.RunField<byte>(ImmediateExitOff) != 0) return -Errno.EINTR;
        ulong valid = v.RunField<ulong>(ValidRegsOff), dirty = v.RunField<ulong>(DirtyRegsOff);
        if ((valid & ~ValidFields) != 0 || (dirty & ~ValidFields) != 0)
            return Violation($"KVM_RUN with kvm_valid_regs 0x{valid:X} / kvm_dirty_regs 0x{dirty:X} outside KVM_SYNC_S390_VALID_FIELDS", Errno.EINVAL);
        if (valid != ValidRegs)
            Violations.Add($"userspace changed kvm_valid_regs from 0x{ValidRegs:X} to 0x{valid:X}; on s390x it is KVM's output");
        if (!UserCpuStateControl) c.Stopped = false;
        else if (c.Stopped) return Violation("KVM_RUN on a stopped vCPU while userspace controls the CPU state", Errno.EINVAL);

        SyncRegs(v, c, dirty);
        v.RunField<ulong>(DirtyRegsOff) = 0;
        c.LastEntryDirtyRegs = dirty;
        v.Entries++;
        uint reason = v.Guest is { } guest ? guest(v) : InstructionIntercept(v);
        v.RunField<uint>(ExitReasonOff) = reason;
        StoreRegs(v, c);
        return 0;
    }

    /// <summary>An instruction intercept (KVM_EXIT_S390_SIEIC, icptcode 4) for a DIAGNOSE.</summary>
    public static uint InstructionIntercept(ModelVcpu v)
    {
        v.RunField<byte>(ExitUnionOff) = 0x04;
        v.RunField<ushort>(ExitUnionOff + 2) = 0x8300;
        v.RunField<uint>(ExitUnionOff + 4) = 0x05010000;
        return 13;
    }

    private bool Offered(ulong block) => (ValidRegs & block) != 0;

    private static bool HasFp(ulong validRegs) => (validRegs & (VRS | FPRS)) != 0;

    private void SyncRegs(ModelVcpu v, S390xModelCpu c, ulong dirty)
    {
        c.PswMask = v.RunField<ulong>(PswMaskOff);
        c.PswAddr = v.RunField<ulong>(PswAddrOff);
        for (ulong bit = 1; bit <= ValidFields; bit <<= 1)
        {
            if ((dirty & bit) == 0 || Offered(bit)) continue;
            if (bit == FPRS && Offered(VRS)) continue; // KVM never offers both; FPRS under VX is ignored
            Violations.Add($"kvm_dirty_regs flags {Name(bit)}, which KVM does not offer (kvm_valid_regs 0x{ValidRegs:X}); the write is lost");
        }
        foreach (ulong b in StoredBlocks)
        {
            if (!Offered(b)) continue;
            if ((dirty & b) != 0)
            {
                Load(v, c, b);
                Wrote(SyncLevel.Reset, Values(b));
            }
            else
            {
                // Field by field: a field may hold what KVM stored last, or KVM's value fetched by an ioctl since.
                byte[] now = RunBytes(v, b), published = c.Published[b], kernel = KernelBytes(c, b);
                for (int i = 0; i < now.Length; i += 8)
                {
                    int n = Math.Min(8, now.Length - i);
                    if (!now.AsSpan(i, n).SequenceEqual(published.AsSpan(i, n)) && !now.AsSpan(i, n).SequenceEqual(kernel.AsSpan(i, n)))
                    {
                        Violations.Add($"kvm_run.s.regs {Name(b)} (byte {i}) was changed without KVM_SYNC_{Name(b)}: KVM ignores the write");
                        break;
                    }
                }
            }
        }
        foreach (ulong b in ResidentBlocks)
        {
            if (!Offered(b)) continue;
            Load(v, c, b); // KVM uses kvm_run itself for these, flagged or not
            if ((dirty & b) != 0) Wrote(b is GPRS or VRS or FPRS ? SyncLevel.Runtime : SyncLevel.Reset, Values(b));
        }
    }

    private void StoreRegs(ModelVcpu v, S390xModelCpu c)
    {
        v.RunField<ulong>(PswMaskOff) = c.PswMask;
        v.RunField<ulong>(PswAddrOff) = c.PswAddr;
        foreach (ulong b in StoredBlocks)
        {
            if (!Offered(b)) continue;
            Store(v, c, b);
            c.Published[b] = RunBytes(v, b);
        }
        foreach (ulong b in ResidentBlocks)
            if (Offered(b)) Store(v, c, b);
    }

    private int Values(ulong block) => block switch
    {
        GPRS or ACRS or CRS => 16,
        ARCH0 => 5,
        PFAULT => 3,
        VRS => 33,
        FPRS => 17,
        _ => 1,
    };

    private static string Name(ulong block) => block switch
    {
        PREFIX => "PREFIX", GPRS => "GPRS", ACRS => "ACRS", CRS => "CRS", ARCH0 => "ARCH0", PFAULT => "PFAULT", VRS => "VRS",
        RICCB => "RICCB", FPRS => "FPRS", GSCB => "GSCB", BPBC => "BPBC", ETOKEN => "ETOKEN", DIAG318 => "DIAG318",
        _ => $"0x{block:X}",
    };

    private static ref T Field<T>(ModelVcpu v, int syncOffset) where T : unmanaged => ref v.RunField<T>(SyncOff + syncOffset);

    private void Load(ModelVcpu v, S390xModelCpu c, ulong block)
    {
        switch (block)
        {
            case PREFIX: c.Prefix = (uint)Field<ulong>(v, PrefixOff) & 0xFFFFE000; break; // kvm_s390_set_prefix keeps bits 1-18
            case GPRS: for (int i = 0; i < 16; i++) c.Gprs[i] = Field<ulong>(v, GprsOff + 8 * i); break;
            case ACRS: for (int i = 0; i < 16; i++) c.Acrs[i] = Field<uint>(v, AcrsOff + 4 * i); break;
            case CRS: for (int i = 0; i < 16; i++) c.Crs[i] = Field<ulong>(v, CrsOff + 8 * i); break;
            case ARCH0:
                c.Todpr = (uint)Field<ulong>(v, TodprOff);
                c.CpuTimer = Field<ulong>(v, CputmOff);
                c.ClockComparator = Field<ulong>(v, CkcOff);
                c.ProgramParameter = Field<ulong>(v, PpOff);
                c.Gbea = Field<ulong>(v, GbeaOff);
                break;
            case PFAULT:
                c.PfaultToken = Field<ulong>(v, PftOff);
                c.PfaultSelect = Field<ulong>(v, PfsOff);
                c.PfaultCompare = Field<ulong>(v, PfcOff);
                break;
            case VRS:
                for (int i = 0; i < 64; i++) c.Vrs[i] = Field<ulong>(v, VrsOff + 8 * i);
                c.Fpc = Field<uint>(v, FpcOff);
                break;
            case FPRS:
                for (int i = 0; i < 16; i++) c.Vrs[2 * i] = Field<ulong>(v, VrsOff + 8 * i);
                c.Fpc = Field<uint>(v, FpcOff);
                break;
            case RICCB: new ReadOnlySpan<byte>(v.Run + SyncOff + RiccbOff, 64).CopyTo(c.Riccb); break;
            case GSCB: for (int i = 0; i < 4; i++) c.Gscb[i] = Field<ulong>(v, GscbOff + 8 * i); break;
            case ETOKEN:
                c.Etoken = Field<ulong>(v, EtokenOff);
                c.EtokenExtension = Field<ulong>(v, EtokenOff + 8);
                break;
            case BPBC: c.Bpbc = (Field<byte>(v, Sync.BpbcByteOffset) & Sync.BpbcBit) != 0; break;
            case DIAG318: c.Diag318 = Field<ulong>(v, Diag318Off); break;
        }
    }

    private static void Store(ModelVcpu v, S390xModelCpu c, ulong block)
    {
        switch (block)
        {
            case PREFIX: Field<ulong>(v, PrefixOff) = c.Prefix; break;
            case GPRS: for (int i = 0; i < 16; i++) Field<ulong>(v, GprsOff + 8 * i) = c.Gprs[i]; break;
            case ACRS: for (int i = 0; i < 16; i++) Field<uint>(v, AcrsOff + 4 * i) = c.Acrs[i]; break;
            case CRS: for (int i = 0; i < 16; i++) Field<ulong>(v, CrsOff + 8 * i) = c.Crs[i]; break;
            case ARCH0:
                Field<ulong>(v, TodprOff) = c.Todpr;
                Field<ulong>(v, CputmOff) = c.CpuTimer;
                Field<ulong>(v, CkcOff) = c.ClockComparator;
                Field<ulong>(v, PpOff) = c.ProgramParameter;
                Field<ulong>(v, GbeaOff) = c.Gbea;
                break;
            case PFAULT:
                Field<ulong>(v, PftOff) = c.PfaultToken;
                Field<ulong>(v, PfsOff) = c.PfaultSelect;
                Field<ulong>(v, PfcOff) = c.PfaultCompare;
                break;
            case VRS:
                for (int i = 0; i < 64; i++) Field<ulong>(v, VrsOff + 8 * i) = c.Vrs[i];
                Field<uint>(v, FpcOff) = c.Fpc;
                break;
            case FPRS:
                for (int i = 0; i < 16; i++) Field<ulong>(v, VrsOff + 8 * i) = c.Vrs[2 * i];
                Field<uint>(v, FpcOff) = c.Fpc;
                break;
            case RICCB: c.Riccb.CopyTo(new Span<byte>(v.Run + SyncOff + RiccbOff, 64)); break;
            case GSCB: for (int i = 0; i < 4; i++) Field<ulong>(v, GscbOff + 8 * i) = c.Gscb[i]; break;
            case ETOKEN:
                Field<ulong>(v, EtokenOff) = c.Etoken;
                Field<ulong>(v, EtokenOff + 8) = c.EtokenExtension;
                break;
            case BPBC:
                ref byte b = ref Field<byte>(v, Sync.BpbcByteOffset);
                b = c.Bpbc ? (byte)(b | Sync.BpbcBit) : (byte)(b & ~Sync.BpbcBit);
                break;
            case DIAG318: Field<ulong>(v, Diag318Off) = c.Diag318; break;
        }
    }

    private static (int Offset, int Length) Extent(ulong block) => block switch
    {
        PREFIX => (PrefixOff, 8),
        CRS => (CrsOff, 128),
        ARCH0 => (TodprOff, 40),
        PFAULT => (PftOff, 24),
        DIAG318 => (Diag318Off, 8),
        _ => throw new ArgumentOutOfRangeException(nameof(block)),
    };

    /// <summary>A stored block as it is in kvm_run now (BPBC: only its bit).</summary>
    private static byte[] RunBytes(ModelVcpu v, ulong block)
    {
        if (block == BPBC) return [(byte)(Field<byte>(v, Sync.BpbcByteOffset) & Sync.BpbcBit)];
        var (off, len) = Extent(block);
        return new ReadOnlySpan<byte>(v.Run + SyncOff + off, len).ToArray();
    }

    /// <summary>A stored block as KVM holds it (what store_regs would write).</summary>
    private static byte[] KernelBytes(S390xModelCpu c, ulong block)
    {
        if (block == BPBC) return [c.Bpbc ? Sync.BpbcBit : (byte)0];
        ulong[] values = block switch
        {
            PREFIX => [c.Prefix],
            CRS => c.Crs,
            ARCH0 => [c.Todpr, c.CpuTimer, c.ClockComparator, c.ProgramParameter, c.Gbea],
            PFAULT => [c.PfaultToken, c.PfaultSelect, c.PfaultCompare],
            _ => [c.Diag318],
        };
        return System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
    }

    // ---- ioctls -------------------------------------------------------------------------------------

    private int OneReg(S390xModelCpu c, KvmIoctl request, nint arg)
    {
        if (arg == 0) return Violation($"{request.Name} with a null kvm_one_reg", Errno.EFAULT);
        var reg = *(kvm_one_reg*)arg;
        bool set = request == KvmIoctls.KVM_SET_ONE_REG;
        if (reg.addr == 0) return Violation($"{request.Name} 0x{reg.id:X} with addr 0", Errno.EFAULT);
        void* p = (void*)(nint)reg.addr;
        switch (reg.id)
        {
            case IdTodpr:
                if (set) c.Todpr = *(uint*)p;
                else *(uint*)p = c.Todpr;
                break;
            case IdEpochDiff: Move(ref c.EpochDifference); break;
            case IdCpuTimer: Move(ref c.CpuTimer); break;
            case IdClockComp: Move(ref c.ClockComparator); break;
            case IdPfToken: Move(ref c.PfaultToken); break;
            case IdPfCompare: Move(ref c.PfaultCompare); break;
            case IdPfSelect: Move(ref c.PfaultSelect); break;
            case IdPp: Move(ref c.ProgramParameter); break;
            case IdGbea: Move(ref c.Gbea); break;
            default:
                // kvm_arch_vcpu_ioctl_{get,set}_one_reg: an unknown id, or a known one with another size, is -EINVAL.
                return Violation($"{request.Name} with id 0x{reg.id:X}, which s390x does not know", Errno.EINVAL);
        }
        if (set) Wrote(reg.id == IdEpochDiff ? SyncLevel.Full : SyncLevel.Reset, 1);
        return 0;

        void Move(ref ulong field)
        {
            if (set) field = *(ulong*)p;
            else *(ulong*)p = field;
        }
    }

    private int SetMpState(S390xModelCpu c, nint arg)
    {
        if (arg == 0) return Violation("KVM_SET_MP_STATE with a null struct", Errno.EFAULT);
        UserCpuStateControl = true; // kvm_s390_set_user_cpu_state_ctrl, whatever the outcome
        uint state = *(uint*)arg;
        switch ((MpState)state)
        {
            case MpState.Stopped: c.Stopped = true; break;
            case MpState.Operating: c.Stopped = false; break;
            case MpState.Load: return Violation("KVM_SET_MP_STATE LOAD outside protected virtualization", Errno.ENXIO);
            default: return Violation($"KVM_SET_MP_STATE {(MpState)state}, which s390x does not support", Errno.ENXIO);
        }
        Wrote(SyncLevel.Full, 1);
        return 0;
    }

    private int GetFpu(ModelVcpu v, S390xModelCpu c, nint arg)
    {
        var fpu = (S390.kvm_fpu*)arg;
        for (int i = 0; i < 16; i++)
            fpu->fprs[i] = Offered(VRS) ? Field<ulong>(v, VrsOff + 16 * i) : Offered(FPRS) ? Field<ulong>(v, VrsOff + 8 * i) : c.Vrs[2 * i];
        fpu->fpc = HasFp(ValidRegs) ? Field<uint>(v, FpcOff) : c.Fpc;
        return 0;
    }

    private int SetFpu(ModelVcpu v, S390xModelCpu c, nint arg)
    {
        var fpu = (S390.kvm_fpu*)arg;
        for (int i = 0; i < 16; i++)
        {
            if (Offered(VRS)) Field<ulong>(v, VrsOff + 16 * i) = fpu->fprs[i];
            else if (Offered(FPRS)) Field<ulong>(v, VrsOff + 8 * i) = fpu->fprs[i];
            else c.Vrs[2 * i] = fpu->fprs[i];
        }
        if (HasFp(ValidRegs)) Field<uint>(v, FpcOff) = fpu->fpc;
        else c.Fpc = fpu->fpc;
        Wrote(SyncLevel.Runtime, 17);
        return 0;
    }

    // ---- resets (kvm_arch_vcpu_ioctl_{normal,initial,clear}_reset) ---------------------------------

    private void NormalReset(ModelVcpu v, S390xModelCpu c)
    {
        c.PswMask &= ~PswMaskRi;
        c.PfaultToken = S390xModelCpu.PfaultTokenInvalid;
        new Span<byte>(v.Run + SyncOff + RiccbOff, 64).Clear();
        Array.Clear(c.Riccb);
        if (!UserCpuStateControl) c.Stopped = true;
    }

    private void InitialReset(ModelVcpu v, S390xModelCpu c)
    {
        NormalReset(v, c);
        c.PswMask = c.PswAddr = 0;
        c.Prefix = 0;
        c.CpuTimer = c.ClockComparator = 0;
        Array.Clear(c.Crs);
        c.Crs[0] = CR0InitialMask;
        c.Crs[14] = CR14InitialMask;
        // ... and the same in the sync area (Linux 5.7 and later).
        for (int i = 0; i < 16; i++) Field<ulong>(v, CrsOff + 8 * i) = c.Crs[i];
        v.RunField<ulong>(PswMaskOff) = v.RunField<ulong>(PswAddrOff) = 0;
        Field<ulong>(v, TodprOff) = Field<ulong>(v, CputmOff) = Field<ulong>(v, CkcOff) = Field<ulong>(v, PpOff) = 0;
        Field<ulong>(v, GbeaOff) = 1;
        Field<uint>(v, FpcOff) = 0;
        c.Fpc = 0;
        c.Gbea = 1;
        c.ProgramParameter = 0;
        c.Bpbc = false;
        c.Todpr = 0;
        c.Published[CRS] = RunBytes(v, CRS);
        c.Published[ARCH0] = RunBytes(v, ARCH0);
    }

    private void ClearReset(ModelVcpu v, S390xModelCpu c)
    {
        InitialReset(v, c);
        new Span<byte>(v.Run + SyncOff + GprsOff, 128).Clear();
        new Span<byte>(v.Run + SyncOff + VrsOff, 512).Clear();
        new Span<byte>(v.Run + SyncOff + AcrsOff, 64).Clear();
        new Span<byte>(v.Run + SyncOff + GscbOff, 32).Clear();
        Field<ulong>(v, EtokenOff) = Field<ulong>(v, EtokenOff + 8) = 0;
        Array.Clear(c.Gprs);
        Array.Clear(c.Vrs);
        Array.Clear(c.Acrs);
        Array.Clear(c.Gscb);
        c.Etoken = c.EtokenExtension = 0;
    }
}
