using System.Runtime.CompilerServices;
using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp.Registers;

/// <summary>
/// The x86_64 register cache of one vCPU. With KVM_CAP_SYNC_REGS, GPRs, special registers and
/// events live in the vCPU's <c>kvm_run</c> page: the kernel stores the sets named by
/// <see cref="SyncOnExit"/> there at every exit, and loads the dirty ones at the next entry, so a
/// handler that reads RIP and writes RAX costs no ioctl besides KVM_RUN. Without it they move with
/// KVM_GET/SET_REGS, _SREGS and _VCPU_EVENTS.
/// </summary>
/// <remarks>Not thread-safe: use it on the vCPU's thread, or while the vCPU is not running.</remarks>
public sealed class X86RegisterSync : IRegisterSync
{
    private const X86RegisterSets SyncCapable = X86RegisterSets.Gprs | X86RegisterSets.Sregs | X86RegisterSets.Events;
    private const int RegsOffset = 0, SregsOffset = 144, EventsOffset = 456, SyncBlockSize = 520;
    private const int XcrsOffset = SyncBlockSize, MpStateOffset = XcrsOffset + 392, ShadowSize = MpStateOffset + 8;

    private readonly Vcpu _vcpu;
    private readonly IKernel _kernel;
    private readonly StructView _runSync;      // kvm_run.s.regs
    private readonly StructView _shadowSync;   // same layout, for the ioctl path
    private readonly StructView _xcrs;
    private readonly StructView _mpState;
    private readonly MappedMemoryHandle _run;
    private readonly NativeBuffer _shadow;
    private readonly bool _kernelHasSyncRegs;
    private bool _useSyncRegs;
    private X86RegisterSets _syncOnExit = X86RegisterSets.Gprs;
    private X86RegisterSets _valid;
    private X86RegisterSets _dirty;

    internal X86RegisterSync(Vcpu vcpu, MappedMemoryHandle run, int syncRegsCapability)
    {
        _vcpu = vcpu;
        _kernel = vcpu.Kernel;
        _run = run;
        _shadow = new NativeBuffer(ShadowSize);
        int s = KvmArchitecture.X86_64.SyncRegsHeaderOffset() + 16;
        _runSync = new StructView(run, s, SyncBlockSize);
        _shadowSync = new StructView(_shadow, 0, SyncBlockSize);
        _xcrs = new StructView(_shadow, XcrsOffset, 392);
        _mpState = new StructView(_shadow, MpStateOffset, 4);
        _kernelHasSyncRegs = (syncRegsCapability & (int)SyncCapable) == (int)SyncCapable;
        _useSyncRegs = _kernelHasSyncRegs;
        ApplyValidRegs();
    }

    /// <inheritdoc/>
    public KvmArchitecture Architecture => KvmArchitecture.X86_64;

    /// <summary>True when KVM offers sync regs for GPRs, special registers and events (KVM_CAP_SYNC_REGS ⊇ 7).</summary>
    public bool KernelSupportsSyncRegs => _kernelHasSyncRegs;

    /// <summary>
    /// Whether GPRs, special registers and events travel through <c>kvm_run</c> (default: whenever
    /// KVM supports it). Turning it off makes them use ioctls, as on kernels without the capability.
    /// </summary>
    /// <exception cref="NotSupportedException">Set to true on a kernel without KVM_CAP_SYNC_REGS.</exception>
    public bool UseSyncRegs
    {
        get => _useSyncRegs;
        set
        {
            if (value == _useSyncRegs) return;
            if (value && !_kernelHasSyncRegs)
                throw new NotSupportedException("This KVM does not offer KVM_CAP_SYNC_REGS for GPRs, special registers and events.");
            Invalidate();
            _useSyncRegs = value;
            ApplyValidRegs();
        }
    }

    /// <summary>
    /// The sets the kernel stores into <c>kvm_run</c> at every exit when sync regs are used (default
    /// <see cref="X86RegisterSets.Gprs"/>). Sets named here are valid after each exit without an ioctl;
    /// each one costs the kernel a copy on every exit.
    /// </summary>
    /// <exception cref="ArgumentException">A set other than GPRs, Sregs or Events is named.</exception>
    public X86RegisterSets SyncOnExit
    {
        get => _syncOnExit;
        set
        {
            if ((value & ~SyncCapable) != 0)
                throw new ArgumentException($"Only {SyncCapable} can travel in kvm_run; got {value}.", nameof(value));
            _syncOnExit = value;
            ApplyValidRegs();
        }
    }

