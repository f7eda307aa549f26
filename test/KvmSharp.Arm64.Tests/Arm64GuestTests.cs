using KvmSharp.Arm64.Tests.Guests;
using KvmSharp.Lab;

namespace KvmSharp.Arm64.Tests;

/// <summary>
/// arm64 guest code on a real arm64 KVM (natively on an arm64 host, else in KvmSharp.Lab's arm64
/// machine): bring-up through KVM_ARM_VCPU_INIT, MMIO exits in both directions, and PSCI calls that
/// KVM answers itself or turns into system events.
/// </summary>
public class Arm64GuestTests
{
    private const ulong CodeAddress = Arm64TestVm.CodeAddress;
    private const ulong MmioBase = 0x1000_0000;   // no slot there: every access is an MMIO exit
    private const uint PsciVersion = 0x8400_0000, PsciSystemOff = 0x8400_0008, PsciSystemReset = 0x8400_0009;

    private Kvm _kvm = null!;

    [SetUp]
    public void Open() => _kvm = Kvm.Open();

    [TearDown]
    public void Close() => _kvm.Dispose();

    [Test]
    public void Kvm_IsArm64_AndRunsWhereTheLabSays()
    {
        Assert.That(_kvm.Architecture, Is.EqualTo(KvmArchitecture.Arm64));
        Assert.That(_kvm.HasCapability(KvmCapability.OneReg), Is.True, "arm64 moves every register with ONE_REG");
        Assert.That(_kvm.CheckExtension(KvmCapability.SyncRegs), Is.Zero, "arm64 has no register sync regs");
        var where = LabLocation.Current;
        Assert.That(where.Architecture, Is.EqualTo(LabArchitecture.Arm64));
        Assert.That(where.KernelRelease, Is.EqualTo(File.ReadAllText("/proc/sys/kernel/osrelease").Trim()));
    }

    [Test]
    public void VcpuInit_ThenRegistersRoundTripThroughOneReg()
    {
        using var vm = _kvm.CreateVirtualMachine();
        vm.AddMemorySlot(0, 0x10000);
        using var vcpu = vm.CreateVcpu();
        var arm = vcpu.Arm64;
        Assert.That(arm.IsInitialized, Is.False);
        arm.Initialize();
        Assert.That(arm.IsInitialized, Is.True);
        Assert.That(arm.Pstate & 0xF, Is.EqualTo(0x5UL), "KVM_ARM_VCPU_INIT resets to EL1h");

        arm.Pc = CodeAddress;
        arm.X7 = 0x0123_4567_89AB_CDEF;
        arm.SetV(3, (UInt128)0xFEED << 64 | 0xBEEF);
        arm.Invalidate();
        Assert.That((arm.Pc, arm.X7, arm.GetV(3)), Is.EqualTo((CodeAddress, 0x0123_4567_89AB_CDEFUL, (UInt128)0xFEED << 64 | 0xBEEF)),
            "values written with SET_ONE_REG read back with GET_ONE_REG");
    }

    [Test]
    public void MmioWrite_TheHostSeesAddressLengthAndData()
    {
        using var vm = _kvm.CreateVirtualMachine();
        var code = new A64()
            .Mov(1, MmioBase)
            .Mov(0, 0x1122_3344_5566_7788)
            .Store(8, 0, 1)
            .BranchToSelf();
        using var vcpu = Arm64TestVm.Boot(vm, code);

        var exit = vcpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio), exit.ToString());
        Assert.That(exit.Mmio.Address, Is.EqualTo(MmioBase));
        Assert.That(exit.Mmio.IsWrite, Is.True);
        Assert.That(exit.Mmio.Length, Is.EqualTo(8));
        Assert.That(BitConverter.ToUInt64(exit.Mmio.Data), Is.EqualTo(0x1122_3344_5566_7788UL));
    }

    [Test]
    public void MmioRead_TheHostsDataLandsInTheRegister()
    {
        using var vm = _kvm.CreateVirtualMachine();
        var code = new A64()
            .Mov(1, MmioBase)
            .Load(4, 2, 1, 0x10)        // w2 <- MMIO (the host answers)
            .Store(8, 2, 1, 0x20)       // MMIO <- x2: shows what landed in x2
            .BranchToSelf();
        using var vcpu = Arm64TestVm.Boot(vm, code);

        var exit = vcpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio), exit.ToString());
        Assert.That((exit.Mmio.Address, exit.Mmio.IsWrite, exit.Mmio.Length), Is.EqualTo((MmioBase + 0x10, false, 4)));
        BitConverter.TryWriteBytes(exit.Mmio.Data, 0xCAFEF00Du);

        exit = vcpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio), exit.ToString());
        Assert.That((exit.Mmio.Address, exit.Mmio.IsWrite), Is.EqualTo((MmioBase + 0x20, true)));
        Assert.That(BitConverter.ToUInt64(exit.Mmio.Data), Is.EqualTo(0xCAFEF00DUL), "a 32-bit load zero-extends into x2");
    }

    [Test]
    public void PsciVersion_IsAnsweredByKvm_WithoutAnExit()
    {
        using var vm = _kvm.CreateVirtualMachine();
        var code = new A64()
            .Mov(0, PsciVersion)
            .HypervisorCall()
            .Mov(1, MmioBase)
            .Store(8, 0, 1)              // report x0, the PSCI version KVM returned
            .BranchToSelf();
        using var vcpu = Arm64TestVm.Boot(vm, code);

        var exit = vcpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio), "the HVC did not leave KVM: " + exit.ToString());
        ulong version = BitConverter.ToUInt64(exit.Mmio.Data);
        Assert.That(version >> 16, Is.EqualTo(1UL), $"PSCI major version 1 (KVM_ARM_VCPU_PSCI_0_2 gives PSCI 1.x on Linux 6.1), got 0x{version:X}");
    }

    [TestCase(PsciSystemOff, SystemEventType.Shutdown)]
    [TestCase(PsciSystemReset, SystemEventType.Reset)]
    public void PsciSystemOffAndReset_AreSystemEventExits(uint function, SystemEventType expected)
    {
        using var vm = _kvm.CreateVirtualMachine();
        var code = new A64().Mov(0, function).HypervisorCall().BranchToSelf();
        using var vcpu = Arm64TestVm.Boot(vm, code);

        var exit = vcpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.SystemEvent), exit.ToString());
        Assert.That(exit.SystemEvent.Type, Is.EqualTo(expected));
    }

}
