using System.Runtime.CompilerServices;

namespace KvmSharp.Registers;

/// <summary>The pending-interrupt bitmap of <c>struct kvm_sregs</c> (256 bits).</summary>
[InlineArray(4)]
public struct X86InterruptBitmap
{
    private ulong _element0;
}
