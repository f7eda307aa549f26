using KvmSharp.Interop;
using KvmSharp.Snapshots;

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

    /// <summary>The dirty-page tracker, once <see cref="EnableDirtyTracking"/> has been called; else null.</summary>
    public DirtyPageTracker? DirtyTracker { get; private set; }

    /// <summary>
    /// Starts tracking the pages written to every memory slot (present and future): sets
    /// KVM_MEM_LOG_DIRTY_PAGES on each and enables the chosen back end. Idempotent for the same back end.
    /// Wraps KVM_ENABLE_CAP (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 or KVM_CAP_DIRTY_LOG_RING[_ACQ_REL]) and
    /// KVM_SET_USER_MEMORY_REGION.
    /// </summary>
    /// <param name="backend">The back end; <see cref="DirtyLogBackend.Auto"/> picks by capability.</param>
    /// <param name="ringEntries">For the dirty ring: entries per vCPU (a power of two; 16 bytes each).</param>
    /// <exception cref="NotSupportedException">The back end's capability is missing, or the ring was asked for after vCPUs were created.</exception>
    /// <exception cref="InvalidOperationException">Tracking is already on with another back end.</exception>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    public DirtyPageTracker EnableDirtyTracking(DirtyLogBackend backend = DirtyLogBackend.Auto, int ringEntries = 4096)
    {
        lock (_lock)
        {
            _ = Fd;
            if (DirtyTracker is { } existing)
            {
                if (backend != DirtyLogBackend.Auto && backend != existing.Backend)
                    throw new InvalidOperationException($"Dirty tracking is already on with {existing.Backend}; it cannot switch to {backend}.");
                return existing;
            }
            int ringCap = Architecture == KvmArchitecture.X86_64 ? Math.Max(CheckExtension(KvmCapability.DirtyLogRingAcqRel), CheckExtension(KvmCapability.DirtyLogRing)) : 0;
            int manualCap = CheckExtension(KvmCapability.ManualDirtyLogProtect2);
            if (backend == DirtyLogBackend.Auto)
                backend = ringCap > 0 && _vcpus.Count == 0 ? DirtyLogBackend.DirtyRing
                    : manualCap > 0 ? DirtyLogBackend.ManualProtect : DirtyLogBackend.GetDirtyLog;
            int ringBytes = 0;
            switch (backend)
            {
                case DirtyLogBackend.ManualProtect:
                    if (manualCap == 0) throw new NotSupportedException("KVM_CLEAR_DIRTY_LOG needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, which this KVM lacks.");
                    EnableCap(KvmCapability.ManualDirtyLogProtect2, kvm_enable_cap.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
                    break;
                case DirtyLogBackend.DirtyRing:
                    if (ringCap == 0) throw new NotSupportedException("The dirty ring needs KVM_CAP_DIRTY_LOG_RING (KvmSharp maps it on x86_64), which this KVM lacks.");
                    if (_vcpus.Count > 0) throw new NotSupportedException("The dirty ring must be enabled before the VM's first vCPU is created.");
                    ringBytes = ringEntries * 16;
                    if (ringEntries <= 0 || !System.Numerics.BitOperations.IsPow2(ringEntries) || ringBytes > ringCap)
                        throw new ArgumentOutOfRangeException(nameof(ringEntries), ringEntries, $"Dirty ring entries must be a power of two with at most {ringCap / 16} entries here.");
                    bool acqRel = CheckExtension(KvmCapability.DirtyLogRingAcqRel) > 0;
                    EnableCap(acqRel ? KvmCapability.DirtyLogRingAcqRel : KvmCapability.DirtyLogRing, (ulong)ringBytes);
                    break;
            }
            var tracker = new DirtyPageTracker(this, backend, ringBytes);
            foreach (var slot in _slots)
            {
                if ((slot.Flags & MemorySlotFlags.LogDirtyPages) == 0 && !slot.IsReadOnly)
                {
                    SetRegion(slot.Slot, (uint)(slot.Flags | MemorySlotFlags.LogDirtyPages), slot.GuestPhysicalAddress, slot.Size, slot.Mapping.DangerousGetHandle());
                    slot.Flags |= MemorySlotFlags.LogDirtyPages;
                }
                tracker.Track(slot); // read-only slots too: host writes to them are tracked

            }
            return DirtyTracker = tracker;
        }
    }

    private VmSnapshot? _baseline;
    // The baseline's slots and vCPUs matched to this VM's; valid while _baseline is (it is cleared
    // whenever slots or vCPUs change). PERF: a repeated restore allocates nothing.
    private Dictionary<MemorySlot, VmSnapshot.SlotImage>? _baselineSlots;
    private List<(Vcpu, Registers.RegisterState)>? _baselineVcpus;

    /// <summary>
    /// Captures every vCPU's registers (level Full) and all guest memory. Turns dirty tracking on if
    /// it is off (so that <see cref="Restore"/> can copy back only what changed) and makes this
    /// snapshot the baseline that tracking measures from.
    /// </summary>
    /// <exception cref="InvalidOperationException">A vCPU is running: pause the VM first.</exception>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    public VmSnapshot CreateSnapshot()
    {
        lock (_lock) ThrowIfAnyRunning();
        var tracker = DirtyTracker ?? EnableDirtyTracking();
        lock (_lock)
        {
            TakeAllVcpus("taking a snapshot");
            try
            {
                return CreateSnapshotHeld(tracker);
            }
            finally
            {
                GiveBackAllVcpus(_vcpus.Count);
            }
        }
    }

    private VmSnapshot CreateSnapshotHeld(DirtyPageTracker tracker)
    {
        // Registers first: saving completes a pending I/O or MMIO access, which may write memory.
        var vcpus = _vcpus.OrderBy(v => v.Id).Select(v => (v.Id, v.Registers.SaveState())).ToArray();
        tracker.Harvest().Dispose(); // start a fresh tracking period: memory == snapshot from here
        var slots = _slots.OrderBy(s => s.Slot).Select(s =>
        {
            var data = GC.AllocateUninitializedArray<byte>(checked((int)s.Size));
            s.Mapping.Slice(0, data.Length).CopyTo(data);
            return new VmSnapshot.SlotImage(s.Slot, s.Flags, s.GuestPhysicalAddress, s.Size, data);
        }).ToArray();
        var snapshot = new VmSnapshot(Architecture, vcpus, slots);
        _baseline = snapshot;
        _baselineSlots = MatchSlots(snapshot);
        _baselineVcpus = MatchVcpus(snapshot);
        return snapshot;
    }

    /// <summary>
    /// Puts the VM back into the state of <paramref name="snapshot"/>: memory, then every vCPU's
    /// registers at level Full. When the VM's memory last matched this snapshot (it was created here,
    /// or restored last), only the pages written since — by the guest, or through the slot write
    /// methods — are copied back, so the cost follows the dirty pages, not the RAM size. Otherwise all
    /// memory is copied once and the snapshot becomes the baseline.
    /// </summary>
    /// <exception cref="ArgumentException">The snapshot is of another architecture, or its slots or vCPUs do not match this VM's (named).</exception>
    /// <exception cref="InvalidOperationException">A vCPU is running: pause the VM first.</exception>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    public void Restore(VmSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        if (snapshot.Architecture != Architecture)
            throw new ArgumentException($"The snapshot is of {snapshot.Architecture}; this VM is {Architecture}.", nameof(snapshot));
        var tracker = DirtyTracker ?? EnableDirtyTracking();
        lock (_lock)
        {
            TakeAllVcpus("restoring a snapshot");
            try
            {
                RestoreHeld(snapshot, tracker);
            }
            finally
            {
                GiveBackAllVcpus(_vcpus.Count);
            }
        }
    }

    private void RestoreHeld(VmSnapshot snapshot, DirtyPageTracker tracker)
    {
        bool incremental = ReferenceEquals(_baseline, snapshot);
        var slots = incremental ? _baselineSlots! : MatchSlots(snapshot);
        var vcpus = incremental ? _baselineVcpus! : MatchVcpus(snapshot);
        // Registers first: restoring completes a pending I/O or MMIO access, whose memory writes
        // are then among the dirty pages copied back below.
        foreach (var (vcpu, state) in vcpus)
            vcpu.Registers.RestoreState(state);
        using (var dirty = tracker.Harvest())
        {
            if (incremental)
            {
                int page = PageSize;
                for (int i = 0; i < dirty.SlotCount; i++)
                {
                    var slot = dirty.SlotAt(i);
                    var image = slots[slot];
                    // PERF: copy page by page straight from the snapshot into the mapping; no buffers.
                    foreach (ulong p in dirty.PagesAt(i))
                        image.Data.AsSpan((int)(p * (ulong)page), page).CopyTo(slot.Mapping.Slice(p * (ulong)page, page));
                }
            }
            else
            {
                foreach (var (slot, image) in slots)
                    image.Data.CopyTo(slot.Mapping.Slice(0, image.Data.Length));
                _baseline = snapshot;
                _baselineSlots = slots;
                _baselineVcpus = vcpus;
            }
        }
    }

    private Dictionary<MemorySlot, VmSnapshot.SlotImage> MatchSlots(VmSnapshot snapshot)
    {
        var map = new Dictionary<MemorySlot, VmSnapshot.SlotImage>();
        foreach (var image in snapshot.Slots)
        {
            var slot = _slots.FirstOrDefault(s => s.Slot == image.Slot)
                ?? throw new ArgumentException($"The snapshot has memory slot {image.Slot} (0x{image.GuestPhysicalAddress:X}, 0x{image.Size:X} bytes), which this VM lacks.", nameof(snapshot));
            if (slot.GuestPhysicalAddress != image.GuestPhysicalAddress || slot.Size != image.Size)
                throw new ArgumentException($"Memory slot {slot.Slot} is 0x{slot.GuestPhysicalAddress:X}+0x{slot.Size:X} here but 0x{image.GuestPhysicalAddress:X}+0x{image.Size:X} in the snapshot.", nameof(snapshot));
            map[slot] = image;
        }
        if (map.Count != _slots.Count)
            throw new ArgumentException($"This VM has memory slots the snapshot lacks: {string.Join(", ", _slots.Where(s => !map.ContainsKey(s)).Select(s => s.Slot))}.", nameof(snapshot));
        return map;
    }

    private List<(Vcpu, Registers.RegisterState)> MatchVcpus(VmSnapshot snapshot)
    {
        var list = new List<(Vcpu, Registers.RegisterState)>();
        foreach (var (id, state) in snapshot.VcpuStates)
        {
            var vcpu = _vcpus.FirstOrDefault(v => v.Id == id)
                ?? throw new ArgumentException($"The snapshot has vCPU {id}, which this VM lacks.", nameof(snapshot));
            list.Add((vcpu, state));
        }
        if (list.Count != _vcpus.Count)
            throw new ArgumentException("This VM has vCPUs the snapshot lacks.", nameof(snapshot));
        return list;
    }

    private bool[] _keptVcpus = []; // TakeAllVcpus: whether this thread owned each vCPU before (reused: a restore allocates nothing)

    /// <summary>
    /// Takes every vCPU for the calling thread (caller holds the lock), so that none runs while a
    /// snapshot is taken or restored; a vCPU another live thread owns is refused, naming it, and
    /// nothing is changed.
    /// </summary>
    private void TakeAllVcpus(string operation)
    {
        _ = Fd;
        if (_keptVcpus.Length < _vcpus.Count) _keptVcpus = new bool[_vcpus.Count];
        int taken = 0;
        try
        {
            for (; taken < _vcpus.Count; taken++) _keptVcpus[taken] = _vcpus[taken].TakeForVm(operation);
        }
        catch
        {
            GiveBackAllVcpus(taken);
            throw;
        }
    }

    private void GiveBackAllVcpus(int count)
    {
        for (int i = 0; i < count; i++) _vcpus[i].GiveBackFromVm(_keptVcpus[i]);
    }

    private void ThrowIfAnyRunning()
    {
        _ = Fd;
        foreach (var v in _vcpus)
            if (v.IsOwnedByAnotherThread) throw new InvalidOperationException($"vCPU {v.Id} is running or owned by another thread; pause every vCPU before taking or restoring a snapshot.");
    }

    /// <summary>Wraps KVM_ENABLE_CAP on the VM with one argument (internal: the dirty-log set-up and tests use it).</summary>
    internal unsafe void EnableCap(KvmCapability cap, ulong arg0)
    {
        var enable = new kvm_enable_cap { cap = (uint)cap };
        enable.args[0] = arg0;
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_ENABLE_CAP, (nint)(&enable));
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_ENABLE_CAP, r, $"{cap} (arg 0x{arg0:X})");
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
            ThrowIfOverlaps(guestPhysicalAddress, size, except: null);
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
                bool track = DirtyTracker is not null;
                if (track && (flags & MemorySlotFlags.ReadOnly) == 0) flags |= MemorySlotFlags.LogDirtyPages;
                SetRegion(slotId, (uint)flags, guestPhysicalAddress, size, mapping.DangerousGetHandle());
                var slot = new MemorySlot(this, slotId, guestPhysicalAddress, mapping, flags);
                _slots.Add(slot);
                if (track) DirtyTracker!.Track(slot);
                _baseline = null; // memory no longer matches any snapshot's slot layout
                return slot;
            }
            catch
            {
                mapping.Dispose();
                throw;
            }
        }
    }

    private void ThrowIfOverlaps(ulong gpa, ulong size, MemorySlot? except)
    {
        foreach (var s in _slots)
        {
            if (s != except && gpa < s.EndAddress && s.GuestPhysicalAddress < gpa + size)
                throw new ArgumentException(
                    $"Memory range 0x{gpa:X}..0x{gpa + size:X} overlaps memory slot {s.Slot} (0x{s.GuestPhysicalAddress:X}..0x{s.EndAddress:X}).", nameof(gpa));
        }
    }

    /// <summary>Moves a slot to another guest-physical address (same memory, same size).</summary>
    internal void MoveSlot(MemorySlot slot, ulong newAddress)
    {
        ulong page = (ulong)PageSize;
        if (newAddress % page != 0)
            throw new ArgumentException($"Guest-physical address 0x{newAddress:X} is not aligned to the page size 0x{page:X}.", nameof(newAddress));
        if (newAddress + slot.Size < newAddress)
            throw new ArgumentException($"Memory slot {slot.Slot} of size 0x{slot.Size:X} cannot move to 0x{newAddress:X}: the range wraps.", nameof(newAddress));
        lock (_lock)
        {
            RequireLive(slot);
            ThrowIfOverlaps(newAddress, slot.Size, except: slot);
            SetRegion(slot.Slot, (uint)slot.Flags, newAddress, slot.Size, slot.Mapping.DangerousGetHandle());
            slot.GuestPhysicalAddress = newAddress;
        }
    }

    /// <summary>Changes a slot's flags; KVM allows toggling dirty logging, not read-only.</summary>
    internal void SetSlotFlags(MemorySlot slot, MemorySlotFlags flags)
    {
        if ((flags & ~(MemorySlotFlags.ReadOnly | MemorySlotFlags.LogDirtyPages)) != 0)
            throw new ArgumentException($"Unknown memory slot flags 0x{(uint)flags:X}.", nameof(flags));
        if (((flags ^ slot.Flags) & MemorySlotFlags.ReadOnly) != 0)
            throw new ArgumentException($"Memory slot {slot.Slot}: KVM cannot change KVM_MEM_READONLY on an existing slot; remove it and add a new one.", nameof(flags));
        lock (_lock)
        {
            RequireLive(slot);
            if (flags == slot.Flags) return;
            if (DirtyTracker is not null && !slot.IsReadOnly && (flags & MemorySlotFlags.LogDirtyPages) == 0)
                throw new InvalidOperationException($"Memory slot {slot.Slot}: dirty tracking is on for this VM, so KVM_MEM_LOG_DIRTY_PAGES must stay set.");
            SetRegion(slot.Slot, (uint)flags, slot.GuestPhysicalAddress, slot.Size, slot.Mapping.DangerousGetHandle());
            slot.Flags = flags;
        }
    }

    private void RequireLive(MemorySlot slot)
    {
        _ = Fd;
        if (!_slots.Contains(slot)) ThrowHelper.ThrowObjectDisposed(slot);
    }

    /// <summary>
    /// A span over <paramref name="length"/> bytes of guest memory at <paramref name="address"/>, which
    /// must lie within one slot (host mappings of different slots are not contiguous).
    /// </summary>
    /// <exception cref="ArgumentException">No slot holds the start, or the range runs past its slot (both named).</exception>
    public Span<byte> GetGuestSpan(ulong address, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var slot = FindSlot(address) ?? throw Hole(address);
        if (!slot.Contains(address, (ulong)length))
            throw new ArgumentException($"Guest range 0x{address:X}..0x{address + (ulong)length:X} runs past the end of memory slot {slot.Slot} (0x{slot.GuestPhysicalAddress:X}..0x{slot.EndAddress:X}); use ReadGuest/WriteGuest to cross slots.", nameof(length));
        return slot.GetSpanAt(address, length);
    }

    /// <summary>Copies guest memory at <paramref name="address"/> into <paramref name="destination"/>, across slot boundaries.</summary>
    /// <exception cref="ArgumentException">Part of the range is backed by no slot (the first such address is named).</exception>
    public void ReadGuest(ulong address, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            var slot = FindSlot(address) ?? throw Hole(address);
            int n = (int)Math.Min((ulong)destination.Length, slot.EndAddress - address);
            slot.GetSpanAt(address, n).CopyTo(destination);
            destination = destination.Slice(n);
            address += (ulong)n;
        }
    }

    /// <summary>Copies <paramref name="source"/> into guest memory at <paramref name="address"/>, across slot boundaries.</summary>
    /// <exception cref="ArgumentException">Part of the range is backed by no slot (the first such address is named); nothing is written then.</exception>
    public void WriteGuest(ulong address, ReadOnlySpan<byte> source)
    {
        // Check the whole range first, so that a hole never leaves a half-written range behind.
        for (ulong a = address, left = (ulong)source.Length; left > 0;)
        {
            var slot = FindSlot(a) ?? throw Hole(a);
            ulong n = Math.Min(left, slot.EndAddress - a);
            a += n;
            left -= n;
        }
        while (!source.IsEmpty)
        {
            var slot = FindSlot(address)!;
            int n = (int)Math.Min((ulong)source.Length, slot.EndAddress - address);
            slot.Write(address, source.Slice(0, n));
            source = source.Slice(n);
            address += (ulong)n;
        }
    }

    private static ArgumentException Hole(ulong address) =>
        new($"Guest-physical address 0x{address:X} is not backed by any memory slot.", nameof(address));

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
            DirtyTracker?.Untrack(slot);
            _baseline = null;
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
                vcpu = new Vcpu(this, vcpuId, fd, run, ring);
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
