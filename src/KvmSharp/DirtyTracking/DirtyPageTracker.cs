using System.Runtime.CompilerServices;
using KvmSharp.Interop;
using Microsoft.Extensions.ObjectPool;

namespace KvmSharp;

/// <summary>
/// Tracks the pages of a VM's memory that were written — by the guest (reported by KVM) or by the
/// host through <see cref="MemorySlot"/> write methods — and yields them, once each, per harvest.
/// Created by <see cref="VirtualMachine.EnableDirtyTracking"/>; every slot of the VM is tracked
/// (KVM_MEM_LOG_DIRTY_PAGES is set on it).
/// </summary>
/// <remarks>
/// <para>Thread-safe. Host writes through raw spans (<see cref="MemorySlot.Span"/>, <see cref="MemorySlot.GetSpan"/>)
/// are invisible to KVM: report them with <see cref="MarkHostWrite"/>.</para>
/// <para>The tracker serves two independent consumers: your <see cref="Harvest"/>, and the VM's
/// snapshot baseline (<see cref="VirtualMachine.CreateSnapshot"/> and <see cref="VirtualMachine.Restore"/>).
/// Each sees every page written since its own last harvest: what KVM reports is collected once and
/// recorded for both, so harvesting here never hides a page from <see cref="VirtualMachine.Restore"/>,
/// and a snapshot or restore never hides one from <see cref="Harvest"/>.</para>
/// </remarks>
public sealed class DirtyPageTracker
{
    private static readonly ObjectPool<DirtyPageList> s_lists = new DefaultObjectPool<DirtyPageList>(new DirtyPageList.Policy());

    private readonly VirtualMachine _vm;
    private readonly Lock _lock = new();
    private readonly Dictionary<MemorySlot, SlotState> _slots = [];
    private readonly List<DirtyRing> _rings = []; // its own list: harvesting never takes the VM's lock

    // The consumers: each has its own pending bitmap per slot (a page is pending for a consumer
    // from the write until that consumer's next harvest).
    private const int User = 0, Baseline = 1, Consumers = 2;

    private sealed class SlotState
    {
        public readonly MemorySlot Slot;
        public readonly ulong Pages;
        public readonly int Words;
        public readonly ulong[][] Pending = new ulong[Consumers][];
        public NativeBuffer? KernelBitmap; // KVM_GET_DIRTY_LOG's buffer, allocated once

        public SlotState(MemorySlot slot)
        {
            Slot = slot;
            Pages = slot.Size / (ulong)VirtualMachine.PageSize;
            Words = (int)((Pages + 63) / 64);
            for (int c = 0; c < Consumers; c++) Pending[c] = new ulong[Words];
        }

        /// <summary>Records pages <paramref name="first"/>..<paramref name="last"/> (inclusive) for every consumer.</summary>
        public void MarkAll(ulong first, ulong last)
        {
            foreach (var bitmap in Pending) SetRange(bitmap, first, last);
        }

        /// <summary>Records what KVM reported for word <paramref name="w"/> for every consumer.</summary>
        public void Report(int w, ulong bits)
        {
            foreach (var bitmap in Pending) bitmap[w] |= bits;
        }
    }

    /// <summary>Sets the bits of pages <paramref name="first"/>..<paramref name="last"/> (inclusive), a word at a time.</summary>
    private static void SetRange(ulong[] bitmap, ulong first, ulong last)
    {
        for (ulong p = first; p <= last;)
        {
            int bit = (int)(p % 64);
            ulong n = Math.Min(64UL - (ulong)bit, last - p + 1);
            bitmap[p / 64] |= (n == 64 ? ulong.MaxValue : (1UL << (int)n) - 1) << bit;
            p += n;
        }
    }

    internal DirtyPageTracker(VirtualMachine vm, DirtyLogBackend backend, int ringBytes)
    {
        _vm = vm;
        Backend = backend;
        RingBytes = ringBytes;
    }

    /// <summary>The back end in use.</summary>
    public DirtyLogBackend Backend { get; }

    /// <summary>For <see cref="DirtyLogBackend.DirtyRing"/>: each vCPU's ring size in bytes.</summary>
    public int RingBytes { get; }

    internal void Track(MemorySlot slot)
    {
        lock (_lock) _slots[slot] = new SlotState(slot);
    }

    internal void AddRing(DirtyRing ring)
    {
        lock (_lock) _rings.Add(ring);
    }

    /// <summary>Forgets a vCPU's ring; after this returns no harvest reads it, so it may be unmapped.</summary>
    internal void RemoveRing(DirtyRing ring)
    {
        lock (_lock) _rings.Remove(ring);
    }

