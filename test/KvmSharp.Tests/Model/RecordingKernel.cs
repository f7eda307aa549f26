using KvmSharp.Interop;

namespace KvmSharp.Tests.Model;

/// <summary>
/// Wraps a kernel (the real one by default): counts every ioctl by name and lets a test make the
/// next call of a given ioctl fail with an errno, to check error paths against the real KVM.
/// </summary>
internal sealed class RecordingKernel(IKernel? inner = null) : IKernel
{
    private readonly IKernel _inner = inner ?? LinuxKernel.Instance;
    // Plain dictionaries under one lock, not ConcurrentDictionary: its Count, Values and Clear
    // create its EventSource, whose type initializer failed in the arm64 lab's .NET (see the
    // arm64 suite's notes), and this kernel must not be the thing a test trips over.
    private readonly object _lock = new();
    private readonly Dictionary<string, int> _counts = [];
    private readonly Dictionary<string, int> _failNext = [];

    public Func<string, int, int>? OpenOverride { get; set; }

    /// <summary>When it returns a value, that is the ioctl's result and the kernel is not called.</summary>
    public Func<KvmIoctl, nint, int?>? IoctlHook { get; set; }

    private readonly Dictionary<nint, nuint> _liveMappings = [];
    private readonly HashSet<int> _liveFds = [];

    /// <summary>Mappings made through this kernel and not yet unmapped.</summary>
    public int LiveMappings { get { lock (_lock) return _liveMappings.Count; } }

    /// <summary>File descriptors opened or created (KVM_CREATE_VM/VCPU) through this kernel and not yet closed.</summary>
    public int LiveFds { get { lock (_lock) return _liveFds.Count; } }

    public int Count(KvmIoctl ioctl) { lock (_lock) return _counts.GetValueOrDefault(ioctl.Name); }

    public int TotalIoctls { get { lock (_lock) return _counts.Values.Sum(); } }

    /// <summary>A copy of the counts by ioctl name.</summary>
    public IReadOnlyDictionary<string, int> Counts { get { lock (_lock) return new Dictionary<string, int>(_counts); } }

    public void ResetCounts() { lock (_lock) _counts.Clear(); }

    /// <summary>The next call of <paramref name="ioctl"/> returns -<paramref name="errno"/> without reaching the kernel.</summary>
    public void FailNext(KvmIoctl ioctl, int errno) { lock (_lock) _failNext[ioctl.Name] = errno; }

    public int Open(string path, int flags)
    {
        int fd = OpenOverride?.Invoke(path, flags) ?? _inner.Open(path, flags);
        if (fd >= 0) lock (_lock) _liveFds.Add(fd);
        return fd;
    }

    public int Close(int fd)
    {
        lock (_lock) _liveFds.Remove(fd);
        return _inner.Close(fd);
    }

    public int Ioctl(int fd, KvmIoctl request, nint arg)
    {
        lock (_lock)
        {
            _counts[request.Name] = _counts.GetValueOrDefault(request.Name) + 1;
            if (_failNext.Remove(request.Name, out int errno)) return -errno;
        }
        if (IoctlHook?.Invoke(request, arg) is int hooked) return hooked;
        int r = _inner.Ioctl(fd, request, arg);
        if (r >= 0 && (request == KvmIoctls.KVM_CREATE_VM || request == KvmIoctls.KVM_CREATE_VCPU)) lock (_lock) _liveFds.Add(r);
        return r;
    }

    public nint Mmap(nuint length, int prot, int flags, int fd, long offset)
    {
        nint p = _inner.Mmap(length, prot, flags, fd, offset);
        if (p >= 0) lock (_lock) _liveMappings[p] = length;
        return p;
    }

    public int Munmap(nint addr, nuint length)
    {
        lock (_lock) _liveMappings.Remove(addr);
        return _inner.Munmap(addr, length);
    }

    public int Madvise(nint addr, nuint length, int advice) => _inner.Madvise(addr, length, advice);
}
