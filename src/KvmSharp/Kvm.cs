using System.Runtime.InteropServices;
using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp;

/// <summary>
/// The KVM subsystem: an open <c>/dev/kvm</c>. Queries capabilities and creates virtual machines.
/// </summary>
/// <remarks>
/// Thread safety: all members may be called from any thread; <see cref="Dispose"/> must not race
/// with other calls. Virtual machines created from this object hold their own file descriptors and
/// stay usable after it is disposed.
/// </remarks>
public sealed class Kvm : IDisposable
{
    /// <summary>The default device path.</summary>
    public const string DefaultDevicePath = "/dev/kvm";

    /// <summary>The only stable KVM API version; anything else is refused.</summary>
    public const int SupportedApiVersion = 12;

    private readonly KvmFdHandle _fd;
    private int _vcpuMmapSize;

    private Kvm(IKernel kernel, KvmFdHandle fd, KvmArchitecture arch, string path)
    {
        Kernel = kernel;
        _fd = fd;
        Architecture = arch;
        DevicePath = path;
    }

    internal IKernel Kernel { get; }

    /// <summary>The device this object opened.</summary>
    public string DevicePath { get; }

    /// <summary>The KVM architecture of this process (its struct layouts and ioctl numbers are used).</summary>
    public KvmArchitecture Architecture { get; }

    /// <summary>True when <see cref="DefaultDevicePath"/> exists (it may still be unusable, e.g. for lack of permission).</summary>
    public static bool IsDevicePresent => File.Exists(DefaultDevicePath);

    /// <summary>
    /// Opens KVM and checks its API version. Wraps <c>open(2)</c> and KVM_GET_API_VERSION.
    /// </summary>
    /// <param name="devicePath">The device node, normally <c>/dev/kvm</c>.</param>
    /// <exception cref="KvmUnavailableException">The device is missing, not permitted, or speaks another API version.</exception>
    /// <exception cref="PlatformNotSupportedException">The process architecture is not x86_64, arm64 or s390x.</exception>
    public static Kvm Open(string devicePath = DefaultDevicePath)
    {
        var arch = KvmArchitectures.Current
            ?? throw new PlatformNotSupportedException($"KvmSharp supports x86_64, arm64 and s390x; this process is {RuntimeInformation.ProcessArchitecture}.");
        return Open(LinuxKernel.Instance, devicePath, arch);
    }

    /// <summary>Opens KVM through a given kernel (a model in tests) as a given architecture.</summary>
    internal static Kvm Open(IKernel kernel, string devicePath, KvmArchitecture arch)
    {
        ArgumentException.ThrowIfNullOrEmpty(devicePath);
        int fd = kernel.Open(devicePath, Libc.O_RDWR);
        if (fd < 0)
        {
            var (reason, what) = -fd switch
            {
                Errno.ENOENT or Errno.ENODEV or Errno.ENXIO => (KvmUnavailableReason.DeviceMissing, "does not exist; is the kvm module loaded?"),
                Errno.EACCES or Errno.EPERM => (KvmUnavailableReason.PermissionDenied, "exists but this process may not open it; add the user to the 'kvm' group or adjust the device's permissions."),
                _ => (KvmUnavailableReason.OpenFailed, "could not be opened."),
            };
            throw new KvmUnavailableException(reason, devicePath, "open", -fd,
                $"KVM is unavailable: {devicePath} {what} (open: {Errno.Name(-fd)})");
        }

        var handle = new KvmFdHandle(kernel, fd);
        int version = kernel.Ioctl(fd, KvmIoctls.KVM_GET_API_VERSION, 0);
        if (version != SupportedApiVersion)
        {
            handle.Dispose();
            int errno = version < 0 ? -version : 0;
            string got = version < 0 ? $"failed with {Errno.Name(-version)}" : $"returned {version}";
            throw new KvmUnavailableException(KvmUnavailableReason.UnsupportedApiVersion, devicePath, KvmIoctls.KVM_GET_API_VERSION.Name, errno,
                $"KVM is unavailable: KVM_GET_API_VERSION on {devicePath} {got}; KvmSharp needs API version {SupportedApiVersion}.");
        }
        return new Kvm(kernel, handle, arch, devicePath);
    }

    private int Fd
    {
        get
        {
            if (_fd.IsClosed) ThrowHelper.ThrowObjectDisposed(this);
            return _fd.Fd;
        }
    }

