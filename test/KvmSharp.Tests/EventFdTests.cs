using System.Buffers.Binary;
using Iced.Intel;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;
using static KvmSharp.Tests.Guests.InterruptGuest;

namespace KvmSharp.Tests;

/// <summary>
/// <see cref="EventFd"/>, and the two ways KVM uses one without an exit to user space, on stock
/// KVM: ioeventfd (guest writes to a port or an MMIO address signal it; exits counted) and irqfd
/// (signalling it raises a guest interrupt through the in-kernel PIC).
/// </summary>
public class EventFdTests : KvmTestBase
{
    private const byte NotifyPort = 0x80, ReportPort = 0x81, MatchPort = 0x82;
    private const ulong MmioAddress = 0x30_0000; // identity-mapped, past the 2 MiB of RAM: no slot

    // ---- the eventfd itself ------------------------------------------------------------------------

    [Test]
    public void Signals_AddUp_AndAReadTakesThemAll_OrOneInSemaphoreMode()
    {
        using var e = new EventFd();
        Assert.That(e.TryRead(out _), Is.False, "nothing signalled yet");
        e.Signal();
        e.Signal(41);
        Assert.That((e.TryRead(out ulong v), v), Is.EqualTo((true, 42UL)));
        Assert.That(e.TryRead(out _), Is.False, "the read reset the counter");

        using var s = new EventFd(initialValue: 2, semaphore: true);
        Assert.That((s.IsSemaphore, s.TryRead(out ulong a), a, s.TryRead(out ulong b), b, s.TryRead(out _)), Is.EqualTo((true, true, 1UL, true, 1UL, false)));
    }

    [Test]
    public void Wait_TimesOut_OrReturnsWhatAnotherThreadSignalled()
    {
        using var e = new EventFd();
        Assert.That(e.Wait(TimeSpan.FromMilliseconds(50), out _), Is.False);
        var signaller = new Thread(() => { Thread.Sleep(50); e.Signal(7); });
        signaller.Start();
        Assert.That((e.Wait(TimeSpan.FromSeconds(30), out ulong v), v), Is.EqualTo((true, 7UL)));
        signaller.Join();
    }

    [Test]
    public async Task WaitAsync_CompletesOnASignal_AndIsCancelled()
    {
        using var e = new EventFd();
        var pending = e.WaitAsync();
        Assert.That(pending.IsCompleted, Is.False);
        e.Signal(3);
        Assert.That(await pending.WaitAsync(TimeSpan.FromSeconds(30)), Is.EqualTo(3UL));

        using var cts = new CancellationTokenSource();
        var cancelled = e.WaitAsync(cts.Token);
        cts.Cancel();
        Assert.That(async () => await cancelled.WaitAsync(TimeSpan.FromSeconds(30)), Throws.InstanceOf<OperationCanceledException>());
        Assert.That(e.TryRead(out _), Is.False, "the cancelled wait took nothing");
    }

