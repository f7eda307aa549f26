using System.Runtime.InteropServices;

namespace KvmSharp.Registers;

/// <summary>GDTR or IDTR (the layout of <c>struct kvm_dtable</c>).</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct X86DescriptorTable
{
    /// <summary>Linear base address.</summary>
    public ulong Base;
    /// <summary>Limit (size in bytes minus one).</summary>
    public ushort Limit;
}
