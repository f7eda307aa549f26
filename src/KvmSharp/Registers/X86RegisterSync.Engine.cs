using System.Runtime.CompilerServices;
using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp.Registers;

// The engine: fetching and writing back register sets, completing pending accesses, saving and restoring.
public sealed partial class X86RegisterSync
{
    /// <summary>Fetches the given sets unless cached. A dirty set is valid, so it is never overwritten.</summary>
    /// <exception cref="KvmException">A get ioctl failed.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Fetch(X86RegisterSets sets)
    {
        _vcpu.CheckAccess();
        var missing = sets & ~_valid;
        if (missing != 0) FetchSlow(missing);
    }

    private void FetchSlow(X86RegisterSets missing)
    {
        // Each set is marked valid as soon as it arrives, so a failure leaves the others consistent.
        foreach (var set in FetchOrder)
        {
            if ((missing & set) == 0) continue;
            var (get, _, address) = Transport(set);
            int r = _kernel.Ioctl(_vcpu.Fd, get, address);
            if (r < 0) ThrowHelper.ThrowKvm(get, r, $"vcpu {_vcpu.Id}");
            _valid |= set;
            // KVM_GET_MP_STATE first accepts pending INIT/SIPI events, which can move CS:RIP: what
            // the cache held of GPRs and special registers (unless dirty) is stale now.
            if (set == X86RegisterSets.MpState)
                _valid &= ~((X86RegisterSets.Gprs | X86RegisterSets.Sregs) & ~_dirty & ~missing);
        }
    }

    private (KvmIoctl Get, KvmIoctl Set, nint Address) Transport(X86RegisterSets set) => set switch
    {
        X86RegisterSets.Gprs => (KvmIoctls.X86.KVM_GET_REGS, KvmIoctls.X86.KVM_SET_REGS, SyncBlock.Address + RegsOffset),
        X86RegisterSets.Sregs => (KvmIoctls.X86.KVM_GET_SREGS, KvmIoctls.X86.KVM_SET_SREGS, SyncBlock.Address + SregsOffset),
        X86RegisterSets.Events => (KvmIoctls.X86.KVM_GET_VCPU_EVENTS, KvmIoctls.X86.KVM_SET_VCPU_EVENTS, SyncBlock.Address + EventsOffset),
        X86RegisterSets.Xcrs => (KvmIoctls.X86.KVM_GET_XCRS, KvmIoctls.X86.KVM_SET_XCRS, _xcrs.Address),
        X86RegisterSets.MpState => (KvmIoctls.KVM_GET_MP_STATE, KvmIoctls.KVM_SET_MP_STATE, _mpState.Address),
        X86RegisterSets.Xsave => (_xsave.Span.Length > 4096 ? KvmIoctls.X86.KVM_GET_XSAVE2 : KvmIoctls.X86.KVM_GET_XSAVE, KvmIoctls.X86.KVM_SET_XSAVE, _xsave.Address),
        X86RegisterSets.DebugRegs => (KvmIoctls.X86.KVM_GET_DEBUGREGS, KvmIoctls.X86.KVM_SET_DEBUGREGS, _debugRegs.Address),
        X86RegisterSets.RuntimeMsrs => (KvmIoctls.X86.KVM_GET_MSRS, KvmIoctls.X86.KVM_SET_MSRS, _runtimeMsrs.Address),
        X86RegisterSets.ResetMsrs => (KvmIoctls.X86.KVM_GET_MSRS, KvmIoctls.X86.KVM_SET_MSRS, _resetMsrs.Address),
        _ => throw new ArgumentOutOfRangeException(nameof(set), set, "not a single register set"),
    };

    // Read order (QEMU's kvm_arch_get_registers): events and MP state before the registers they can change.
    private static readonly X86RegisterSets[] FetchOrder =
    [
        X86RegisterSets.Events, X86RegisterSets.MpState, X86RegisterSets.Gprs, X86RegisterSets.Xsave, X86RegisterSets.Xcrs,
        X86RegisterSets.Sregs, X86RegisterSets.RuntimeMsrs, X86RegisterSets.ResetMsrs, X86RegisterSets.DebugRegs,
    ];

    // Write order (QEMU's kvm_arch_put_registers): special registers before GPRs (CR0/EFER before
    // RIP/RFLAGS), MP state after special registers and events, because KVM_SET_SREGS (a BSP put in
    // its reset state) and KVM_SET_VCPU_EVENTS (a latched INIT) can themselves change the MP state.
    private static readonly X86RegisterSets[] FlushOrder =
    [
        X86RegisterSets.Sregs, X86RegisterSets.Gprs, X86RegisterSets.Xsave, X86RegisterSets.Xcrs,
        X86RegisterSets.RuntimeMsrs, X86RegisterSets.ResetMsrs, X86RegisterSets.Events, X86RegisterSets.MpState,
        X86RegisterSets.DebugRegs,
    ];

