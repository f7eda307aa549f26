namespace KvmSharp;

/// <summary>The flags of the in-kernel PIT's state (<see cref="PitState.Flags"/>): <c>KVM_PIT_FLAGS_*</c> of <c>struct kvm_pit_state2</c>.</summary>
[Flags]
#pragma warning disable CA1711 // the name says what it is: the flags of a PIT state
public enum PitStateFlags : uint
#pragma warning restore CA1711
{
    /// <summary>No flag.</summary>
    None = 0,

    /// <summary>
    /// KVM_PIT_FLAGS_HPET_LEGACY: an HPET has taken over the PIT's interrupt (legacy replacement
    /// routing), so channel 0 raises no interrupt: KVM runs no timer for it while the flag is set.
    /// When a state sets it, KVM keeps channel 0's count but stops its timer; when a state clears it,
    /// channel 0 restarts from its count.
    /// </summary>
    HpetLegacy = 1,

    /// <summary>KVM_PIT_FLAGS_SPEAKER_DATA_ON: the speaker's data bit (port 0x61 bit 1), for a PIT created with KVM_PIT_SPEAKER_DUMMY.</summary>
    SpeakerDataOn = 2,
}
