using System.Runtime.CompilerServices;
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
public sealed class X86RegisterSync : IRegisterSync, IRunHooks
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

    private readonly Vcpu _vcpu;
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

    internal X86RegisterSync(Vcpu vcpu, MappedMemoryHandle run, int syncRegsCapability)
    {
        _vcpu = vcpu;
        _kernel = vcpu.Kernel;
        var supported = new HashSet<uint>(vcpu.VirtualMachine.MsrIndices);
        _runtimeMsrIndices = [.. RuntimeMsrCandidates.Where(supported.Contains)];
        _resetMsrIndices = [.. ResetMsrCandidates.Where(supported.Contains)];
        int xsaveSize = vcpu.VirtualMachine.XsaveSize;
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

    // ---- typed accessors ---------------------------------------------------------------------

#pragma warning disable CS1591 // register names document themselves
    public ulong Rax { get => Gprs.Rax; set => GprsForWrite().Rax = value; }
    public ulong Rbx { get => Gprs.Rbx; set => GprsForWrite().Rbx = value; }
    public ulong Rcx { get => Gprs.Rcx; set => GprsForWrite().Rcx = value; }
    public ulong Rdx { get => Gprs.Rdx; set => GprsForWrite().Rdx = value; }
    public ulong Rsi { get => Gprs.Rsi; set => GprsForWrite().Rsi = value; }
    public ulong Rdi { get => Gprs.Rdi; set => GprsForWrite().Rdi = value; }
    public ulong Rsp { get => Gprs.Rsp; set => GprsForWrite().Rsp = value; }
    public ulong Rbp { get => Gprs.Rbp; set => GprsForWrite().Rbp = value; }
    public ulong R8 { get => Gprs.R8; set => GprsForWrite().R8 = value; }
    public ulong R9 { get => Gprs.R9; set => GprsForWrite().R9 = value; }
    public ulong R10 { get => Gprs.R10; set => GprsForWrite().R10 = value; }
    public ulong R11 { get => Gprs.R11; set => GprsForWrite().R11 = value; }
    public ulong R12 { get => Gprs.R12; set => GprsForWrite().R12 = value; }
    public ulong R13 { get => Gprs.R13; set => GprsForWrite().R13 = value; }
    public ulong R14 { get => Gprs.R14; set => GprsForWrite().R14 = value; }
    public ulong R15 { get => Gprs.R15; set => GprsForWrite().R15 = value; }
    public ulong Rflags { get => Gprs.Rflags; set => GprsForWrite().Rflags = value; }
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

    /// <summary>
    /// The instruction pointer. Where the guest resumes: the value this holds when the vCPU next runs.
    /// </summary>
    /// <remarks>
    /// <para>At an x86 port I/O exit on stock KVM (Intel VMX and AMD SVM alike) RIP still points
    /// <b>at</b> the IN/OUT instruction: KVM finishes it at the next KVM_RUN
    /// (<c>complete_userspace_io</c>: it stores an IN's data into AL/AX/EAX and advances RIP past the
    /// instruction) unless RIP was changed meanwhile. Exceptions: port 0x7E with KVM's
    /// <c>KVM_X86_QUIRK_OUT_7E_INC_RIP</c> (on by default), where RIP is already past the OUT at the
    /// exit; string I/O, which KVM's instruction emulator handles (each <c>rep outs</c> item is done
    /// at its exit, RSI and RCX moved on, RIP at the instruction, which the next run repeats or finds
    /// done; a lone <c>outs</c> is finished and RIP is past it; <c>rep ins</c> is like IN); and software KVMs that emulate the whole instruction first (kvm-pvm's
    /// CPL0 OUT). After an MMIO exit RIP is likewise at the accessing instruction. A HLT exit's RIP is
    /// past the <c>hlt</c>.</para>
    /// <para>Writing RIP at such an exit always means "resume here": the pending instruction counts as
    /// done (an IN's or MMIO read's data is stored first) and the guest goes on at the written address.
    /// So <c>Rip = Rip + length</c> skips nothing more than the I/O instruction itself, another address
    /// jumps there, and writing back the I/O instruction's own address runs it again. KVM cannot tell
    /// that last write from no write at all (it compares RIPs), so there, and for any write after an
    /// IN or MMIO exit, the cache first completes the instruction with one KVM_RUN with
    /// <c>immediate_exit</c> (no guest code); any other RIP after an OUT exit costs no ioctl.</para>
    /// </remarks>
    public ulong Rip
    {
        get => Gprs.Rip;
        set
        {
            if (_accessPending) BeforeRipWrite(value);
            GprsForWrite().Rip = value;
        }
    }

    /// <inheritdoc/>
    /// <remarks>The same as <see cref="Rip"/>, including what writing it does at an I/O exit.</remarks>
    public ulong ProgramCounter { get => Rip; set => Rip = value; }

    /// <inheritdoc/>
    public ulong GetGeneralRegister(int index) => Unsafe.Add(ref Unsafe.AsRef(in Gprs.Rax), GprSlot(index));

    /// <inheritdoc/>
    public void SetGeneralRegister(int index, ulong value) => Unsafe.Add(ref GprsForWrite().Rax, GprSlot(index)) = value;

    // Encoding order RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI → slot in struct kvm_regs (RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP).
    private static int GprSlot(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 15u, nameof(index));
        return index switch { 1 => 2, 2 => 3, 3 => 1, 4 => 6, 5 => 7, 6 => 4, 7 => 5, _ => index };
    }

    /// <summary>XCR0, the enabled XSAVE feature mask. Wraps KVM_GET/SET_XCRS; needs KVM_CAP_XCRS.</summary>
    /// <exception cref="KvmException">The ioctl failed (e.g. EINVAL for a value CPUID does not allow).</exception>
    public ulong Xcr0
    {
        get
        {
            Fetch(X86RegisterSets.Xcrs);
            int i = FindXcr(0);
            return i < 0 ? 0 : _xcrs.At<kvm_xcr>(8 + 16 * i).value;
        }
        set
        {
            BeforeWrite();
            Fetch(X86RegisterSets.Xcrs);
            ref var x = ref _xcrs.At<kvm_xcrs>(0);
            int i = FindXcr(0);
            if (i < 0)
            {
                // KVM lists XCR0 whenever XSAVE is usable; add it otherwise so that the write is not lost.
                i = (int)x.nr_xcrs;
                x.nr_xcrs++;
                _xcrs.At<kvm_xcr>(8 + 16 * i) = new kvm_xcr { xcr = 0 };
            }
            _xcrs.At<kvm_xcr>(8 + 16 * i).value = value;
            _dirty |= X86RegisterSets.Xcrs;
        }
    }

    private int FindXcr(uint xcr)
    {
        int n = (int)Math.Min(_xcrs.At<kvm_xcrs>(0).nr_xcrs, kvm_xcrs.KVM_MAX_XCRS);
        for (int i = 0; i < n; i++)
            if (_xcrs.At<kvm_xcr>(8 + 16 * i).xcr == xcr) return i;
        return -1;
    }

    /// <inheritdoc/>
    public MpState MpState
    {
        get
        {
            Fetch(X86RegisterSets.MpState);
            return (MpState)_mpState.At<uint>(0);
        }
        set
        {
            _vcpu.CheckAccess();
            BeforeWrite();
            _mpState.At<uint>(0) = (uint)value;
            _valid |= X86RegisterSets.MpState;
            _dirty |= X86RegisterSets.MpState;
        }
    }

    /// <summary>The time-stamp counter (MSR 0x10, in <see cref="X86RegisterSets.ResetMsrs"/>, so never written back by a plain run unless set here).</summary>
    public ulong Tsc { get => GetMsr(MsrTsc); set => SetMsr(MsrTsc, value); }

    /// <summary>Reads an MSR of <see cref="RuntimeMsrIndices"/> or <see cref="ResetMsrIndices"/>. Wraps KVM_GET_MSRS.</summary>
    /// <exception cref="ArgumentException">KvmSharp does not track this MSR, or this KVM cannot save it.</exception>
    public ulong GetMsr(uint index)
    {
        var (set, view, slot) = LocateMsr(index);
        Fetch(set);
        return view.At<kvm_msr_entry>(8 + 16 * slot).data;
    }

    /// <summary>Writes an MSR of <see cref="RuntimeMsrIndices"/> or <see cref="ResetMsrIndices"/>; it reaches KVM before the next run. Wraps KVM_SET_MSRS.</summary>
    /// <exception cref="ArgumentException">KvmSharp does not track this MSR, or this KVM cannot save it.</exception>
    public void SetMsr(uint index, ulong value)
    {
        var (set, view, slot) = LocateMsr(index);
        BeforeWrite();
        Fetch(set);
        view.At<kvm_msr_entry>(8 + 16 * slot).data = value;
        _dirty |= set;
    }

    private (X86RegisterSets, StructView, int) LocateMsr(uint index)
    {
        int i = Array.IndexOf(_runtimeMsrIndices, index);
        if (i >= 0) return (X86RegisterSets.RuntimeMsrs, _runtimeMsrs, i);
        i = Array.IndexOf(_resetMsrIndices, index);
        if (i >= 0) return (X86RegisterSets.ResetMsrs, _resetMsrs, i);
        throw new ArgumentException($"MSR 0x{index:X} is not one KvmSharp caches on this KVM (runtime: {Hex(_runtimeMsrIndices)}; reset: {Hex(_resetMsrIndices)}).", nameof(index));
    }

    private static string Hex(uint[] a) => string.Join(", ", a.Select(x => $"0x{x:X}"));

    // ---- the engine --------------------------------------------------------------------------

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
