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
