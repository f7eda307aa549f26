namespace KvmSharp;

// Invoke: running actions on the thread that owns the vCPU.
public sealed partial class Vcpu
{
    /// <summary>
    /// Runs <paramref name="action"/> on the thread that owns the vCPU, at its next entry into the
    /// guest (QEMU's <c>run_on_cpu</c>): a running vCPU is kicked out of KVM_RUN, the action runs on its
    /// thread, and the guest resumes (the run does not return for this); an owner between two runs —
    /// handling an exit — runs it when it next calls <see cref="Run()"/>, never in the middle of its
    /// handler. If no thread owns the vCPU (or its owner's thread has ended), the action runs on the
    /// calling thread. Waits for the action; rethrows its exception. An owner that will not run the
    /// vCPU again must <see cref="ReleaseOwnership"/>, or this waits for it.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public void Invoke(Action<Vcpu> action)
    {
        ArgumentNullException.ThrowIfNull(action);
        if (_core.IsOwnedByCurrentThread)
        {
            if (Volatile.Read(ref _core.Disposing) != 0) VcpuCore.ThrowDisposed();
            action(this); // already on the owning thread (e.g. from an exit handler or another action)
            return;
        }
        var item = new InvokeItem(this, action, async: false);
        _core.Enqueue(item);
        item.Wait();
    }

    /// <summary>
    /// Like <see cref="Invoke"/>, but returns a task that completes (or faults) when the action has run.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public Task InvokeAsync(Action<Vcpu> action)
    {
        ArgumentNullException.ThrowIfNull(action);
        var item = new InvokeItem(this, action, async: true);
        _core.Enqueue(item);
        return item.Task!;
    }

    private sealed class InvokeItem(Vcpu vcpu, Action<Vcpu> action, bool async) : IVcpuAction
    {
        private readonly ManualResetEventSlim? _done = async ? null : new ManualResetEventSlim();
        private readonly TaskCompletionSource? _tcs = async ? new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) : null;
        private Exception? _error;

        public Task? Task => _tcs?.Task;

        public void Execute()
        {
            try
            {
                action(vcpu);
                _tcs?.TrySetResult();
            }
            catch (Exception e)
            {
                _error = e;
                _tcs?.TrySetException(e);
            }
            finally
            {
                _done?.Set();
            }
        }

        public void Fail(Exception e)
        {
            _error = e;
            _tcs?.TrySetException(e);
            _done?.Set();
        }

        public void Wait()
        {
            _done!.Wait();
            _done.Dispose();
            if (_error is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(_error).Throw();
        }
    }
}
