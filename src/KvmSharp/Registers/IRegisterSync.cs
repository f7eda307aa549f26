namespace KvmSharp.Registers;

/// <summary>
/// The register cache of one vCPU. Every register access of a <see cref="Vcpu"/> goes through it.
/// </summary>
/// <remarks>
/// <para>The vCPU's state is divided into register sets that move together (x86: GPRs, special
/// registers, FPU/XSAVE, …; arm64: one set per ONE_REG register; s390x: the blocks of the
/// <c>kvm_run</c> sync area). For each set the cache keeps two bits: <i>valid</i> (the cache holds
/// KVM's value) and <i>dirty</i> (the cache is newer than KVM). The rules:</para>
/// <list type="number">
/// <item>Reading a register fetches its set only if it is not valid; a fetch never overwrites a dirty set.</item>
/// <item>Writing a register marks its set valid and dirty; writes are never dropped.</item>
/// <item>Before every run, every dirty set is written back — through <c>kvm_run</c> with no ioctl
/// where the kernel offers sync regs — and what the run can change becomes invalid, except what the
/// kernel refreshes in <c>kvm_run</c> at the exit.</item>
/// <item><see cref="PostReset"/> writes back everything of level ≤ Reset, <see cref="PostInit"/> everything (Full).</item>
/// <item>Ioctls that change vCPU state behind the cache (resets, MP state, arm64 VCPU_INIT) first
/// flush dirty sets, then invalidate.</item>
/// </list>
/// <para>Implementations: <see cref="X86RegisterSync"/>, <see cref="Arm64RegisterSync"/>,
/// <see cref="S390xRegisterSync"/>. Not thread-safe: use it on the thread that runs the vCPU, or
/// while the vCPU is not running.</para>
/// </remarks>
public interface IRegisterSync
{
    /// <summary>The architecture whose registers this strategy handles.</summary>
    KvmArchitecture Architecture { get; }

    /// <summary>
    /// The program counter: RIP on x86, PC on arm64, the PSW address on s390x.
    /// </summary>
    /// <exception cref="KvmException">Fetching or writing it failed.</exception>
    ulong ProgramCounter { get; set; }

    /// <summary>
    /// General register <paramref name="index"/>: x86 RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8–R15
    /// (the instruction-encoding order, 0–15); arm64 X0–X30 (0–30); s390x R0–R15 (0–15).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">No such register.</exception>
    /// <exception cref="KvmException">Fetching it failed.</exception>
    ulong GetGeneralRegister(int index);

    /// <summary>Writes general register <paramref name="index"/> (numbering as in <see cref="GetGeneralRegister"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">No such register.</exception>
    /// <exception cref="KvmException">Fetching the rest of its set failed.</exception>
    void SetGeneralRegister(int index, ulong value);

    /// <summary>The vCPU's MP state (KVM_GET/SET_MP_STATE; needs KVM_CAP_MP_STATE).</summary>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    MpState MpState { get; set; }

    /// <summary>
    /// Fetches every register set the cache does not hold (QEMU's <c>cpu_synchronize_state</c>).
    /// Dirty sets are never overwritten.
    /// </summary>
    /// <exception cref="KvmException">A get ioctl failed.</exception>
    void Synchronize();

    /// <summary>
    /// Writes back every cached set whose level is at most <paramref name="level"/> (dirty or not) and
    /// every dirty set. <see cref="SyncLevel.Reset"/> is QEMU's <c>post_reset</c>, <see cref="SyncLevel.Full"/>
    /// its <c>post_init</c>. Sets the architecture can only hand over in <c>kvm_run</c> (s390x) are
    /// flagged there and loaded by the kernel at the next entry; all others are written now with ioctls.
    /// </summary>
    /// <exception cref="KvmException">A set ioctl failed; the sets not yet written stay dirty.</exception>
    void Push(SyncLevel level);

    /// <summary>Same as <c>Push(SyncLevel.Reset)</c>: after a system reset.</summary>
    void PostReset() => Push(SyncLevel.Reset);

    /// <summary>Same as <c>Push(SyncLevel.Full)</c>: after creating the vCPU or loading state.</summary>
    void PostInit() => Push(SyncLevel.Full);

    /// <summary>Writes back dirty sets, then forgets everything cached, so the next read fetches from KVM.</summary>
    /// <exception cref="KvmException">A set ioctl failed.</exception>
    void Invalidate();

    /// <summary>
    /// Captures the whole register state (level Full, including MP state and events): fetches what
    /// is not cached, then copies every set.
    /// </summary>
    /// <exception cref="KvmException">A get ioctl failed.</exception>
    RegisterState SaveState();

    /// <summary>
    /// Loads a state captured by <see cref="SaveState"/> into the cache and writes all of it back
    /// (level Full) — through <c>kvm_run</c> where sync regs allow, so those sets cost no ioctl.
    /// </summary>
    /// <exception cref="ArgumentException">The state is of another architecture or shape.</exception>
    /// <exception cref="KvmException">A set ioctl failed.</exception>
    void RestoreState(RegisterState state);
}

/// <summary>What the vCPU tells its register strategy around each KVM_RUN (internal plumbing).</summary>
internal interface IRunHooks
{
    /// <summary>Right before KVM_RUN: write back dirty sets.</summary>
    void BeforeRun();

    /// <summary>Right after KVM_RUN returned <paramref name="result"/> (≥ 0, or -errno).</summary>
    void AfterRun(int result);

    /// <summary>The vCPU is being disposed: free native buffers.</summary>
    void Release();
}
