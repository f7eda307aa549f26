using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>A vCPU's mapped dirty ring and its harvest position.</summary>
internal sealed class DirtyRing(MappedMemoryHandle mapping, int bytes) : IDisposable
{
    public readonly StructView View = new(mapping, 0, bytes);
    public uint Fetch;

    public void Dispose() => mapping.Dispose();
}
