using KvmSharp.Interop.X86;

namespace KvmSharp;

/// <summary>
/// The state of the in-kernel 8254 PIT: <c>struct kvm_pit_state2</c>, its three channels and its
/// flags, as KVM_GET_PIT2 gives it and KVM_SET_PIT2 takes it (<see cref="VirtualMachine.GetPit"/>,
/// <see cref="VirtualMachine.SetPit"/>). Channel 0 drives GSI 0; channel 1 is the old DRAM refresh
/// timer; channel 2 feeds the speaker (its gate is port 0x61 bit 0).
/// </summary>
/// <param name="Channel0">Channel 0 (port 0x40), the system timer.</param>
/// <param name="Channel1">Channel 1 (port 0x41).</param>
/// <param name="Channel2">Channel 2 (port 0x42).</param>
/// <param name="Flags">The PIT's flags.</param>
public readonly record struct PitState(PitChannelState Channel0, PitChannelState Channel1, PitChannelState Channel2, PitStateFlags Flags)
{
    internal static PitState From(in kvm_pit_state2 s) =>
        new(PitChannelState.From(s.channel0), PitChannelState.From(s.channel1), PitChannelState.From(s.channel2), (PitStateFlags)s.flags);

    internal kvm_pit_state2 ToNative() => new()
    {
        channel0 = Channel0.ToNative(), channel1 = Channel1.ToNative(), channel2 = Channel2.ToNative(), flags = (uint)Flags,
    };
}
