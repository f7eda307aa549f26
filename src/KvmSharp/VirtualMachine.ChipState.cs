using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp;

// x86: the in-kernel PICs', IOAPIC's and PIT's state, typed. They go through the same KVM_GET/SET_IRQCHIP
// and KVM_GET/SET_PIT2 paths as snapshots (VirtualMachine.DeviceState.cs); a vCPU's local APIC: Vcpu.Lapic.cs.
public sealed partial class VirtualMachine
{
    /// <summary>
    /// Reads one 8259 PIC of the in-kernel interrupt controller. Wraps KVM_GET_IRQCHIP (x86); needs
    /// KVM_CAP_IRQCHIP and <see cref="CreateIrqChip"/>. May be called from any thread; the chip keeps
    /// changing while vCPUs run and lines are raised.
    /// </summary>
    /// <param name="chip">Which PIC.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="chip"/> is neither <see cref="PicChip.Master"/> nor <see cref="PicChip.Slave"/>.</exception>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel interrupt controller.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public PicState GetPic(PicChip chip) => PicState.From(ReadChip(PicChipId(chip)).pic);

    /// <summary>
    /// Loads the state of one 8259 PIC; KVM then re-evaluates its output (a pending, unmasked IRQ
    /// interrupts the vCPU). Wraps KVM_SET_IRQCHIP (x86); needs KVM_CAP_IRQCHIP and <see cref="CreateIrqChip"/>.
    /// May be called from any thread.
    /// </summary>
    /// <param name="chip">Which PIC.</param>
    /// <param name="state">Its state, e.g. from <see cref="GetPic"/> changed with <c>with</c>.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="chip"/> is neither <see cref="PicChip.Master"/> nor <see cref="PicChip.Slave"/>.</exception>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel interrupt controller.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void SetPic(PicChip chip, PicState state)
    {
        var native = new kvm_irqchip { chip_id = PicChipId(chip), pic = state.ToNative() };
        SetIrqChipState(StructBytes.ToArray(in native));
    }

    /// <summary>
    /// Reads the in-kernel IOAPIC: its redirection table, pending pins and registers. Wraps
    /// KVM_GET_IRQCHIP (x86); needs KVM_CAP_IRQCHIP and <see cref="CreateIrqChip"/>. May be called from any thread.
    /// </summary>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel interrupt controller.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public IoApicState GetIoApic() => IoApicState.From(ReadChip(kvm_irqchip.KVM_IRQCHIP_IOAPIC).ioapic);

    /// <summary>
    /// Loads the in-kernel IOAPIC's state: its redirection table (how each pin is delivered), registers,
    /// and pending pins, which KVM delivers anew. Wraps KVM_SET_IRQCHIP (x86); needs KVM_CAP_IRQCHIP and
    /// <see cref="CreateIrqChip"/>. May be called from any thread.
    /// </summary>
    /// <param name="state">The state, e.g. from <see cref="GetIoApic"/> with entries changed.</param>
    /// <exception cref="ArgumentNullException"><paramref name="state"/> is null.</exception>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel interrupt controller.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void SetIoApic(IoApicState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        var native = new kvm_irqchip { chip_id = kvm_irqchip.KVM_IRQCHIP_IOAPIC, ioapic = state.ToNative() };
        SetIrqChipState(StructBytes.ToArray(in native));
    }

    /// <summary>
    /// Reads the in-kernel PIT: its three channels and flags. Wraps KVM_GET_PIT2 (x86); needs
    /// KVM_CAP_PIT_STATE2 and <see cref="CreatePit"/>. May be called from any thread.
    /// </summary>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel PIT.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_PIT_STATE2.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public PitState GetPit()
    {
        RequirePitState(nameof(GetPit));
        return PitState.From(StructBytes.Read<kvm_pit_state2>(GetPitState(), "kvm_pit_state2"));
    }

    /// <summary>
    /// Loads the in-kernel PIT's state. KVM restarts every channel from its <see cref="PitChannelState.Count"/>
    /// now, channel 0's timer in its <see cref="PitChannelState.Mode"/> (0, 1 and 4 one-shot, 2 and 3
    /// periodic, others none), unless <see cref="PitStateFlags.HpetLegacy"/> is set. Wraps KVM_SET_PIT2 (x86);
    /// needs KVM_CAP_PIT_STATE2 and <see cref="CreatePit"/>. May be called from any thread.
    /// </summary>
    /// <param name="state">The state, e.g. from <see cref="GetPit"/> changed with <c>with</c>.</param>
    /// <exception cref="ArgumentOutOfRangeException">A channel's count is not 1–65536, a mode is not 0–5
    /// (or 0xFF, never programmed), or the flags have bits KVM does not define.</exception>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel PIT.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_PIT_STATE2.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void SetPit(PitState state)
    {
        CheckPitChannel(state.Channel0, 0);
        CheckPitChannel(state.Channel1, 1);
        CheckPitChannel(state.Channel2, 2);
        if ((state.Flags & ~(PitStateFlags.HpetLegacy | PitStateFlags.SpeakerDataOn)) != 0)
            throw new ArgumentOutOfRangeException(nameof(state), state.Flags, "The PIT's flags are HpetLegacy (1) and SpeakerDataOn (2).");
        RequirePitState(nameof(SetPit));
        var native = state.ToNative();
        SetPitState(StructBytes.ToArray(in native));
    }

    private static void CheckPitChannel(in PitChannelState channel, int index)
    {
        // KVM would run a timer of any length (a count is 16 bits, 0 meaning 65536), and keeps modes 0–5,
        // or 0xFF for a channel no control word has reached.
        if (channel.Count is 0 or > 0x10000)
            throw new ArgumentOutOfRangeException("state", channel.Count, $"PIT channel {index}'s count is 1–65536 (KVM stores a count of 0 as 65536).");
        if (channel.Mode is > 5 and not 0xFF)
            throw new ArgumentOutOfRangeException("state", channel.Mode, $"PIT channel {index}'s mode is 0–5, or 0xFF for a channel never programmed.");
    }

    private void RequirePitState(string member)
    {
        RequirePit();
        RequireCapability(KvmCapability.PitState2, "KVM_CAP_PIT_STATE2", member);
    }

    private static uint PicChipId(PicChip chip) => chip switch
    {
        PicChip.Master => kvm_irqchip.KVM_IRQCHIP_PIC_MASTER,
        PicChip.Slave => kvm_irqchip.KVM_IRQCHIP_PIC_SLAVE,
        _ => throw new ArgumentOutOfRangeException(nameof(chip), chip, "A PIC is PicChip.Master or PicChip.Slave (the IOAPIC has GetIoApic/SetIoApic)."),
    };

    private kvm_irqchip ReadChip(uint chipId) => StructBytes.Read<kvm_irqchip>(GetIrqChipState(chipId), "kvm_irqchip");
}
