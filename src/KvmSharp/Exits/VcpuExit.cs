using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>
/// A view of one vCPU exit, straight into the vCPU's <c>kvm_run</c> page: no copy, no allocation.
/// Valid until the next <see cref="Vcpu.Run()"/> or the vCPU's disposal: after disposal every member
/// (and every member of the typed views taken from it) throws <see cref="ObjectDisposedException"/>
/// instead of reading unmapped memory. A <see cref="Span{T}"/> taken from a view (e.g.
/// <see cref="IoExit.Data"/>) cannot be checked: do not use it after the next run or disposal.
/// </summary>
/// <remarks>
/// <see cref="Reason"/> says which typed view applies; asking for another throws
/// <see cref="InvalidOperationException"/> naming the actual reason. Exit reasons KvmSharp does not
/// know arrive with their raw number in <see cref="RawReason"/> and their union bytes in <see cref="RawUnion"/>.
/// </remarks>
public readonly ref struct VcpuExit
{
    private readonly RunBytes _run;
    private readonly int _u;
    private readonly KvmArchitecture _arch;

    internal VcpuExit(VcpuCore vcpu, Span<byte> run, KvmArchitecture arch)
    {
        _run = new RunBytes(vcpu, run);
        _arch = arch;
        _u = arch.ExitUnionOffset();
    }

    /// <summary>The exit reason (<c>kvm_run.exit_reason</c>).</summary>
    public VcpuExitReason Reason => (VcpuExitReason)RawReason;

    /// <summary>The exit reason as the kernel's number, for reasons newer than this library.</summary>
    public uint RawReason => MemoryMarshal.Read<uint>(Run.Slice(KvmRunPage.ExitReason));

    /// <summary><c>kvm_run.if_flag</c> (x86): whether the guest had interrupts enabled.</summary>
    public bool InterruptFlag => Run[KvmRunPage.IfFlag] != 0;

    /// <summary><c>kvm_run.ready_for_interrupt_injection</c> (x86).</summary>
    public bool ReadyForInterruptInjection => Run[KvmRunPage.ReadyForInterruptInjection] != 0;

    /// <summary>The 256 bytes of the exit union, for reasons without a typed view.</summary>
    public ReadOnlySpan<byte> RawUnion => Run.Slice(_u, KvmRunPage.ExitUnionSize);

    /// <summary>For <see cref="VcpuExitReason.Unknown"/>: the hardware exit reason (<c>kvm_run.hw</c>).</summary>
    public ulong HardwareExitReason => Member<kvm_run_hw>(VcpuExitReason.Unknown).As<kvm_run_hw>().hardware_exit_reason;

    /// <summary>The port I/O view.</summary>
    /// <remarks>
    /// <para>What a handler reads (x86, stock KVM): the port, direction, size, count and, for an OUT,
    /// the data here; the guest's registers as they were <i>before</i> the instruction — RIP points at
    /// the IN/OUT (see <see cref="Registers.X86RegisterSync.Rip"/> for the exceptions: port 0x7E,
    /// string I/O), RAX is unchanged by an IN so far.</para>
    /// <para>What the next <see cref="Vcpu.Run()"/> does: KVM completes the instruction — copies an
    /// IN's <see cref="IoExit.Data"/> into AL/AX/EAX (AL and AX merge into RAX, EAX zero-extends it, as
    /// the instruction does) or the items of a <c>rep ins</c> into memory, and advances RIP past it.
    /// So fill <see cref="IoExit.Data"/> for an IN before anything else.</para>
    /// <para>Writing registers through <see cref="Vcpu.X86"/> at such an exit: after an IN the first
    /// write completes the instruction first (stores the data, advances RIP; one KVM_RUN with
    /// <c>immediate_exit</c>, no guest code), so a RAX written then replaces what the IN loaded. After
    /// an OUT, writing other GPRs costs nothing and KVM still skips the OUT. Writing RIP means "resume
    /// here": RIP + length continues after the instruction, another address jumps there, the
    /// instruction's own address runs it again. Snapshots (<see cref="VirtualMachine.CreateSnapshot"/>,
    /// <see cref="Registers.IRegisterSync.SaveState"/>) complete the pending instruction first and
    /// capture the state after it.</para>
    /// </remarks>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.Io"/>.</exception>
    public IoExit Io
    {
        get
        {
            Expect(VcpuExitReason.Io);
            return new IoExit(_run, _u);
        }
    }

    /// <summary>The MMIO view.</summary>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.Mmio"/>.</exception>
    public MmioExit Mmio => new(Member<kvm_run_mmio>(VcpuExitReason.Mmio));

    /// <summary>The system-event view (PSCI shutdown/reset, crash, wakeup…).</summary>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.SystemEvent"/>.</exception>
    public SystemEventExit SystemEvent => new(Member<kvm_run_system_event>(VcpuExitReason.SystemEvent));

    /// <summary>The internal-error view (suberror and data words).</summary>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.InternalError"/>.</exception>
    public InternalErrorExit InternalError => new(Member<kvm_run_internal>(VcpuExitReason.InternalError));

    /// <summary>The failed-entry view.</summary>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.FailEntry"/>.</exception>
    public FailEntryExit FailEntry => new(Member<kvm_run_fail_entry>(VcpuExitReason.FailEntry));

    /// <summary>The x86 exception view (<c>kvm_run.ex</c>).</summary>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.Exception"/>.</exception>
    public ExceptionExit Exception => new(Member<kvm_run_ex>(VcpuExitReason.Exception));

    /// <summary>The debug view (<c>kvm_run.debug.arch</c>, whose layout depends on the architecture).</summary>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.Debug"/>.</exception>
    public DebugExit Debug => new(Member<Interop.X86.kvm_debug_exit_arch>(VcpuExitReason.Debug), _arch); // x86's is the largest of the three arches

    /// <summary>The x86 user-space MSR view (<c>kvm_run.msr</c>); set <see cref="X86MsrExit.Data"/> for a read, <see cref="X86MsrExit.Error"/> to inject #GP.</summary>
    /// <exception cref="InvalidOperationException">The exit is neither <see cref="VcpuExitReason.X86Rdmsr"/> nor <see cref="VcpuExitReason.X86Wrmsr"/>.</exception>
    public X86MsrExit X86Msr
    {
        get
        {
            var r = Reason;
            if (r != VcpuExitReason.X86Rdmsr && r != VcpuExitReason.X86Wrmsr) ThrowWrongKind(RawReason, "X86Rdmsr or X86Wrmsr");
            return new X86MsrExit(_run.Union<kvm_run_msr>(_u));
        }
    }

    /// <summary>The s390x SIE intercept view.</summary>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.S390Sieic"/>.</exception>
    public S390SieicExit S390Sieic => new(Member<kvm_run_s390_sieic>(VcpuExitReason.S390Sieic));

    /// <summary>The s390x user-controlled VM fault view.</summary>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.S390Ucontrol"/>.</exception>
    public S390UcontrolExit S390Ucontrol => new(Member<kvm_run_s390_ucontrol>(VcpuExitReason.S390Ucontrol));

    /// <summary>The arm64 "no valid instruction syndrome" data-abort view.</summary>
    /// <exception cref="InvalidOperationException">The exit is not <see cref="VcpuExitReason.ArmNisv"/>.</exception>
    public ArmNisvExit ArmNisv => new(Member<kvm_run_arm_nisv>(VcpuExitReason.ArmNisv));

    /// <summary>The <c>kvm_run</c> page; refused once the vCPU is disposed (the mapping is gone).</summary>
    private Span<byte> Run => _run.Span;

    /// <summary>The exit union as member <typeparamref name="T"/>, once the exit is checked to be <paramref name="reason"/>.</summary>
    private RunBytes Member<T>(VcpuExitReason reason) where T : unmanaged
    {
        Expect(reason);
        return _run.Union<T>(_u);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Expect(VcpuExitReason reason)
    {
        if (RawReason != (uint)reason) ThrowWrongKind(RawReason, reason);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowWrongKind(uint actual, VcpuExitReason wanted) => ThrowWrongKind(actual, wanted.ToString());

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowWrongKind(uint actual, string wanted) =>
        throw new InvalidOperationException($"This exit is {Describe(actual)}, not {wanted}.");

    private static string Describe(uint raw) =>
        Enum.IsDefined((VcpuExitReason)raw) ? ((VcpuExitReason)raw).ToString() : $"unknown exit reason {raw}";

    /// <summary>The reason, e.g. <c>Io</c>, or <c>unknown exit reason 99</c>.</summary>
    public override string ToString() => Describe(RawReason);
}
