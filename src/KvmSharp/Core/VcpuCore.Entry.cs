using System.Runtime.CompilerServices;
using KvmSharp.Interop;

namespace KvmSharp;

// The one KVM_RUN entry sequence, the kicks that get a thread out of it, and disposal's wait for the owner.
internal sealed partial class VcpuCore
{
    private bool _signalMaskSet;

    /// <summary>Whether KVM_SET_SIGNAL_MASK has unblocked the kick signal inside KVM_RUN (done once, before the first entry).</summary>
    internal bool SignalMaskSet => _signalMaskSet;

    /// <summary>
    /// Drains the dirty rings into the VM's tracker when an entry ends with a full ring (set by the
    /// vCPU when its VM tracks dirty pages with rings; the tracker is above this layer).
    /// </summary>
    internal Action? OnDirtyRingFull { get; set; }

    /// <summary>
    /// The KVM_RUN entry sequence, the only one: publishes the calling thread to kickers (a full
    /// barrier: a <see cref="RequestExit"/> either sees the thread or its request is seen here), sets
    /// <c>immediate_exit</c> from the request flags (or to 1 with <paramref name="completeOnly"/>),
    /// enters, and withdraws. The caller owns the vCPU (<c>State == Owned(me)</c>) and has written the
    /// registers back. Returns KVM_RUN's result, or -errno.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal int Enter(int me, bool completeOnly = false)
    {
        Interlocked.Exchange(ref State, OwnedRunning(me));
        // The request flags are the truth: a stale immediate_exit from an earlier kick is cleared; a
        // request, a queued Invoke or a disposal begun before this point makes KVM_RUN return at
        // once. A kick racing with this write saw the published thread, so its signal (blocked
        // here, pending) interrupts KVM_RUN.
        KvmRunPage.WriteByte(RunAddress, KvmRunPage.ImmediateExit,
            completeOnly || (Volatile.Read(ref ExitRequested) | Volatile.Read(ref InvokeCount) | Volatile.Read(ref Disposing)) != 0 ? (byte)1 : (byte)0);
        int r = NativeKernel ? LinuxKernel.Run(FdNumber) : Kernel.Ioctl(FdNumber, KvmIoctls.KVM_RUN, 0);
        Volatile.Write(ref State, Owned(me));
        return r;
    }

