using Iced.Intel;
using KvmSharp.Interop;
using KvmSharp.Interop.X86;
using KvmSharp.Registers;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;
using static KvmSharp.Tests.Guests.InterruptGuest;

namespace KvmSharp.Tests;

/// <summary>
/// Capturing and restoring the in-kernel devices (<see cref="X86DeviceState"/>) on stock KVM: a guest
/// changes the PIC or the PIT after the capture, and after the restore its timer interrupts resume, or
/// a pending one is delivered again — which fails if that device's state were not restored. Memory and
/// registers are restored alongside, as a snapshot would (device state first). Also the local APIC's
/// state with the MSRs that go with it, and the KVM clock.
/// </summary>
public class InterruptStateTests : KvmTestBase
{
    /// <summary>Ticks KVM's PIT may still owe the guest after it is stopped (0.5 s of 100 Hz ticks the guest had not acknowledged).</summary>
    private const int MaxPitBacklog = 50;

    public enum Breakage
    {
        /// <summary>The guest masks IRQ0 in the master PIC (OCW1).</summary>
        MaskPic,
        /// <summary>The guest reprograms PIT channel 0 so that it never ticks again.</summary>
        StopPit,
    }

    private sealed record Saved(RegisterState Registers, X86DeviceState Devices, byte[] Ram);

    private static Saved Capture(TestGuest g)
    {
        var registers = g.Cpu.Registers.SaveState(); // completes the OUT the guest stopped at
        return new Saved(registers, g.Vm.CaptureDeviceState(), g.Ram.GetSpan(0, (int)TestGuest.RamSize).ToArray());
    }

    private static void Restore(TestGuest g, Saved saved)
    {
        saved.Ram.CopyTo(g.Ram.GetSpan(0, (int)TestGuest.RamSize));
        g.Vm.RestoreDeviceState(saved.Devices);
        g.Cpu.Registers.RestoreState(saved.Registers);
        g.Vm.RestoreTscDeadlines(saved.Devices);
    }

    [TestCase(Breakage.MaskPic)]
    [TestCase(Breakage.StopPit)]
    public void Restore_BringsBackThePicAndPitState_SoTheTicksResume(Breakage breakage)
    {
        using var g = TickGuest(Kvm, breakAt: 3, onBreak: a =>
        {
            if (breakage == Breakage.MaskPic) Out(a, 0x21, 0xFF);
            else StopPit(a);
            Out(a, BrokePort, 1);
        });

        Assert.That(NextOut(g), Is.EqualTo((TickPort, 1u)));
        var saved = Capture(g); // inside the first tick's handler, before its EOI
        var before = OutsUntil(g, BrokePort);
        Assert.That(before, Is.EqualTo(new[] { (TickPort, 2u), (TickPort, 3u), (BrokePort, 1u) }));
        // Stopping the PIT does not drop the ticks KVM still owes the guest: in its default reinject
        // mode every tick that fired while the guest had not acknowledged the previous one (the host
        // thread between two runs, a slow emulated CPU) is counted and delivered at the next EOI,
        // after the timer is gone. The backlog depends on host timing, so it is bounded, not fixed:
        // a PIT still running would tick ~150 times in the quiet window.
        AssertQuiet(g, breakage == Breakage.StopPit ? MaxPitBacklog : 0, $"after {breakage}");
        if (breakage == Breakage.MaskPic)
            Assert.That(g.Vm.GetIrqChipState(kvm_irqchip.KVM_IRQCHIP_PIC_MASTER)[8 + 2], Is.EqualTo(0xFF), "KVM's PIC has IRQ0 masked");
        else
            Assert.That(g.Vm.GetPitState()[13], Is.EqualTo(5), "KVM's PIT channel 0 is in mode 5");

        Restore(g, saved);
        Assert.That(g.Vm.GetIrqChipState(kvm_irqchip.KVM_IRQCHIP_PIC_MASTER)[8 + 2], Is.EqualTo(0xFE), "PIC mask restored");
        Assert.That(g.Vm.GetPitState()[13], Is.EqualTo(2), "PIT channel 0 back in mode 2");
        Assert.That(OutsUntil(g, BrokePort), Is.EqualTo(before), "after the restore the guest gets its ticks again, the same ones");
    }

