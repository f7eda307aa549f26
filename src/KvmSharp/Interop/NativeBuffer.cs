using System.Runtime.InteropServices;

namespace KvmSharp.Interop;

/// <summary>Zeroed native memory that never moves (ioctl arguments kept across calls); freed on release.</summary>
internal sealed unsafe class NativeBuffer : SafeBuffer
{
    public NativeBuffer(int length)
        : base(ownsHandle: true)
    {
        // SAFETY: AlignedAlloc returns length bytes or throws OutOfMemoryException; Clear writes exactly those bytes.
        SetHandle((nint)NativeMemory.AlignedAlloc((nuint)length, 64));
        NativeMemory.Clear((void*)handle, (nuint)length);
        Initialize((ulong)length);
    }

    public byte* Pointer => (byte*)handle;

    protected override bool ReleaseHandle()
    {
        // SAFETY: SafeHandle runs this once, at release; the block came from AlignedAlloc, and owners release
        // the buffer only after the last use of their views of it.
        NativeMemory.AlignedFree((void*)handle);
        return true;
    }
}

/// <summary>
/// A window of a <see cref="SafeBuffer"/> (the <c>kvm_run</c> mapping or a <see cref="NativeBuffer"/>)
/// that holds a kernel struct. The memory-view layer: turns the address into spans and refs so the
/// register code above it needs no pointers.
/// </summary>
internal readonly unsafe struct StructView
{
    private readonly byte* _p;
    private readonly int _length;

    /// <param name="owner">Must outlive every use of the view (its owner disposes both together).</param>
    /// <param name="offset">Byte offset of the struct in <paramref name="owner"/>.</param>
    /// <param name="length">The struct's size; offset + length is checked against the buffer.</param>
    public StructView(SafeBuffer owner, int offset, int length)
    {
        if ((ulong)offset + (ulong)length > owner.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(length), $"View 0x{offset:X}+0x{length:X} exceeds a buffer of 0x{owner.ByteLength:X} bytes.");
        // SAFETY: the range was checked above; the owner keeps the memory alive and in place.
        _p = (byte*)owner.DangerousGetHandle() + offset;
        _length = length;
    }

    /// <summary>The struct's address, for an ioctl argument.</summary>
    public nint Address => (nint)_p;

    /// <summary>The struct's bytes.</summary>
    public Span<byte> Span => new(_p, _length);

    /// <summary>A reference to a <typeparamref name="T"/> at byte <paramref name="offset"/> (bounds-checked).</summary>
    /// <remarks>PERF: one small inlinee (register accessors sit in callers' exit loops, where the JIT's inlining budget is shared).</remarks>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public ref T At<T>(int offset) where T : unmanaged
    {
        if ((uint)offset > (uint)_length || (uint)(_length - offset) < (uint)sizeof(T)) ThrowOutside(offset, sizeof(T), _length);
        // SAFETY: offset..offset+sizeof(T) lies inside the view (checked above), and the view inside its live owner.
        return ref *(T*)(_p + offset);
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void ThrowOutside(int offset, int size, int length) =>
        throw new ArgumentOutOfRangeException(nameof(offset), $"0x{offset:X}+0x{size:X} lies outside a view of 0x{length:X} bytes.");
}
