using Iced.Intel;
using KvmSharp.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests.Guests;

/// <summary>
/// Pieces of CPL0 long-mode guests that use KVM's in-kernel 8259 PICs and 8254 PIT: programming them
/// (their ports are handled inside KVM, so the host sees no exit for it), interrupt handlers that report
/// on a port of their own, and IDT gates for them. With an in-kernel irqchip a HLT waits inside KVM, so
/// such a guest's only exits are its OUTs to the report ports below.
/// </summary>
internal static class InterruptGuest
{
    /// <summary>The tick handler writes its count (EBX) here.</summary>
    public const byte TickPort = 0xE0;
    public const byte ReadyPort = 0xE1;
    public const byte BrokePort = 0xE2;
    public const byte PendingPort = 0xE3;
    /// <summary>The IRQ-line handler writes its count (EBX) here.</summary>
    public const byte LinePort = 0xE4;
    public const byte Cr8Port = 0xE5;

    /// <summary>The PICs' vector bases (ICW2): IRQ n of the master is vector 0x20 + n.</summary>
    public const int MasterBase = 0x20, SlaveBase = 0x28;

    /// <summary>PIT channel 0 divisor for 100 Hz (1 193 182 Hz / 11 932).</summary>
    public const ushort Divisor100Hz = 11932;

    /// <summary>A guest with an in-kernel irqchip (and a PIT when <paramref name="pit"/>), created before its vCPU.</summary>
    public static TestGuest Create(Kvm kvm, bool pit, Action<Assembler> code) =>
        TestGuest.LongMode(kvm, code, beforeVcpu: vm =>
        {
            vm.CreateIrqChip();
            if (pit) vm.CreatePit();
        });

    /// <summary>
    /// A guest whose PIT ticks at 100 Hz into the master PIC's IRQ0 (vector 0x20, the only one
    /// unmasked); its handler counts ticks in EBX and reports each on <see cref="TickPort"/>, and at
    /// tick <paramref name="breakAt"/> runs <paramref name="onBreak"/>. After <paramref name="beforeSti"/>
    /// it enables interrupts and idles in HLT.
    /// </summary>
    public static TestGuest TickGuest(Kvm kvm, Action<Assembler>? beforeSti = null, int breakAt = 0, Action<Assembler>? onBreak = null)
    {
        Label handler = default;
        var g = Create(kvm, pit: true, a =>
        {
            InitPics(a, 0xFE);
            StartPit(a);
            a.xor(ebx, ebx);
            beforeSti?.Invoke(a);
            IdleWithInterrupts(a);
            handler = EmitHandler(a, TickPort, breakAt, onBreak);
        });
        InstallGate(g, MasterBase, handler);
        return g;
    }

    /// <summary>
    /// A guest with no PIT and only IRQ4 unmasked (vector 0x24), whose handler counts in EBX and reports on
    /// <see cref="LinePort"/>. With interrupts off it writes <see cref="ReadyPort"/>, then (when
    /// <paramref name="reportPending"/>) <see cref="PendingPort"/>, then enables interrupts and idles in HLT.
    /// </summary>
    public static TestGuest IrqLineGuest(Kvm kvm, bool reportPending)
    {
        Label handler = default;
        var g = Create(kvm, pit: false, a =>
        {
            InitPics(a, 0xEF);
            a.xor(ebx, ebx);
            Out(a, ReadyPort, 1);
            if (reportPending) Out(a, PendingPort, 1);
            IdleWithInterrupts(a);
            handler = EmitHandler(a, LinePort);
        });
        InstallGate(g, MasterBase + 4, handler);
        return g;
    }

    /// <summary>
    /// A guest with an in-kernel irqchip (no PIT) that reports its CR8 on <see cref="Cr8Port"/>, sets CR8
    /// to 9, then reports CR8 there again and again (interrupts stay off).
    /// </summary>
    public static TestGuest Cr8Guest(Kvm kvm) => Create(kvm, pit: false, a =>
    {
        a.mov(rax, cr8);
        a.@out(Cr8Port, eax);
        a.mov(eax, 9);
        a.mov(cr8, rax);
        var loop = TestGuest.Here(a);
        a.mov(rax, cr8);
        a.@out(Cr8Port, eax);
        a.jmp(loop);
    });

    /// <summary>The vectors of <see cref="X2ApicGuest"/>'s two handlers, and the ports they report on.</summary>
    public const byte ApicVectorA = 0x40, ApicVectorB = 0x41, ApicPortA = 0xE6, ApicPortB = 0xE7;

    private const uint MsrApicBase = 0x1B, MsrX2ApicSvr = 0x80F, MsrX2ApicEoi = 0x80B;

