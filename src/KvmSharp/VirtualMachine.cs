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
public sealed class VirtualMachine : IDisposable
{
    private readonly KvmFdHandle _fd;
    private readonly Lock _lock = new();
    private readonly List<MemorySlot> _slots = [];
    private readonly List<Vcpu> _vcpus = [];
    private readonly int _maxSlots;
    private int _readOnlyMem = -1;

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

    internal int Fd
    {
        get
        {
            if (_fd.IsClosed) ThrowHelper.ThrowObjectDisposed(this);
            return _fd.Fd;
        }
    }

    /// <summary>The host page size; slot addresses and sizes must be multiples of it.</summary>
    public static int PageSize { get; } = Environment.SystemPageSize;

    /// <summary>The memory slots currently registered, in slot-number order.</summary>
    public IReadOnlyList<MemorySlot> MemorySlots
    {
        get
        {
            lock (_lock) return [.. _slots.OrderBy(s => s.Slot)];
        }
    }

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
    /// Maps <paramref name="size"/> bytes of fresh zeroed host memory and registers it as guest RAM at
    /// <paramref name="guestPhysicalAddress"/>. Wraps <c>mmap</c>, <c>madvise(MADV_DONTFORK)</c> and
    /// KVM_SET_USER_MEMORY_REGION; read-only slots need KVM_CAP_READONLY_MEM.
    /// </summary>
    /// <param name="guestPhysicalAddress">Page-aligned guest-physical base.</param>
    /// <param name="size">Size in bytes; a non-zero multiple of <see cref="PageSize"/>.</param>
    /// <param name="flags">Read-only and/or dirty logging.</param>
    /// <exception cref="ArgumentException">The address or size is not page-aligned, the size is 0, the range
    /// wraps, it overlaps an existing slot (named in the message), or a flag is unknown.</exception>
    /// <exception cref="NotSupportedException">Read-only slots requested but KVM lacks KVM_CAP_READONLY_MEM.</exception>
    /// <exception cref="InvalidOperationException">All KVM_CAP_NR_MEMSLOTS slots are in use.</exception>
    /// <exception cref="KvmException">mmap or the ioctl failed (nothing stays mapped or registered).</exception>
    public MemorySlot AddMemorySlot(ulong guestPhysicalAddress, ulong size, MemorySlotFlags flags = MemorySlotFlags.None)
    {
        ulong page = (ulong)PageSize;
        string range = $"0x{guestPhysicalAddress:X}..0x{guestPhysicalAddress + size:X}";
        if (size == 0)
            throw new ArgumentException("A memory slot's size must be greater than 0.", nameof(size));
        if (size % page != 0)
            throw new ArgumentException($"Memory slot size 0x{size:X} is not a multiple of the page size 0x{page:X}.", nameof(size));
        if (guestPhysicalAddress % page != 0)
            throw new ArgumentException($"Guest-physical address 0x{guestPhysicalAddress:X} is not aligned to the page size 0x{page:X}.", nameof(guestPhysicalAddress));
        if (guestPhysicalAddress + size < guestPhysicalAddress)
            throw new ArgumentException($"Memory slot range at 0x{guestPhysicalAddress:X} with size 0x{size:X} wraps around the address space.", nameof(size));
        if ((flags & ~(MemorySlotFlags.ReadOnly | MemorySlotFlags.LogDirtyPages)) != 0)
            throw new ArgumentException($"Unknown memory slot flags 0x{(uint)flags:X}.", nameof(flags));

        lock (_lock)
        {
            _ = Fd;
            foreach (var s in _slots)
            {
                if (guestPhysicalAddress < s.EndAddress && s.GuestPhysicalAddress < guestPhysicalAddress + size)
                    throw new ArgumentException(
                        $"Memory range {range} overlaps memory slot {s.Slot} (0x{s.GuestPhysicalAddress:X}..0x{s.EndAddress:X}).", nameof(guestPhysicalAddress));
            }
            if ((flags & MemorySlotFlags.ReadOnly) != 0)
            {
                if (_readOnlyMem < 0) _readOnlyMem = CheckExtension(KvmCapability.ReadOnlyMem);
                if (_readOnlyMem == 0)
                    throw new NotSupportedException($"Read-only memory slot {range} needs KVM_CAP_READONLY_MEM, which this KVM lacks.");
            }
            int slotId = LowestFreeSlot();
            if (slotId >= _maxSlots)
                throw new InvalidOperationException($"Cannot add memory range {range}: all {_maxSlots} memory slots (KVM_CAP_NR_MEMSLOTS) are in use.");

            var mapping = MappedMemoryHandle.Map(Kernel, size, Libc.PROT_READ | Libc.PROT_WRITE,
                Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0, out int err);
            if (mapping is null)
                throw new KvmException("mmap", -err, $"guest RAM for slot {slotId}, {range}, size 0x{size:X}");
            try
            {
                int r = Kernel.Madvise(mapping.DangerousGetHandle(), (nuint)size, Libc.MADV_DONTFORK);
                if (r < 0) ThrowHelper.ThrowKvm("madvise(MADV_DONTFORK)", r, $"guest RAM for slot {slotId}, {range}");
                SetRegion(slotId, (uint)flags, guestPhysicalAddress, size, mapping.DangerousGetHandle());
                var slot = new MemorySlot(this, slotId, guestPhysicalAddress, mapping, flags);
                _slots.Add(slot);
                return slot;
            }
            catch
            {
                mapping.Dispose();
                throw;
            }
        }
    }

