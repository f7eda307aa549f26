namespace KvmSharp;

/// <summary>
/// Bytes of a vCPU's <c>kvm_run</c> that a view reads: refused with <see cref="ObjectDisposedException"/>
/// once the vCPU is disposed (its mapping is gone).
/// </summary>
internal readonly ref struct RunBytes
{
    private readonly Span<byte> _bytes;
    private readonly Vcpu _vcpu;

    public RunBytes(Vcpu vcpu, Span<byte> bytes)
    {
        _vcpu = vcpu;
        _bytes = bytes;
    }

    public Span<byte> Span
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
        get
        {
            _vcpu.ThrowIfDisposed();
            return _bytes;
        }
    }

    public RunBytes Slice(int start, int length) => new(_vcpu, _bytes.Slice(start, length));
}
