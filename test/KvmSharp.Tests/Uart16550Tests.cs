using System.IO.Pipelines;
using System.Text;
using Iced.Intel;
using KvmSharp.Devices;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;
using static KvmSharp.Tests.Guests.InterruptGuest;

namespace KvmSharp.Tests;

/// <summary>
/// The 16550A UART: its registers as a driver probes them, and on stock KVM a CPL0 guest whose
/// IRQ4 handler echoes every received byte — input from <see cref="Uart16550.Input"/>, interrupts
/// through the in-kernel PIC, output to <see cref="Uart16550.Output"/>.
/// </summary>
public class Uart16550Tests : KvmTestBase
{
    private const ushort Com1 = 0x3F8;

    [Test]
    public void Registers_ReadBackAsA16550A()
    {
        using var vm = Kvm.CreateVirtualMachine();
        using var cpu = vm.CreateVcpu();
        var runner = new VcpuRunner(cpu, new IoBus());
        var levels = new List<bool>();
        using var uart = new Uart16550(levels.Add);
        byte In(int reg) { Span<byte> b = stackalloc byte[1]; uart.Read(new IoContext(runner, true, Com1 + (ulong)reg), (ulong)reg, b); return b[0]; }
        void Out(int reg, byte v) => uart.Write(new IoContext(runner, true, Com1 + (ulong)reg), (ulong)reg, [v]);

        Out(7, 0x5A);
        Assert.That(In(7), Is.EqualTo(0x5A), "scratch");
        Out(3, 0x80);                     // DLAB
        Out(0, 0x01);
        Out(1, 0x00);
        Assert.That((In(0), In(1)), Is.EqualTo(((byte)0x01, (byte)0x00)), "divisor latch");
        Out(3, 0x03);
        Assert.That(In(3), Is.EqualTo(0x03));
        Assert.That(In(2), Is.EqualTo(0x01), "no interrupt pending, FIFOs off");
        Out(2, 0xC7);
        Assert.That(In(2) & 0xC0, Is.EqualTo(0xC0), "FIFOs enabled: a 16550A to the Linux probe");
        Assert.That(In(5) & 0x61, Is.EqualTo(0x60), "transmitter empty, no data");

        Out(1, 0x02);                     // THRE interrupt: raised at once, the register being empty
        Assert.That(levels, Is.EqualTo(new[] { true }));
        Assert.That(In(2) & 0x0F, Is.EqualTo(0x02), "THRE is the source; reading IIR clears it");
        Assert.That(levels, Is.EqualTo(new[] { true, false }));
        Out(0, (byte)'x');
        Assert.That(levels, Is.EqualTo(new[] { true, false, true }), "sent: empty again, interrupt again");
        Out(1, 0x00);
        Assert.That(levels.Last(), Is.False);
        Assert.That(uart.BytesTransmitted, Is.EqualTo(1));

        Out(4, 0x10);                     // loopback
        Out(0, (byte)'L');
        Assert.That((In(5) & 1, In(0), In(5) & 1), Is.EqualTo((1, (byte)'L', 0)), "looped back into the receiver");
    }

    [Test]
    public void CapturedState_PutsRegistersAndFifoBack_AndDrivesTheLineAgain()
    {
        var levels = new List<bool>();
        using var uart = new Uart16550(level => { lock (levels) levels.Add(level); });
        byte In(int reg) { Span<byte> b = stackalloc byte[1]; uart.Read(default, (ulong)reg, b); return b[0]; }
        void Out(int reg, byte v) => uart.Write(default, (ulong)reg, [v]);
        bool[] Levels() { lock (levels) return [.. levels]; }

        Out(3, 0x80); Out(0, 0x03); Out(1, 0x00); Out(3, 0x03); // divisor 3, 8N1
        Out(2, 0xC7); Out(7, 0x42);
        Out(1, 0x01);                                           // received-data interrupt
        uart.Input.WriteAsync("ab"u8.ToArray()).AsTask().Wait(TimeSpan.FromSeconds(30));
        Wait.Until(() => Levels().Contains(true), "the input pump filled the FIFO and raised the line");
        Assert.That(In(5) & 1, Is.EqualTo(1), "data ready");
        byte[] state = uart.CaptureState();

        // The guest moves on: reads a byte, masks the interrupts, changes the divisor and the scratch register.
        Assert.That(In(0), Is.EqualTo((byte)'a'));
        Out(1, 0x00); Out(7, 0x00); Out(3, 0x80); Out(0, 0x99); Out(3, 0x03);
        Assert.That(Levels().Last(), Is.False, "interrupts masked: the line is low");

        lock (levels) levels.Clear();
        uart.RestoreState(state);
        Assert.That(Levels(), Is.EqualTo(new[] { false, true }), "lowered, then raised: an edge for the received-data interrupt pending again");
        Assert.That((In(1), In(7), In(2) & 0x0F), Is.EqualTo(((byte)0x01, (byte)0x42, 0x04)), "IER, scratch; IIR: received data");
        Out(3, 0x80);
        Assert.That(In(0), Is.EqualTo(3), "the divisor latch");
        Out(3, 0x03);
        Assert.That((In(0), In(0), In(5) & 1), Is.EqualTo(((byte)'a', (byte)'b', 0)), "the FIFO as captured");
        Assert.That(Levels().Last(), Is.False, "emptied: the line is low again");

        var bad = (byte[])state.Clone();
        bad[0] = 9;
        Assert.That(() => uart.RestoreState(bad), Throws.ArgumentException.With.Message.Contains("Not a Uart16550 state of version 1").And.Message.Contains("version byte 9"));
        Assert.That(() => uart.RestoreState(state.AsSpan(0, state.Length - 1)), Throws.ArgumentException.With.Message.Contains($"{state.Length - 1} bytes"));
        Assert.That(In(7), Is.EqualTo(0x42), "a refused state changes nothing");

        uart.Dispose();
        Assert.That(() => uart.CaptureState(), Throws.InstanceOf<ObjectDisposedException>());
        Assert.That(() => uart.RestoreState(state), Throws.InstanceOf<ObjectDisposedException>());
    }

