namespace KvmSharp;

/// <summary><c>KVM_INTERNAL_ERROR_*</c> suberrors.</summary>
public enum InternalErrorSuberror : uint
{
    /// <summary>KVM_INTERNAL_ERROR_EMULATION: the instruction emulator failed.</summary>
    Emulation = 1,
    /// <summary>KVM_INTERNAL_ERROR_SIMUL_EX: an exception while delivering another.</summary>
    SimultaneousException = 2,
    /// <summary>KVM_INTERNAL_ERROR_DELIVERY_EV: an event delivery failed.</summary>
    DeliveryEvent = 3,
    /// <summary>KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON.</summary>
    UnexpectedExitReason = 4,
}
