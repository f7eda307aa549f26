using System.Runtime.InteropServices;

namespace KvmSharp.Interop;

/// <summary>
/// A mapping (a vCPU's <c>kvm_run</c>, or anonymous guest RAM) that is unmapped through the kernel
/// seam when released. The memory-view layer: the only place besides the imports that turns the
/// mapping's address into spans.
/// </summary>
internal sealed unsafe class MappedMemoryHandle : SafeBuffer
{
    private readonly IKernel _kernel;

    private MappedMemoryHandle(IKernel kernel, nint address, ulong length)
        : base(ownsHandle: true)
    {
        _kernel = kernel;
        SetHandle(address);
        Initialize(length);
    }

    /// <summary>Maps <paramref name="length"/> bytes; on failure returns null and the negative errno.</summary>
    public static MappedMemoryHandle? Map(IKernel kernel, ulong length, int prot, int flags, int fd, long offset, out int error)
    {
        nint p = kernel.Mmap((nuint)length, prot, flags, fd, offset);
        if (p < 0 && p > -4096)
        {
            error = (int)p;
            return null;
        }
        error = 0;
        return new MappedMemoryHandle(kernel, p, length);
    }

    /// <summary>
    /// Maps <paramref name="length"/> bytes of anonymous memory at an address congruent to
    /// <paramref name="phase"/> modulo <paramref name="alignment"/> (a power of two, a multiple of the
    /// page size): maps <c>length + alignment</c> and unmaps what lies before and after. On failure
    /// returns null and the negative errno; nothing stays mapped.
    /// </summary>
    public static MappedMemoryHandle? MapAligned(IKernel kernel, ulong length, ulong alignment, ulong phase, int prot, int flags, out int error)
    {
        System.Diagnostics.Debug.Assert(alignment != 0 && (alignment & (alignment - 1)) == 0 && phase < alignment);
        ulong padded = length + alignment;
        nint p = kernel.Mmap((nuint)padded, prot, flags, -1, 0);
        if (p < 0 && p > -4096)
        {
            error = (int)p;
            return null;
        }
        // The first address at or above p that is congruent to phase (p is far above any phase).
        ulong start = ((((ulong)p - phase) + alignment - 1) & ~(alignment - 1)) + phase;
        ulong head = start - (ulong)p, tail = padded - head - length;
        // Unmapping part of a fresh private mapping fails only with ENOMEM (the split needs a new VMA
        // and the process is at its map count): then all of it goes back.
        int r = head > 0 ? kernel.Munmap(p, (nuint)head) : 0;
        if (r < 0)
        {
            kernel.Munmap(p, (nuint)padded);
            error = r;
            return null;
        }
        if (tail > 0 && (r = kernel.Munmap((nint)(start + length), (nuint)tail)) < 0)
        {
            kernel.Munmap((nint)start, (nuint)(length + tail));
            error = r;
            return null;
        }
        error = 0;
        return new MappedMemoryHandle(kernel, (nint)start, length);
    }

    /// <summary>The mapped address. Valid only while the handle is not released.</summary>
    public byte* Pointer => (byte*)handle;

    /// <summary>The mapped length in bytes.</summary>
    public ulong Length => ByteLength;

    /// <summary>
    /// A span over <paramref name="length"/> bytes at <paramref name="offset"/>. Callers check bounds
    /// against <see cref="Length"/> and keep the owner alive while the span is used.
    /// </summary>
    public Span<byte> Slice(ulong offset, int length)
    {
        // SAFETY: offset + length <= Length is checked by every caller (Debug.Assert here); the
        // mapping stays valid until ReleaseHandle, which owners run only from Dispose.
        System.Diagnostics.Debug.Assert(offset + (ulong)length <= ByteLength);
        return new Span<byte>((byte*)handle + offset, length);
    }

    /// <summary>
    /// A span over <paramref name="length"/> bytes at <paramref name="address"/>, an address inside a
    /// live mapping (see <see cref="Pointer"/>): for owners that cache the address so that a hot path
    /// need not load the handle object.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static Span<byte> SpanAt(nint address, int length)
    {
        // SAFETY: callers pass an address and length inside a mapping they own and have not disposed
        // (the same contract as Slice, with the handle's address cached by the owner).
        return new Span<byte>((void*)address, length);
    }

    protected override bool ReleaseHandle() => _kernel.Munmap(handle, (nuint)ByteLength) == 0;
}
