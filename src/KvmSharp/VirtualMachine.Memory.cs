using KvmSharp.Interop;

namespace KvmSharp;

// Memory: slots, guest-memory access and dirty tracking.
public sealed partial class VirtualMachine
{
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
                backend = ringCap > 0 && _vcpusCreated == 0 ? DirtyLogBackend.DirtyRing
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
                    // KVM counts every vCPU ever created, disposed ones too (kvm->created_vcpus).
                    if (_vcpusCreated > 0) throw new NotSupportedException($"The dirty ring must be enabled before the VM's first vCPU is created; {_vcpusCreated} vCPU(s) were created already (KVM counts disposed ones too).");
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

    /// <summary>The memory slots currently registered, in slot-number order.</summary>
    public IReadOnlyList<MemorySlot> MemorySlots
    {
        get
        {
            lock (_lock) return [.. _slots.OrderBy(s => s.Slot)];
        }
    }

    /// <summary>
    /// Maps <paramref name="size"/> bytes of fresh zeroed host memory and registers it as guest RAM at
    /// <paramref name="guestPhysicalAddress"/>. Wraps <c>mmap</c>, <c>madvise(MADV_DONTFORK)</c> and
    /// KVM_SET_USER_MEMORY_REGION; read-only slots need KVM_CAP_READONLY_MEM.
    /// </summary>
    /// <param name="guestPhysicalAddress">Page-aligned guest-physical base.</param>
    /// <param name="size">Size in bytes; a non-zero multiple of <see cref="PageSize"/>.</param>
    /// <param name="flags">Read-only and/or dirty logging.</param>
    /// <param name="hugePages">
    /// Back the slot with transparent huge pages, as QEMU does for guest RAM: the host memory is mapped
    /// congruent to <paramref name="guestPhysicalAddress"/> modulo the huge-page size (2 MiB with 4 KiB
    /// pages) and advised <c>MADV_HUGEPAGE</c>, so the kernel can back it with huge pages and KVM map
    /// those with huge nested or extended page-table entries (fewer guest page faults at first touch,
    /// fewer TLB misses). The memory is then committed 2 MiB at a time as the guest touches it: for big
    /// guests (an OS), not for many small fuzzing VMs. A hint: where the kernel has no transparent huge
    /// pages (or they are disabled) the memory is ordinary. Dirty logging still reports 4 KiB pages (KVM
    /// splits the mappings while it logs), and may report a page the guest only read once its huge
    /// page is populated.
    /// </param>
    /// <exception cref="ArgumentException">The address or size is not page-aligned, the size is 0, the range
    /// wraps, it overlaps an existing slot (named in the message) or the arm64 GICv3's frames, or a flag is unknown.</exception>
    /// <exception cref="NotSupportedException">Read-only slots requested but KVM lacks KVM_CAP_READONLY_MEM.</exception>
    /// <exception cref="InvalidOperationException">All KVM_CAP_NR_MEMSLOTS slots are in use.</exception>
    /// <exception cref="KvmException">mmap or the ioctl failed (nothing stays mapped or registered).</exception>
    public MemorySlot AddMemorySlot(ulong guestPhysicalAddress, ulong size, MemorySlotFlags flags = MemorySlotFlags.None, bool hugePages = false)
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
            RequireNoGicOverlap(guestPhysicalAddress, size);
            if ((flags & MemorySlotFlags.ReadOnly) != 0)
            {
                if (_readOnlyMem < 0) _readOnlyMem = CheckExtension(KvmCapability.ReadOnlyMem);
                if (_readOnlyMem == 0)
                    throw new NotSupportedException($"Read-only memory slot {range} needs KVM_CAP_READONLY_MEM, which this KVM lacks.");
            }
            int slotId = LowestFreeSlot();
            if (slotId >= _maxSlots)
                throw new InvalidOperationException($"Cannot add memory range {range}: all {_maxSlots} memory slots (KVM_CAP_NR_MEMSLOTS) are in use.");

            const int prot = Libc.PROT_READ | Libc.PROT_WRITE, mapFlags = Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE;
            var mapping = hugePages
                ? MappedMemoryHandle.MapAligned(Kernel, size, HugePageSize, guestPhysicalAddress % HugePageSize, prot, mapFlags, out int err)
                : MappedMemoryHandle.Map(Kernel, size, prot, mapFlags, -1, 0, out err);
            if (mapping is null)
                throw new KvmException("mmap", -err, $"guest RAM for slot {slotId}, {range}, size 0x{size:X}");
            try
            {
                int r = Kernel.Madvise(mapping.DangerousGetHandle(), (nuint)size, Libc.MADV_DONTFORK);
                if (r < 0) ThrowHelper.ThrowKvm("madvise(MADV_DONTFORK)", r, $"guest RAM for slot {slotId}, {range}");
                // EINVAL: a kernel without transparent huge pages; the memory stays ordinary (a hint).
                if (hugePages && (r = Kernel.Madvise(mapping.DangerousGetHandle(), (nuint)size, Libc.MADV_HUGEPAGE)) < 0 && r != -Errno.EINVAL)
                    ThrowHelper.ThrowKvm("madvise(MADV_HUGEPAGE)", r, $"guest RAM for slot {slotId}, {range}");
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

    /// <summary>The size a page-table page maps (a PMD entry): 2 MiB with 4 KiB pages, 32 MiB with 16 KiB, 512 MiB with 64 KiB.</summary>
    private static ulong HugePageSize => (ulong)PageSize * ((ulong)PageSize / 8);

    private void ThrowIfOverlaps(ulong gpa, ulong size, MemorySlot? except, string what = "Memory range")
    {
        foreach (var s in _slots)
        {
            if (s != except && gpa < s.EndAddress && s.GuestPhysicalAddress < gpa + size)
                throw new ArgumentException(
                    $"{what} 0x{gpa:X}..0x{gpa + size:X} overlaps memory slot {s.Slot} (0x{s.GuestPhysicalAddress:X}..0x{s.EndAddress:X}).", nameof(gpa));
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
            RequireNoGicOverlap(newAddress, slot.Size);
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
        return slot.GetGuestSpan(address, length);
    }

    /// <summary>Copies guest memory at <paramref name="address"/> into <paramref name="destination"/>, across slot boundaries.</summary>
    /// <exception cref="ArgumentException">Part of the range is backed by no slot (the first such address is named).</exception>
    public void ReadGuest(ulong address, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            var slot = FindSlot(address) ?? throw Hole(address);
            int n = (int)Math.Min((ulong)destination.Length, slot.EndAddress - address);
            slot.GetGuestSpan(address, n).CopyTo(destination);
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

    private void SetRegion(int slot, uint flags, ulong gpa, ulong size, nint hostAddress)
    {
        var region = new kvm_userspace_memory_region
        {
            slot = (uint)slot,
            flags = flags,
            guest_phys_addr = gpa,
            memory_size = size,
            userspace_addr = (ulong)hostAddress,
        };
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_SET_USER_MEMORY_REGION, ref region);
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
}
