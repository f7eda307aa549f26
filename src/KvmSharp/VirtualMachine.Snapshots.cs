using KvmSharp.Snapshots;

namespace KvmSharp;

// Snapshots: capturing and restoring the whole VM, with every vCPU taken for the duration.
public sealed partial class VirtualMachine
{
    private VmSnapshot? _baseline;
    // The baseline's slots and vCPUs matched to this VM's; valid while _baseline is (it is cleared
    // whenever slots or vCPUs change). PERF: a repeated restore allocates nothing.
    private Dictionary<MemorySlot, SlotImage>? _baselineSlots;
    private List<(Vcpu, Registers.RegisterState)>? _baselineVcpus;

    /// <summary>
    /// Captures every vCPU's registers (level Full) and all guest memory, of slots of any size (in
    /// 2 MiB chunks; chunks that are all zeros are not stored), and — on x86 with an in-kernel
    /// interrupt controller (<see cref="CreateIrqChip"/>) — the in-kernel devices: the KVM clock, both
    /// PICs, the IOAPIC, the PIT (<see cref="CreatePit"/>) and each vCPU's local APIC, so that
    /// programmed and pending interrupts and timers come back with <see cref="Restore"/>. Turns dirty tracking on if
    /// it is off (so that <see cref="Restore"/> can copy back only what changed) and makes this
    /// snapshot the baseline that tracking measures from (the baseline's own record: what
    /// <see cref="DirtyPageTracker.Harvest"/> reports is unaffected).
    /// </summary>
    /// <remarks>
    /// Devices that run in this process (on an <see cref="Devices.IoBus"/>) are not KVM's and are not in
    /// the snapshot: capture theirs while the vCPUs are still stopped (<see cref="Devices.Uart16550.CaptureState"/>)
    /// and restore it after <see cref="Restore"/>. A guest restored without its devices' state may wait
    /// forever on one that moved on, e.g. a UART whose receive interrupt its driver had disabled since.
    /// </remarks>
    /// <exception cref="InvalidOperationException">A vCPU is running, or owned by another live thread between its runs: pause it, or release it there (<see cref="Vcpu.ReleaseOwnership"/>), first. Nothing is changed.</exception>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    public VmSnapshot CreateSnapshot()
    {
        lock (_lock)
        {
            TakeAllVcpus("taking a snapshot"); // first: a refusal leaves everything as it was
            try
            {
                return CreateSnapshotHeld(DirtyTracker ?? EnableDirtyTracking());
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
        // Then the in-kernel devices (the register save completed any pending access first).
        var devices = _irqChip ? CaptureDeviceState() : null;
        tracker.ResetBaseline(); // memory == snapshot from here (the user's Harvest keeps its pages)
        var slots = _slots.OrderBy(s => s.Slot).Select(SlotImage.Capture).ToArray();
        var snapshot = new VmSnapshot(Architecture, vcpus, slots, devices);
        _baseline = snapshot;
        _baselineSlots = MatchSlots(snapshot);
        _baselineVcpus = MatchVcpus(snapshot);
        return snapshot;
    }

    /// <summary>
    /// Puts the VM back into the state of <paramref name="snapshot"/>: the in-kernel devices if it has
    /// them (clock, PICs, IOAPIC, PIT, local APICs — before the registers, as KVM needs), every vCPU's
    /// registers at level Full, the local APICs' TSC deadlines (after the TSC they count against), then memory. When the VM's memory last matched this snapshot (it was created here,
    /// or restored last), only the pages written since — by the guest, or through the slot write
    /// methods — are copied back, so the cost follows the dirty pages, not the RAM size. Otherwise all
    /// memory is copied once (memory the snapshot holds no bytes for, because it was all zeros, is
    /// handed back to the kernel with <c>madvise(MADV_DONTNEED)</c>, which reads as zeros) and the
    /// snapshot becomes the baseline.
    /// </summary>
    /// <remarks>
    /// Independent of <see cref="DirtyPageTracker.Harvest"/>: restoring keeps its own record of the
    /// pages written since the snapshot, so harvesting in between takes nothing from it. The pages
    /// restored count as host writes for the next <see cref="DirtyPageTracker.Harvest"/> (all pages
    /// when all memory was copied).
    /// Devices in this process are the caller's to restore, after this call, so that the interrupt lines
    /// they drive again reach the restored interrupt controller (see <see cref="CreateSnapshot"/>).
    /// </remarks>
    /// <exception cref="ArgumentException">The snapshot is of another architecture, or its slots, vCPUs or
    /// in-kernel devices (irqchip, PIT) do not match this VM's (named). Nothing is changed.</exception>
    /// <exception cref="InvalidOperationException">A vCPU is running, or owned by another live thread between its runs: pause it, or release it there (<see cref="Vcpu.ReleaseOwnership"/>), first. Nothing is changed.</exception>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    public void Restore(VmSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        if (snapshot.Architecture != Architecture)
            throw new ArgumentException($"The snapshot is of {snapshot.Architecture}; this VM is {Architecture}.", nameof(snapshot));
        lock (_lock)
        {
            TakeAllVcpus("restoring a snapshot"); // first: a refusal leaves everything as it was
            try
            {
                RestoreHeld(snapshot, DirtyTracker ?? EnableDirtyTracking());
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
        List<(Vcpu, X86DeviceState.Lapic)>? lapics = null;
        if (snapshot.Devices is { } devices)
        {
            // Devices before registers: KVM must get each vCPU's events and MP state after its local
            // APIC (QEMU's order). RestoreDeviceState checks the devices match before writing any.
            lapics = RestoreDeviceState(devices);
        }
        else if (_irqChip)
        {
            throw new ArgumentException(
                "This VM has an in-kernel interrupt controller, but the snapshot holds no device state (it was taken from a VM without one); restoring it would leave the PICs, IOAPIC, PIT and local APICs as they are.", nameof(snapshot));
        }
        // Registers next: restoring completes a pending I/O or MMIO access, whose memory writes
        // are then among the dirty pages copied back below.
        foreach (var (vcpu, state) in vcpus)
            vcpu.Registers.RestoreState(state);
        // TSC deadlines last: KVM arms each against the vCPU's TSC, which the registers just restored.
        if (lapics is not null)
            WriteTscDeadlines(lapics);
        // The baseline's own record of written pages: the user's Harvest takes nothing from it.
        using (var dirty = tracker.HarvestBaseline())
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
                        image.CopyTo(p * (ulong)page, slot.Mapping.Slice(p * (ulong)page, page));
                }
                tracker.MarkRestored(dirty); // host writes, for the user's Harvest
            }
            else
            {
                foreach (var (slot, image) in slots)
                    image.RestoreAll(slot, Kernel);
                tracker.MarkAllRestored();
                _baseline = snapshot;
                _baselineSlots = slots;
                _baselineVcpus = vcpus;
            }
        }
    }

    private Dictionary<MemorySlot, SlotImage> MatchSlots(VmSnapshot snapshot)
    {
        var map = new Dictionary<MemorySlot, SlotImage>();
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
}
