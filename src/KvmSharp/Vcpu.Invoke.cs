using KvmSharp.Interop;

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
        if (Owner(Volatile.Read(ref _state)) == KickSignal.CurrentThreadId)
        {
            if (Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
            action(this); // already on the owning thread (e.g. from an exit handler or another action)
            return;
        }
        var item = new InvokeItem(action, async: false);
        Enqueue(item);
        item.Wait();
    }

    /// <summary>
    /// Like <see cref="Invoke"/>, but returns a task that completes (or faults) when the action has run.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public Task InvokeAsync(Action<Vcpu> action)
    {
        ArgumentNullException.ThrowIfNull(action);
        var item = new InvokeItem(action, async: true);
        Enqueue(item);
        return item.Task!;
    }

    private void Enqueue(InvokeItem item)
    {
        if (_disposed || Volatile.Read(ref _disposing) != 0) ThrowHelper.ThrowObjectDisposed(this);
        _invokes.Enqueue(item);
        Interlocked.Increment(ref _invokeCount);
        if (Volatile.Read(ref _disposing) != 0)
        {
            FailQueued(); // Dispose raced us: it may have drained the queue before our item arrived
            return;
        }
        long me = Owned(KickSignal.CurrentThreadId);
        long state = Volatile.Read(ref _state);
        if ((state == 0 || OwnerIsGone(state)) && Interlocked.CompareExchange(ref _state, me, state) == state)
        {
            // Nobody owns the vCPU (or its owner's thread has ended): serve the queue here, then let go.
            Volatile.Write(ref _ownerInfo, OwnerInfo.Current(KickSignal.CurrentThreadId)); // a dead owner's reused tid must not look like this one
            _invokeDepth++;
            try
            {
                RunInvokes();
            }
            finally
            {
                _invokeDepth--;
                Release(me);
            }
        }
        else
        {
            // The owner runs the queue at its next entry, or when it releases the vCPU. A kick in
            // the window where it released meanwhile reaches nobody: serve the queue then.
            Kick();
            if (Volatile.Read(ref _state) == 0) ServeInvokesAfterRelease();
        }
    }

    private void RunInvokes()
    {
        while (_invokes.TryDequeue(out var item))
        {
            Interlocked.Decrement(ref _invokeCount);
            item.Execute(this);
        }
    }

    private void FailQueued()
    {
        while (_invokes.TryDequeue(out var item))
        {
            Interlocked.Decrement(ref _invokeCount);
            item.Fail(new ObjectDisposedException(GetType().FullName));
        }
    }

    private sealed class InvokeItem(Action<Vcpu> action, bool async)
    {
        private readonly ManualResetEventSlim? _done = async ? null : new ManualResetEventSlim();
        private readonly TaskCompletionSource? _tcs = async ? new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) : null;
        private Exception? _error;

        public Task? Task => _tcs?.Task;

        public void Execute(Vcpu vcpu)
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
