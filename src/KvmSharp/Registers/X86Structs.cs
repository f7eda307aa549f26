using System.Runtime.CompilerServices;
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

/// <summary>GDTR or IDTR (the layout of <c>struct kvm_dtable</c>).</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct X86DescriptorTable
{
    /// <summary>Linear base address.</summary>
    public ulong Base;
    /// <summary>Limit (size in bytes minus one).</summary>
    public ushort Limit;
}

/// <summary>The pending-interrupt bitmap of <c>struct kvm_sregs</c> (256 bits).</summary>
[InlineArray(4)]
public struct X86InterruptBitmap
{
    private ulong _element0;
}

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

/// <summary>A vCPU's multiprocessing state (<c>KVM_MP_STATE_*</c>).</summary>
public enum MpState : uint
{
    /// <summary>KVM_MP_STATE_RUNNABLE.</summary>
    Runnable = 0,
    /// <summary>KVM_MP_STATE_UNINITIALIZED (x86 AP waiting for INIT).</summary>
    Uninitialized = 1,
    /// <summary>KVM_MP_STATE_INIT_RECEIVED.</summary>
    InitReceived = 2,
    /// <summary>KVM_MP_STATE_HALTED.</summary>
    Halted = 3,
    /// <summary>KVM_MP_STATE_SIPI_RECEIVED.</summary>
    SipiReceived = 4,
    /// <summary>KVM_MP_STATE_STOPPED (arm64, s390x).</summary>
    Stopped = 5,
    /// <summary>KVM_MP_STATE_CHECK_STOP (s390x).</summary>
    CheckStop = 6,
    /// <summary>KVM_MP_STATE_OPERATING (s390x).</summary>
    Operating = 7,
    /// <summary>KVM_MP_STATE_LOAD (s390x).</summary>
    Load = 8,
    /// <summary>KVM_MP_STATE_AP_RESET_HOLD.</summary>
    ApResetHold = 9,
    /// <summary>KVM_MP_STATE_SUSPENDED (arm64).</summary>
    Suspended = 10,
}

/// <summary>Pending x86 events: exceptions, interrupts, NMI, SMI (the layout of <c>struct kvm_vcpu_events</c>).</summary>
[StructLayout(LayoutKind.Sequential, Size = 64)]
public struct X86VcpuEvents
{
#pragma warning disable CS1591 // field names follow struct kvm_vcpu_events
    public byte ExceptionInjected, ExceptionNr, ExceptionHasErrorCode, ExceptionPending;
    public uint ExceptionErrorCode;
    public byte InterruptInjected, InterruptNr, InterruptSoft, InterruptShadow;
    public byte NmiInjected, NmiPending, NmiMasked, NmiPad;
    public uint SipiVector;
    public uint Flags;
    public byte SmiSmm, SmiPending, SmiInsideNmi, SmiLatchedInit;
    public byte TripleFaultPending;
#pragma warning restore CS1591
}

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