    private int LowestFreeSlot()
    {
        int id = 0;
        foreach (var s in _slots.OrderBy(s => s.Slot))
        {
            if (s.Slot != id) break;
            id++;
        }
        return id;
    }

    private unsafe void SetRegion(int slot, uint flags, ulong gpa, ulong size, nint hostAddress)
    {
        var region = new kvm_userspace_memory_region
        {
            slot = (uint)slot,
            flags = flags,
            guest_phys_addr = gpa,
            memory_size = size,
            userspace_addr = (ulong)hostAddress,
        };
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_SET_USER_MEMORY_REGION, (nint)(&region));
        if (r < 0)
            ThrowHelper.ThrowKvm(KvmIoctls.KVM_SET_USER_MEMORY_REGION, r,
                $"slot {slot}, flags 0x{flags:X}, gpa 0x{gpa:X}, size 0x{size:X}");
    }

    /// <summary>Deletes the slot in KVM and forgets it; a no-op once the VM itself is disposed.</summary>
    internal void RemoveSlot(MemorySlot slot)
    {
        lock (_lock)
        {
            if (_fd.IsClosed || !_slots.Contains(slot)) return;
            SetRegion(slot.Slot, 0, slot.GuestPhysicalAddress, 0, 0);
            _slots.Remove(slot);
        }
    }

    /// <summary>The slot containing guest-physical <paramref name="address"/>, or null.</summary>
    public MemorySlot? FindSlot(ulong address)
    {
        lock (_lock)
        {
            foreach (var s in _slots)
                if (s.Contains(address)) return s;
        }
        return null;
    }

    /// <summary>
    /// Creates a vCPU and maps its <c>kvm_run</c> area. Wraps KVM_CREATE_VCPU and <c>mmap</c> of the vCPU fd.
    /// </summary>
    /// <param name="id">The vCPU id (APIC id on x86); by default the next unused one, starting at 0.</param>
    /// <exception cref="ArgumentException">A vCPU with this id exists already.</exception>
    /// <exception cref="KvmException">The ioctl or mmap failed (nothing is leaked).</exception>
    public Vcpu CreateVcpu(int? id = null)
    {
        lock (_lock)
        {
            int vcpuId = id ?? (_vcpus.Count == 0 ? 0 : _vcpus.Max(v => v.Id) + 1);
            ArgumentOutOfRangeException.ThrowIfNegative(vcpuId, nameof(id));
            if (_vcpus.Any(v => v.Id == vcpuId))
                throw new ArgumentException($"vCPU {vcpuId} exists already in this VM.", nameof(id));
            int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_CREATE_VCPU, vcpuId);
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CREATE_VCPU, r, $"vcpu id {vcpuId}");
            var fd = new KvmFdHandle(Kernel, r);
            var run = MappedMemoryHandle.Map(Kernel, (ulong)VcpuMmapSize, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, r, 0, out int err);
            if (run is null)
            {
                fd.Dispose();
                throw new KvmException("mmap", -err, $"kvm_run of vcpu {vcpuId}, size {VcpuMmapSize}");
            }
            Vcpu vcpu;
            try
            {
                vcpu = new Vcpu(this, vcpuId, fd, run);
            }
            catch
            {
                run.Dispose();
                fd.Dispose();
                throw;
            }
            _vcpus.Add(vcpu);
            return vcpu;
        }
    }

    internal void OnVcpuDisposed(Vcpu vcpu)
    {
        lock (_lock) _vcpus.Remove(vcpu);
    }

    /// <summary>
    /// Creates the in-kernel interrupt controller (x86: PIC, IOAPIC and a local APIC per vCPU; call it
    /// before creating vCPUs). With it, HLT waits in the kernel instead of exiting. Wraps
    /// KVM_CREATE_IRQCHIP; needs KVM_CAP_IRQCHIP.
    /// </summary>
    /// <exception cref="KvmException">The ioctl failed (e.g. EEXIST when called twice).</exception>
    public void CreateIrqChip()
    {
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_CREATE_IRQCHIP, 0);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CREATE_IRQCHIP, r);
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
    /// Disposes every vCPU, then every memory slot, then closes the VM. Idempotent.
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
            _fd.Dispose();
            _slots.Clear();
        }
        foreach (var s in slots) s.Dispose();
    }
}
