using System.Runtime.CompilerServices;
using KvmSharp.Interop;

namespace KvmSharp.Registers;

// Run hooks: the write-back before and the cache update after each KVM_RUN (Vcpu.Run's hot path).
public sealed partial class X86RegisterSync
{
    void IRunHooks.BeforeRun() => BeforeRun(_vcpu.RunAddress);

    void IRunHooks.AfterRun(int result) => AfterRun(result, _vcpu.RunAddress);

    /// <summary>
    /// <see cref="IRunHooks.BeforeRun"/>, callable without an interface dispatch (Vcpu's hot path),
    /// with the address of the vCPU's kvm_run at hand.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void BeforeRun(nint run)
    {
        if (CanFlushInline) FlushInline(run);
        else Flush(viaRun: true);
    }

    /// <summary>
    /// Whether the write-back before the next KVM_RUN needs no ioctl: nothing is dirty, or only sets
    /// that travel in kvm_run (with sync regs on). <see cref="FlushInline"/> then does it.
    /// </summary>
    internal bool CanFlushInline
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => _dirty == 0 || (_useSyncRegs && (_dirty & ~SyncCapable) == 0);
    }

    /// <summary>
    /// The write-back when <see cref="CanFlushInline"/>: flags the dirty sets in kvm_dirty_regs for
    /// KVM_RUN to load (what <see cref="Flush"/> does for them). Never throws.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void FlushInline(nint run)
    {
        // Only sets that travel in kvm_run are handed over (CanFlushInline says they are all there
        // is; a set another thread dirtied meanwhile, against the thread rules, stays dirty for the
        // next write-back rather than reaching kvm_dirty_regs, where KVM would reject it).
        var hand = _useSyncRegs ? _dirty & SyncCapable : 0;
        KvmRunPage.OrInt64(run, RunDirtyRegs, (long)hand);
        _dirty &= ~hand;
    }

    // kvm_run offsets (x86): exit_reason, io.direction (the exit union's first byte), kvm_dirty_regs.
    private const int RunExitReason = KvmRunPage.ExitReason;
    private const int RunIoDirection = Interop.X86.kvm_run.ExitUnionOffset;
    private const int RunDirtyRegs = Interop.X86.kvm_run.DirtyRegsOffset;

    /// <summary>
    /// <see cref="IRunHooks.AfterRun"/>, callable without an interface dispatch (Vcpu's hot path),
    /// reading what it needs from the vCPU's kvm_run at <paramref name="run"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void AfterRun(int result, nint run)
    {
        uint reason = KvmRunPage.ReadUInt32(run, RunExitReason);
        bool access = result >= 0 && (reason == (uint)VcpuExitReason.Io || reason == (uint)VcpuExitReason.Mmio);
        _accessPending = access;
        _writeCompletes = access && (reason == (uint)VcpuExitReason.Mmio || KvmRunPage.ReadByte(run, RunIoDirection) == (byte)IoDirection.In);
        _exitRipKnown = false;
        RefreshValid(run);
    }

    /// <summary>
    /// After any KVM_RUN: the run may have changed everything; what the kernel stored in kvm_run is
    /// fresh. A set still flagged in kvm_dirty_regs (the run failed before loading it) keeps its cached value.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void RefreshValid(nint run) =>
        _valid = _useSyncRegs ? _syncOnExit | ((X86RegisterSets)KvmRunPage.ReadInt64(run, RunDirtyRegs) & SyncCapable) : 0;

    void IRunHooks.Release() => _shadow.Dispose();
}