    /// <summary>
    /// A guest with an in-kernel irqchip (no PIT) whose local APIC is enabled in x2APIC mode and
    /// software-enabled through the SVR (spurious vector 0xFF); it reports on <see cref="ReadyPort"/>
    /// (consumed here, so the guest is returned at that exit) and idles with interrupts on. Vectors
    /// <see cref="ApicVectorA"/> and <see cref="ApicVectorB"/> count in EBX / ESI, report the count on
    /// <see cref="ApicPortA"/> / <see cref="ApicPortB"/>, then EOI through the x2APIC EOI MSR.
    /// </summary>
    public static TestGuest X2ApicGuest(Kvm kvm)
    {
        Label a0 = default, b0 = default;
        var g = Create(kvm, pit: false, a =>
        {
            EnableX2Apic(a);
            WriteMsr(a, MsrX2ApicSvr, 0x1FF); // software-enabled, spurious vector 0xFF
            a.xor(ebx, ebx);
            a.xor(esi, esi);
            Out(a, ReadyPort, 1);
            IdleWithInterrupts(a);
            a0 = ApicHandler(a, ebx, ApicPortA);
            b0 = ApicHandler(a, esi, ApicPortB);
        });
        InstallGate(g, ApicVectorA, a0);
        InstallGate(g, ApicVectorB, b0);
        Assert.That(NextOut(g).Port, Is.EqualTo(ReadyPort));
        return g;
    }

    /// <summary>Turns the local APIC on in x2APIC mode (IA32_APIC_BASE bits 10 and 11).</summary>
    public static void EnableX2Apic(Assembler a)
    {
        a.mov(ecx, MsrApicBase);
        a.rdmsr();
        a.or(eax, 0xC00);
        a.wrmsr();
    }

    /// <summary>Arms the TSC-deadline timer <paramref name="cycles"/> TSC cycles from now (IA32_TSC_DEADLINE = RDTSC + cycles).</summary>
    public static void ArmTscDeadline(Assembler a, long cycles)
    {
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.mov(rdx, cycles);
        a.add(rax, rdx);
        a.mov(rdx, rax);
        a.shr(rdx, 32);
        a.mov(ecx, X86DeviceState.MsrTscDeadline);
        a.wrmsr();
    }

    /// <summary>WRMSR of a 32-bit value (EDX = 0).</summary>
    public static void WriteMsr(Assembler a, uint msr, uint value)
    {
        a.mov(ecx, msr);
        a.mov(eax, value);
        a.xor(edx, edx);
        a.wrmsr();
    }

    /// <summary>Counts in <paramref name="counter"/>, writes the count to <paramref name="port"/>, EOI through the x2APIC EOI MSR.</summary>
    private static Label ApicHandler(Assembler a, AssemblerRegister32 counter, byte port)
    {
        var handler = TestGuest.Here(a);
        a.push(rax);
        a.push(rcx);
        a.push(rdx);
        a.inc(counter);
        a.mov(eax, counter);
        a.@out(port, eax);
        a.mov(ecx, MsrX2ApicEoi);
        a.xor(eax, eax);
        a.xor(edx, edx);
        a.wrmsr();
        a.pop(rdx);
        a.pop(rcx);
        a.pop(rax);
        a.iretq();
        return handler;
    }

    /// <summary>An edge on GSI <paramref name="irq"/> (the PICs are edge-triggered): asserted, then deasserted.</summary>
    public static void RaiseEdge(VirtualMachine vm, int irq)
    {
        vm.SetIrqLine(irq, true);
        vm.SetIrqLine(irq, false);
    }

    /// <summary><c>sti</c>, then <c>hlt</c> forever (each interrupt wakes it; the loop halts again).</summary>
    public static void IdleWithInterrupts(Assembler a)
    {
        a.sti();
        var idle = TestGuest.Here(a);
        a.hlt();
        a.jmp(idle);
    }

    public static void Out(Assembler a, byte port, byte value)
    {
        a.mov(al, value);
        a.@out(port, al);
    }

    /// <summary>Initialises both PICs (edge-triggered, cascaded on IRQ2, 8086 mode) and sets the master's mask; the slave is masked.</summary>
    public static void InitPics(Assembler a, byte masterMask)
    {
        Out(a, 0x20, 0x11); Out(a, 0x21, MasterBase); Out(a, 0x21, 0x04); Out(a, 0x21, 0x01);
        Out(a, 0xA0, 0x11); Out(a, 0xA1, SlaveBase); Out(a, 0xA1, 0x02); Out(a, 0xA1, 0x01);
        Out(a, 0x21, masterMask);
        Out(a, 0xA1, 0xFF);
    }

    /// <summary>PIT channel 0 in mode 2 (rate generator, periodic) with <paramref name="divisor"/>.</summary>
    public static void StartPit(Assembler a, ushort divisor = Divisor100Hz)
    {
        Out(a, 0x43, 0x34);
        Out(a, 0x40, (byte)divisor);
        Out(a, 0x40, (byte)(divisor >> 8));
    }

