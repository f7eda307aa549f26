namespace KvmSharp;

// Ownership: the public face of the core's ownership gate (VcpuCore.Ownership.cs holds the model).
public sealed partial class Vcpu
{
    /// <summary>
    /// Gives up the calling thread's ownership of the vCPU. The thread that calls <see cref="Run()"/>
    /// owns the vCPU from then on — between runs too, while it handles the exit — so that
    /// <see cref="Invoke"/> from other threads waits for its next run instead of cutting in. A thread
    /// that will not run the vCPU again (a thread-pool thread whose work item ends, a loop that hands
    /// the vCPU to another thread) calls this; it is not needed at the end of a
    /// <see cref="VcpuRunner"/> loop, after a thread ends, or before <see cref="Dispose"/> on the same
    /// thread. Queued <see cref="Invoke"/> actions run here before it returns. No effect when the
    /// calling thread does not own the vCPU.
    /// </summary>
    /// <exception cref="InvalidOperationException">Called inside a <see cref="VcpuRunner"/> loop or an Invoke action.</exception>
    public void ReleaseOwnership() => _core.ReleaseOwnership();

    /// <summary>Throws when another thread owns the vCPU (the public accessors call this).</summary>
    internal void CheckAccess() => _core.CheckAccess();

    /// <summary>
    /// Starts a run loop (<see cref="VcpuRunner"/>) on the calling thread: takes the vCPU (or keeps it)
    /// until the matching <see cref="Unhold"/>, where the outermost loop's end releases it.
    /// </summary>
    internal void Hold() => _core.Hold();

    /// <summary>Ends a <see cref="Hold"/>; the outermost loop's end releases the vCPU (serving queued Invoke actions).</summary>
    internal void Unhold() => _core.Unhold();

    /// <summary>Takes the vCPU for a whole-VM operation (snapshot, restore); see <see cref="VcpuCore.TakeForVm"/>.</summary>
    internal bool TakeForVm(string operation) => _core.TakeForVm(operation);

    /// <summary>Ends <see cref="TakeForVm"/>.</summary>
    internal void GiveBackFromVm(bool had) => _core.GiveBackFromVm(had);
}
