using System.Buffers;

namespace KvmSharp.Interop;

/// <summary>Exposes (part of) a mapping as <see cref="Memory{T}"/>; the mapping is already fixed in memory, so pinning is free.</summary>
internal sealed unsafe class GuestMemoryManager(MappedMemoryHandle mapping, ulong offset, int length) : MemoryManager<byte>
{
    public override Span<byte> GetSpan()
    {
        ObjectDisposedException.ThrowIf(mapping.IsClosed, this);
        return mapping.Slice(offset, length);
    }

    public override MemoryHandle Pin(int elementIndex = 0)
    {
        ObjectDisposedException.ThrowIf(mapping.IsClosed, this);
        if ((uint)elementIndex > (uint)length) throw new ArgumentOutOfRangeException(nameof(elementIndex));
        // SAFETY: the mapping never moves; the index was checked against the length above.
        return new MemoryHandle(mapping.Pointer + offset + elementIndex);
    }

    public override void Unpin() { }

    protected override void Dispose(bool disposing) { }
}
