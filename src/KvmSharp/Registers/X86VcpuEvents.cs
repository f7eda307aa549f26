using System.Runtime.InteropServices;

namespace KvmSharp.Registers;

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