    /// <summary>
    /// Lets KVM finish a pending I/O or MMIO access (store an IN's or MMIO read's data, advance the PC)
    /// without running guest code: the entry sequence with <c>immediate_exit</c> set (api.rst). Used by
    /// the register strategies before they save or overwrite state the completion would change; the
    /// caller has written back what KVM must see first. A vCPU no thread owns is held for the entry.
    /// A full dirty ring is drained and the entry repeated; EAGAIN (an x86 AP still waiting for
    /// INIT/SIPI) means nothing was pending.
    /// </summary>
    /// <exception cref="InvalidOperationException">Another thread owns the vCPU; or completing the access produced a new
    /// exit (a string I/O or MMIO instruction that needs more data): handle exits until the instruction is done first.</exception>
    /// <exception cref="KvmException">KVM_RUN failed.</exception>
    internal void CompletePendingAccess()
    {
        int me = KickSignal.PrepareCurrentThread();
        bool had = Owner(Volatile.Read(ref State)) == me;
        if (!had) Acquire(me);
        try
        {
            while (true)
            {
                int r = Enter(me, completeOnly: true);
                // PERF: no signal drain on EINTR (a syscall): a kick that arrived meanwhile stays
                // pending and makes the next real KVM_RUN return EINTR, which Run drains and re-enters.
                if (r == -Errno.EINTR || r == -Errno.EAGAIN) return;
                if (r < 0) ThrowRunFailed(r);
                if (LastExitReason == (uint)VcpuExitReason.DirtyRingFull && OnDirtyRingFull is { } drain)
                {
                    drain();
                    continue;
                }
                throw new InvalidOperationException(
                    $"vCPU {Id}: completing the pending I/O or MMIO access produced another exit ({(VcpuExitReason)LastExitReason}); a string or split access needs more handling before registers can be saved or written.");
            }
        }
        finally
        {
            if (!had) Release(Owned(me));
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void ThrowRunFailed(int r) => ThrowHelper.ThrowKvm(KvmIoctls.KVM_RUN, r, $"vcpu {Id}");

    /// <summary>Tells KVM to unblock the kick signal inside KVM_RUN (once per vCPU; the calling thread blocks it already).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void SetSignalMask()
    {
        using var buf = new NativeBuffer(kvm_signal_mask.SigsetOffset + Libc.KernelSigsetBytes);
        var view = new StructView(buf, 0, (int)buf.ByteLength);
        view.At<kvm_signal_mask>(0).len = Libc.KernelSigsetBytes;
        view.At<ulong>(kvm_signal_mask.SigsetOffset) = KickSignal.RunMask();
        int r = Kernel.Ioctl(FdNumber, KvmIoctls.KVM_SET_SIGNAL_MASK, view.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_SET_SIGNAL_MASK, r, $"vcpu {Id}, unblocking signal {KickSignal.Number} inside KVM_RUN");
        _signalMaskSet = true;
    }

    /// <summary>See <see cref="Vcpu.RequestExit"/>: any thread, never blocks.</summary>
    internal void RequestExit()
    {
        if (Volatile.Read(ref Disposing) != 0) return;
        Volatile.Write(ref ExitRequested, 1);
        Kick();
    }

    /// <summary>immediate_exit, then the signal to the thread inside KVM_RUN, if any.</summary>
    internal void Kick()
    {
        // Counted before the disposal check: Dispose waits for every kicker that got past it before
        // it unmaps kvm_run, so this write never hits freed memory.
        Interlocked.Increment(ref _kickers);
        try
        {
            if (Volatile.Read(ref Disposing) != 0) return;
            KickUnchecked();
        }
        finally
        {
            Interlocked.Decrement(ref _kickers);
        }
    }

    private void KickUnchecked()
    {
        KvmRunPage.WriteByte(RunAddress, KvmRunPage.ImmediateExit, 1);
        Interlocked.MemoryBarrier(); // immediate_exit is visible before we look for the thread
        long state = Volatile.Read(ref State);
        if ((state & RunningFlag) != 0) KickSignal.Send(Owner(state));
    }

    /// <summary>
    /// Begins disposal (any thread): returns false when another thread is disposing (after it has
    /// finished). Otherwise takes the vCPU from its owner — kicking it and waiting until it lets go,
    /// at its next Run or register access (which then throw <see cref="ObjectDisposedException"/>),
    /// at ReleaseOwnership, or when its thread has ended — waits for kickers, fails queued actions,
    /// and returns true: the caller then tears down and calls <see cref="ReleaseResources"/>.
    /// </summary>
    internal bool BeginDispose()
    {
        if (Interlocked.Exchange(ref Disposing, 1) != 0)
        {
            while (!Volatile.Read(ref _disposed)) Thread.Sleep(1); // another thread is disposing: wait for it
            return false;
        }
        int me = KickSignal.CurrentThreadId;
        Volatile.Write(ref _disposerTid, me);
        if (Owner(Volatile.Read(ref State)) != me)
        {
            // Another thread owns the vCPU (running it, or between runs: handling an exit, whose views
            // must stay mapped): kick it and wait until it lets go.
            var spin = new SpinWait();
            while (true)
            {
                long state = Volatile.Read(ref State);
                if ((state == 0 || OwnerIsGone(state)) && Interlocked.CompareExchange(ref State, Owned(me), state) == state) break;
                KickUnchecked(); // the mapping is alive: only this thread unmaps it, in ReleaseResources
                spin.SpinOnce(sleep1Threshold: 20);
            }
        }
        // Kickers that passed the disposal check before it was set finish their write first.
        while (Volatile.Read(ref _kickers) != 0) Thread.Yield();
        FailQueued();
        return true;
    }
}
