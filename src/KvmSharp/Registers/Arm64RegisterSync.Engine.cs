using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using KvmSharp.Interop;

namespace KvmSharp.Registers;

// The engine: ONE_REG transfers, write-back, invalidation, saving and restoring, and the run hooks.
public sealed partial class Arm64RegisterSync
{
    private ulong IdOf(int entry) => entry < CoreSlots ? CoreIds[entry] : _sysIds![entry - CoreSlots];

    private nint AddressOf(int entry) =>
        entry < CoreSlots ? _core.Address + entry * SlotSize : _sys.Address + (entry - CoreSlots) * 8;

    private void Fetch(int entry)
    {
        int r = OneReg(KvmIoctls.GetOneRegNumber, entry);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_GET_ONE_REG, r, Details(IdOf(entry)));
        if (entry < CoreSlots) _coreEpoch[entry] = _epoch;
        else _sysEpoch[entry - CoreSlots] = _epoch;
    }

    /// <summary>
    /// KVM_GET_ONE_REG or KVM_SET_ONE_REG (<paramref name="request"/>: <see cref="KvmIoctls.GetOneRegNumber"/>
    /// or <see cref="KvmIoctls.SetOneRegNumber"/>) of register <paramref name="entry"/>, to or from its
    /// cache slot. Returns the result, or -errno.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int OneReg(uint request, int entry)
    {
        ref var arg = ref _oneReg.At<kvm_one_reg>(0);
        arg.id = IdOf(entry);
        arg.addr = (ulong)AddressOf(entry);
        // PERF: with the real kernel a direct libc call with a constant request, as KVM_RUN is: no
        // seam dispatch and no ioctl object between two runs (the MMIO handler path, see BeforeRun).
        return _nativeKernel
            ? LinuxKernel.DirectIoctl(_vcpu.Fd, request, _oneReg.Address)
            : _kernel.Ioctl(_vcpu.Fd, request == KvmIoctls.GetOneRegNumber ? KvmIoctls.KVM_GET_ONE_REG : KvmIoctls.KVM_SET_ONE_REG, _oneReg.Address);
    }

    private string Details(ulong id) => $"vcpu {_vcpu.Id}, register {Arm64RegisterIds.Name(id)} (0x{id:X16})";

    /// <summary>Marks register <paramref name="entry"/> for the next write-back (its dirty flag is set by the caller, once).</summary>
    private void AddDirty(int entry) => _dirtyEntries[_dirtyCount++] = entry;

    /// <summary>Writes every dirty register (in write order), then events, then MP state. A failure leaves the unwritten ones dirty.</summary>
    private void Flush()
    {
        for (int done = 0; done < _dirtyCount; done++)
        {
            int entry = _dirtyEntries[done];
            int r = OneReg(KvmIoctls.SetOneRegNumber, entry);
            if (r < 0) FailFlush(done, r);
            if (entry < CoreSlots) _coreDirty[entry] = false;
            else _sysDirty[entry - CoreSlots] = false;
        }
        _dirtyCount = 0;
        if (_eventsDirty || _mpDirty) FlushEventsAndMpState();
    }

    /// <summary>A KVM_SET_ONE_REG of the write-back failed: the registers before it are written, it and the rest stay dirty, in order.</summary>
    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FailFlush(int done, int r)
    {
        ulong id = IdOf(_dirtyEntries[done]);
        Array.Copy(_dirtyEntries, done, _dirtyEntries, 0, _dirtyCount - done);
        _dirtyCount -= done;
        ThrowHelper.ThrowKvm(KvmIoctls.KVM_SET_ONE_REG, r, Details(id));
    }

    private void FlushEventsAndMpState()
    {
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
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
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
                AddDirty(i);
            }
        }
        for (int i = 0; i < _sysEpoch.Length; i++)
        {
            if (SysValid(i) && !_sysDirty[i] && Arm64RegisterIds.LevelOf(_sysIds![i]) <= level)
            {
                _sysDirty[i] = true;
                AddDirty(CoreSlots + i);
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
        _dirtyCount = 0;
        for (int e = 0; e < CoreSlots + _sysIds.Length; e++)
        {
            _ = state.TryGet(IdOf(e), out var bytes);
            bytes.CopyTo(Bytes(e));
            AddDirty(e);
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

    void IRunHooks.BeforeRun() => BeforeRun();

    void IRunHooks.AfterRun(int result) => AfterRun(result, _vcpu.RunAddress);

    /// <summary>
    /// Right before KVM_RUN: writes back what is dirty (one KVM_SET_ONE_REG a register, then events
    /// and MP state). <see cref="IRunHooks.BeforeRun"/> without an interface dispatch, for Vcpu's
    /// arm64 fast path; nothing to do costs a few field reads of this object.
    /// </summary>
    /// <exception cref="KvmException">A write failed; it and the registers after it stay dirty.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void BeforeRun()
    {
        if (_dirtyCount != 0 || _mpDirty || _eventsDirty) Flush();
    }

    /// <summary>
    /// Right after KVM_RUN returned <paramref name="result"/>, reading the exit from the vCPU's
    /// <c>kvm_run</c> at <paramref name="run"/>: <see cref="IRunHooks.AfterRun"/> without an interface
    /// dispatch, for Vcpu's arm64 fast path. Never throws.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void AfterRun(int result, nint run)
    {
        // arm64 has no sync regs: the run may have changed every register. A KVM_RUN that returns
        // (EINTR included) has completed any earlier MMIO access; a new MMIO exit leaves one pending.
        ForgetValues();
        bool access = result >= 0 && KvmRunPage.ReadUInt32(run, KvmRunPage.ExitReason) == KvmExitMmio;
        _pendingAccess = access;
        _pendingIsWrite = access && KvmRunPage.ReadByte(run, MmioIsWriteOffset) != 0;
    }

    void IRunHooks.Release()
    {
        _buffer.Dispose();
        _sysBuffer?.Dispose();
    }
}
