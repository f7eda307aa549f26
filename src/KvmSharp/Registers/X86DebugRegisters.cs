using System.Runtime.InteropServices;

namespace KvmSharp.Registers;

/// <summary>x86 debug registers (the layout of <c>struct kvm_debugregs</c>).</summary>
[StructLayout(LayoutKind.Sequential, Size = 128)]
public struct X86DebugRegisters
{
#pragma warning disable CS1591 // register names document themselves
    public ulong Dr0, Dr1, Dr2, Dr3, Dr6, Dr7;
#pragma warning restore CS1591
    /// <summary>KVM_DEBUGREGS flags; keep 0.</summary>
    public ulong Flags;
}
