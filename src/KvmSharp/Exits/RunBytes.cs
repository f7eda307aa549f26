using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>
/// Bytes of a vCPU's <c>kvm_run</c> that a view reads: refused with <see cref="ObjectDisposedException"/>
/// once the vCPU is disposed (its mapping is gone).
/// </summary>
internal readonly ref struct RunBytes
{
    private readonly Span<byte> _bytes;
    private readonly VcpuCore _vcpu; // the vCPU's core: its disposal flag is one load away

    public RunBytes(VcpuCore vcpu, Span<byte> bytes)
    {
        _vcpu = vcpu;
        _bytes = bytes;
    }

    public Span<byte> Span
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            _vcpu.ThrowIfDisposed();
            return _bytes;
        }
    }

    /// <summary>
    /// The bytes as the uapi struct <typeparamref name="T"/> (an exit-union member from
    /// <c>Interop</c>, whose field offsets the layout tests check against the kernel headers), so
    /// that views name fields instead of typing offsets. Bounds-checked: the bytes are at least
    /// <c>sizeof(T)</c> long (<see cref="Union{T}"/> slices exactly that).
    /// </summary>
    public ref T As<T>() where T : unmanaged => ref MemoryMarshal.AsRef<T>(Span);

    /// <summary>The exit union at <paramref name="unionOffset"/>, <c>sizeof(T)</c> bytes, for a view over member <typeparamref name="T"/>.</summary>
    public RunBytes Union<T>(int unionOffset) where T : unmanaged => new(_vcpu, _bytes.Slice(unionOffset, Unsafe.SizeOf<T>()));
}