    internal void Untrack(MemorySlot slot)
    {
        lock (_lock)
        {
            if (_slots.Remove(slot, out var st)) st.KernelBitmap?.Dispose();
        }
    }

    /// <summary>Records that the host wrote guest memory at <paramref name="address"/> (for writes through raw spans).</summary>
    /// <exception cref="ArgumentException">Part of the range is in no tracked slot.</exception>
    public void MarkHostWrite(ulong address, ulong length)
    {
        if (length == 0) return;
        lock (_lock)
        {
            ulong end = address + length;
            while (address < end)
            {
                var st = FindState(address) ?? throw new ArgumentException($"Guest-physical address 0x{address:X} is in no tracked memory slot.", nameof(address));
                ulong page = (address - st.Slot.GuestPhysicalAddress) / (ulong)VirtualMachine.PageSize;
                ulong last = (Math.Min(end, st.Slot.EndAddress) - 1 - st.Slot.GuestPhysicalAddress) / (ulong)VirtualMachine.PageSize;
                st.MarkAll(page, last);
                address = st.Slot.GuestPhysicalAddress + (last + 1) * (ulong)VirtualMachine.PageSize;
            }
        }
    }

    /// <summary>Called by the slot write methods: same as <see cref="MarkHostWrite"/> within one known slot.</summary>
    internal void MarkSlotWrite(MemorySlot slot, ulong offset, ulong length)
    {
        if (length == 0) return;
        lock (_lock)
        {
            if (!_slots.TryGetValue(slot, out var st)) return;
            ulong ps = (ulong)VirtualMachine.PageSize;
            st.MarkAll(offset / ps, (offset + length - 1) / ps);
        }
    }

    private SlotState? FindState(ulong address)
    {
        foreach (var st in _slots.Values)
            if (st.Slot.Contains(address)) return st;
        return null;
    }

    /// <summary>
    /// Returns every page written since the last call of this method (by the guest, through the slot
    /// write methods, reported with <see cref="MarkHostWrite"/>, or copied back by
    /// <see cref="VirtualMachine.Restore"/>), each once, and starts a new tracking period. Wraps
    /// KVM_GET_DIRTY_LOG (+ KVM_CLEAR_DIRTY_LOG), or reads the vCPUs' dirty rings and calls
    /// KVM_RESET_DIRTY_RINGS. Allocates nothing once warm.
    /// </summary>
    /// <remarks>
    /// <para>Pages the guest writes while the harvest runs are reported by this harvest or the next one.</para>
    /// <para>Independent of snapshots: <see cref="VirtualMachine.CreateSnapshot"/> and
    /// <see cref="VirtualMachine.Restore"/> keep their own record of written pages, so calling this
    /// between a snapshot and a restore takes nothing from the restore, and they take nothing from it.
    /// The pages a restore copies back from the snapshot count as host writes (their contents changed):
    /// the next harvest reports them — after a restore that copies all memory (the first restore of a
    /// snapshot into this VM), every page of every slot.</para>
    /// </remarks>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    public DirtyPageList Harvest() => HarvestFor(User);

    private DirtyPageList HarvestFor(int consumer)
    {
        var list = s_lists.Get();
        list.Pool = s_lists;
        lock (_lock)
        {
            Collect();
            foreach (var st in _slots.Values)
            {
                list.AddBitmap(st.Slot, st.Pending[consumer]);
                Array.Clear(st.Pending[consumer]);
            }
        }
        return list;
    }

    /// <summary>
    /// For <see cref="VirtualMachine.Restore"/>: every page written since the baseline's last harvest
    /// (the pages that may differ from the snapshot), and starts a new baseline period. Allocates
    /// nothing once warm.
    /// </summary>
    internal DirtyPageList HarvestBaseline() => HarvestFor(Baseline);

    /// <summary>Starts a new baseline period: memory equals the snapshot from here (for <see cref="VirtualMachine.CreateSnapshot"/>).</summary>
    internal void ResetBaseline()
    {
        lock (_lock)
        {
            Collect();
            foreach (var st in _slots.Values) Array.Clear(st.Pending[Baseline]);
        }
    }

