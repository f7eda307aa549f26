using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;
using static KvmSharp.Tests.Guests.InterruptGuest;

namespace KvmSharp.Tests;

/// <summary>
/// The typed state of the in-kernel devices on stock KVM: a vCPU's local APIC (<see cref="Vcpu.GetLapic"/>),
/// the PICs (<see cref="VirtualMachine.GetPic"/>), the IOAPIC (<see cref="VirtualMachine.GetIoApic"/>) and the
/// PIT (<see cref="VirtualMachine.GetPit"/>), each with its setter. In each test a CPL0 guest observes what the
/// host set (an interrupt delivered, masked or moved to another vector, a TPR read as CR8, a PIT mode read
/// back through the PIT's ports), and the host reads what the guest did.
/// </summary>
public class TypedDeviceStateTests : KvmTestBase
{
    private const byte PitStatusPort = 0xE8, PitCountPort = 0xE9;

    [Test]
    public void Tpr_SetByTheHost_IsTheGuestsCr8_AndTheGuestsCr8_IsTheHostsTpr()
    {
        using var g = Cr8Guest(Kvm);
        Assert.That(NextOut(g), Is.EqualTo((Cr8Port, 0u)));
        var lapic = g.Cpu.GetLapic();
        Assert.That((lapic.TaskPriority, lapic.Id >> 24, lapic.Version & 0xFF), Is.EqualTo(((byte)0, 0u, 0x14u)), "TPR 0, APIC id 0, an integrated APIC's version");

        Assert.That(NextOut(g), Is.EqualTo((Cr8Port, 9u)));
        Assert.That(g.Cpu.GetLapic().TaskPriority, Is.EqualTo(0x90), "the guest's CR8 is the host's TPR");

        lapic = g.Cpu.GetLapic();
        lapic.TaskPriority = 0x50;
        _ = g.Cpu.X86.Cr8; // cached now: SetLapic must invalidate it
        g.Cpu.SetLapic(lapic);
        Assert.That(g.Cpu.X86.Cr8, Is.EqualTo(5UL), "the register cache fetches CR8 anew");
        Assert.That(NextOut(g), Is.EqualTo((Cr8Port, 5u)), "the guest reads the TPR the host set");

        g.Cpu.X86.Cr8 = 3; // dirty in the cache: GetLapic writes it back first
        Assert.That(g.Cpu.GetLapic().TaskPriority, Is.EqualTo(0x30));
        Assert.That(NextOut(g), Is.EqualTo((Cr8Port, 3u)));
    }

    [Test]
    public void ApicTimer_ArmedByTheHost_InterruptsTheGuestOnce_WhichTheHostSeesInService()
    {
        using var g = X2ApicGuest(Kvm);
        var lapic = g.Cpu.GetLapic();
        Assert.That(lapic.SpuriousInterruptVector, Is.EqualTo(0x1FFu), "the guest's SVR write");
        Assert.That(lapic.LvtTimer & 0x10000, Is.EqualTo(0x10000u), "the timer starts masked");

        lapic.TimerDivideConfiguration = 0xB; // divide by 1
        lapic.LvtTimer = ApicVectorA;         // one-shot, unmasked
        lapic.TimerInitialCount = lapic.TimerCurrentCount = 200_000;
        g.Cpu.SetLapic(lapic);
        Assert.That(NextOut(g), Is.EqualTo((ApicPortA, 1u)), "the timer's interrupt, vector 0x40");

        var during = g.Cpu.GetLapic(); // in the handler, before its EOI
        Assert.That((during.IsInService(ApicVectorA), during.IsInService(ApicVectorB), during.IsRequested(ApicVectorA)), Is.EqualTo((true, false, false)));
        Assert.That((during.LvtTimer, during.TimerInitialCount, during.TimerCurrentCount), Is.EqualTo(((uint)ApicVectorA, 200_000u, 0u)), "one-shot: expired");
        AssertQuiet(g, 0, "a one-shot timer fires once", TimeSpan.FromMilliseconds(500));
        Assert.That(g.Cpu.GetLapic().IsInService(ApicVectorA), Is.False, "the guest's EOI cleared it");
    }

