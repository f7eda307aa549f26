using System.Runtime.InteropServices;

namespace KvmSharp.Tests.Interop;

/// <summary>
/// The offsets into <c>kvm_run</c>'s sync-register area that the register strategies keep as
/// constants (for their per-exit paths): each must equal the field's offset in the interop struct,
/// which <see cref="UapiLayoutTests"/> checks against the kernel headers.
/// </summary>
[TestFixture]
public class StrategyLayoutConstantTests
{
    [TestCase(typeof(KvmSharp.Registers.X86RegisterSync), "RegsOffset", typeof(KvmSharp.Interop.X86.kvm_sync_regs), "regs")]
    [TestCase(typeof(KvmSharp.Registers.X86RegisterSync), "SregsOffset", typeof(KvmSharp.Interop.X86.kvm_sync_regs), "sregs")]
    [TestCase(typeof(KvmSharp.Registers.X86RegisterSync), "EventsOffset", typeof(KvmSharp.Interop.X86.kvm_sync_regs), "events")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "PrefixOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "prefix")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "GprsOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "gprs")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "AcrsOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "acrs")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "CrsOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "crs")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "Arch0Off", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "todpr")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "PfaultOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "pft")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "VrsOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "vrs")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "FpcOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "fpc")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "RiccbOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "riccb")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "Diag318Off", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "diag318")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "GscbOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "gscb")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "EtokenOff", typeof(KvmSharp.Interop.S390x.kvm_sync_regs), "etoken")]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "PswOff", typeof(KvmSharp.Interop.S390x.kvm_run), "psw_mask")]
    public void OffsetConstant_IsTheFieldsOffset(Type strategy, string constant, Type uapi, string field) =>
        Assert.That(Constant(strategy, constant), Is.EqualTo((int)Marshal.OffsetOf(uapi, field)), $"{strategy.Name}.{constant} vs {uapi.Name}.{field}");

    [TestCase(typeof(KvmSharp.Registers.X86RegisterSync), "SyncBlockSize", typeof(KvmSharp.Interop.X86.kvm_sync_regs))]
    [TestCase(typeof(KvmSharp.Registers.S390xRegisterSync), "SyncSize", typeof(KvmSharp.Interop.S390x.kvm_sync_regs))]
    public void SizeConstant_IsTheStructsSize(Type strategy, string constant, Type uapi) =>
        Assert.That(Constant(strategy, constant), Is.EqualTo(Marshal.SizeOf(uapi)), $"{strategy.Name}.{constant} vs sizeof({uapi.Name})");

    [Test]
    public void PswAddress_FollowsPswMask() =>
        Assert.That((int)Marshal.OffsetOf<KvmSharp.Interop.S390x.kvm_run>("psw_addr"),
            Is.EqualTo(Constant(typeof(KvmSharp.Registers.S390xRegisterSync), "PswOff") + 8));

    private static int Constant(Type type, string name) =>
        (int)(type.GetField(name, System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)?.GetRawConstantValue()
              ?? throw new AssertionException($"{type.Name} has no constant {name}"));
}
