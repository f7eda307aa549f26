using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp.Tests.Model;

/// <summary>
/// A strict in-memory model of KVM behind the kernel seam, for architectures this machine cannot run.
/// It hands out fds for /dev/kvm, VMs and vCPUs, maps a zeroed <c>kvm_run</c> block per vCPU, counts
/// every ioctl, and records a <see cref="Violations"/> entry (and returns the errno the real kernel
/// would) for anything the real kernel would reject. Subclasses implement the vCPU ioctls of one
/// architecture; the "guest" is a callback the test installs, run on each KVM_RUN.
/// </summary>
internal abstract unsafe class KernelModel : IKernel
{
    private readonly ConcurrentDictionary<int, object> _fds = new();
    private readonly ConcurrentDictionary<nint, nuint> _mappings = new();
    private readonly ConcurrentDictionary<string, int> _counts = new();
    private int _nextFd = 1000;

    protected KernelModel(KvmArchitecture architecture) => Architecture = architecture;

    public KvmArchitecture Architecture { get; }

    public const int MmapSize = 3 * 4096;

    /// <summary>Everything the test did that the real kernel would have rejected.</summary>
    public List<string> Violations { get; } = [];

    /// <summary>Capabilities answered by KVM_CHECK_EXTENSION (absent = 0).</summary>
    public Dictionary<KvmCapability, int> Capabilities { get; } = [];

    public int Count(string ioctlName) => _counts.GetValueOrDefault(ioctlName);

    public int Count(KvmIoctl ioctl) => Count(ioctl.Name);

    public int TotalIoctls => _counts.Values.Sum();

    public IReadOnlyDictionary<string, int> Counts => _counts;

    public void ResetCounts()
    {
        _counts.Clear();
        OnCountsReset();
    }

    /// <summary>Called by <see cref="ResetCounts"/>: subclasses clear their own per-period counters here.</summary>
    protected virtual void OnCountsReset() { }

    public int LiveMappings => _mappings.Count;

    public int LiveFds => _fds.Count;

    /// <summary>The vCPUs created, by id.</summary>
    public Dictionary<int, ModelVcpu> Vcpus { get; } = [];

    protected int Violation(string what, int errno)
    {
        Violations.Add(what);
        return -errno;
    }

    public int Open(string path, int flags)
    {
        int fd = Interlocked.Increment(ref _nextFd);
        _fds[fd] = "kvm";
        return fd;
    }

    public int Close(int fd) => _fds.TryRemove(fd, out _) ? 0 : Violation($"close of unknown fd {fd}", Errno.EBADF);

    public int Ioctl(int fd, KvmIoctl request, nint arg)
    {
        _counts.AddOrUpdate(request.Name, 1, (_, n) => n + 1);
        if (!_fds.TryGetValue(fd, out var target)) return Violation($"{request.Name} on unknown fd {fd}", Errno.EBADF);
        switch (target)
        {
            case "kvm":
                if (request == KvmIoctls.KVM_GET_API_VERSION) return 12;
                if (request == KvmIoctls.KVM_CHECK_EXTENSION) return Capabilities.GetValueOrDefault((KvmCapability)(int)arg);
                if (request == KvmIoctls.KVM_GET_VCPU_MMAP_SIZE) return MmapSize;
                if (request == KvmIoctls.KVM_CREATE_VM)
                {
                    int vmFd = Interlocked.Increment(ref _nextFd);
                    _fds[vmFd] = new ModelVm();
                    return vmFd;
                }
                return Violation($"{request.Name} on the /dev/kvm fd", Errno.ENOTTY);
            case ModelVm vm:
                if (request == KvmIoctls.KVM_CHECK_EXTENSION) return Capabilities.GetValueOrDefault((KvmCapability)(int)arg);
                if (request == KvmIoctls.KVM_SET_USER_MEMORY_REGION) return 0;
                if (request == KvmIoctls.KVM_CREATE_VCPU)
                {
                    int id = (int)arg;
                    if (Vcpus.ContainsKey(id)) return Violation($"KVM_CREATE_VCPU {id} twice", Errno.EEXIST);
                    var v = new ModelVcpu(id);
                    InitVcpu(v);
                    Vcpus[id] = v;
                    int vcpuFd = Interlocked.Increment(ref _nextFd);
                    _fds[vcpuFd] = v;
                    return vcpuFd;
                }
                return VmIoctl(vm, request, arg);
            case ModelVcpu vcpu:
                if (request == KvmIoctls.KVM_SET_SIGNAL_MASK)
                {
                    // Same on every arch: a u32 length (8, the kernel's sigset size) and the mask.
                    if (*(uint*)arg != 8) return Violation($"KVM_SET_SIGNAL_MASK with len {*(uint*)arg}", Errno.EINVAL);
                    vcpu.SignalMask = *(ulong*)(arg + 4);
                    return 0;
                }
                return VcpuIoctl(vcpu, request, arg);
            default:
                return Violation($"{request.Name} on fd {fd}", Errno.ENOTTY);
        }
    }