    /// <summary>
    /// Stops PIT channel 0 for good: loads a count in mode 5 (hardware-triggered strobe), whose trigger
    /// channel 0 never gets; KVM then destroys its timer. (A control word without a count would not
    /// do: KVM keeps the old timer running until a count is loaded.)
    /// </summary>
    public static void StopPit(Assembler a)
    {
        Out(a, 0x43, 0x3A);
        Out(a, 0x40, 0xFF);
        Out(a, 0x40, 0xFF);
    }

    /// <summary>
    /// An interrupt handler: counts in EBX, writes the count to <paramref name="port"/>, at count
    /// <paramref name="breakAt"/> runs <paramref name="onBreak"/> (still with interrupts off, so no
    /// other interrupt comes between the count and it), sends the master PIC a non-specific EOI, returns.
    /// </summary>
    public static Label EmitHandler(Assembler a, byte port, int breakAt = 0, Action<Assembler>? onBreak = null)
    {
        var handler = TestGuest.Here(a);
        a.push(rax);
        a.inc(ebx);
        a.mov(eax, ebx);
        a.@out(port, eax);
        if (onBreak is not null)
        {
            var done = a.CreateLabel();
            a.cmp(ebx, breakAt);
            a.jne(done);
            onBreak(a);
            a.Label(ref done);
        }
        Out(a, 0x20, 0x20);
        a.pop(rax);
        a.iretq();
        return handler;
    }

    /// <summary>Points IDT vector <paramref name="vector"/> (X86LongMode's IDT) at <paramref name="handler"/>: a present DPL0 64-bit interrupt gate.</summary>
    public static void InstallGate(TestGuest g, int vector, Label handler)
    {
        ulong idt = g.Cpu.X86.SpecialRegisters.Idt.Base;
        ulong address = g.AddressOf(handler);
        ulong low = (address & 0xFFFF) | ((ulong)X86LongMode.KernelCode << 16) | (0x8EUL << 40) | (((address >> 16) & 0xFFFF) << 48);
        g.Ram.Write(idt + (ulong)vector * 16, low);
        g.Ram.Write(idt + (ulong)vector * 16 + 8, address >> 32);
    }

    /// <summary>Runs to the next exit (at most <paramref name="timeout"/>, default 30 s), which must be an OUT; returns its port and value.</summary>
    public static (byte Port, uint Value) NextOut(TestGuest g, TimeSpan? timeout = null)
    {
        var exit = g.Cpu.Run(timeout ?? TimeSpan.FromSeconds(30));
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io), "expected the guest's next OUT; got " + exit.ToString());
        var io = exit.Io;
        Assert.That(io.Direction, Is.EqualTo(IoDirection.Out), exit.ToString());
        if (io.Port == TestGuest.FaultPort) Assert.Fail($"The guest took exception vector {io.Value}.");
        return ((byte)io.Port, io.Value);
    }

    /// <summary>
    /// Runs for <paramref name="window"/> at a time until a run ends with no exit (Interrupted), failing
    /// if more than <paramref name="maxTicks"/> tick reports (or any other exit) come first.
    /// </summary>
    public static void AssertQuiet(TestGuest g, int maxTicks, string why, TimeSpan? window = null)
    {
        for (int ticks = 0; ; ticks++)
        {
            var exit = g.Cpu.Run(window ?? TimeSpan.FromSeconds(1.5));
            if (exit.Reason == VcpuExitReason.Interrupted) return;
            Assert.That(exit.Reason == VcpuExitReason.Io && exit.Io.Port == TickPort && ticks < maxTicks,
                $"{why}: expected no interrupt (at most {maxTicks} straggling tick(s)), got {exit.ToString()} after {ticks} tick(s)");
        }
    }

    /// <summary>
    /// A tick guest whose IRQ0 is pending at its first exit (an OUT to <see cref="PendingPort"/>, with
    /// interrupts still off); it then takes three ticks, masks IRQ0 in the PIC, stops the PIT and
    /// reports on <see cref="BrokePort"/>.
    /// </summary>
    public static TestGuest PendingTickGuest(Kvm kvm) => TickGuest(kvm, beforeSti: a =>
    {
        // Interrupts are off: wait until a tick is pending in the master PIC (OCW3: read IRR).
        var wait = TestGuest.Here(a);
        Out(a, 0x20, 0x0A);
        a.@in(al, 0x20);
        a.test(al, 1);
        a.jz(wait);
        a.@out(PendingPort, al);
    }, breakAt: 3, onBreak: a =>
    {
        Out(a, 0x21, 0xFF);
        StopPit(a);
        Out(a, BrokePort, 1);
    });

    /// <summary>The OUTs up to and including the one on <paramref name="last"/>.</summary>
    public static List<(byte Port, uint Value)> OutsUntil(TestGuest g, byte last, int max = 10)
    {
        var outs = new List<(byte, uint)>();
        for (int i = 0; i < max; i++)
        {
            var o = NextOut(g);
            outs.Add(o);
            if (o.Port == last) return outs;
        }
        Assert.Fail($"No OUT to 0x{last:X} among the first {max}: {string.Join(", ", outs)}");
        return outs;
    }
}
