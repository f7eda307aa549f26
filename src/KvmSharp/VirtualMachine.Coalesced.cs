using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

// Coalesced MMIO and PIO: guest writes KVM queues in a ring instead of exiting for each.
public sealed partial class VirtualMachine
{
    // The ring's layout, from the structs the layout tests check (computed once: draining runs at every exit).
    private static readonly int RingHeaderSize = Marshal.SizeOf<kvm_coalesced_mmio_ring>(), RingEntrySize = Marshal.SizeOf<kvm_coalesced_mmio>(),
        RingDataOffset = (int)Marshal.OffsetOf<kvm_coalesced_mmio>(nameof(kvm_coalesced_mmio.data));
    private readonly Lock _coalescedLock = new();
    private int _coalescedRingOffset = -1; // byte offset of the ring in a vCPU mapping; -1 until known
    private bool _coalescedUsed;           // a zone was ever added: exits drain the ring

    /// <summary>
    /// Makes guest writes to <paramref name="size"/> bytes at <paramref name="address"/> (a range no
    /// memory slot covers, or I/O ports with <paramref name="isPio"/>) go into KVM's coalesced ring
    /// instead of each exiting to user space: the guest goes on at once and the writes are delivered,
    /// in order, by <see cref="Vcpu.DrainCoalescedWrites"/> — which <see cref="VcpuRunner"/> calls at
    /// every exit, before it handles the exit, so that devices see them in program order. Reads of the
    /// range still exit. Suits write-only device registers (a frame buffer, a doorbell log). When the
    /// ring is full, a write exits as usual. Wraps KVM_REGISTER_COALESCED_MMIO; needs
    /// KVM_CAP_COALESCED_MMIO (KVM_CAP_COALESCED_PIO for ports).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is 0, or the range wraps.</exception>
    /// <exception cref="NotSupportedException">KVM lacks the capability.</exception>
    /// <exception cref="KvmException">KVM refused (e.g. ENOBUFS: too many zones).</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void AddCoalescedMmio(ulong address, uint size, bool isPio = false)
    {
        CheckZone(address, size, isPio);
        RequireCapability(isPio ? KvmCapability.CoalescedPio : KvmCapability.CoalescedMmio,
            isPio ? "KVM_CAP_COALESCED_PIO" : "KVM_CAP_COALESCED_MMIO", nameof(AddCoalescedMmio));
        lock (_coalescedLock)
        {
            if (_coalescedRingOffset < 0) _coalescedRingOffset = CheckExtension(KvmCapability.CoalescedMmio) * Environment.SystemPageSize;
            Zone(KvmIoctls.KVM_REGISTER_COALESCED_MMIO, address, size, isPio);
            _coalescedUsed = true;
        }
    }

    /// <summary>
    /// Removes a zone added by <see cref="AddCoalescedMmio"/> with the same range (KVM removes
    /// every zone inside it). Writes already in the ring are still delivered. Wraps KVM_UNREGISTER_COALESCED_MMIO.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is 0, or the range wraps.</exception>
    /// <exception cref="KvmException">KVM refused.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void RemoveCoalescedMmio(ulong address, uint size, bool isPio = false)
    {
        CheckZone(address, size, isPio);
        lock (_coalescedLock) Zone(KvmIoctls.KVM_UNREGISTER_COALESCED_MMIO, address, size, isPio);
    }

    private void CheckZone(ulong address, uint size, bool isPio)
    {
        ArgumentOutOfRangeException.ThrowIfZero(size);
        if (address + size < address) throw new ArgumentOutOfRangeException(nameof(address), $"0x{address:X} + 0x{size:X} wraps around.");
        if (isPio) RequirePorts(address, size, nameof(AddCoalescedMmio));
    }

    private void Zone(KvmIoctl ioctl, ulong address, uint size, bool isPio)
    {
        var zone = new kvm_coalesced_mmio_zone { addr = address, size = size, pio = isPio ? 1u : 0u };
        Kernel.IoctlSet(Fd, ioctl, zone, $"{(isPio ? "ports" : "MMIO")} 0x{address:X}, 0x{size:X} bytes");
    }

    /// <summary>Whether exits should drain the coalesced ring (a zone was ever added).</summary>
    internal bool UsesCoalescedWrites => Volatile.Read(ref _coalescedUsed);

    /// <summary>Delivers the ring's entries to <paramref name="handler"/> in order; <paramref name="mapping"/> is a live vCPU mapping.</summary>
    internal int DrainCoalesced(Span<byte> mapping, CoalescedWriteHandler handler)
    {
        if (!UsesCoalescedWrites) return 0;
        int pageSize = Environment.SystemPageSize;
        uint max = (uint)((pageSize - RingHeaderSize) / RingEntrySize);
        lock (_coalescedLock)
        {
            if (_coalescedRingOffset < 0 || _coalescedRingOffset + pageSize > mapping.Length)
                throw new InvalidOperationException($"The coalesced ring (offset 0x{_coalescedRingOffset:X}) is outside the vCPU mapping (0x{mapping.Length:X} bytes).");
            var ring = mapping.Slice(_coalescedRingOffset, pageSize);
            ref var head = ref MemoryMarshal.AsRef<kvm_coalesced_mmio_ring>(ring);
            int drained = 0;
            while (true)
            {
                // KVM writes the entry, then advances last (smp_wmb); this side reads last, then the
                // entry, then gives it back by advancing first.
                uint first = Volatile.Read(ref head.first), last = Volatile.Read(ref head.last);
                if (first == last) return drained;
                if (first >= max || last >= max)
                    throw new InvalidOperationException($"The coalesced ring is corrupt (first {first}, last {last}, {max} entries).");
                var entry = ring.Slice(RingHeaderSize + (int)first * RingEntrySize, RingEntrySize);
                ref readonly var e = ref MemoryMarshal.AsRef<kvm_coalesced_mmio>(entry);
                int length = (int)Math.Min(e.len, 8u);
                handler(e.phys_addr, entry.Slice(RingDataOffset, length), e.pio != 0);
                Volatile.Write(ref head.first, (first + 1) % max);
                drained++;
            }
        }
    }
}
