using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>
/// A KVM virtual machine: its memory slots and vCPUs. Created by <see cref="Kvm.CreateVirtualMachine"/>.
/// Disposing it disposes its vCPUs and memory slots.
/// </summary>
/// <remarks>
/// Thread safety: adding and removing slots and creating vCPUs may be called from any thread (they
/// are serialised internally). <see cref="Dispose"/> must not race with other calls on this VM.
/// </remarks>
public sealed partial class VirtualMachine : IDisposable
{
    private readonly KvmFdHandle _fd;
    private readonly Lock _lock = new();
    private readonly List<MemorySlot> _slots = [];
    private readonly List<Vcpu> _vcpus = [];
    private readonly int _maxSlots;
    private int _readOnlyMem = -1;
    private int _vcpusCreated; // ever, disposed ones included: KVM keeps a vCPU until the VM goes

    internal VirtualMachine(Kvm kvm, KvmFdHandle fd)
    {
        Kvm = kvm;
        Kernel = kvm.Kernel;
        Architecture = kvm.Architecture;
        _fd = fd;
        VcpuMmapSize = kvm.VcpuMmapSize;
        int n = kvm.CheckExtension(KvmCapability.NrMemSlots);
        _maxSlots = n > 0 ? n : 32; // KVM guaranteed 32 slots before the capability existed
        if (Architecture == KvmArchitecture.X86_64)
        {
            MsrIndices = kvm.GetMsrIndexList();
            XsaveSize = Math.Max(4096, kvm.CheckExtension(KvmCapability.Xsave2));
        }
    }

    /// <summary>x86: the MSRs KVM can save/restore (captured at creation, so vCPUs need no system fd).</summary>
    internal IReadOnlyList<uint> MsrIndices { get; } = [];

    /// <summary>x86: the size of the XSAVE area KVM_GET_XSAVE2 fills (KVM_CAP_XSAVE2, at least 4096).</summary>
    internal int XsaveSize { get; }

    internal Kvm Kvm { get; }

    internal IKernel Kernel { get; }

    internal int VcpuMmapSize { get; }

    /// <summary>The KVM architecture of this VM.</summary>
    public KvmArchitecture Architecture { get; }

    /// <summary>True once the VM has been disposed.</summary>
    public bool IsDisposed => _fd.IsClosed;

    /// <summary>
    /// The VM's file descriptor, for a VM ioctl KvmSharp lacks (the escape hatch; see README, "Raw
    /// ioctls"). Do not close it; hold it with <see cref="SafeHandle.DangerousAddRef"/> /
    /// <see cref="SafeHandle.DangerousRelease"/> around the call so that a concurrent
    /// <see cref="Dispose"/> cannot close it under you. KvmSharp does not see what a raw ioctl changes:
    /// memory slots must be added through <see cref="AddMemorySlot"/>, or snapshots and dirty
    /// tracking will not know them.
    /// </summary>
    public SafeHandle SafeHandle => _fd;

    internal int Fd
    {
        get
        {
            if (_fd.IsClosed) ThrowHelper.ThrowObjectDisposed(this);
            return _fd.Fd;
        }
    }

