using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp.Registers;

/// <summary>
/// The x86_64 register cache of one vCPU. With KVM_CAP_SYNC_REGS, GPRs, special registers and
/// events live in the vCPU's <c>kvm_run</c> page: the kernel stores the sets named by
/// <see cref="SyncOnExit"/> there at every exit and loads the dirty ones at the next entry, so a
/// handler that reads RIP and writes RAX costs no ioctl besides KVM_RUN. Without it they move with
/// KVM_GET/SET_REGS, _SREGS and _VCPU_EVENTS. The other sets (<see cref="X86RegisterSets"/>) always
/// move with their ioctls.
/// </summary>
/// <remarks>
/// <para>Not thread-safe: use it on the vCPU's thread, or while the vCPU is not running.</para>
/// <para>The <c>ref</c> results (<see cref="Gprs"/>, <see cref="EditGprs"/>, <see cref="SpecialRegisters"/>,
/// <see cref="Events"/>, …) and spans (<see cref="Xsave"/>) point into <c>kvm_run</c> or the cache's own
/// buffer: use them before the vCPU's next <see cref="Vcpu.Run()"/>, before <see cref="UseSyncRegs"/>
/// changes, and never after disposal (they cannot be checked; every property and method here can,
/// and throws <see cref="ObjectDisposedException"/> then).</para>
/// </remarks>
public sealed partial class X86RegisterSync : IRegisterSync, IRunHooks
{
    private const X86RegisterSets SyncCapable = X86RegisterSets.Gprs | X86RegisterSets.Sregs | X86RegisterSets.Events;
    private const X86RegisterSets ResetLevel = X86RegisterSets.MpState | X86RegisterSets.ResetMsrs;
    private const int RegsOffset = 0, SregsOffset = 144, EventsOffset = 456, SyncBlockSize = 520;

    // MSRs written at every level (QEMU's runtime set) and MSRs written only at reset/init, because
    // writing them has side effects (TSC jumps, kvmclock/steal-time/async-PF areas re-registered).
    private static readonly uint[] RuntimeMsrCandidates =
    [
        0x174, 0x175, 0x176,            // SYSENTER_CS/ESP/EIP
        0x277,                          // PAT
        0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, // STAR, LSTAR, CSTAR, FMASK
        0xC0000102, 0xC0000103,         // KERNEL_GS_BASE, TSC_AUX
        0x1A0, 0x3B, 0x48, 0xDA0,       // MISC_ENABLE, TSC_ADJUST, SPEC_CTRL, XSS
    ];
    private static readonly uint[] ResetMsrCandidates =
    [
        0x10,                           // TSC
        0x11, 0x12,                     // kvmclock (old)
        0x4B564D00, 0x4B564D01,         // kvmclock (new)
        0x4B564D02, 0x4B564D03, 0x4B564D04, // async PF, steal time, PV EOI
    ];

    /// <summary>MSR index of the time-stamp counter.</summary>
    public const uint MsrTsc = 0x10;

    private readonly VcpuCore _vcpu; // the vCPU's lower half: fd, kernel seam, kvm_run, ownership gate
    private readonly IKernel _kernel;
    private readonly NativeBuffer _shadow;
    private readonly StructView _runSync, _shadowSync, _xcrs, _mpState, _xsave, _debugRegs, _runtimeMsrs, _resetMsrs;
    private readonly uint[] _runtimeMsrIndices, _resetMsrIndices;
    private readonly bool _kernelHasSyncRegs;
    private bool _useSyncRegs;
    private X86RegisterSets _syncOnExit = X86RegisterSets.Gprs;
    private X86RegisterSets _valid;
    private X86RegisterSets _dirty;
    private bool _accessPending;   // the last exit was port I/O or MMIO, not yet completed by KVM
    private bool _writeCompletes;  // ... and it was an IN or MMIO: KVM's completion writes registers
    private bool _exitRipKnown;    // ... and _exitRip holds RIP as it was at that exit (see BeforeRipWrite)
    private ulong _exitRip;