    /// <summary>Programs COM1 (8N1, FIFOs, RX interrupt), unmasks IRQ4 and idles; the IRQ4 handler echoes what it receives.</summary>
    private TestGuest EchoGuest()
    {
        Label handler = default;
        var g = Create(Kvm, pit: false, a =>
        {
            InitPics(a, 0xEF);
            void OutDx(ushort port, byte value) { a.mov(dx, port); a.mov(al, value); a.@out(dx, al); }
            OutDx(Com1 + 1, 0x00);
            OutDx(Com1 + 3, 0x80);
            OutDx(Com1 + 0, 0x01);
            OutDx(Com1 + 1, 0x00);
            OutDx(Com1 + 3, 0x03);
            OutDx(Com1 + 2, 0xC7);
            OutDx(Com1 + 4, 0x0B);
            OutDx(Com1 + 1, 0x01);        // received-data interrupt
            Out(a, ReadyPort, 1);          // initialised: bytes sent before the FIFO clear above would be gone, as on hardware
            IdleWithInterrupts(a);

            handler = TestGuest.Here(a);
            a.push(rax);
            a.push(rdx);
            var more = TestGuest.Here(a);
            var done = a.CreateLabel();
            a.mov(dx, (ushort)(Com1 + 5));
            a.@in(al, dx);
            a.test(al, 1);
            a.jz(done);
            a.mov(dx, Com1);
            a.@in(al, dx);
            a.@out(dx, al);               // echo
            a.jmp(more);
            a.Label(ref done);
            Out(a, 0x20, 0x20);            // EOI to the master PIC
            a.pop(rdx);
            a.pop(rax);
            a.iretq();
        });
        InstallGate(g, MasterBase + 4, handler);
        return g;
    }

    [TestCase(12)]
    [TestCase(200)]
    public async Task AGuestWithAnIrq4Handler_EchoesWhatTheHostSends_InOrder(int length)
    {
        using var g = EchoGuest();
        using var uart = new Uart16550(level => g.Vm.SetIrqLine(4, level));
        var bus = new IoBus();
        bus.MapPorts(Com1, 8, uart);
        var ready = new Signal();
        bus.MapPorts(ReadyPort, 1, ready);
        var runner = new VcpuRunner(g.Cpu, bus);
        var run = Task.Factory.StartNew(() => runner.Run(TimeSpan.FromMinutes(2)), TaskCreationOptions.LongRunning);
        await ready.Task.WaitAsync(TimeSpan.FromMinutes(1));

        // More than the 16-byte FIFO: the input waits for the guest to read, nothing is lost.
        byte[] sent = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Range(0, length).Select(i => (char)('a' + i % 26))));
        await uart.Input.WriteAsync(sent);
        var echoed = new List<byte>();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        while (echoed.Count < sent.Length)
        {
            var reading = uart.Output.ReadAsync(timeout.Token).AsTask();
            if (await Task.WhenAny(reading, run) == run && !reading.IsCompleted)
                Assert.Fail($"the guest stopped before echoing everything ({echoed.Count} of {sent.Length} bytes): {run.Result}");
            var read = await reading;
            foreach (var segment in read.Buffer) echoed.AddRange(segment.ToArray());
            uart.Output.AdvanceTo(read.Buffer.End);
        }
        runner.RequestStop();
        var result = await run.WaitAsync(TimeSpan.FromMinutes(1));
        Assert.That(result.Reason, Is.EqualTo(RunStopReason.StopRequested), result.ToString());
        Assert.That(Encoding.ASCII.GetString(echoed.ToArray()), Is.EqualTo(Encoding.ASCII.GetString(sent)), "every byte, once, in order");
    }

    /// <summary>A port that completes <see cref="Task"/> when the guest writes it.</summary>
    private sealed class Signal : IIoDevice
    {
        private readonly TaskCompletionSource _written = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task Task => _written.Task;

        public void Read(IoContext context, ulong offset, Span<byte> data) => data.Clear();

        public void Write(IoContext context, ulong offset, ReadOnlySpan<byte> data) => _written.TrySetResult();
    }
}