    [Test]
    public void AVectorRequestedByTheHost_IsDelivered()
    {
        using var g = X2ApicGuest(Kvm);
        var lapic = g.Cpu.GetLapic();
        Assert.That(lapic.IsRequested(ApicVectorB), Is.False);
        lapic[0x200 + ApicVectorB / 32 * 0x10] |= 1u << (ApicVectorB % 32); // the IRR bit of vector 0x41
        Assert.That(lapic.IsRequested(ApicVectorB), Is.True);
        g.Cpu.SetLapic(lapic);
        Assert.That(NextOut(g), Is.EqualTo((ApicPortB, 1u)));
        AssertQuiet(g, 0, "requested once, delivered once", TimeSpan.FromMilliseconds(500));
    }

    [Test]
    public void PicMask_SetByTheHost_HoldsAnIrqBack_UntilTheHostUnmasksIt()
    {
        using var g = IrqLineGuest(Kvm, reportPending: false);
        Assert.That(NextOut(g).Port, Is.EqualTo(ReadyPort));
        var master = g.Vm.GetPic(PicChip.Master);
        var slave = g.Vm.GetPic(PicChip.Slave);
        Assert.That((master.IrqBase, master.Imr, master.InitState, master.Init4), Is.EqualTo(((byte)MasterBase, (byte)0xEF, (byte)0, true)), "the guest's ICW2, OCW1, ICW4");
        Assert.That((slave.IrqBase, slave.Imr), Is.EqualTo(((byte)SlaveBase, (byte)0xFF)));
        Assert.That((master.ElcrMask, slave.ElcrMask), Is.EqualTo(((byte)0xF8, (byte)0xDE)));

        g.Vm.SetPic(PicChip.Master, master with { Imr = 0xFF });
        RaiseEdge(g.Vm, 4);
        AssertQuiet(g, 0, "IRQ4 masked by the host", TimeSpan.FromMilliseconds(500));
        var held = g.Vm.GetPic(PicChip.Master);
        Assert.That((held.Imr, held.Irr & 0x10), Is.EqualTo(((byte)0xFF, 0x10)), "pending in the IRR, masked");

        g.Vm.SetPic(PicChip.Master, held with { Imr = 0xEF });
        Assert.That(NextOut(g), Is.EqualTo((LinePort, 1u)), "unmasked by the host: delivered");
        Assert.That(g.Vm.GetPic(PicChip.Master).Irr & 0x10, Is.Zero);
    }

    [Test]
    public void IoApicEntry_ProgrammedByTheHost_DeliversItsVector_AndAMaskedOneNothing()
    {
        using var g = X2ApicGuest(Kvm);
        // GSI 5 reaches the PIC too, whose IRQ5 the unprogrammed PIC would deliver as vector 5: mask it.
        g.Vm.SetPic(PicChip.Master, g.Vm.GetPic(PicChip.Master) with { Imr = 0xFF });
        var ioApic = g.Vm.GetIoApic();
        Assert.That((ioApic.BaseAddress, ioApic.Id, ioApic.Irr), Is.EqualTo((0xFEC0_0000UL, 0u, 0u)));
        Assert.That(Enumerable.Range(0, IoApicState.PinCount).All(pin => ioApic[pin].Masked), "KVM creates every entry masked");

        var entry = new IoApicRedirectionEntry(0) { Vector = ApicVectorB, Masked = false }; // fixed, physical APIC 0, edge, active high
        Assert.That(entry.Bits, Is.EqualTo((ulong)ApicVectorB));
        ioApic[5] = entry;
        g.Vm.SetIoApic(ioApic);
        Assert.That(g.Vm.GetIoApic()[5], Is.EqualTo(entry), "read back as set");
        RaiseEdge(g.Vm, 5);
        Assert.That(NextOut(g), Is.EqualTo((ApicPortB, 1u)), "pin 5 → the vector the host programmed");

        ioApic[5] = entry with { Vector = ApicVectorA };
        g.Vm.SetIoApic(ioApic);
        RaiseEdge(g.Vm, 5);
        Assert.That(NextOut(g), Is.EqualTo((ApicPortA, 1u)), "reprogrammed to vector 0x40");

        ioApic[5] = entry with { Masked = true };
        g.Vm.SetIoApic(ioApic);
        RaiseEdge(g.Vm, 5);
        AssertQuiet(g, 0, "pin 5 masked", TimeSpan.FromMilliseconds(500));
    }

