using Iced.Intel;
using KvmSharp.Guests;

namespace KvmSharp.Tests.Guests;

/// <summary>
/// A VM with 2 MiB of RAM at guest-physical 0 and one vCPU, set up for long mode (CPL0 or CPL3) by
/// <see cref="X86LongMode"/>, with code assembled by Iced at <see cref="CodeAddress"/>.
/// </summary>
public sealed class TestGuest : IDisposable
{
    public const ulong CodeAddress = 0x10000;
    public const ulong DataAddress = 0x20000;
    public const ulong StackTop = 0x80000;
    public const ulong RamSize = 0x200000;
    public const byte FaultPort = 0xF4;

    public VirtualMachine Vm { get; }
    public MemorySlot Ram { get; }
    public Vcpu Cpu { get; }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<TestGuest, byte> Live = new();

    /// <summary>Requests an exit from every vCPU of every live guest (the test watchdog's kick, see <see cref="KvmTestBase"/>).</summary>
    public static void KickAll()
    {
        foreach (var g in Live.Keys)
        {
            try
            {
                foreach (var cpu in g.Vm.Vcpus) cpu.RequestExit();
            }
            catch (ObjectDisposedException)
            {
                // disposed meanwhile: nothing to kick
            }
        }
    }

    private TestGuest(Kvm kvm, Action<VirtualMachine>? beforeVcpu = null)
    {
        Vm = kvm.CreateVirtualMachine();
        Live[this] = 0;
        try
        {
            Ram = Vm.AddMemorySlot(0, RamSize);
            beforeVcpu?.Invoke(Vm);
            Cpu = Vm.CreateVcpu();
        }
        catch
        {
            Live.TryRemove(this, out _);
            Vm.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A long-mode guest running <paramref name="code"/> at <see cref="CodeAddress"/>;
    /// <paramref name="beforeVcpu"/> sets up the VM before its vCPU exists (e.g. an in-kernel irqchip).
    /// </summary>
    public static TestGuest LongMode(Kvm kvm, Action<Assembler> code, X86LongModeOptions? options = null, Action<VirtualMachine>? beforeVcpu = null)
    {
        var g = new TestGuest(kvm, beforeVcpu);
        try
        {
            g.Load(code);
            X86LongMode.Setup(g.Cpu, g.Ram, CodeAddress, StackTop, options ?? new X86LongModeOptions { FaultPort = FaultPort });
            return g;
        }
        catch
        {
            g.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A long-mode guest that counts RCX down to zero, writes AL to <paramref name="port"/> (an I/O
    /// exit) and then spins forever: set RCX to choose how long before the exit (timeout tests).
    /// </summary>
    public static TestGuest CountdownThenOut(Kvm kvm, ushort port) => LongMode(kvm, a =>
    {
        var countdown = a.CreateLabel();
        var spin = a.CreateLabel();
        a.Label(ref countdown);
        a.dec(AssemblerRegisters.rcx);
        a.jnz(countdown);
        a.mov(AssemblerRegisters.dx, port);
        a.@out(AssemblerRegisters.dx, AssemblerRegisters.al);
        a.Label(ref spin);
        a.jmp(spin);
    });

    /// <summary>A real-mode guest (CS base 0) running 16-bit <paramref name="code"/> at <see cref="CodeAddress"/> (CS:IP = 0x1000:0).</summary>
    public static TestGuest RealMode(Kvm kvm, Action<Assembler> code)
    {
        var g = new TestGuest(kvm);
        try
        {
            g.Load(code, bitness: 16, ip: 0);
            ref var s = ref g.Cpu.X86.EditSpecialRegisters();
            s.Cs.Base = CodeAddress;
            s.Cs.Selector = (ushort)(CodeAddress >> 4);
            ref var r = ref g.Cpu.X86.EditGprs();
            r.Rip = 0;
            r.Rflags = 2;
            return g;
        }
        catch
        {
            g.Dispose();
            throw;
        }
    }

    public void Load(Action<Assembler> code, int bitness = 64, ulong? ip = null)
    {
        var a = new Assembler(bitness);
        code(a);
        using var ms = new MemoryStream();
        _assembled = a.Assemble(new StreamCodeWriter(ms), ip ?? CodeAddress, BlockEncoderOptions.ReturnNewInstructionOffsets);
        Ram.Write(CodeAddress, ms.ToArray());
    }

    private AssemblerResult _assembled;

    /// <summary>The guest address (RIP) of a label placed in the code last loaded.</summary>
    public ulong AddressOf(Label label) => _assembled.GetLabelRIP(label);

    /// <summary>A new label placed at the next instruction <paramref name="a"/> emits (see <see cref="AddressOf"/>).</summary>
    public static Label Here(Assembler a)
    {
        var label = a.CreateLabel();
        a.Label(ref label);
        return label;
    }

    /// <summary>Runs until an exit that is not <paramref name="skip"/>, at most <paramref name="maxExits"/> times.</summary>
    public VcpuExit RunUntilNot(VcpuExitReason skip, int maxExits = 100)
    {
        for (int i = 0; ; i++)
        {
            var exit = Cpu.Run();
            if (exit.Reason != skip || i >= maxExits) return exit;
        }
    }

    public void Dispose()
    {
        Live.TryRemove(this, out _);
        Vm.Dispose();
    }
}
