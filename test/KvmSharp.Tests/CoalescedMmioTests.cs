using System.Buffers.Binary;
using KvmSharp.Devices;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

/// <summary>
/// Coalesced MMIO and PIO on stock KVM: guest writes to a zone cause no exit; they wait in KVM's
/// ring and are delivered in order by <see cref="Vcpu.DrainCoalescedWrites"/> — by
/// <see cref="VcpuRunner"/> at every exit, before the exit's own access.
/// </summary>
public class CoalescedMmioTests : KvmTestBase
{
    private const ulong Zone = 0x30_0000;      // identity-mapped, past the 2 MiB of RAM: no slot
    private const byte ReportPort = 0x81, PioZone = 0x90;

    /// <summary>The guest writes i to Zone + 4i for i = 0..9, then OUTs to the report port.</summary>
    private TestGuest TenWritesThenReport() => TestGuest.LongMode(Kvm, a =>
    {
        a.mov(rdi, Zone);
        a.xor(eax, eax);
        var loop = TestGuest.Here(a);
        a.mov(__dword_ptr[rdi + rax * 4], eax);
        a.inc(eax);
        a.cmp(eax, 10);
        a.jne(loop);
        a.@out(ReportPort, al);
        a.hlt();
    });

    [Test]
    public void WritesToAZone_CauseNoExit_AndAreDrainedInOrder()
    {
        using var g = TenWritesThenReport();
        g.Vm.AddCoalescedMmio(Zone, 0x1000);
        var exit = g.Cpu.Run();
        Assert.That((exit.Reason, exit.Io.Port), Is.EqualTo((VcpuExitReason.Io, (ushort)ReportPort)), "the ten MMIO writes did not exit");

        var writes = new List<(ulong, uint, bool)>();
        int drained = g.Cpu.DrainCoalescedWrites((address, data, pio) => writes.Add((address, BinaryPrimitives.ReadUInt32LittleEndian(data), pio)));
        Assert.That(drained, Is.EqualTo(10));
        Assert.That(writes, Is.EqualTo(Enumerable.Range(0, 10).Select(i => (Zone + 4 * (ulong)i, (uint)i, false))));
        Assert.That(g.Cpu.DrainCoalescedWrites((_, _, _) => Assert.Fail("the ring is empty now")), Is.Zero);
    }

    [Test]
    public void WithoutAZone_EachWriteExits_AndRemovingTheZoneBringsTheExitsBack()
    {
        using var g = TenWritesThenReport();
        g.Vm.AddCoalescedMmio(Zone, 0x1000);
        g.Vm.RemoveCoalescedMmio(Zone, 0x1000);
        var exit = g.Cpu.Run();
        Assert.That((exit.Reason, exit.Mmio.Address), Is.EqualTo((VcpuExitReason.Mmio, Zone)), "no zone: the first write exits");
        Assert.That(g.Cpu.DrainCoalescedWrites((_, _, _) => Assert.Fail("nothing was coalesced")), Is.Zero);
    }

    [Test]
    public void APortZone_CoalescesOuts()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            for (byte i = 1; i <= 5; i++)
            {
                a.mov(al, i);
                a.@out(PioZone, al);
            }
            a.@out(ReportPort, al);
            a.hlt();
        });
        g.Vm.AddCoalescedMmio(PioZone, 1, isPio: true);
        var exit = g.Cpu.Run();
        Assert.That((exit.Reason, exit.Io.Port), Is.EqualTo((VcpuExitReason.Io, (ushort)ReportPort)));
        var outs = new List<(ulong, byte, bool)>();
        g.Cpu.DrainCoalescedWrites((port, data, pio) => outs.Add((port, data[0], pio)));
        Assert.That(outs, Is.EqualTo(Enumerable.Range(1, 5).Select(i => ((ulong)PioZone, (byte)i, true))));
    }

    [Test]
    public void VcpuRunner_DeliversCoalescedWritesToTheirDevice_BeforeTheExitThatFollows()
    {
        using var g = TenWritesThenReport();
        g.Vm.AddCoalescedMmio(Zone, 0x1000);
        var seen = new List<string>();
        var bus = new IoBus();
        bus.MapMmio(Zone, 0x1000, new Recorder(seen, "mmio"));
        bus.MapPorts(ReportPort, 1, new Recorder(seen, "report", stop: true));
        var result = new VcpuRunner(g.Cpu, bus).Run(TimeSpan.FromSeconds(60));
        Assert.That(result.Reason, Is.EqualTo(RunStopReason.StopRequested), result.ToString());
        Assert.That(result.Exits, Is.EqualTo(1), "one exit for eleven writes");
        Assert.That(seen, Is.EqualTo(Enumerable.Range(0, 10).Select(i => $"mmio +{4 * i:X} = {i}").Append("report +0 = 10")));
    }

    [Test]
    public void BadZones_AreRefused()
    {
        using var vm = Kvm.CreateVirtualMachine();
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddCoalescedMmio(Zone, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddCoalescedMmio(ulong.MaxValue - 4, 0x10));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddCoalescedMmio(0xFFF0, 0x20, isPio: true));
        Assert.Throws<ArgumentNullException>(() => vm.CreateVcpu().DrainCoalescedWrites(null!));
    }

    private sealed class Recorder(List<string> seen, string name, bool stop = false) : IIoDevice
    {
        public void Read(IoContext context, ulong offset, Span<byte> data) => data.Clear();

        public void Write(IoContext context, ulong offset, ReadOnlySpan<byte> data)
        {
            ulong value = 0;
            for (int i = data.Length - 1; i >= 0; i--) value = value << 8 | data[i];
            seen.Add($"{name} +{offset:X} = {value}");
            if (stop) context.RequestStop();
        }
    }
}
