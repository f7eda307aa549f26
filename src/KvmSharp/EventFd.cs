using System.Runtime.InteropServices;
using KvmSharp.Interop;
using Microsoft.Win32.SafeHandles;

namespace KvmSharp;

/// <summary>
/// A Linux eventfd: a 64-bit counter in the kernel that one side adds to and the other reads and
/// resets, and a file descriptor KVM can signal or be signalled through without user space in
/// between — <see cref="VirtualMachine.AddIoEventFd"/> (a guest write signals it),
/// <see cref="VirtualMachine.AddIrqFd"/> (signalling it raises a guest interrupt).
/// </summary>
/// <remarks>
/// Thread-safe: any thread may signal, read or wait (each read takes the whole count, so two
/// readers share the signals between them). The descriptor is non-blocking and close-on-exec; waits
/// use <c>poll</c>. <see cref="WaitAsync"/> blocks a dedicated thread while it waits — for many
/// event sources, hand <see cref="SafeHandle"/> to your own epoll loop instead.
/// KVM holds its own reference to the eventfd while it is registered, so disposing this object
/// does not unregister it; remove the registration first (or dispose the VM).
/// </remarks>
public sealed class EventFd : IDisposable
{
    private readonly SafeFileHandle _handle;

    /// <summary>Creates an eventfd (<c>eventfd(2)</c> with <c>EFD_CLOEXEC | EFD_NONBLOCK</c>).</summary>
    /// <param name="initialValue">The counter's first value.</param>
    /// <param name="semaphore"><c>EFD_SEMAPHORE</c>: each read takes 1 from the counter instead of all of it.</param>
    /// <exception cref="IOException">eventfd failed (the message names the errno, e.g. EMFILE).</exception>
    public EventFd(uint initialValue = 0, bool semaphore = false)
    {
        int fd = Libc.eventfd(initialValue, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK | (semaphore ? Libc.EFD_SEMAPHORE : 0));
        if (fd < 0) throw Failed("eventfd", Marshal.GetLastPInvokeError());
        _handle = new SafeFileHandle(fd, ownsHandle: true);
        IsSemaphore = semaphore;
    }

    /// <summary>Whether reads take 1 at a time (<c>EFD_SEMAPHORE</c>).</summary>
    public bool IsSemaphore { get; }

    /// <summary>
    /// The descriptor, for <c>epoll</c> or an ioctl KvmSharp lacks. Valid until this object is
    /// disposed; hold it with <see cref="System.Runtime.InteropServices.SafeHandle.DangerousAddRef"/> while a native call uses it.
    /// </summary>
    public SafeHandle SafeHandle => _handle;

    /// <summary>Adds <paramref name="value"/> to the counter, waking waiters (and, for an irqfd, raising its interrupt).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="value"/> is 0 or <see cref="ulong.MaxValue"/> (eventfd refuses it).</exception>
    /// <exception cref="InvalidOperationException">The counter would overflow (EAGAIN: nobody has read it).</exception>
    /// <exception cref="ObjectDisposedException">Disposed.</exception>
    public void Signal(ulong value = 1)
    {
        ArgumentOutOfRangeException.ThrowIfZero(value);
        ArgumentOutOfRangeException.ThrowIfEqual(value, ulong.MaxValue);
        using var fd = Use();
        if (Libc.write(fd.Number, in value, 8) == 8) return;
        int errno = Marshal.GetLastPInvokeError();
        if (errno == Errno.EAGAIN)
            throw new InvalidOperationException($"The eventfd counter would pass 0xFFFFFFFFFFFFFFFE by adding {value}: read it first (EAGAIN).");
        throw Failed("write", errno);
    }

    /// <summary>Takes the count if it is not zero (all of it, or 1 in semaphore mode); never blocks.</summary>
    /// <returns>Whether there was a count.</returns>
    /// <exception cref="ObjectDisposedException">Disposed.</exception>
    public bool TryRead(out ulong value)
    {
        using var fd = Use();
        value = 0;
        if (Libc.read(fd.Number, ref value, 8) == 8)
        {
            // The count may be Dispose's wake-up: a read racing with disposal puts it back, so that
            // every other waiter still wakes (one not yet in poll would otherwise block for ever),
            // and reports the disposal.
            if (Volatile.Read(ref _disposed) != 0)
            {
                _ = Libc.write(fd.Number, in value, 8);
                throw new ObjectDisposedException(nameof(EventFd));
            }
            return true;
        }
        int errno = Marshal.GetLastPInvokeError();
        if (errno == Errno.EAGAIN) return false;
        throw Failed("read", errno);
    }

