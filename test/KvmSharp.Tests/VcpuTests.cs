using KvmSharp.Interop;
using KvmSharp.Tests.Guests;
using KvmSharp.Tests.Model;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

public class VcpuTests : KvmTestBase
{
    [Test]
    public void AskingForTheWrongExitView_ThrowsNamingTheActualReason()
    {
        using var g = TestGuest.LongMode(Kvm, a => a.hlt());
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Hlt));
        try
        {
            _ = exit.Io;
            Assert.Fail("Io on a HLT exit must throw");
        }
        catch (InvalidOperationException e)
        {
            Assert.That(e.Message, Does.Contain("Hlt").And.Contain("not Io"));
        }
    }

    [Test]
    public void ImmediateExit_ReturnsInterrupted_WithoutRunningTheGuest()
    {
        using var g = TestGuest.LongMode(Kvm, a => { a.mov(eax, 1); a.hlt(); });
        g.Cpu.RequestExit();
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Interrupted));
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(TestGuest.CodeAddress), "nothing ran");
        g.Cpu.CancelExitRequest();
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(g.Cpu.X86.Rax, Is.EqualTo(1));
    }

    [Test]
    public void RunFailure_IsKvmException_ThenTheVcpuStillWorks()
    {
        var kernel = new RecordingKernel();
        using var kvm = Kvm.Open(kernel, Kvm.DefaultDevicePath, KvmArchitecture.X86_64);
        using var g = TestGuest.LongMode(kvm, a => a.hlt());
        kernel.FailNext(KvmIoctls.KVM_RUN, Errno.EFAULT);
        var ex = Assert.Throws<KvmException>(() => g.Cpu.Run());
        Assert.That((ex!.Operation, ex.ErrnoName), Is.EqualTo(("KVM_RUN", "EFAULT")));
        Assert.That(ex.Message, Does.Contain("vcpu 0"));
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
    }

    [Test]
    public void StrayEintrOrEagain_ReEnters_OnlyARequestIsAnInterruptedExit()
    {
        var kernel = new RecordingKernel();
        using var kvm = Kvm.Open(kernel, Kvm.DefaultDevicePath, KvmArchitecture.X86_64);
        using var g = TestGuest.LongMode(kvm, a => a.hlt());
        kernel.FailNext(KvmIoctls.KVM_RUN, Errno.EINTR);   // a signal that is not a kick
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt), "not an exception, not an exit: the run goes on");
        Assert.That(kernel.Count(KvmIoctls.KVM_RUN), Is.EqualTo(2));
        g.Cpu.X86.Rip = TestGuest.CodeAddress;
        kernel.FailNext(KvmIoctls.KVM_RUN, Errno.EAGAIN);  // an x86 AP leaving UNINITIALIZED
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        g.Cpu.RequestExit();
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Interrupted));
    }

    [Test]
    public void SetCpuid_IsSeenByTheGuest()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(eax, 0);
            a.cpuid();
            a.hlt();
        });
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        var leaf0 = Kvm.GetSupportedCpuid().Single(e => e.Function == 0);
        Assert.That((g.Cpu.X86.Rax, g.Cpu.X86.Rbx), Is.EqualTo(((ulong)leaf0.Eax, (ulong)leaf0.Ebx)));
    }
}