    /// <inheritdoc/>
    public void Synchronize() => Fetch(X86RegisterSets.All);

    /// <summary>Marks sets as changed so that they are written back before the next run (fetching them first if needed).</summary>
    /// <exception cref="KvmException">Fetching failed.</exception>
    public void MarkDirty(X86RegisterSets sets)
    {
        BeforeWrite();
        Fetch(sets);
        _dirty |= sets;
    }

    /// <inheritdoc/>
    public void Push(SyncLevel level)
    {
        _vcpu.CheckAccess();
        BeforeWrite();
        _dirty |= _valid & (level >= SyncLevel.Reset ? X86RegisterSets.All : X86RegisterSets.All & ~ResetLevel);
        FlushWithIoctls();
    }

    /// <inheritdoc cref="IRegisterSync.PostReset"/>
    public void PostReset() => Push(SyncLevel.Reset);

    /// <inheritdoc cref="IRegisterSync.PostInit"/>
    public void PostInit() => Push(SyncLevel.Full);

    /// <inheritdoc/>
    public void Invalidate()
    {
        _vcpu.CheckAccess();
        FlushWithIoctls();
        _valid = 0;
    }

    /// <summary>Writes every dirty set now, including sets only flagged in <c>kvm_dirty_regs</c> for a run that has not happened.</summary>
    private void FlushWithIoctls()
    {
        if (_useSyncRegs)
        {
            // Sets handed to kvm_run but not yet loaded by a KVM_RUN: write them now, or a fetch
            // into the same kvm_run block would overwrite them.
            var pending = (X86RegisterSets)(long)_vcpu.RunDirtyRegs & SyncCapable;
            _dirty |= pending;
            _vcpu.RunDirtyRegs &= ~(ulong)pending;
        }
        WriteDirty();
    }

    /// <summary>Writes every dirty set with its ioctl, in <see cref="FlushOrder"/>. PERF: a plain array loop, no iterator.</summary>
    private void WriteDirty()
    {
        if (_dirty == 0) return;
        foreach (var set in FlushOrder)
            if ((_dirty & set) != 0) Write(set);
    }

    private void Write(X86RegisterSets set)
    {
        var (_, ioctl, address) = Transport(set);
        int r = _kernel.Ioctl(_vcpu.Fd, ioctl, address);
        if (r < 0) ThrowHelper.ThrowKvm(ioctl, r, $"vcpu {_vcpu.Id}");
        if (ioctl == KvmIoctls.X86.KVM_SET_MSRS)
        {
            // KVM_SET_MSRS returns how many entries it applied; a short count names the first refused MSR.
            var view = set == X86RegisterSets.RuntimeMsrs ? _runtimeMsrs : _resetMsrs;
            int n = (int)view.At<kvm_msrs>(0).nmsrs;
            if (r < n)
                throw new KvmException(ioctl.Name, Errno.EINVAL,
                    $"vcpu {_vcpu.Id}: KVM applied {r} of {n} MSRs and refused MSR 0x{view.At<kvm_msr_entry>(8 + 16 * r).index:X} (value 0x{view.At<kvm_msr_entry>(8 + 16 * r).data:X})");
        }
        _dirty &= ~set;
    }

    /// <summary>
    /// After an IN or MMIO exit, KVM finishes the instruction at the next KVM_RUN by writing the
    /// destination register and RIP, which would overwrite what the handler writes now. So the first
    /// write after such an exit completes the access first (one KVM_RUN with immediate_exit, no
    /// guest code): fill the exit's data before writing registers. After an OUT exit only a write of
    /// RIP may need it (<see cref="BeforeRipWrite"/>): KVM's completion of an OUT touches nothing else.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void BeforeWrite()
    {
        if (_writeCompletes) CompletePendingAccess();
    }

    /// <summary>
    /// Before RIP is written while an I/O or MMIO access is pending. KVM completes an OUT at the next
    /// KVM_RUN by skipping it, unless RIP then differs from RIP at the exit (<c>complete_fast_pio_out</c>
    /// compares them). Writing back that same RIP — "run the OUT again" — is for KVM the same as
    /// leaving RIP alone, so complete the OUT now and the write holds. Any other RIP needs nothing: KVM
    /// sees the change and drops its completion. (After an IN or MMIO every write completes first.)
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void BeforeRipWrite(ulong value)
    {
        if (_writeCompletes) return; // BeforeWrite completes it
        if (!_exitRipKnown)
        {
            // Nothing has moved RIP since the exit: EditGprs and RestoreState complete the access
            // first, and this is the first write through Rip.
            _exitRip = Gprs.Rip;
            _exitRipKnown = true;
        }
        if (value == _exitRip) CompletePendingAccess();
    }

