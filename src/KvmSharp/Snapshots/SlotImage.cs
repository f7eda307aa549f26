using KvmSharp.Interop;

namespace KvmSharp.Snapshots;

/// <summary>
/// One memory slot's contents in a snapshot, in chunks of <see cref="ChunkBytes"/> (the last one
/// shorter when the slot size is not a multiple), so that a slot of any size fits. A chunk that was
/// all zeros is not stored (null): a large, mostly untouched slot costs next to nothing to capture,
/// keep, save and load.
/// </summary>
internal sealed class SlotImage
{
    /// <summary>Bytes per chunk: 2 MiB, a multiple of every page size KVM uses and x86's large page.</summary>
    public const int ChunkBytes = 2 << 20;

    /// <summary>The largest slot a snapshot may describe (64 TiB, beyond any KVM's slot limit); keeps the chunk count an <see cref="int"/>.</summary>
    public const ulong MaxSize = 1UL << 46;

    private readonly byte[]?[] _chunks;

    /// <summary>An image of <paramref name="size"/> bytes in <see cref="ChunkCount"/>(size) chunks of <see cref="ChunkLength"/> bytes, null for all zeros.</summary>
    public SlotImage(int slot, MemorySlotFlags flags, ulong guestPhysicalAddress, ulong size, byte[]?[] chunks)
    {
        System.Diagnostics.Debug.Assert(chunks.Length == ChunkCount(size));
        Slot = slot;
        Flags = flags;
        GuestPhysicalAddress = guestPhysicalAddress;
        Size = size;
        _chunks = chunks;
    }

    public int Slot { get; }
    public MemorySlotFlags Flags { get; }
    public ulong GuestPhysicalAddress { get; }
    public ulong Size { get; }

    /// <summary>The chunks (null: all zeros, not stored). Read-only by convention: a snapshot is immutable.</summary>
    public ReadOnlySpan<byte[]?> Chunks => _chunks;

    /// <summary>Bytes actually held (the chunks that were not all zeros).</summary>
    public long StoredBytes
    {
        get
        {
            long sum = 0;
            foreach (var c in _chunks) sum += c?.Length ?? 0;
            return sum;
        }
    }

    /// <summary>How many chunks a slot of <paramref name="size"/> bytes (at most <see cref="MaxSize"/>) has.</summary>
    public static int ChunkCount(ulong size) => checked((int)((size + ChunkBytes - 1) / ChunkBytes));

    /// <summary>The length of chunk <paramref name="index"/> of a slot of <paramref name="size"/> bytes.</summary>
    public static int ChunkLength(ulong size, int index) => (int)Math.Min(ChunkBytes, size - (ulong)index * ChunkBytes);

    /// <summary>Copies the slot's memory, storing only the chunks that are not all zeros.</summary>
    /// <remarks>Reads every byte of the mapping once; a page never written reads as the kernel's shared
    /// zero page, which costs the process no memory.</remarks>
    public static SlotImage Capture(MemorySlot slot)
    {
        ulong size = slot.Size;
        var chunks = new byte[]?[ChunkCount(size)];
        for (int i = 0; i < chunks.Length; i++)
        {
            var memory = slot.Mapping.Slice((ulong)i * ChunkBytes, ChunkLength(size, i));
            if (!memory.ContainsAnyExcept((byte)0)) continue; // PERF: vectorised; an untouched chunk stays unstored
            var data = GC.AllocateUninitializedArray<byte>(memory.Length);
            memory.CopyTo(data);
            chunks[i] = data;
        }
        return new SlotImage(slot.Slot, slot.Flags, slot.GuestPhysicalAddress, size, chunks);
    }

    /// <summary>Copies the captured bytes at <paramref name="offset"/> into <paramref name="destination"/> (zeros where nothing is stored). Allocates nothing.</summary>
    public void CopyTo(ulong offset, Span<byte> destination)
    {
        System.Diagnostics.Debug.Assert(offset <= Size && (ulong)destination.Length <= Size - offset);
        while (!destination.IsEmpty)
        {
            int index = (int)(offset / ChunkBytes), within = (int)(offset % ChunkBytes);
            int n = Math.Min(destination.Length, ChunkLength(Size, index) - within);
            if (_chunks[index] is { } chunk) chunk.AsSpan(within, n).CopyTo(destination);
            else destination.Slice(0, n).Clear();
            destination = destination.Slice(n);
            offset += (ulong)n;
        }
    }

    /// <summary>
    /// The captured bytes at <paramref name="offset"/>: a view of a stored chunk when the range lies in
    /// one, else a copy (the range crosses chunks, or lies where nothing is stored).
    /// </summary>
    public ReadOnlySpan<byte> Get(ulong offset, int length)
    {
        int index = (int)(offset / ChunkBytes), within = (int)(offset % ChunkBytes);
        if (length <= ChunkLength(Size, index) - within && _chunks[index] is { } chunk)
            return chunk.AsSpan(within, length);
        var copy = new byte[length];
        CopyTo(offset, copy);
        return copy;
    }

    /// <summary>
    /// Writes the whole image into <paramref name="slot"/>'s mapping: stored chunks are copied; the
    /// others are dropped with <c>madvise(MADV_DONTNEED)</c>, after which the private anonymous mapping
    /// reads as zeros and holds no memory there (KVM's MMU notifier unmaps them from the guest too).
    /// Where madvise fails, the range is cleared instead.
    /// </summary>
    public void RestoreAll(MemorySlot slot, IKernel kernel)
    {
        for (int i = 0; i < _chunks.Length; i++)
        {
            ulong offset = (ulong)i * ChunkBytes;
            var memory = slot.Mapping.Slice(offset, ChunkLength(Size, i));
            if (_chunks[i] is { } chunk) chunk.CopyTo(memory);
            else if (kernel.Madvise(slot.Mapping.DangerousGetHandle() + (nint)offset, (nuint)memory.Length, Libc.MADV_DONTNEED) < 0) memory.Clear();
        }
    }
}