    [Test]
    public void BadInput_AndDisposal_AreClearErrors()
    {
        var e = new EventFd();
        Assert.Throws<ArgumentOutOfRangeException>(() => e.Signal(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => e.Signal(ulong.MaxValue));
        e.Signal(ulong.MaxValue - 1);
        var full = Assert.Throws<InvalidOperationException>(() => e.Signal());
        Assert.That(full!.Message, Does.Contain("EAGAIN"));
        Assert.Throws<ArgumentOutOfRangeException>(() => e.Wait(TimeSpan.FromMilliseconds(-2), out _));
        e.Dispose();
        e.Dispose();
        Assert.That(e.SafeHandle.IsClosed, Is.True);
        Assert.Throws<ObjectDisposedException>(() => e.Signal());
        Assert.Throws<ObjectDisposedException>(() => e.TryRead(out _));
    }

    // ---- ioeventfd ---------------------------------------------------------------------------------

    [Test]
    public void APortIoEventFd_TakesTheWritesWithoutExits_AndRemovingItBringsTheExitsBack()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(ecx, 100);
            var loop = TestGuest.Here(a);
            a.@out(NotifyPort, al);
            a.dec(ecx);
            a.jnz(loop);
            a.@out(ReportPort, al);
            a.@out(NotifyPort, al);
            a.@out(ReportPort, al);
            a.hlt();
        });
        using var notify = new EventFd();
        g.Vm.AddIoEventFd(notify, NotifyPort, 1, isPio: true);

        var exit = g.Cpu.Run();
        Assert.That((exit.Reason, exit.Io.Port), Is.EqualTo((VcpuExitReason.Io, (ushort)ReportPort)), "the 100 OUTs to the ioeventfd's port did not exit");
        Assert.That((notify.TryRead(out ulong n), n), Is.EqualTo((true, 100UL)), "one signal per OUT");

        g.Vm.RemoveIoEventFd(notify, NotifyPort, 1, isPio: true);
        exit = g.Cpu.Run();
        Assert.That((exit.Reason, exit.Io.Port), Is.EqualTo((VcpuExitReason.Io, (ushort)NotifyPort)), "removed: the OUT exits again");
        Assert.That(notify.TryRead(out _), Is.False);
    }

    [Test]
    public void ADataMatchIoEventFd_TakesOnlyThatValue()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(al, 0x41);
            a.@out(MatchPort, al);
            a.mov(al, 0x42);
            a.@out(MatchPort, al);
            a.@out(ReportPort, al);
            a.hlt();
        });
        using var match = new EventFd();
        g.Vm.AddIoEventFd(match, MatchPort, 1, isPio: true, dataMatch: 0x42);
        var exit = g.Cpu.Run();
        Assert.That((exit.Reason, exit.Io.Port, exit.Io.Data[0]), Is.EqualTo((VcpuExitReason.Io, (ushort)MatchPort, (byte)0x41)), "another value exits as usual");
        Assert.That(match.TryRead(out _), Is.False);
        exit = g.Cpu.Run();
        Assert.That((exit.Reason, exit.Io.Port), Is.EqualTo((VcpuExitReason.Io, (ushort)ReportPort)), "0x42 did not exit");
        Assert.That((match.TryRead(out ulong n), n), Is.EqualTo((true, 1UL)));
    }

    [Test]
    public void AnMmioIoEventFd_TakesTheWrite_OfItsLengthOnly()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rdi, MmioAddress);
            a.mov(__dword_ptr[rdi], 0x1234);  // 4 bytes: the ioeventfd's
            a.mov(__word_ptr[rdi], 0x5678);   // 2 bytes: not its length, an MMIO exit
            a.hlt();
        });
        using var notify = new EventFd();
        g.Vm.AddIoEventFd(notify, MmioAddress, 4);
        var exit = g.Cpu.Run();
        Assert.That((exit.Reason, exit.Mmio.Address, exit.Mmio.Length, BinaryPrimitives.ReadUInt16LittleEndian(exit.Mmio.Data)),
            Is.EqualTo((VcpuExitReason.Mmio, MmioAddress, 2, (ushort)0x5678)));
        Assert.That((notify.TryRead(out ulong n), n), Is.EqualTo((true, 1UL)), "the 4-byte write signalled without an exit");
    }

    [Test]
    public void IoEventFd_BadRegistrations_AreRefusedWithTheirReason()
    {
        using var vm = Kvm.CreateVirtualMachine();
        using var e = new EventFd();
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddIoEventFd(e, 0x80, 3, isPio: true));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddIoEventFd(e, 0x80, 1, isPio: true, dataMatch: 0x100), "a data match wider than the write");
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddIoEventFd(e, 0x1_0000, 1, isPio: true));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddIoEventFd(e, ulong.MaxValue - 1, 4));

        vm.AddIoEventFd(e, 0x80, 1, isPio: true);
        var twice = Assert.Throws<KvmException>(() => vm.AddIoEventFd(e, 0x80, 1, isPio: true));
        Assert.That((twice!.Operation, twice.ErrnoName), Is.EqualTo(("KVM_IOEVENTFD", "EEXIST")));
        var none = Assert.Throws<KvmException>(() => vm.RemoveIoEventFd(e, 0x90, 1, isPio: true));
        Assert.That(none!.ErrnoName, Is.EqualTo("ENOENT"));
        Assert.That(none.Message, Does.Contain("port 0x90"));
        vm.RemoveIoEventFd(e, 0x80, 1, isPio: true);
    }

    // ---- irqfd -------------------------------------------------------------------------------------

    [Test]
    public void AnIrqFd_RaisesTheGuestInterrupt_FromAnyThread_UntilItIsRemoved()
    {
        using var g = IrqLineGuest(Kvm, reportPending: false);
        Assert.That(NextOut(g).Port, Is.EqualTo(ReadyPort));
        using var irq = new EventFd();
        g.Vm.AddIrqFd(irq, 4);

        var signaller = new Thread(() => irq.Signal());
        signaller.Start();
        signaller.Join();
        Assert.That(NextOut(g), Is.EqualTo((LinePort, 1u)), "the signal became IRQ4 (vector 0x24) without an ioctl");
        irq.Signal();
        Assert.That(NextOut(g), Is.EqualTo((LinePort, 2u)), "each signal is an edge");

        g.Vm.RemoveIrqFd(irq, 4);
        irq.Signal();
        AssertQuiet(g, 0, "removed: a signal raises nothing", TimeSpan.FromMilliseconds(500));
    }

    [Test]
    public void IrqFd_BadRegistrations_AreRefusedWithTheirReason()
    {
        using var e = new EventFd();
        using (var bare = Kvm.CreateVirtualMachine())
        {
            var noChip = Assert.Throws<InvalidOperationException>(() => bare.AddIrqFd(e, 4));
            Assert.That(noChip!.Message, Does.Contain("CreateIrqChip"));
        }
        using var vm = Kvm.CreateVirtualMachine();
        vm.CreateIrqChip();
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddIrqFd(e, -1));
        vm.AddIrqFd(e, 4);
        var twice = Assert.Throws<KvmException>(() => vm.AddIrqFd(e, 5));
        Assert.That((twice!.Operation, twice.ErrnoName), Is.EqualTo(("KVM_IRQFD", "EBUSY")), "one eventfd, one irqfd");
        vm.RemoveIrqFd(e, 4);
        vm.AddIrqFd(e, 5);
    }
}
