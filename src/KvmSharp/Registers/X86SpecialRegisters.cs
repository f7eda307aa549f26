using System.Runtime.InteropServices;

namespace KvmSharp.Registers;

/// <summary>x86 special registers: segments, descriptor tables, control registers, EFER, APIC base (the layout of <c>struct kvm_sregs</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct X86SpecialRegisters
{
#pragma warning disable CS1591 // register names document themselves
    public X86Segment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public X86DescriptorTable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer, ApicBase;
#pragma warning restore CS1591
    /// <summary>Pending external interrupts (only without an in-kernel irqchip).</summary>
    public X86InterruptBitmap InterruptBitmap;
}
