using System.Runtime.InteropServices;

namespace KvmSharp.Registers;

/// <summary>An x86 segment register with its hidden descriptor cache (the layout of <c>struct kvm_segment</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct X86Segment
{
    /// <summary>Segment base address.</summary>
    public ulong Base;
    /// <summary>Segment limit in bytes (already scaled by granularity).</summary>
    public uint Limit;
    /// <summary>Selector.</summary>
    public ushort Selector;
    /// <summary>Descriptor type (4 bits).</summary>
    public byte Type;
    /// <summary>Present bit.</summary>
    public byte Present;
    /// <summary>Descriptor privilege level.</summary>
    public byte Dpl;
    /// <summary>Default operation size (D/B).</summary>
    public byte Db;
    /// <summary>Descriptor type: 1 for code/data, 0 for system.</summary>
    public byte S;
    /// <summary>64-bit code segment (L).</summary>
    public byte L;
    /// <summary>Granularity.</summary>
    public byte G;
    /// <summary>Available for software.</summary>
    public byte Avl;
    /// <summary>1 when the segment is unusable (a null selector in 64-bit mode).</summary>
    public byte Unusable;
    /// <summary>Padding; keep 0.</summary>
    public byte Padding;
}