    /// <summary>
    /// Records that a restore copied <paramref name="pages"/> back from the baseline snapshot: a host
    /// write for the user's <see cref="Harvest"/>, none for the baseline (memory equals it there).
    /// </summary>
    internal void MarkRestored(DirtyPageList pages)
    {
        lock (_lock)
        {
            for (int i = 0; i < pages.SlotCount; i++)
            {
                if (!_slots.TryGetValue(pages.SlotAt(i), out var st)) continue;
                foreach (ulong p in pages.PagesAt(i)) st.Pending[User][p / 64] |= 1UL << (int)(p % 64);
            }
        }
    }

    /// <summary>Records that a restore rewrote all memory: every page is a host write for the user's <see cref="Harvest"/>.</summary>
    internal void MarkAllRestored()
    {
        lock (_lock)
        {
            foreach (var st in _slots.Values)
                if (st.Pages > 0) SetRange(st.Pending[User], 0, st.Pages - 1);
        }
    }

    /// <summary>Moves what KVM reports into every consumer's pending bitmaps (caller holds the lock).</summary>
    private void Collect()
    {
        if (Backend == DirtyLogBackend.DirtyRing)
        {
            CollectRings();
            return;
        }
        foreach (var st in _slots.Values)
        {
            if ((st.Slot.Flags & MemorySlotFlags.LogDirtyPages) == 0) continue; // read-only: only host writes
            int bytes = st.Words * 8;
            st.KernelBitmap ??= new NativeBuffer(Math.Max(bytes, 8));
            var view = new StructView(st.KernelBitmap, 0, Math.Max(bytes, 8));
            var log = new kvm_dirty_log { slot = (uint)st.Slot.Slot, dirty_bitmap = (ulong)view.Address };
            int r = _vm.Kernel.Ioctl(_vm.Fd, KvmIoctls.KVM_GET_DIRTY_LOG, ref log);
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_GET_DIRTY_LOG, r, $"slot {st.Slot.Slot}");
            var bitmap = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(view.Span.Slice(0, bytes));
            bool any = false;
            for (int w = 0; w < bitmap.Length; w++)
            {
                if (bitmap[w] == 0) continue;
                st.Report(w, bitmap[w]);
                any = true;
            }
            if (Backend == DirtyLogBackend.ManualProtect && any)
            {
                // Re-arm write protection for exactly the pages we were told about.
                var clear = new kvm_clear_dirty_log
                {
                    slot = (uint)st.Slot.Slot, first_page = 0,
                    num_pages = (uint)(st.Slot.Size / (ulong)VirtualMachine.PageSize), dirty_bitmap = (ulong)view.Address,
                };
                r = _vm.Kernel.Ioctl(_vm.Fd, KvmIoctls.KVM_CLEAR_DIRTY_LOG, ref clear);
                if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CLEAR_DIRTY_LOG, r, $"slot {st.Slot.Slot}, {clear.num_pages} pages");
            }
        }
    }

    /// <summary>Empties every vCPU's ring into every consumer's pending bitmaps, then KVM_RESET_DIRTY_RINGS (caller holds the lock).</summary>
    private void CollectRings()
    {
        bool any = false;
        foreach (var ring in _rings)
        {
            int entries = RingBytes / Unsafe.SizeOf<kvm_dirty_gfn>();
            while (true)
            {
                int i = (int)(ring.Fetch % (uint)entries);
                ref var gfn = ref ring.View.At<kvm_dirty_gfn>(i * Unsafe.SizeOf<kvm_dirty_gfn>());
                // Acquire: the slot/offset written by KVM are visible once DIRTY is.
                if ((Volatile.Read(ref gfn.flags) & kvm_dirty_gfn.KVM_DIRTY_GFN_F_DIRTY) == 0) break;
                int slotId = (int)(gfn.slot & 0xFFFF);
                foreach (var st in _slots.Values)
                {
                    if (st.Slot.Slot == slotId && gfn.offset < st.Slot.Size / (ulong)VirtualMachine.PageSize)
                    {
                        st.Report((int)(gfn.offset / 64), 1UL << (int)(gfn.offset % 64));
                        break;
                    }
                }
                Volatile.Write(ref gfn.flags, kvm_dirty_gfn.KVM_DIRTY_GFN_F_RESET); // release: hand the entry back
                ring.Fetch++;
                any = true;
            }
        }
        if (any)
        {
            int r = _vm.Kernel.Ioctl(_vm.Fd, KvmIoctls.KVM_RESET_DIRTY_RINGS, 0);
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_RESET_DIRTY_RINGS, r);
        }
    }

    /// <summary>A vCPU exited with KVM_EXIT_DIRTY_RING_FULL: drain the rings so it can go on.</summary>
    internal void OnRingFull()
    {
        lock (_lock) CollectRings();
    }
}