    internal X86RegisterSync(VcpuCore vcpu, int syncRegsCapability, IEnumerable<uint> msrIndices, int xsaveSize)
    {
        _vcpu = vcpu;
        _kernel = vcpu.Kernel;
        var run = vcpu.RunMapping;
        var supported = new HashSet<uint>(msrIndices);
        _runtimeMsrIndices = [.. RuntimeMsrCandidates.Where(supported.Contains)];
        _resetMsrIndices = [.. ResetMsrCandidates.Where(supported.Contains)];
        int runtimeMsrsSize = 8 + 16 * _runtimeMsrIndices.Length, resetMsrsSize = 8 + 16 * _resetMsrIndices.Length;

        int o = 0;
        int Next(int size) { int at = o; o += (size + 63) & ~63; return at; }
        int sync = Next(SyncBlockSize), xcrs = Next(392), mp = Next(4), xsave = Next(xsaveSize), dbg = Next(128),
            rtm = Next(runtimeMsrsSize), rsm = Next(resetMsrsSize);
        _shadow = new NativeBuffer(o);
        _runSync = new StructView(run, KvmArchitecture.X86_64.SyncRegsHeaderOffset() + 16, SyncBlockSize);
        _shadowSync = new StructView(_shadow, sync, SyncBlockSize);
        _xcrs = new StructView(_shadow, xcrs, 392);
        _mpState = new StructView(_shadow, mp, 4);
        _xsave = new StructView(_shadow, xsave, xsaveSize);
        _debugRegs = new StructView(_shadow, dbg, 128);
        _runtimeMsrs = new StructView(_shadow, rtm, runtimeMsrsSize);
        _resetMsrs = new StructView(_shadow, rsm, resetMsrsSize);
        InitMsrList(_runtimeMsrs, _runtimeMsrIndices);
        InitMsrList(_resetMsrs, _resetMsrIndices);

        _kernelHasSyncRegs = (syncRegsCapability & (int)SyncCapable) == (int)SyncCapable;
        _useSyncRegs = _kernelHasSyncRegs;
        _syncBlock = _useSyncRegs ? _runSync : _shadowSync;
        ApplyValidRegs();
    }

