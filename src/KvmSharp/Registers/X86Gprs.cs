using System.Runtime.InteropServices;

namespace KvmSharp.Registers;

/// <summary>x86 general-purpose registers, RIP and RFLAGS (the layout of <c>struct kvm_regs</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct X86Gprs
{
#pragma warning disable CS1591 // register names document themselves
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp;
    public ulong R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
#pragma warning restore CS1591
}