    /// <summary>The sets the cache holds now (for diagnostics and tests).</summary>
    public X86RegisterSets ValidSets => _valid;

    /// <summary>The sets written since the last write-back (for diagnostics and tests).</summary>
    public X86RegisterSets DirtySets => _dirty;

    private StructView SyncBlock => _useSyncRegs ? _runSync : _shadowSync;

    private void ApplyValidRegs() =>
        _vcpu.RunValidRegs = _useSyncRegs ? (ulong)_syncOnExit : 0;

    // ---- bulk access -------------------------------------------------------------------------

    /// <summary>The GPRs, RIP and RFLAGS, fetched if needed. Read-only: use <see cref="EditGprs"/> to change them.</summary>
    public ref readonly X86Gprs Gprs
    {
        get
        {
            Fetch(X86RegisterSets.Gprs);
            return ref SyncBlock.At<X86Gprs>(RegsOffset);
        }
    }

    /// <summary>The GPRs for writing: fetched if needed and marked dirty.</summary>
    public ref X86Gprs EditGprs()
    {
        Fetch(X86RegisterSets.Gprs);
        _dirty |= X86RegisterSets.Gprs;
        return ref SyncBlock.At<X86Gprs>(RegsOffset);
    }

    /// <summary>The special registers, fetched if needed. Read-only: use <see cref="EditSpecialRegisters"/> to change them.</summary>
    public ref readonly X86SpecialRegisters SpecialRegisters
    {
        get
        {
            Fetch(X86RegisterSets.Sregs);
            return ref SyncBlock.At<X86SpecialRegisters>(SregsOffset);
        }
    }

    /// <summary>The special registers for writing: fetched if needed and marked dirty.</summary>
    public ref X86SpecialRegisters EditSpecialRegisters()
    {
        Fetch(X86RegisterSets.Sregs);
        _dirty |= X86RegisterSets.Sregs;
        return ref SyncBlock.At<X86SpecialRegisters>(SregsOffset);
    }

    // ---- typed accessors ---------------------------------------------------------------------

#pragma warning disable CS1591 // register names document themselves
    public ulong Rax { get => Gprs.Rax; set => EditGprs().Rax = value; }
    public ulong Rbx { get => Gprs.Rbx; set => EditGprs().Rbx = value; }
    public ulong Rcx { get => Gprs.Rcx; set => EditGprs().Rcx = value; }
    public ulong Rdx { get => Gprs.Rdx; set => EditGprs().Rdx = value; }
    public ulong Rsi { get => Gprs.Rsi; set => EditGprs().Rsi = value; }
    public ulong Rdi { get => Gprs.Rdi; set => EditGprs().Rdi = value; }
    public ulong Rsp { get => Gprs.Rsp; set => EditGprs().Rsp = value; }
    public ulong Rbp { get => Gprs.Rbp; set => EditGprs().Rbp = value; }
    public ulong R8 { get => Gprs.R8; set => EditGprs().R8 = value; }
    public ulong R9 { get => Gprs.R9; set => EditGprs().R9 = value; }
    public ulong R10 { get => Gprs.R10; set => EditGprs().R10 = value; }
    public ulong R11 { get => Gprs.R11; set => EditGprs().R11 = value; }
    public ulong R12 { get => Gprs.R12; set => EditGprs().R12 = value; }
    public ulong R13 { get => Gprs.R13; set => EditGprs().R13 = value; }
    public ulong R14 { get => Gprs.R14; set => EditGprs().R14 = value; }
    public ulong R15 { get => Gprs.R15; set => EditGprs().R15 = value; }
    public ulong Rip { get => Gprs.Rip; set => EditGprs().Rip = value; }
    public ulong Rflags { get => Gprs.Rflags; set => EditGprs().Rflags = value; }
    public ulong Cr0 { get => SpecialRegisters.Cr0; set => EditSpecialRegisters().Cr0 = value; }
    public ulong Cr2 { get => SpecialRegisters.Cr2; set => EditSpecialRegisters().Cr2 = value; }
    public ulong Cr3 { get => SpecialRegisters.Cr3; set => EditSpecialRegisters().Cr3 = value; }
    public ulong Cr4 { get => SpecialRegisters.Cr4; set => EditSpecialRegisters().Cr4 = value; }
    public ulong Cr8 { get => SpecialRegisters.Cr8; set => EditSpecialRegisters().Cr8 = value; }
    public ulong Efer { get => SpecialRegisters.Efer; set => EditSpecialRegisters().Efer = value; }
    public ulong ApicBase { get => SpecialRegisters.ApicBase; set => EditSpecialRegisters().ApicBase = value; }
    public X86Segment Cs { get => SpecialRegisters.Cs; set => EditSpecialRegisters().Cs = value; }
    public X86Segment Ds { get => SpecialRegisters.Ds; set => EditSpecialRegisters().Ds = value; }
    public X86Segment Es { get => SpecialRegisters.Es; set => EditSpecialRegisters().Es = value; }
    public X86Segment Fs { get => SpecialRegisters.Fs; set => EditSpecialRegisters().Fs = value; }
    public X86Segment Gs { get => SpecialRegisters.Gs; set => EditSpecialRegisters().Gs = value; }
    public X86Segment Ss { get => SpecialRegisters.Ss; set => EditSpecialRegisters().Ss = value; }
    public X86Segment Tr { get => SpecialRegisters.Tr; set => EditSpecialRegisters().Tr = value; }
    public X86Segment Ldt { get => SpecialRegisters.Ldt; set => EditSpecialRegisters().Ldt = value; }
    public X86DescriptorTable Gdt { get => SpecialRegisters.Gdt; set => EditSpecialRegisters().Gdt = value; }
    public X86DescriptorTable Idt { get => SpecialRegisters.Idt; set => EditSpecialRegisters().Idt = value; }
#pragma warning restore CS1591

