using System.Numerics;
using Microsoft.Extensions.ObjectPool;

namespace KvmSharp;

/// <summary>
/// Pages written since the last <see cref="DirtyPageTracker.Harvest"/>, grouped by slot. Pooled:
/// dispose it to give its buffers back.
/// </summary>
public sealed class DirtyPageList : IDisposable
{
    internal ObjectPool<DirtyPageList>? Pool;
    private ulong[] _pages = new ulong[64];

    /// <summary>Lists come from <see cref="DirtyPageTracker.Harvest"/> (pooled), never from user code.</summary>
    internal DirtyPageList()
    {
    }
    private readonly List<(MemorySlot Slot, int Start, int Count)> _slots = [];

    /// <summary>The total number of dirty pages.</summary>
    public int Count { get; private set; }

    /// <summary>The slots with dirty pages.</summary>
    public int SlotCount => _slots.Count;

    /// <summary>The <paramref name="index"/>-th slot with dirty pages (0 ≤ index &lt; <see cref="SlotCount"/>).</summary>
    public MemorySlot SlotAt(int index) => _slots[index].Slot;

    /// <summary>The dirty page numbers (ascending, relative to the slot) of the <paramref name="index"/>-th slot.</summary>
    public ReadOnlySpan<ulong> PagesAt(int index)
    {
        var (_, start, count) = _slots[index];
        return _pages.AsSpan(start, count);
    }

    /// <summary>The dirty page numbers of <paramref name="slot"/> (empty if none).</summary>
    public ReadOnlySpan<ulong> PagesOf(MemorySlot slot)
    {
        foreach (var (s, start, count) in _slots)
            if (s == slot) return _pages.AsSpan(start, count);
        return default;
    }

    /// <summary>Guest-physical addresses of every dirty page, for diagnostics (allocates).</summary>
    public IEnumerable<ulong> Addresses()
    {
        for (int i = 0; i < _slots.Count; i++)
        {
            var (slot, start, count) = _slots[i];
            for (int j = 0; j < count; j++) yield return slot.GuestPhysicalAddress + _pages[start + j] * (ulong)VirtualMachine.PageSize;
        }
    }

    internal void Clear()
    {
        _slots.Clear();
        Count = 0;
    }

    /// <summary>Appends the set bits of <paramref name="bitmap"/> as the pages of <paramref name="slot"/>.</summary>
    internal void AddBitmap(MemorySlot slot, ReadOnlySpan<ulong> bitmap)
    {
        int start = Count;
        for (int w = 0; w < bitmap.Length; w++)
        {
            ulong bits = bitmap[w];
            while (bits != 0)
            {
                int b = BitOperations.TrailingZeroCount(bits);
                bits &= bits - 1;
                if (Count == _pages.Length) Array.Resize(ref _pages, _pages.Length * 2);
                _pages[Count++] = (ulong)w * 64 + (ulong)b;
            }
        }
        if (Count > start) _slots.Add((slot, start, Count - start));
    }

    /// <summary>Returns the list to its pool.</summary>
    public void Dispose()
    {
        Clear();
        var pool = Pool;
        Pool = null;
        pool?.Return(this);
    }

    internal sealed class Policy : PooledObjectPolicy<DirtyPageList>
    {
        public override DirtyPageList Create() => new();

        public override bool Return(DirtyPageList obj)
        {
            obj.Clear();
            return true;
        }
    }
}
