using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp.Registers;

// Typed accessors: registers by name, RIP, XCR0, MP state and MSRs.
public sealed partial class X86RegisterSync
{
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
    public ulong GetGeneralRegister(int index)
    {
        Fetch(X86RegisterSets.Gprs);
        return SyncBlock.At<ulong>(RegsOffset + sizeof(ulong) * GprSlot(index));
    }

    /// <inheritdoc/>
    public void SetGeneralRegister(int index, ulong value) =>
        SyncBlock.At<ulong>(Edit(X86RegisterSets.Gprs, RegsOffset) + sizeof(ulong) * GprSlot(index)) = value;

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
}