    [Test]
    public void PitChannel0_ProgrammedByTheHost_IsWhatTheGuestReadsBack_AndViceVersa()
    {
        using var g = Create(Kvm, pit: true, a =>
        {
            Out(a, ReadyPort, 1);
            Out(a, 0x43, 0xE2);  // read-back: latch channel 0's status
            a.@in(al, 0x40);
            a.movzx(eax, al);
            a.@out(PitStatusPort, eax);
            Out(a, 0x43, 0x00);  // counter latch, channel 0
            a.@in(al, 0x40);
            a.movzx(ebx, al);
            a.@in(al, 0x40);
            a.movzx(eax, al);
            a.shl(eax, 8);
            a.or(eax, ebx);
            a.@out(PitCountPort, eax);
            Out(a, 0x43, 0x36);  // channel 0, low then high byte, mode 3, binary
            Out(a, 0x40, 0x34);
            Out(a, 0x40, 0x12);
            Out(a, BrokePort, 1);
            var spin = TestGuest.Here(a);
            a.jmp(spin);
        });
        Assert.That(NextOut(g).Port, Is.EqualTo(ReadyPort));
        var pit = g.Vm.GetPit();
        Assert.That((pit.Channel0.Mode, pit.Channel0.Count, pit.Channel0.Gate, pit.Channel2.Gate, pit.Flags),
            Is.EqualTo(((byte)0xFF, 0x10000u, true, false, PitStateFlags.None)), "never programmed: KVM's reset state");

        const uint Count = 1000;
        g.Vm.SetPit(pit with { Channel0 = pit.Channel0 with { Mode = 2, Count = Count, ReadWriteMode = 3, ReadState = 3, WriteState = 3 } });
        var status = NextOut(g);
        Assert.That((status.Port, status.Value & 0x7F), Is.EqualTo((PitStatusPort, 0x34u)), "status: low/high access, mode 2, binary (bit 7, the output, varies)");
        var latched = NextOut(g);
        Assert.That(latched.Port, Is.EqualTo(PitCountPort));
        Assert.That(latched.Value, Is.InRange(1u, Count), "counting down from the host's count");

        Assert.That(NextOut(g).Port, Is.EqualTo(BrokePort));
        var programmed = g.Vm.GetPit().Channel0;
        Assert.That((programmed.Mode, programmed.Count, programmed.ReadWriteMode, programmed.Bcd), Is.EqualTo(((byte)3, 0x1234u, (byte)3, false)), "the guest's control word and count");
    }

    [Test]
    public void HpetLegacyFlag_SetByTheHost_SilencesChannel0_AndClearingItRestartsTheTicks()
    {
        using var g = TickGuest(Kvm);
        var pit = g.Vm.GetPit();
        g.Vm.SetPit(pit with { Flags = PitStateFlags.HpetLegacy });
        AssertQuiet(g, 0, "an HPET has the PIT's interrupt: KVM runs no timer for channel 0");

        pit = g.Vm.GetPit();
        Assert.That((pit.Flags, pit.Channel0.Mode, pit.Channel0.Count), Is.EqualTo((PitStateFlags.HpetLegacy, (byte)2, (uint)Divisor100Hz)), "the guest programmed the PIT all the same");
        g.Vm.SetPit(pit with { Flags = PitStateFlags.None });
        Assert.That(NextOut(g), Is.EqualTo((TickPort, 1u)), "ticks again");
    }