    private static void InitMsrList(StructView view, uint[] indices)
    {
        view.At<kvm_msrs>(0).nmsrs = (uint)indices.Length;
        for (int i = 0; i < indices.Length; i++) view.At<kvm_msr_entry>(8 + 16 * i).index = indices[i];
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
            _syncBlock = value ? _runSync : _shadowSync;
            ApplyValidRegs();
        }
    }

    /// <summary>
    /// The sets the kernel stores into <c>kvm_run</c> at every exit when sync regs are used (default
    /// <see cref="X86RegisterSets.Gprs"/>). Sets named here are valid after each exit without an ioctl;
    /// each costs the kernel a copy on every exit.
    /// </summary>
    /// <exception cref="ArgumentException">A set other than GPRs, Sregs or Events is named.</exception>
    /// <exception cref="ObjectDisposedException">Set after the vCPU was disposed.</exception>
    /// <exception cref="InvalidOperationException">Set while another thread owns the vCPU.</exception>
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

    /// <summary>The sets the cache holds now.</summary>
    public X86RegisterSets ValidSets => _valid;

    /// <summary>The sets written since the last write-back.</summary>
    public X86RegisterSets DirtySets => _dirty;

    /// <summary>The MSRs in <see cref="X86RegisterSets.RuntimeMsrs"/> (those of KvmSharp's list that this KVM supports).</summary>
    public IReadOnlyList<uint> RuntimeMsrIndices => _runtimeMsrIndices;

    /// <summary>The MSRs in <see cref="X86RegisterSets.ResetMsrs"/> (those of KvmSharp's list that this KVM supports).</summary>
    public IReadOnlyList<uint> ResetMsrIndices => _resetMsrIndices;

    // _runSync while sync regs are used, else _shadowSync (kept in step with _useSyncRegs).
    private StructView _syncBlock;

    private StructView SyncBlock => _syncBlock;

    private void ApplyValidRegs()
    {
        _vcpu.CheckAccess(); // writes kvm_run: not after disposal, not while another thread owns the vCPU
        _vcpu.RunValidRegs = _useSyncRegs ? (ulong)_syncOnExit : 0;
    }

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
    /// <remarks>
    /// The block includes RIP, so after a port I/O or MMIO exit this completes the pending
    /// instruction first (one KVM_RUN with <c>immediate_exit</c>, no guest code; see <see cref="Rip"/>):
    /// whatever RIP holds when the vCPU next runs is where the guest resumes. To change only other
    /// GPRs after an OUT exit without that KVM_RUN, use their properties (<see cref="Rax"/>…).
    /// </remarks>
    public ref X86Gprs EditGprs()
    {
        CompletePendingAccess();
        return ref GprsForWrite();
    }

    /// <summary>The GPRs for writing, for the typed setters: completes a pending IN or MMIO only (<see cref="BeforeWrite"/>).</summary>
    private ref X86Gprs GprsForWrite() => ref SyncBlock.At<X86Gprs>(Edit(X86RegisterSets.Gprs, RegsOffset));

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
    public ref X86SpecialRegisters EditSpecialRegisters() => ref SyncBlock.At<X86SpecialRegisters>(Edit(X86RegisterSets.Sregs, SregsOffset));

    /// <summary>Pending events, fetched if needed. Read-only: use <see cref="EditEvents"/> to change them.</summary>
    public ref readonly X86VcpuEvents Events
    {
        get
        {
            Fetch(X86RegisterSets.Events);
            return ref SyncBlock.At<X86VcpuEvents>(EventsOffset);
        }
    }

    /// <summary>Pending events for writing: fetched if needed and marked dirty. Wraps KVM_SET_VCPU_EVENTS (or sync regs).</summary>
    public ref X86VcpuEvents EditEvents() => ref SyncBlock.At<X86VcpuEvents>(Edit(X86RegisterSets.Events, EventsOffset));

    /// <summary>Debug registers, fetched if needed. Wraps KVM_GET_DEBUGREGS; needs KVM_CAP_DEBUGREGS.</summary>
    public ref readonly X86DebugRegisters DebugRegisters
    {
        get
        {
            Fetch(X86RegisterSets.DebugRegs);
            return ref _debugRegs.At<X86DebugRegisters>(0);
        }
    }

    /// <summary>Debug registers for writing: fetched if needed and marked dirty. Wraps KVM_SET_DEBUGREGS.</summary>
    public ref X86DebugRegisters EditDebugRegisters() => ref _debugRegs.At<X86DebugRegisters>(Edit(X86RegisterSets.DebugRegs, 0));

    /// <summary>The XSAVE area (legacy FXSAVE region, XSAVE header, extended state), fetched if needed. Wraps KVM_GET_XSAVE2; needs KVM_CAP_XSAVE.</summary>
    public ReadOnlySpan<byte> Xsave
    {
        get
        {
            Fetch(X86RegisterSets.Xsave);
            return _xsave.Span;
        }
    }

    /// <summary>The XSAVE area for writing: fetched if needed and marked dirty. Wraps KVM_SET_XSAVE.</summary>
    public Span<byte> EditXsave() => _xsave.Span.Slice(Edit(X86RegisterSets.Xsave, 0));

    /// <summary>XMM register <paramref name="index"/> (0–15), from the XSAVE area.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–15.</exception>
    public UInt128 GetXmm(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 15u, nameof(index));
        return System.Runtime.InteropServices.MemoryMarshal.Read<UInt128>(Xsave.Slice(160 + 16 * index, 16));
    }

    /// <summary>Writes XMM register <paramref name="index"/> (0–15) in the XSAVE area.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Index not in 0–15.</exception>
    public void SetXmm(int index, UInt128 value)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 15u, nameof(index));
        var xsave = EditXsave();
        System.Runtime.InteropServices.MemoryMarshal.Write(xsave.Slice(160 + 16 * index, 16), in value);
        xsave[512] |= 0x2; // XSTATE_BV.SSE: without it XRSTOR treats the SSE state as initial (zero)
    }

    private int Edit(X86RegisterSets set, int offset)
    {
        BeforeWrite();
        Fetch(set);
        _dirty |= set;
        return offset;
    }
}
