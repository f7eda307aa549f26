using System.Runtime.CompilerServices;
using KvmSharp.Interop;

namespace KvmSharp.Registers;

// The engine: fetching register sets and ONE_REG registers.
public sealed partial class S390xRegisterSync
{
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
        Reg.Todpr => S390xRegisterIds.Todpr,
        Reg.EpochDifference => S390xRegisterIds.EpochDifference,
        Reg.CpuTimer => S390xRegisterIds.CpuTimer,
        Reg.ClockComparator => S390xRegisterIds.ClockComparator,
        Reg.PfaultToken => S390xRegisterIds.PfaultToken,
        Reg.PfaultCompare => S390xRegisterIds.PfaultCompare,
        Reg.PfaultSelect => S390xRegisterIds.PfaultSelect,
        Reg.ProgramParameter => S390xRegisterIds.ProgramParameter,
        _ => S390xRegisterIds.Gbea,
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
}