    [Test]
    public void APendingTimerInterrupt_IsDeliveredAfterTheRestore_AndTheGuestContinuesIdentically()
    {
        using var g = PendingTickGuest(Kvm);

        var pending = NextOut(g);
        Assert.That(pending.Port, Is.EqualTo(PendingPort));
        Assert.That(pending.Value & 1, Is.EqualTo(1u), "the guest saw IRQ0 pending");
        var saved = Capture(g);
        Assert.That(saved.Devices.PicMaster![8 + 1] & 1, Is.EqualTo(1), "the captured PIC has IRQ0 in its IRR");
        var before = OutsUntil(g, BrokePort);
        Assert.That(before, Is.EqualTo(new[] { (TickPort, 1u), (TickPort, 2u), (TickPort, 3u), (BrokePort, 1u) }));
        AssertQuiet(g, 0, "PIC masked and PIT stopped");

        Restore(g, saved);
        Assert.That(OutsUntil(g, BrokePort), Is.EqualTo(before), "the same ticks again, the pending one first");
    }

    [Test]
    public void APendingIrqLineInterrupt_IsPendingAgainAfterTheRestore()
    {
        using var g = IrqLineGuest(Kvm, reportPending: true);
        Assert.That(NextOut(g).Port, Is.EqualTo(ReadyPort)); // interrupts off: raise IRQ4 now
        RaiseEdge(g.Vm, 4);
        Assert.That(NextOut(g).Port, Is.EqualTo(PendingPort));
        var saved = Capture(g);
        Assert.That(saved.Devices.PicMaster![8 + 1] & 0x10, Is.EqualTo(0x10), "IRQ4 pending in the captured IRR");
        Assert.That(NextOut(g), Is.EqualTo((LinePort, 1u)));
        AssertQuiet(g, 0, "one edge, one interrupt");
        Assert.That(g.Vm.GetIrqChipState(kvm_irqchip.KVM_IRQCHIP_PIC_MASTER)[8 + 1] & 0x10, Is.Zero, "KVM's IRR is empty now");

        Restore(g, saved); // no PIT, no line raised: only the restored IRR can interrupt the guest
        Assert.That(NextOut(g), Is.EqualTo((LinePort, 1u)), "the restored pending IRQ4 is delivered");
        AssertQuiet(g, 0, "and only once");
    }

    [Test]
    public void Restore_WritesTheApicBaseBeforeTheLocalApic_AndTheTscDeadlineAfterIt()
    {
        const uint ApicBase = X86DeviceState.MsrApicBase, TscDeadline = X86DeviceState.MsrTscDeadline, X2ApicLvtTimer = 0x832;
        using var g = Create(Kvm, pit: false, a =>
        {
            EnableX2Apic(a);
            WriteMsr(a, X2ApicLvtTimer, 0x50040); // TSC-deadline mode, masked, vector 0x40
            ArmTscDeadline(a, 1L << 40); // minutes ahead: it never expires during the test
            Out(a, ReadyPort, 1);
            a.mov(ecx, X2ApicLvtTimer);
            a.mov(eax, 0x10040); // one-shot mode: KVM drops the deadline
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(ecx, ApicBase);
            a.rdmsr();
            a.and(eax, ~0xC00); // the APIC off altogether
            a.wrmsr();
            Out(a, BrokePort, 1);
            var spin = TestGuest.Here(a);
            a.jmp(spin);
        });
        // KVM's supported CPUID has x2APIC but not the TSC-deadline timer (leaf 1 ECX bit 24), which
        // KVM emulates with an in-kernel APIC; without it the LVT timer's mode field has no deadline mode.
        var cpuid = Kvm.GetSupportedCpuid().Select(e => e.Function == 1 ? e with { Ecx = e.Ecx | 1u << 24 } : e).ToArray();
        g.Cpu.SetCpuid(cpuid);

        Assert.That(NextOut(g).Port, Is.EqualTo(ReadyPort));
        var saved = g.Vm.CaptureDeviceState();
        var lapic = saved.Lapics.Single();
        Assert.That(lapic.ApicBase & 0xC00, Is.EqualTo(0xC00UL), "captured: x2APIC mode");
        Assert.That(lapic.TscDeadline, Is.GreaterThan(0UL), "captured: an armed TSC deadline");
        Assert.That(BitConverter.ToUInt32(lapic.Registers, 0x320) >> 17 & 3, Is.EqualTo(2u), "captured: LVT timer in TSC-deadline mode");

        Assert.That(NextOut(g).Port, Is.EqualTo(BrokePort));
        Assert.That((g.Cpu.ReadMsrDirect(ApicBase) & 0xC00, g.Cpu.ReadMsrDirect(TscDeadline)), Is.EqualTo((0UL, 0UL)), "KVM: APIC off, no deadline");

        g.Vm.RestoreDeviceState(saved);
        Assert.That(g.Cpu.ReadMsrDirect(ApicBase), Is.EqualTo(lapic.ApicBase), "APIC base restored");
        Assert.That(g.Cpu.X86.ApicBase, Is.EqualTo(lapic.ApicBase), "the register cache fetches it anew");
        Assert.That(BitConverter.ToUInt32(g.Cpu.GetLapicState(), 0x320) >> 17 & 3, Is.EqualTo(2u), "LVT timer back in TSC-deadline mode");
        Assert.That(g.Cpu.ReadMsrDirect(TscDeadline), Is.Zero, "the deadline waits for the registers (the TSC)");
        g.Vm.RestoreTscDeadlines(saved);
        Assert.That(g.Cpu.ReadMsrDirect(TscDeadline), Is.EqualTo(lapic.TscDeadline),
            "the deadline survives: written after KVM_SET_LAPIC (before it, KVM would ignore it in one-shot mode, then zero it on entering deadline mode)");
    }