    /// <summary>
    /// After an I/O or MMIO exit KVM finishes the instruction (stores an IN's data, advances RIP) only
    /// at the next KVM_RUN. Do that now, without running guest code, so that the state captured or
    /// overwritten next is the state after the instruction (api.rst: "KVM_RUN with immediate_exit").
    /// </summary>
    private void CompletePendingAccess()
    {
        // Before any ioctl or KVM_RUN: a cached reference used from another thread must not get this far.
        _vcpu.CheckAccess();
        if (!_accessPending) return;
        _accessPending = _writeCompletes = false;
        Flush(viaRun: true);
        _vcpu.CompletePendingAccess();
        RefreshValid(_vcpu.RunAddress);
    }

    /// <inheritdoc/>
    /// <remarks>A pending I/O or MMIO access is completed first (a KVM_RUN with immediate_exit), so the state is that after the instruction.</remarks>
    public RegisterState SaveState()
    {
        CompletePendingAccess();
        Synchronize();
        var sets = new SortedDictionary<ulong, byte[]>();
        foreach (var set in FlushOrder)
            sets[(ulong)set] = Bytes(set).ToArray();
        return new RegisterState(KvmArchitecture.X86_64, sets);
    }

    /// <inheritdoc/>
    public void RestoreState(RegisterState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        _vcpu.CheckAccess();
        if (state.Architecture != KvmArchitecture.X86_64)
            throw new ArgumentException($"Cannot restore {state.Architecture} registers into an x86_64 vCPU.", nameof(state));
        foreach (var set in FlushOrder)
        {
            if (!state.TryGet((ulong)set, out var bytes) || bytes.Length != Bytes(set).Length)
                throw new ArgumentException($"The state lacks register set {set} or it has another size.", nameof(state));
        }
        CompletePendingAccess(); // or KVM's completion of the last exit would act on the restored state
        foreach (var set in FlushOrder)
        {
            _ = state.TryGet((ulong)set, out var bytes);
            bytes.CopyTo(Bytes(set));
        }
        _valid = X86RegisterSets.All;
        _dirty = X86RegisterSets.All;
        Flush(viaRun: true);
    }

    private Span<byte> Bytes(X86RegisterSets set) => set switch
    {
        X86RegisterSets.Gprs => SyncBlock.Span.Slice(RegsOffset, 144),
        X86RegisterSets.Sregs => SyncBlock.Span.Slice(SregsOffset, 312),
        X86RegisterSets.Events => SyncBlock.Span.Slice(EventsOffset, 64),
        X86RegisterSets.Xcrs => _xcrs.Span,
        X86RegisterSets.MpState => _mpState.Span,
        X86RegisterSets.Xsave => _xsave.Span,
        X86RegisterSets.DebugRegs => _debugRegs.Span,
        X86RegisterSets.RuntimeMsrs => _runtimeMsrs.Span,
        X86RegisterSets.ResetMsrs => _resetMsrs.Span,
        _ => throw new ArgumentOutOfRangeException(nameof(set)),
    };

    /// <summary>
    /// Writes back every dirty set: the sync-capable ones, when sync regs are on, only by flagging
    /// them in <c>kvm_dirty_regs</c> for the coming KVM_RUN to load (no ioctl).
    /// </summary>
    private void Flush(bool viaRun)
    {
        // An MP state other than RUNNABLE must reach KVM after the special registers and events
        // (see FlushOrder), and a set handed to kvm_run is only loaded at the next entry: write
        // them with ioctls then. Restores of running vCPUs (RUNNABLE) keep the ioctl-free path.
        bool orderMatters = (_dirty & X86RegisterSets.MpState) != 0 && _mpState.At<uint>(0) != (uint)MpState.Runnable;
        if (orderMatters && _useSyncRegs)
        {
            // Sets already handed to kvm_run would load after SET_MP_STATE: write them now instead.
            var pending = (X86RegisterSets)(long)_vcpu.RunDirtyRegs & SyncCapable;
            _dirty |= pending;
            _vcpu.RunDirtyRegs &= ~(ulong)pending;
        }
        if (viaRun && _useSyncRegs && !orderMatters)
        {
            var syncable = _dirty & SyncCapable;
            _vcpu.RunDirtyRegs |= (ulong)syncable;
            _dirty &= ~syncable;
        }
        WriteDirty();
    }
}
