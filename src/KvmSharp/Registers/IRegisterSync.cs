namespace KvmSharp.Registers;

/// <summary>
/// The register cache of one vCPU. Every register access of a <see cref="Vcpu"/> goes through it:
/// a read fetches only the register set it needs and only if the cache does not hold it already; a
/// write marks its set dirty, and every dirty set is written back right before the next run.
/// </summary>
/// <remarks>
/// Implementations: <see cref="X86RegisterSync"/>. Not thread-safe: use it on the thread that runs
/// the vCPU (or while the vCPU is not running).
/// </remarks>
public interface IRegisterSync
{
    /// <summary>The architecture whose registers this strategy handles.</summary>
    KvmArchitecture Architecture { get; }

    /// <summary>
    /// Fetches every register set the cache does not hold (QEMU's <c>cpu_synchronize_state</c>).
    /// Dirty sets are never overwritten by a fetch.
    /// </summary>
    /// <exception cref="KvmException">A get ioctl failed.</exception>
    void Synchronize();

    /// <summary>
    /// Writes back every cached set whose level is at most <paramref name="level"/>, dirty or not,
    /// and every dirty set (QEMU's <c>post_reset</c> with <see cref="SyncLevel.Reset"/>, <c>post_init</c>
    /// with <see cref="SyncLevel.Full"/>).
    /// </summary>
    /// <exception cref="KvmException">A set ioctl failed.</exception>
    void Push(SyncLevel level);

    /// <summary>Writes back dirty sets, then forgets everything cached, so the next read fetches from KVM.</summary>
    /// <exception cref="KvmException">A set ioctl failed.</exception>
    void Invalidate();
}
