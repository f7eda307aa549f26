using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp.Tests.Interop;

/// <summary>
/// The constants Vcpu.Run's inlined path uses instead of the interop structs: each must equal what
/// the structs say (and those are checked against the kernel headers by <see cref="UapiLayoutTests"/>).
/// </summary>
[TestFixture]
public class HotPathLayoutTests
{
    [Test]
    public void KvmRunNumber_IsKvmRun() =>
        Assert.That(KvmIoctls.KVM_RUN.Number, Is.EqualTo(KvmIoctls.KvmRunNumber));

    [Test]
    public void OneRegNumbers_AreTheIoctls()
    {
        Assert.That(KvmIoctls.KVM_GET_ONE_REG.Number, Is.EqualTo(KvmIoctls.GetOneRegNumber));
        Assert.That(KvmIoctls.KVM_SET_ONE_REG.Number, Is.EqualTo(KvmIoctls.SetOneRegNumber));
    }

    [Test]
    public void Arm64MmioIsWriteOffset_IsTheField() =>
        Assert.That(KvmSharp.Interop.Arm64.kvm_run.ExitUnionOffset + (int)Marshal.OffsetOf<kvm_run_mmio>(nameof(kvm_run_mmio.is_write)),
            Is.EqualTo(KvmSharp.Registers.Arm64RegisterSync.MmioIsWriteOffset));

    [TestCase(typeof(KvmSharp.Interop.X86.kvm_run))]
    [TestCase(typeof(KvmSharp.Interop.Arm64.kvm_run))]
    [TestCase(typeof(KvmSharp.Interop.S390x.kvm_run))]
    public void HeaderFieldsAndTheExitUnion_AreAtTheSameOffsetOnEveryArch(Type kvmRun)
    {
        Assert.That((int)Marshal.OffsetOf(kvmRun, "immediate_exit"), Is.EqualTo(KvmRunPage.ImmediateExit));
        Assert.That((int)Marshal.OffsetOf(kvmRun, "exit_reason"), Is.EqualTo(KvmRunPage.ExitReason));
        Assert.That((int)Marshal.OffsetOf(kvmRun, "ready_for_interrupt_injection"), Is.EqualTo(KvmRunPage.ReadyForInterruptInjection));
        Assert.That((int)Marshal.OffsetOf(kvmRun, "if_flag"), Is.EqualTo(KvmRunPage.IfFlag));
        Assert.That((int)Marshal.OffsetOf(kvmRun, "kvm_valid_regs") - (int)Marshal.OffsetOf(kvmRun, "padding"), Is.EqualTo(KvmRunPage.ExitUnionSize),
            "the exit union (padding[256]) ends where kvm_valid_regs begins");
    }

    [Test]
    public void X86DirtyRegsOffset_IsTheField()
    {
        Assert.That((int)Marshal.OffsetOf<KvmSharp.Interop.X86.kvm_run>(nameof(KvmSharp.Interop.X86.kvm_run.kvm_dirty_regs)),
            Is.EqualTo(KvmSharp.Interop.X86.kvm_run.DirtyRegsOffset));
        Assert.That((int)Marshal.OffsetOf<KvmSharp.Interop.X86.kvm_run>(nameof(KvmSharp.Interop.X86.kvm_run.padding)),
            Is.EqualTo(KvmSharp.Interop.X86.kvm_run.ExitUnionOffset), "io.direction is the exit union's first byte");
    }
}
