using System.Runtime.CompilerServices;
using KvmSharp.Interop;

namespace KvmSharp.Registers;

// Write-back: writing dirty sets with ioctls or handing them to kvm_run, and the run hooks.
public sealed partial class S390xRegisterSync
{
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