    [Test]
    public void Restore_ArmsTheTscDeadline_AgainstTheRestoredTsc()
    {
        const uint X2ApicSvr = 0x80F, X2ApicLvtTimer = 0x832, X2ApicEoi = 0x80B;
        const byte Vector = 0x40;
        Label handler = default;
        using var g = Create(Kvm, pit: false, a =>
        {
            EnableX2Apic(a);
            WriteMsr(a, X2ApicSvr, 0x1FF);                 // software-enabled
            WriteMsr(a, X2ApicLvtTimer, 0x40000 | Vector); // TSC-deadline mode, unmasked
            ArmTscDeadline(a, 100_000_000); // tens of milliseconds ahead
            Out(a, ReadyPort, 1);
            IdleWithInterrupts(a);
            handler = TestGuest.Here(a);
            Out(a, TickPort, 1);
            WriteMsr(a, X2ApicEoi, 0);
            a.iretq();
        });
        InstallGate(g, Vector, handler);
        g.Cpu.SetCpuid(Kvm.GetSupportedCpuid().Select(e => e.Function == 1 ? e with { Ecx = e.Ecx | 1u << 24 } : e).ToArray());
        g.Cpu.X86.Tsc = 1UL << 44;       // hours of cycles: far ahead of the TSC a new vCPU starts at

        Assert.That(NextOut(g).Port, Is.EqualTo(ReadyPort));
        var snapshot = g.Vm.CreateSnapshot(); // the deadline armed, tens of milliseconds ahead
        Assert.That(NextOut(g), Is.EqualTo((TickPort, (uint)1)), "the deadline passes: the timer interrupt");

        // As in a new VM loading a saved snapshot: the TSC is far behind the snapshot's when the restore begins.
        g.Cpu.X86.Tsc = 1;
        g.Vm.Restore(snapshot);
        Assert.That(g.Cpu.X86.Tsc, Is.GreaterThan(1UL << 44), "the TSC restored");
        Assert.That(NextOut(g), Is.EqualTo((TickPort, (uint)1)),
            "the restored deadline fires tens of milliseconds of TSC after the restored TSC (armed against the old TSC, it would be hours away)");
    }

