namespace KvmSharp;

/// <summary>
/// Receives one guest write that KVM coalesced (<see cref="Vcpu.DrainCoalescedWrites"/>): the
/// guest-physical address (or the I/O port), the bytes written (1–8), and whether it was port I/O.
/// The span is valid only during the call.
/// </summary>
public delegate void CoalescedWriteHandler(ulong address, ReadOnlySpan<byte> data, bool isPio);