    /// <summary>
    /// Enables a VM capability with its arguments, as api.rst describes each (e.g.
    /// <see cref="KvmCapability.X86UserSpaceMsr"/> with the KVM_MSR_EXIT_REASON_* bits in
    /// <paramref name="arg0"/> makes the MSR accesses KVM cannot handle exit to user space as
    /// <see cref="VcpuExitReason.X86Rdmsr"/>/<see cref="VcpuExitReason.X86Wrmsr"/>;
    /// <see cref="KvmCapability.ArmNisvToUser"/> reports data aborts without a valid syndrome as
    /// <see cref="VcpuExitReason.ArmNisv"/>). Wraps KVM_ENABLE_CAP on the VM fd; needs
    /// KVM_CAP_ENABLE_CAP_VM. Capabilities KvmSharp enables itself (dirty logging) have their own
    /// methods: use those.
    /// </summary>
    /// <exception cref="KvmException">KVM refused (e.g. EINVAL for a capability it does not offer on VMs,
    /// or arguments it does not accept; the message names the capability and the arguments).</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void EnableCapability(KvmCapability capability, ulong arg0 = 0, ulong arg1 = 0, ulong arg2 = 0, ulong arg3 = 0)
    {
        var enable = kvm_enable_cap.With((uint)capability, arg0, arg1, arg2, arg3);
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_ENABLE_CAP, ref enable);
        if (r < 0)
            ThrowHelper.ThrowKvm(KvmIoctls.KVM_ENABLE_CAP, r, $"{capability} ({(int)capability}), args 0x{arg0:X}, 0x{arg1:X}, 0x{arg2:X}, 0x{arg3:X}");
    }

    /// <summary>Wraps KVM_ENABLE_CAP on the VM with one argument (the dirty-log set-up uses it).</summary>
    internal void EnableCap(KvmCapability cap, ulong arg0) => EnableCapability(cap, arg0);

    /// <summary>The host page size; slot addresses and sizes must be multiples of it.</summary>
    public static int PageSize { get; } = Environment.SystemPageSize;

    /// <summary>The vCPUs created so far, in creation order.</summary>
    public IReadOnlyList<Vcpu> Vcpus
    {
        get
        {
            lock (_lock) return [.. _vcpus];
        }
    }

    /// <summary>
    /// Queries a capability on this VM (some differ from the system-wide answer). Wraps
    /// KVM_CHECK_EXTENSION on the VM fd; needs KVM_CAP_CHECK_EXTENSION_VM.
    /// </summary>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public int CheckExtension(KvmCapability capability)
    {
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_CHECK_EXTENSION, (int)capability);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CHECK_EXTENSION, r, $"VM capability {capability}");
        return r;
    }

    /// <summary>
    /// Creates a vCPU and maps its <c>kvm_run</c> area. Wraps KVM_CREATE_VCPU and <c>mmap</c> of the vCPU fd.
    /// </summary>
    /// <param name="id">The vCPU id (APIC id on x86); by default the next unused one, starting at 0.</param>
    /// <exception cref="ArgumentException">A vCPU with this id exists already; arm64: its redistributor would overlap the GICv3's distributor or a memory slot.</exception>
    /// <exception cref="InvalidOperationException">arm64: the VM's GICv3 is initialised (KVM adds no vCPU after that).</exception>
    /// <exception cref="KvmException">The ioctl or mmap failed (nothing is leaked).</exception>
    public Vcpu CreateVcpu(int? id = null)
    {
        lock (_lock)
        {
            int vcpuId = id ?? (_vcpus.Count == 0 ? 0 : _vcpus.Max(v => v.Id) + 1);
            ArgumentOutOfRangeException.ThrowIfNegative(vcpuId, nameof(id));
            if (_vcpus.Any(v => v.Id == vcpuId))
                throw new ArgumentException($"vCPU {vcpuId} exists already in this VM.", nameof(id));
            RequireVcpuFitsGic(vcpuId);
            int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_CREATE_VCPU, vcpuId);
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CREATE_VCPU, r, $"vcpu id {vcpuId}");
            _vcpusCreated++; // KVM counts it from here, whatever happens to the fd below
            var fd = new KvmFdHandle(Kernel, r);
            var run = MappedMemoryHandle.Map(Kernel, (ulong)VcpuMmapSize, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, r, 0, out int err);
            if (run is null)
            {
                fd.Dispose();
                throw new KvmException("mmap", -err, $"kvm_run of vcpu {vcpuId}, size {VcpuMmapSize}");
            }
            Vcpu vcpu;
            DirtyRing? ring = null;
            try
            {
                if (DirtyTracker is { Backend: DirtyLogBackend.DirtyRing } t)
                {
                    var m = MappedMemoryHandle.Map(Kernel, (ulong)t.RingBytes, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, r,
                        (long)Interop.X86.kvm_run.KVM_DIRTY_LOG_PAGE_OFFSET * PageSize, out int ringErr);
                    if (m is null) throw new KvmException("mmap", -ringErr, $"dirty ring of vcpu {vcpuId}, {t.RingBytes} bytes");
                    ring = new DirtyRing(m, t.RingBytes);
                }
                vcpu = new Vcpu(this, vcpuId, fd, run, _fd, ring) { Index = _vcpusCreated - 1 };
            }
            catch
            {
                ring?.Dispose();
                run.Dispose();
                fd.Dispose();
                throw;
            }
            _vcpus.Add(vcpu);
            _baseline = null; // a snapshot does not cover the new vCPU
            if (ring is not null) DirtyTracker!.AddRing(ring);
            return vcpu;
        }
    }

    internal void OnVcpuDisposed(Vcpu vcpu)
    {
        lock (_lock)
        {
            _vcpus.Remove(vcpu);
            _baseline = null;
        }
        if (vcpu.DirtyRing is { } ring) DirtyTracker?.RemoveRing(ring);
    }

    /// <summary>
    /// Tells KVM where 3 pages of guest-physical address space may hold the TSS it needs for real mode
    /// on Intel VMX. Wraps KVM_SET_TSS_ADDR (x86); needs KVM_CAP_SET_TSS_ADDR.
    /// </summary>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public void SetTssAddress(ulong address)
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SetTssAddress));
        int r = Kernel.Ioctl(Fd, KvmIoctls.X86.KVM_SET_TSS_ADDR, (nint)address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.X86.KVM_SET_TSS_ADDR, r, $"address 0x{address:X}");
    }

    /// <summary>
    /// Disposes every vCPU, then every memory slot, then closes the VM (and the GICv3's device fd). Idempotent.
    /// </summary>
    public void Dispose()
    {
        Vcpu[] vcpus;
        MemorySlot[] slots;
        lock (_lock)
        {
            if (_fd.IsClosed) return;
            vcpus = [.. _vcpus];
            slots = [.. _slots];
        }
        foreach (var v in vcpus) v.Dispose();
        // Close the VM first: KVM then drops every slot at once, so no per-slot ioctl is needed.
        lock (_lock)
        {
            _gicV3?.Device.Dispose();
            _fd.Dispose();
            _slots.Clear();
        }
        foreach (var s in slots) s.Dispose();
    }
}