    /// <summary>XCR0, the enabled XSAVE feature mask. Wraps KVM_GET/SET_XCRS; needs KVM_CAP_XCRS.</summary>
    /// <exception cref="KvmException">The ioctl failed (e.g. EINVAL for a value CPUID does not allow).</exception>
    public ulong Xcr0
    {
        get
        {
            Fetch(X86RegisterSets.Xcrs);
            ref var x = ref _xcrs.At<kvm_xcrs>(0);
            int n = (int)Math.Min(x.nr_xcrs, kvm_xcrs.KVM_MAX_XCRS);
            for (int i = 0; i < n; i++)
            {
                ref var e = ref _xcrs.At<kvm_xcr>(8 + 16 * i);
                if (e.xcr == 0) return e.value;
            }
            return 0;
        }
        set
        {
            Fetch(X86RegisterSets.Xcrs);
            FindOrAddXcr0().value = value;
            _dirty |= X86RegisterSets.Xcrs;
        }
    }

    private ref kvm_xcr FindOrAddXcr0()
    {
        ref var x = ref _xcrs.At<kvm_xcrs>(0);
        int n = (int)Math.Min(x.nr_xcrs, kvm_xcrs.KVM_MAX_XCRS);
        for (int i = 0; i < n; i++)
        {
            ref var e = ref _xcrs.At<kvm_xcr>(8 + 16 * i);
            if (e.xcr == 0) return ref e;
        }
        // KVM reports XCR0 whenever XSAVE is usable; add it otherwise so that a write is not lost.
        x.nr_xcrs = (uint)n + 1;
        ref var added = ref _xcrs.At<kvm_xcr>(8 + 16 * n);
        added = default;
        return ref added;
    }

    /// <summary>The vCPU's MP state. Wraps KVM_GET/SET_MP_STATE; needs KVM_CAP_MP_STATE. Level Reset.</summary>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public MpState MpState
    {
        get
        {
            Fetch(X86RegisterSets.MpState);
            return (MpState)_mpState.At<uint>(0);
        }
        set
        {
            _mpState.At<uint>(0) = (uint)value;
            _valid |= X86RegisterSets.MpState;
            _dirty |= X86RegisterSets.MpState;
        }
    }

    // ---- the engine --------------------------------------------------------------------------

    /// <summary>Fetches the given sets unless cached. A dirty set is valid, so it is never overwritten.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Fetch(X86RegisterSets sets)
    {
        var missing = sets & ~_valid;
        if (missing != 0) FetchSlow(missing);
    }