    [Test]
    public void BadArguments_AreRefusedWithTheirReason()
    {
        using (var bare = Kvm.CreateVirtualMachine())
        using (var cpu = bare.CreateVcpu())
        {
            Assert.That(Assert.Throws<InvalidOperationException>(() => bare.GetPic(PicChip.Master))!.Message, Does.Contain("CreateIrqChip"));
            Assert.That(Assert.Throws<InvalidOperationException>(() => bare.GetIoApic())!.Message, Does.Contain("CreateIrqChip"));
            Assert.That(Assert.Throws<InvalidOperationException>(() => bare.SetIoApic(new IoApicState()))!.Message, Does.Contain("CreateIrqChip"));
            Assert.That(Assert.Throws<InvalidOperationException>(() => cpu.GetLapic())!.Message, Does.Contain("no in-kernel local APIC"));
            Assert.That(Assert.Throws<InvalidOperationException>(() => bare.GetPit())!.Message, Does.Contain("CreatePit"));
        }

        using var g = Create(Kvm, pit: false, a => a.hlt());
        var vm = g.Vm;
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.GetPic((PicChip)2));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.SetPic((PicChip)(-1), vm.GetPic(PicChip.Master)));
        Assert.Throws<ArgumentNullException>(() => vm.SetIoApic(null!));
        Assert.Throws<ArgumentNullException>(() => g.Cpu.SetLapic(null!));
        Assert.That(Assert.Throws<InvalidOperationException>(() => vm.GetPit())!.Message, Does.Contain("CreatePit"));
        vm.CreatePit();
        var pit = vm.GetPit();
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.SetPit(pit with { Channel1 = pit.Channel1 with { Count = 0 } }));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.SetPit(pit with { Channel2 = pit.Channel2 with { Count = 0x10001 } }));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.SetPit(pit with { Channel0 = pit.Channel0 with { Mode = 6 } }));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.SetPit(pit with { Flags = (PitStateFlags)4 }));
        vm.SetPit(pit);
        Assert.That(WithoutLoadTimes(vm.GetPit()), Is.EqualTo(WithoutLoadTimes(pit)), "round trip (KVM stamps each load time anew)");

        var ioApic = vm.GetIoApic();
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = ioApic[IoApicState.PinCount]);
        Assert.Throws<ArgumentOutOfRangeException>(() => ioApic[-1] = default);
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new IoApicRedirectionEntry(0) { DeliveryMode = 8 });
        var lapic = g.Cpu.GetLapic();
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = lapic[0x81]);
        Assert.Throws<ArgumentOutOfRangeException>(() => lapic[0x400] = 0);
        Assert.Throws<ArgumentOutOfRangeException>(() => lapic.IsRequested(256));
        Assert.Throws<ArgumentException>(() => _ = new LocalApicState(new byte[LocalApicState.Size - 1]));
        Assert.That(new LocalApicState(lapic.ToArray()).ToArray(), Is.EqualTo(lapic.ToArray()));
    }

    private static PitState WithoutLoadTimes(PitState p) => p with
    {
        Channel0 = p.Channel0 with { CountLoadTime = 0 },
        Channel1 = p.Channel1 with { CountLoadTime = 0 },
        Channel2 = p.Channel2 with { CountLoadTime = 0 },
    };

    [Test]
    public void AnotherThreadsVcpu_IsRefused()
    {
        using var g = Create(Kvm, pit: false, a =>
        {
            Out(a, ReadyPort, 1);
            a.hlt();
        });
        using var ran = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var owner = new Thread(() =>
        {
            g.Cpu.Run(TimeSpan.FromSeconds(30));
            ran.Set();
            release.Wait(TimeSpan.FromMinutes(1));
            g.Cpu.ReleaseOwnership();
        }) { IsBackground = true };
        owner.Start();
        try
        {
            Assert.That(ran.Wait(TimeSpan.FromSeconds(30)), "the other thread ran the vCPU");
            var lapic = Assert.Throws<InvalidOperationException>(() => g.Cpu.GetLapic());
            Assert.That(lapic!.Message, Does.Contain("owned by thread"));
            Assert.Throws<InvalidOperationException>(() => g.Cpu.SetLapic(new LocalApicState(new byte[LocalApicState.Size])));
            Assert.Throws<InvalidOperationException>(() => g.Cpu.GetTscKhz());
            Assert.Throws<InvalidOperationException>(() => g.Cpu.SetTscKhz(1_000_000));
            Assert.That(g.Vm.GetPic(PicChip.Master).ElcrMask, Is.EqualTo(0xF8), "the VM's devices are any thread's");
        }
        finally
        {
            release.Set();
            owner.Join(TimeSpan.FromSeconds(30));
        }
        Assert.That(g.Cpu.GetLapic().Id, Is.Zero, "free again");
    }
}
