using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp;

// x86: the in-kernel devices' state as raw uapi structs (interrupt controller, PIT, KVM clock; the
// local APICs are in Vcpu.Lapic.cs), and capturing and restoring all of it (X86DeviceState) in the
// order KVM needs.
public sealed partial class VirtualMachine
{
    /// <summary>
    /// Captures the KVM clock, the interrupt controller (PIC master, PIC slave, IOAPIC), the PIT and
    /// every vCPU's local APIC (with its APIC base and TSC-deadline MSRs), as far as the VM has them.
    /// </summary>
    /// <remarks>
    /// <para>Call it with every vCPU stopped and owned by the calling thread or by none (a snapshot
    /// takes them all). The PIT's and the APICs' timers keep running on host time meanwhile, so a
    /// tick may land between two reads; the state is a consistent point only up to that.</para>
    /// <para>Each vCPU's register cache is written back and invalidated first (its dirty sets reach
    /// KVM, so that the APIC base read here is the one the vCPU has), as the cache's rule for ioctls
    /// that bypass it asks; the next register read fetches from KVM.</para>
    /// </remarks>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns a vCPU.</exception>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    internal X86DeviceState CaptureDeviceState()
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(CaptureDeviceState));
        lock (_lock)
        {
            byte[] clock = GetClockState();
            byte[]? master = null, slave = null, ioApic = null, pit = null;
            var lapics = new List<X86DeviceState.Lapic>();
            if (_irqChip)
            {
                master = GetIrqChipState(kvm_irqchip.KVM_IRQCHIP_PIC_MASTER);
                slave = GetIrqChipState(kvm_irqchip.KVM_IRQCHIP_PIC_SLAVE);
                ioApic = GetIrqChipState(kvm_irqchip.KVM_IRQCHIP_IOAPIC);
            }
            if (_pit) pit = GetPitState();
            if (_irqChip)
            {
                bool hasDeadline = MsrIndices.Contains(X86DeviceState.MsrTscDeadline);
                foreach (var vcpu in _vcpus.OrderBy(v => v.Id))
                {
                    vcpu.Registers.Invalidate();
                    ulong apicBase = vcpu.ReadMsrDirect(X86DeviceState.MsrApicBase);
                    byte[] registers = vcpu.GetLapicState();
                    ulong? deadline = hasDeadline ? vcpu.ReadMsrDirect(X86DeviceState.MsrTscDeadline) : null;
                    lapics.Add(new X86DeviceState.Lapic(vcpu.Id, apicBase, registers, deadline));
                }
            }
            return new X86DeviceState(clock, master, slave, ioApic, pit, lapics);
        }
    }

    /// <summary>
    /// Loads a state from <see cref="CaptureDeviceState"/>, in this order: the KVM clock (the VM's
    /// time base); the PIC master, the PIC slave and the IOAPIC; the PIT, after the chips its ticks
    /// go to; then per vCPU, its APIC base MSR and its local APIC page (which KVM reads in the mode that
    /// MSR sets). The TSC deadlines are not written here but by <see cref="RestoreTscDeadlines"/>,
    /// after the registers. QEMU does the same: its APIC device writes the base before KVM_SET_LAPIC,
    /// and the TSC deadline after the registers.
    /// </summary>
    /// <remarks>
    /// <para>Call it before restoring the vCPUs' registers (<see cref="KvmSharp.Registers.IRegisterSync.RestoreState"/>):
    /// KVM must receive each vCPU's events (a pending or injected interrupt, NMI, SMI, latched INIT) and
    /// MP state after its local APIC, as QEMU's order has it (the APIC device is loaded before
    /// <c>kvm_arch_put_registers</c> writes events, then MP state). The register restore also rewrites
    /// CR8 and the APIC base, which the local APIC page holds too; both then agree with the snapshot.</para>
    /// <para>Each vCPU's register cache is written back and invalidated before its APIC ioctls; a
    /// register restore after this refills it. The clock is set to the captured value with no flags
    /// (<see cref="SetClockState"/>); the PIT restarts its counts now; an APIC timer resumes with the
    /// captured remaining count.</para>
    /// </remarks>
    /// <exception cref="ArgumentException">The state does not fit this VM: it has devices the VM lacks or
    /// lacks devices the VM has, or its vCPUs are not this VM's (named).</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns a vCPU (checked before anything is written).</exception>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    /// <returns>The vCPUs paired with their local APICs' states, for <see cref="WriteTscDeadlines"/>.</returns>
    internal List<(Vcpu, X86DeviceState.Lapic)> RestoreDeviceState(X86DeviceState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(RestoreDeviceState));
        lock (_lock)
        {
            var vcpus = MatchDeviceState(state);
            foreach (var (vcpu, _) in vcpus) vcpu.CheckAccess(); // a refusal changes nothing
            SetClockState(state.Clock);
            if (_irqChip)
            {
                SetIrqChipState(state.PicMaster!);
                SetIrqChipState(state.PicSlave!);
                SetIrqChipState(state.IoApic!);
            }
            if (_pit) SetPitState(state.Pit!);
            foreach (var (vcpu, lapic) in vcpus)
            {
                vcpu.Registers.Invalidate();
                vcpu.WriteMsrDirect(X86DeviceState.MsrApicBase, lapic.ApicBase);
                vcpu.SetLapicState(lapic.Registers);
            }
            return vcpus;
        }
    }

    /// <summary>
    /// Writes each vCPU's TSC-deadline MSR from <paramref name="state"/> (those KVM listed at capture),
    /// the last step of restoring devices: after <see cref="RestoreDeviceState"/>, whose KVM_SET_LAPIC
    /// puts the timer back in TSC-deadline mode (before that KVM ignores the MSR), and after the
    /// vCPUs' registers, whose TSC the deadline is compared with. KVM arms the timer for the deadline
    /// minus the TSC at the write: written against a TSC far behind the snapshot's (a new VM loading a
    /// saved snapshot), the timer would fire hours late; far ahead, at once.
    /// </summary>
    /// <exception cref="ArgumentException">The state does not fit this VM (see <see cref="RestoreDeviceState"/>).</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="InvalidOperationException">Another thread owns a vCPU (checked before anything is written).</exception>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    internal void RestoreTscDeadlines(X86DeviceState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(RestoreTscDeadlines));
        lock (_lock)
        {
            var vcpus = MatchDeviceState(state);
            foreach (var (vcpu, _) in vcpus) vcpu.CheckAccess();
            WriteTscDeadlines(vcpus);
        }
    }

    /// <summary><see cref="RestoreTscDeadlines"/> for vCPUs already matched and checked (by <see cref="RestoreDeviceState"/>).</summary>
    private static void WriteTscDeadlines(List<(Vcpu, X86DeviceState.Lapic)> vcpus)
    {
        // IA32_TSC_DEADLINE is in none of the register cache's sets: no write-back needed first.
        foreach (var (vcpu, lapic) in vcpus)
            if (lapic.TscDeadline is { } deadline) vcpu.WriteMsrDirect(X86DeviceState.MsrTscDeadline, deadline);
    }

    private static uint ChipId(byte[] chip) => chip.Length >= 4 ? BitConverter.ToUInt32(chip, 0) : uint.MaxValue;

    /// <summary>Checks that <paramref name="state"/> has exactly this VM's devices and vCPUs; pairs each vCPU with its APIC.</summary>
    private List<(Vcpu, X86DeviceState.Lapic)> MatchDeviceState(X86DeviceState state)
    {
        static string Has(bool b) => b ? "has" : "has no";
        bool chips = state.PicMaster is not null && state.PicSlave is not null && state.IoApic is not null;
        if (chips != _irqChip || (!chips && (state.PicMaster ?? state.PicSlave ?? state.IoApic) is not null))
            throw new ArgumentException($"The device state {Has(chips)} complete interrupt-controller state; this VM {Has(_irqChip)} an in-kernel interrupt controller.", nameof(state));
        if (chips && (ChipId(state.PicMaster!) != kvm_irqchip.KVM_IRQCHIP_PIC_MASTER || ChipId(state.PicSlave!) != kvm_irqchip.KVM_IRQCHIP_PIC_SLAVE
                      || ChipId(state.IoApic!) != kvm_irqchip.KVM_IRQCHIP_IOAPIC))
            throw new ArgumentException("The device state's interrupt-controller blobs are not chips 0 (PIC master), 1 (PIC slave) and 2 (IOAPIC) in that order.", nameof(state));
        if ((state.Pit is not null) != _pit)
            throw new ArgumentException($"The device state {Has(state.Pit is not null)} PIT state; this VM {Has(_pit)} an in-kernel PIT.", nameof(state));
        var pairs = new List<(Vcpu, X86DeviceState.Lapic)>();
        if (!_irqChip)
        {
            if (state.Lapics.Count > 0)
                throw new ArgumentException("The device state has local APICs; this VM has no in-kernel interrupt controller.", nameof(state));
            return pairs;
        }
        foreach (var lapic in state.Lapics)
        {
            var vcpu = _vcpus.FirstOrDefault(v => v.Id == lapic.VcpuId)
                ?? throw new ArgumentException($"The device state has the local APIC of vCPU {lapic.VcpuId}, which this VM lacks.", nameof(state));
            pairs.Add((vcpu, lapic));
        }
        if (pairs.Count != _vcpus.Count || pairs.Select(p => p.Item1).Distinct().Count() != pairs.Count)
            throw new ArgumentException($"The device state has local APICs of vCPUs {string.Join(", ", state.Lapics.Select(l => l.VcpuId))}; this VM has vCPUs {string.Join(", ", _vcpus.Select(v => v.Id))}.", nameof(state));
        return pairs;
    }

    /// <summary>
    /// The state of one chip of the in-kernel interrupt controller: the whole <c>struct kvm_irqchip</c>
    /// (520 bytes, <c>chip_id</c> first). Wraps KVM_GET_IRQCHIP; needs <see cref="CreateIrqChip"/>.
    /// </summary>
    /// <param name="chipId">KVM_IRQCHIP_PIC_MASTER (0), KVM_IRQCHIP_PIC_SLAVE (1) or KVM_IRQCHIP_IOAPIC (2).</param>
    internal byte[] GetIrqChipState(uint chipId)
    {
        RequireIrqChipId(chipId);
        return Kernel.IoctlGet(Fd, KvmIoctls.X86.KVM_GET_IRQCHIP, new kvm_irqchip { chip_id = chipId }, $"chip {chipId}");
    }

    /// <summary>Loads a state from <see cref="GetIrqChipState"/> (its <c>chip_id</c> says which chip). Wraps KVM_SET_IRQCHIP.</summary>
    internal void SetIrqChipState(ReadOnlySpan<byte> state)
    {
        var chip = StructBytes.Read<kvm_irqchip>(state, "kvm_irqchip");
        RequireIrqChipId(chip.chip_id);
        Kernel.IoctlSet(Fd, KvmIoctls.X86.KVM_SET_IRQCHIP, chip, $"chip {chip.chip_id}");
    }

    private void RequireIrqChipId(uint chipId)
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, "KVM_GET/SET_IRQCHIP");
        if (chipId > kvm_irqchip.KVM_IRQCHIP_IOAPIC)
            throw new ArgumentOutOfRangeException(nameof(chipId), chipId, "KVM's x86 interrupt controller has chips 0 (PIC master), 1 (PIC slave) and 2 (IOAPIC).");
        if (!HasIrqChip)
            throw new InvalidOperationException("This VM has no in-kernel interrupt controller (CreateIrqChip).");
    }

    /// <summary>The PIT's state: <c>struct kvm_pit_state2</c> (112 bytes). Wraps KVM_GET_PIT2; needs KVM_CAP_PIT_STATE2 and <see cref="CreatePit"/>.</summary>
    internal byte[] GetPitState()
    {
        RequirePit();
        return Kernel.IoctlGet(Fd, KvmIoctls.X86.KVM_GET_PIT2, default(kvm_pit_state2));
    }

    /// <summary>
    /// Loads a state from <see cref="GetPitState"/>. KVM restarts each channel's counter from its
    /// initial count now (the captured load time is not used). Wraps KVM_SET_PIT2.
    /// </summary>
    internal void SetPitState(ReadOnlySpan<byte> state)
    {
        RequirePit();
        var pit = StructBytes.Read<kvm_pit_state2>(state, "kvm_pit_state2");
        Kernel.IoctlSet(Fd, KvmIoctls.X86.KVM_SET_PIT2, pit, $"flags 0x{pit.flags:X}");
    }

    private void RequirePit()
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, "KVM_GET/SET_PIT2");
        if (!HasPit) throw new InvalidOperationException("This VM has no in-kernel PIT (CreatePit).");
    }

    /// <summary>
    /// The KVM clock (kvmclock, nanoseconds) as the guest sees it now: <c>struct kvm_clock_data</c>
    /// (48 bytes) with the flags KVM filled in. Wraps KVM_GET_CLOCK (x86); needs KVM_CAP_ADJUST_CLOCK.
    /// </summary>
    internal byte[] GetClockState()
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, "KVM_GET_CLOCK");
        return Kernel.IoctlGet(Fd, KvmIoctls.X86.KVM_GET_CLOCK, default(kvm_clock_data));
    }

    /// <summary>
    /// Sets the KVM clock to the <c>clock</c> of a state from <see cref="GetClockState"/>; it runs on
    /// from there. Only that value is passed, with flags 0: KVM_CLOCK_REALTIME would make KVM add the
    /// wall-clock time elapsed since the capture (a restore wants the captured value), and kernels
    /// before 5.16 reject any flag (api.rst: the other flags KVM_GET_CLOCK returns are ignored on set).
    /// Wraps KVM_SET_CLOCK (x86); needs KVM_CAP_ADJUST_CLOCK.
    /// </summary>
    internal void SetClockState(ReadOnlySpan<byte> state) =>
        SetClockNanoseconds(StructBytes.Read<kvm_clock_data>(state, "kvm_clock_data").clock);

    /// <summary>KVM_SET_CLOCK with <paramref name="clock"/> and flags 0 (see <see cref="SetClockState"/> for why no flag).</summary>
    private void SetClockNanoseconds(ulong clock)
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, "KVM_SET_CLOCK");
        Kernel.IoctlSet(Fd, KvmIoctls.X86.KVM_SET_CLOCK, new kvm_clock_data { clock = clock }, $"clock {clock} ns");
    }
}