    /// <summary>A VM ioctl other than CHECK_EXTENSION, SET_USER_MEMORY_REGION, CREATE_VCPU.</summary>
    protected virtual int VmIoctl(ModelVm vm, KvmIoctl request, nint arg) =>
        Violation($"{request.Name} on a VM fd", Errno.ENOTTY);

    /// <summary>Called when a vCPU is created (before its kvm_run is mapped).</summary>
    protected virtual void InitVcpu(ModelVcpu vcpu) { }

    /// <summary>Every vCPU ioctl, KVM_RUN included.</summary>
    protected abstract int VcpuIoctl(ModelVcpu vcpu, KvmIoctl request, nint arg);

    public nint Mmap(nuint length, int prot, int flags, int fd, long offset)
    {
        void* p = NativeMemory.AlignedAlloc(length, 4096);
        NativeMemory.Clear(p, length);
        _mappings[(nint)p] = length;
        if (fd >= 0 && _fds.TryGetValue(fd, out var t) && t is ModelVcpu v)
        {
            if (length < MmapSize) return Violation($"kvm_run mapped with {length} bytes", Errno.EINVAL);
            v.Run = (byte*)p;
            OnRunMapped(v);
        }
        return (nint)p;
    }

    /// <summary>The vCPU's kvm_run is mapped (the kernel fills what it fills at creation here).</summary>
    protected virtual void OnRunMapped(ModelVcpu vcpu) { }

    public int Munmap(nint addr, nuint length)
    {
        if (!_mappings.TryRemove(addr, out var len) || len != length) return Violation($"munmap of unknown mapping 0x{addr:X}", Errno.EINVAL);
        NativeMemory.AlignedFree((void*)addr);
        return 0;
    }

    public int Madvise(nint addr, nuint length, int advice)
    {
        if (advice == Libc.MADV_DONTNEED) NativeMemory.Clear((void*)addr, length); // private anonymous memory reads as zeros afterwards
        return 0;
    }
}

internal sealed class ModelVm;

/// <summary>A modelled vCPU: its kvm_run block and what the test's guest callback uses.</summary>
internal sealed unsafe class ModelVcpu(int id)
{
    public int Id { get; } = id;

    /// <summary>The mask set with KVM_SET_SIGNAL_MASK (applied inside KVM_RUN), if any.</summary>
    public ulong? SignalMask { get; set; }

    /// <summary>The mapped kvm_run (null until mapped).</summary>
    public byte* Run;

    /// <summary>
    /// The guest: called on each KVM_RUN that actually enters the guest, after the model has loaded
    /// state from kvm_run and before it stores state back. Returns the exit reason and fills the exit union.
    /// </summary>
    public Func<ModelVcpu, uint>? Guest { get; set; }

    /// <summary>How many times the guest ran.</summary>
    public int Entries { get; set; }

    public ref T RunField<T>(int offset) where T : unmanaged => ref *(T*)(Run + offset);
}
