using KvmSharp.Devices;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

/// <summary>A guest resetting itself the two ways a PC without ACPI does ends the run with <see cref="RunStopReason.GuestReset"/>, on stock KVM.</summary>
public class ResetDeviceTests : KvmTestBase
{
    private static RunResult RunWithResetDevice(TestGuest g, ResetDevice reset)
    {
        var bus = new IoBus();
        bus.MapPorts(ResetDevice.ResetControlPort, 1, reset);
        bus.MapPorts(ResetDevice.KeyboardControllerPort, 1, reset);
        return new VcpuRunner(g.Cpu, bus) { UnclaimedPolicy = UnclaimedAccessPolicy.Stop }.Run(TimeSpan.FromMinutes(1));
    }

    [Test]
    public void TheKeyboardControllersResetPulse_EndsTheRun_AfterTheGuestWaitedForItsInputBuffer()
    {
        var reset = new ResetDevice();
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            var wait = TestGuest.Here(a);
            a.@in(al, 0x64);           // status: wait until the input buffer is empty (bit 1), as Linux does
            a.test(al, 2);
            a.jnz(wait);
            a.mov(al, 0xD1);           // another command: ignored
            a.@out(0x64, al);
            a.mov(al, 0xFE);           // pulse the reset line
            a.@out(0x64, al);
            a.mov(al, 0x99);
            a.@out(0x99, al);          // never reached: unclaimed, would stop the run otherwise
            a.hlt();
        });
        var result = RunWithResetDevice(g, reset);
        Assert.That((result.Reason, result.Address, result.LastExit), Is.EqualTo((RunStopReason.GuestReset, 0x64UL, VcpuExitReason.Io)), result.ToString());
        Assert.That(reset.ResetCount, Is.EqualTo(1));
    }

    [Test]
    public void TheResetControlRegister_EndsTheRunOnlyWhenBit2IsWritten()
    {
        var reset = new ResetDevice();
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            var fail = a.CreateLabel();
            a.mov(dx, ResetDevice.ResetControlPort);
            a.mov(al, 0x02);           // "hard reset" selected, not started: no reset
            a.@out(dx, al);
            a.xor(eax, eax);
            a.@in(al, dx);             // reads back what was written
            a.cmp(al, 0x02);
            a.jne(fail);
            a.mov(al, 0x06);           // start it
            a.@out(dx, al);
            a.hlt();
            a.Label(ref fail);
            a.@out(0x99, al);          // unclaimed: stops the run with its address
            a.hlt();
        });
        var result = RunWithResetDevice(g, reset);
        Assert.That((result.Reason, result.Address), Is.EqualTo((RunStopReason.GuestReset, (ulong)ResetDevice.ResetControlPort)), result.ToString());
        Assert.That(g.Cpu.X86.Rax & 0xFF, Is.EqualTo(0x06UL), "the run ended at the 0x06 write, not the 0x02 one");
        Assert.That(reset.ResetCount, Is.EqualTo(1));
    }
}
