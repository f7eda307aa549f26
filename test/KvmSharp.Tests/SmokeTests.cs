namespace KvmSharp.Tests;

public class SmokeTests : KvmTestBase
{
    [Test]
    public void RealModeOutThenHlt()
    {
        using var vm = Kvm.CreateVirtualMachine();
        var mem = vm.AddMemorySlot(0, 0x10000);
        byte[] code = [0xB0, 0x42, 0xE6, 0x10, 0xF4]; // mov al,0x42; out 0x10,al; hlt
        mem.Write(0x1000, code);
        using var cpu = vm.CreateVcpu();
        ref var s = ref cpu.X86.EditSpecialRegisters();
        s.Cs.Base = 0; s.Cs.Selector = 0;
        ref var g = ref cpu.X86.EditGprs();
        g.Rip = 0x1000; g.Rflags = 2;
        var exit = cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io));
        Assert.That(exit.Io.Port, Is.EqualTo(0x10));
        Assert.That(exit.Io.Value, Is.EqualTo(0x42));
        exit = cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Hlt));
    }
}