    private void FetchSlow(X86RegisterSets missing)
    {
        var block = SyncBlock;
        if ((missing & X86RegisterSets.Gprs) != 0) Get(KvmIoctls.X86.KVM_GET_REGS, block.Address + RegsOffset);
        if ((missing & X86RegisterSets.Sregs) != 0) Get(KvmIoctls.X86.KVM_GET_SREGS, block.Address + SregsOffset);
        if ((missing & X86RegisterSets.Events) != 0) Get(KvmIoctls.X86.KVM_GET_VCPU_EVENTS, block.Address + EventsOffset);
        if ((missing & X86RegisterSets.Xcrs) != 0) Get(KvmIoctls.X86.KVM_GET_XCRS, _xcrs.Address);
        if ((missing & X86RegisterSets.MpState) != 0) Get(KvmIoctls.KVM_GET_MP_STATE, _mpState.Address);
        _valid |= missing;
    }

    private void Get(KvmIoctl ioctl, nint address)
    {
        int r = _kernel.Ioctl(_vcpu.Fd, ioctl, address);
        if (r < 0) ThrowHelper.ThrowKvm(ioctl, r, $"vcpu {_vcpu.Id}");
    }

    /// <inheritdoc/>
    public void Synchronize() => Fetch(X86RegisterSets.All);

    /// <summary>Marks sets as changed so that they are written back before the next run (fetching them first if needed).</summary>
    public void MarkDirty(X86RegisterSets sets)
    {
        Fetch(sets);
        _dirty |= sets;
    }

    /// <inheritdoc/>
    public void Push(SyncLevel level)
    {
        var sets = _valid & (level >= SyncLevel.Reset ? X86RegisterSets.All : X86RegisterSets.All & ~X86RegisterSets.MpState);
        _dirty |= sets;
        Flush(viaRun: false);
    }

    /// <inheritdoc/>
    public void Invalidate()
    {
        Flush(viaRun: false);
        _valid = 0;
    }

    /// <summary>
    /// Writes back every dirty set. With <paramref name="viaRun"/>, the sync-capable ones are only
    /// flagged in <c>kvm_dirty_regs</c> for the coming KVM_RUN to load.
    /// </summary>
    private void Flush(bool viaRun)
    {
        var dirty = _dirty;
        if (dirty == 0) return;
        // MP state first: setting it can change CS:RIP on a real reset (INIT/SIPI), and explicit
        // register values written alongside must win.
        if ((dirty & X86RegisterSets.MpState) != 0) Set(KvmIoctls.KVM_SET_MP_STATE, _mpState.Address, X86RegisterSets.MpState);
        if ((dirty & X86RegisterSets.Xcrs) != 0) Set(KvmIoctls.X86.KVM_SET_XCRS, _xcrs.Address, X86RegisterSets.Xcrs);
        var syncable = dirty & SyncCapable;
        if (syncable != 0)
        {
            if (_useSyncRegs && viaRun)
            {
                _vcpu.RunDirtyRegs |= (ulong)syncable;
                _dirty &= ~syncable;
            }
            else
            {
                var block = SyncBlock;
                // Sregs before GPRs: CR0/EFER changes must be in place before RIP/RFLAGS are checked.
                if ((syncable & X86RegisterSets.Sregs) != 0) Set(KvmIoctls.X86.KVM_SET_SREGS, block.Address + SregsOffset, X86RegisterSets.Sregs);
                if ((syncable & X86RegisterSets.Gprs) != 0) Set(KvmIoctls.X86.KVM_SET_REGS, block.Address + RegsOffset, X86RegisterSets.Gprs);
                if ((syncable & X86RegisterSets.Events) != 0) Set(KvmIoctls.X86.KVM_SET_VCPU_EVENTS, block.Address + EventsOffset, X86RegisterSets.Events);
            }
        }
    }

    private void Set(KvmIoctl ioctl, nint address, X86RegisterSets set)
    {
        int r = _kernel.Ioctl(_vcpu.Fd, ioctl, address);
        if (r < 0) ThrowHelper.ThrowKvm(ioctl, r, $"vcpu {_vcpu.Id}");
        _dirty &= ~set;
    }

    /// <summary>Before KVM_RUN: write back dirty sets (sync-capable ones through <c>kvm_dirty_regs</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void BeforeRun()
    {
        if (_dirty != 0) Flush(viaRun: true);
    }

    /// <summary>After KVM_RUN: the run may have changed everything; what the kernel stored in <c>kvm_run</c> is valid.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void AfterRun() => _valid = _useSyncRegs ? _syncOnExit : 0;

    internal void Release() => _shadow.Dispose();
}