    /// <summary>
    /// Queries a capability by number and returns the kernel's raw answer (0 = absent; many
    /// capabilities return a count or bit mask). Wraps KVM_CHECK_EXTENSION on the system fd.
    /// </summary>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">This object is disposed.</exception>
    public int CheckExtension(int capability)
    {
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_CHECK_EXTENSION, capability);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CHECK_EXTENSION, r, $"capability {capability}");
        return r;
    }

    /// <summary>The raw value of a capability (0 when absent). Wraps KVM_CHECK_EXTENSION.</summary>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public int CheckExtension(KvmCapability capability) => CheckExtension((int)capability);

    /// <summary>True when the kernel reports <paramref name="capability"/> with a non-zero value. Wraps KVM_CHECK_EXTENSION.</summary>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public bool HasCapability(KvmCapability capability) => CheckExtension((int)capability) > 0;

    /// <summary>The size of each vCPU's shared <c>kvm_run</c> mapping. Wraps KVM_GET_VCPU_MMAP_SIZE.</summary>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public int VcpuMmapSize
    {
        get
        {
            if (_vcpuMmapSize == 0)
            {
                int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_GET_VCPU_MMAP_SIZE, 0);
                if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_GET_VCPU_MMAP_SIZE, r);
                _vcpuMmapSize = r;
            }
            return _vcpuMmapSize;
        }
    }

    /// <summary>
    /// The CPUID leaves this KVM can expose to a guest (x86 only). Pass them, possibly edited, to
    /// <see cref="Vcpu.SetCpuid"/>. Wraps KVM_GET_SUPPORTED_CPUID; needs KVM_CAP_EXT_CPUID.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">Not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public CpuidEntry[] GetSupportedCpuid()
    {
        RequireArch(KvmArchitecture.X86_64, nameof(GetSupportedCpuid));
        for (int n = 128; ; n *= 2)
        {
            int bytes = kvm_cpuid2.EntryOffset(n);
            using var buf = new NativeBuffer(bytes);
            var view = new StructView(buf, 0, bytes);
            view.At<kvm_cpuid2>(0).nent = (uint)n;
            int r = Kernel.Ioctl(Fd, KvmIoctls.X86.KVM_GET_SUPPORTED_CPUID, view.Address);
            if (r == -Errno.E2BIG && n < 4096) continue;
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.X86.KVM_GET_SUPPORTED_CPUID, r, $"nent {n}");
            int count = (int)view.At<kvm_cpuid2>(0).nent;
            var result = new CpuidEntry[count];
            for (int i = 0; i < count; i++)
            {
                ref var e = ref view.At<kvm_cpuid_entry2>(kvm_cpuid2.EntryOffset(i));
                result[i] = new CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx);
            }
            return result;
        }
    }

    private uint[]? _msrIndices;

    /// <summary>
    /// The MSRs KVM can save and restore for a guest (x86). Wraps KVM_GET_MSR_INDEX_LIST; the result is cached.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">Not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public IReadOnlyList<uint> GetMsrIndexList()
    {
        RequireArch(KvmArchitecture.X86_64, nameof(GetMsrIndexList));
        if (_msrIndices is not null) return _msrIndices;
        for (int n = 64; ; n *= 2)
        {
            int bytes = kvm_msr_list.IndexOffset(n);
            using var buf = new NativeBuffer(bytes);
            var view = new StructView(buf, 0, bytes);
            view.At<kvm_msr_list>(0).nmsrs = (uint)n;
            int r = Kernel.Ioctl(Fd, KvmIoctls.X86.KVM_GET_MSR_INDEX_LIST, view.Address);
            if (r == -Errno.E2BIG && n < 65536) continue;
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.X86.KVM_GET_MSR_INDEX_LIST, r, $"nmsrs {n}");
            int count = (int)view.At<kvm_msr_list>(0).nmsrs;
            return _msrIndices = MemoryMarshal.Cast<byte, uint>(view.Span.Slice(kvm_msr_list.IndexOffset(0), count * sizeof(uint))).ToArray();
        }
    }

    /// <summary>
    /// Creates a virtual machine with no memory and no vCPUs. Wraps KVM_CREATE_VM.
    /// </summary>
    /// <param name="machineType">The machine type argument of KVM_CREATE_VM (0 on x86 and s390x; the IPA size on arm64).</param>
    /// <exception cref="KvmException">The ioctl failed (e.g. <c>EMFILE</c>, <c>ENOMEM</c>).</exception>
    public VirtualMachine CreateVirtualMachine(ulong machineType = 0)
    {
        int r;
        do r = Kernel.Ioctl(Fd, KvmIoctls.KVM_CREATE_VM, (nint)machineType);
        while (r == -Errno.EINTR);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CREATE_VM, r, $"type {machineType}");
        var vmFd = new KvmFdHandle(Kernel, r);
        try
        {
            return new VirtualMachine(this, vmFd);
        }
        catch
        {
            vmFd.Dispose();
            throw;
        }
    }

    internal void RequireArch(KvmArchitecture arch, string member)
    {
        if (Architecture != arch)
            throw new PlatformNotSupportedException($"{member} is available on {arch} only; this KVM is {Architecture}.");
    }

    /// <summary>Closes the <c>/dev/kvm</c> descriptor. Idempotent.</summary>
    public void Dispose() => _fd.Dispose();

    /// <summary>
    /// The <c>/dev/kvm</c> file descriptor, for a system ioctl KvmSharp lacks (the escape hatch; see
    /// README, "Raw ioctls"). Do not close it; hold it with <see cref="SafeHandle.DangerousAddRef"/> /
    /// <see cref="SafeHandle.DangerousRelease"/> around the call so that a concurrent
    /// <see cref="Dispose"/> cannot close it under you.
    /// </summary>
    public SafeHandle SafeHandle => _fd;
}