    /// <summary>Waits until the count is not zero, then takes it.</summary>
    /// <param name="timeout">How long to wait; <see cref="Timeout.InfiniteTimeSpan"/> for ever.</param>
    /// <param name="value">The count taken.</param>
    /// <returns>False when the timeout passed first.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A negative timeout other than infinite, or one over <see cref="int.MaxValue"/> ms.</exception>
    /// <exception cref="ObjectDisposedException">Disposed.</exception>
    public bool Wait(TimeSpan timeout, out ulong value)
    {
        long ms = (long)timeout.TotalMilliseconds;
        if (timeout != Timeout.InfiniteTimeSpan && (ms < 0 || ms > int.MaxValue))
            throw new ArgumentOutOfRangeException(nameof(timeout), timeout, "Between 0 and int.MaxValue milliseconds, or Timeout.InfiniteTimeSpan.");
        var deadline = timeout == Timeout.InfiniteTimeSpan ? long.MaxValue : Environment.TickCount64 + ms;
        while (true)
        {
            if (TryRead(out value)) return true;
            long left = deadline == long.MaxValue ? -1 : deadline - Environment.TickCount64;
            if (deadline != long.MaxValue && left <= 0) return false;
            PollReadable(null, (int)Math.Min(left, int.MaxValue));
        }
    }

    /// <summary>Waits until the count is not zero, then takes it; on a dedicated thread, so that no thread-pool thread blocks.</summary>
    /// <returns>The count taken.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="ObjectDisposedException">Disposed.</exception>
    public Task<ulong> WaitAsync(CancellationToken cancellationToken = default)
    {
        if (TryRead(out ulong ready)) return Task.FromResult(ready);
        cancellationToken.ThrowIfCancellationRequested();
        return Task.Factory.StartNew(() =>
        {
            // A second eventfd wakes the poll when the token is cancelled.
            using var cancel = new EventFd();
            using var registration = cancellationToken.Register(() => cancel.Signal());
            while (true)
            {
                if (TryRead(out ulong value)) return value;
                cancellationToken.ThrowIfCancellationRequested();
                PollReadable(cancel, -1);
            }
        }, cancellationToken, TaskCreationOptions.LongRunning | TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);
    }

    /// <summary>Blocks in <c>poll</c> until this (or <paramref name="other"/>) is readable, the timeout passes, or a signal interrupts.</summary>
    private void PollReadable(EventFd? other, int timeoutMs)
    {
        using var fd = Use();
        using var otherFd = other?.Use();
        var fds = new Libc.PollFd[other is null ? 1 : 2];
        fds[0] = new Libc.PollFd { Fd = fd.Number, Events = Libc.POLLIN };
        if (otherFd is { } o) fds[1] = new Libc.PollFd { Fd = o.Number, Events = Libc.POLLIN };
        if (Libc.poll(fds, (nuint)fds.Length, timeoutMs) < 0 && Marshal.GetLastPInvokeError() is int errno && errno != Errno.EINTR)
            throw Failed("poll", errno);
    }

    /// <summary>
    /// Closes the descriptor (idempotent). Waits in progress on other threads end with
    /// <see cref="ObjectDisposedException"/> (they are woken first). KVM keeps a registered eventfd
    /// alive until the registration is removed.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        // Wake any poll on this descriptor: each waiter then sees the flag before it reads.
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            ulong one = 1;
            _ = Libc.write((int)_handle.DangerousGetHandle(), in one, 8); // EAGAIN at a full counter: a waiter is awake anyway
        }
        catch (ObjectDisposedException)
        {
        }
        finally
        {
            if (added) _handle.DangerousRelease();
        }
        _handle.Dispose();
    }

    private int _disposed;

    /// <summary>The descriptor number with a reference held on the handle, so a concurrent Dispose cannot close (and the number be reused) during the call.</summary>
    internal Lease Use()
    {
        if (Volatile.Read(ref _disposed) != 0) throw new ObjectDisposedException(nameof(EventFd));
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
            throw new ObjectDisposedException(nameof(EventFd));
        }
        return new Lease(_handle, (int)_handle.DangerousGetHandle());
    }

    internal readonly struct Lease(SafeHandle handle, int number) : IDisposable
    {
        public int Number { get; } = number;

        public void Dispose() => handle.DangerousRelease();
    }

    private static IOException Failed(string call, int errno) =>
        new($"{call} on an eventfd failed: {Errno.Name(errno)} ({Marshal.GetPInvokeErrorMessage(errno)}).");
}