    [Test]
    public void RestoreDeviceState_RefusesStateOfAVmWithOtherDevices()
    {
        using var bare = Kvm.CreateVirtualMachine();
        bare.CreateVcpu().Dispose();
        var plain = bare.CaptureDeviceState();
        Assert.That((plain.PicMaster, plain.Pit, plain.Lapics.Count, plain.Clock.Length), Is.EqualTo(((byte[]?)null, (byte[]?)null, 0, 48)));

        using var vm = Kvm.CreateVirtualMachine();
        vm.CreateIrqChip();
        using var cpu = vm.CreateVcpu();
        var full = vm.CaptureDeviceState();
        Assert.That((full.PicMaster!.Length, full.IoApic!.Length, full.Lapics.Count), Is.EqualTo((520, 520, 1)));

        var ex = Assert.Throws<ArgumentException>(() => vm.RestoreDeviceState(plain));
        Assert.That(ex!.Message, Does.Contain("interrupt controller"));
        ex = Assert.Throws<ArgumentException>(() => bare.RestoreDeviceState(full));
        Assert.That(ex!.Message, Does.Contain("interrupt controller"));
        ex = Assert.Throws<ArgumentException>(() => vm.RestoreDeviceState(full with { Lapics = [full.Lapics[0] with { VcpuId = 7 }] }));
        Assert.That(ex!.Message, Does.Contain("vCPU 7"));
        ex = Assert.Throws<ArgumentException>(() => vm.RestoreDeviceState(full with { PicMaster = full.PicSlave }));
        Assert.That(ex!.Message, Does.Contain("chips 0"));
        vm.RestoreDeviceState(full);
    }

    [Test]
    public void LocalApic_RoundTrips_AndTheGuestReadsTheRestoredTprAsCr8()
    {
        using var g = Cr8Guest(Kvm);
        Assert.That(NextOut(g), Is.EqualTo((Cr8Port, 0u)));
        var saved = g.Vm.CaptureDeviceState();
        var lapic = saved.Lapics.Single();
        Assert.That(lapic.VcpuId, Is.EqualTo(g.Cpu.Id));
        Assert.That(lapic.Registers[0x80], Is.EqualTo(0), "TPR");
        Assert.That(lapic.ApicBase & ~0xFFFUL, Is.EqualTo(0xFEE00000UL), "APIC base address");
        Assert.That(lapic.ApicBase & 0x900, Is.EqualTo(0x900UL), "APIC enabled, BSP");

        Assert.That(NextOut(g), Is.EqualTo((Cr8Port, 9u)));
        Assert.That(g.Cpu.GetLapicState()[0x80], Is.EqualTo(0x90), "KVM keeps CR8 as the local APIC's TPR");

        g.Vm.RestoreDeviceState(saved);
        Assert.That(g.Cpu.GetLapicState()[0x80], Is.EqualTo(0), "TPR restored");
        Assert.That(g.Cpu.X86.Cr8, Is.EqualTo(0UL), "the register cache was invalidated: CR8 is fetched anew");
        Assert.That(NextOut(g), Is.EqualTo((Cr8Port, 0u)), "the guest reads the restored TPR");
    }

    [Test]
    public void Clock_AfterASet_IsAtLeastWhatWasSet_ForwardAndBack()
    {
        using var vm = Kvm.CreateVirtualMachine();
        ulong now = Clock(vm.GetClockState());

        ulong ahead = now + 3600UL * 1_000_000_000;
        vm.SetClockState(ClockBlob(ahead));
        ulong read = Clock(vm.GetClockState());
        Assert.That(read, Is.InRange(ahead, ahead + 60UL * 1_000_000_000), "an hour ahead");

        const ulong back = 1_000_000_000;
        vm.SetClockState(ClockBlob(back));
        read = Clock(vm.GetClockState());
        Assert.That(read, Is.InRange(back, back + 60UL * 1_000_000_000), "back to one second");
    }

    private static ulong Clock(byte[] state) => StructBytes.Read<kvm_clock_data>(state, "kvm_clock_data").clock;

    /// <summary>A clock state that also claims KVM_CLOCK_REALTIME with realtime 0: passed on, KVM would add all the wall-clock time since 1970.</summary>
    private static byte[] ClockBlob(ulong clock) => StructBytes.ToArray(new kvm_clock_data { clock = clock, flags = kvm_clock_data.KVM_CLOCK_REALTIME });
}
