using System.Collections.Concurrent;
using KvmSharp.Interop;

namespace KvmSharp.Tests.Model;

/// <summary>
/// Wraps a kernel (the real one by default): counts every ioctl by name and lets a test make the
/// next call of a given ioctl fail with an errno, to check error paths against the real KVM.
/// </summary>
internal sealed class RecordingKernel(IKernel? inner = null) : IKernel
{
    private readonly IKernel _inner = inner ?? LinuxKernel.Instance;
    private readonly ConcurrentDictionary<string, int> _counts = new();
    private readonly ConcurrentDictionary<string, int> _failNext = new();

    public Func<string, int, int>? OpenOverride { get; set; }

    /// <summary>When it returns a value, that is the ioctl's result and the kernel is not called.</summary>
    public Func<KvmIoctl, nint, int?>? IoctlHook { get; set; }

    private readonly ConcurrentDictionary<nint, nuint> _liveMappings = new();
    private readonly ConcurrentDictionary<int, bool> _liveFds = new();

    /// <summary>Mappings made through this kernel and not yet unmapped.</summary>
    public int LiveMappings => _liveMappings.Count;

    /// <summary>File descriptors opened or created (KVM_CREATE_VM/VCPU) through this kernel and not yet closed.</summary>
    public int LiveFds => _liveFds.Count;

    public int Count(KvmIoctl ioctl) => _counts.GetValueOrDefault(ioctl.Name);

    public int TotalIoctls => _counts.Values.Sum();

    public IReadOnlyDictionary<string, int> Counts => _counts;

    public void ResetCounts() => _counts.Clear();

    /// <summary>The next call of <paramref name="ioctl"/> returns -<paramref name="errno"/> without reaching the kernel.</summary>
    public void FailNext(KvmIoctl ioctl, int errno) => _failNext[ioctl.Name] = errno;

    public int Open(string path, int flags)
    {
        int fd = OpenOverride?.Invoke(path, flags) ?? _inner.Open(path, flags);
        if (fd >= 0) _liveFds[fd] = true;
        return fd;
    }

    public int Close(int fd)
    {
        _liveFds.TryRemove(fd, out _);
        return _inner.Close(fd);
    }

    public int Ioctl(int fd, KvmIoctl request, nint arg)
    {
        _counts.AddOrUpdate(request.Name, 1, (_, n) => n + 1);
        if (_failNext.TryRemove(request.Name, out int errno)) return -errno;
        if (IoctlHook?.Invoke(request, arg) is int hooked) return hooked;
        int r = _inner.Ioctl(fd, request, arg);
        if (r >= 0 && (request == KvmIoctls.KVM_CREATE_VM || request == KvmIoctls.KVM_CREATE_VCPU)) _liveFds[r] = true;
        return r;
    }

    public nint Mmap(nuint length, int prot, int flags, int fd, long offset)
    {
        nint p = _inner.Mmap(length, prot, flags, fd, offset);
        if (p >= 0) _liveMappings[p] = length;
        return p;
    }

    public int Munmap(nint addr, nuint length)
    {
        _liveMappings.TryRemove(addr, out _);
        return _inner.Munmap(addr, length);
    }

    public int Madvise(nint addr, nuint length, int advice) => _inner.Madvise(addr, length, advice);
}
