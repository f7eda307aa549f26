using KvmSharp.Arm64.Tests.Guests;
using KvmSharp.Tests;

namespace KvmSharp.Arm64.Tests;

/// <summary>
/// What stock arm64 KVM (Linux 6.1 in the arm64 lab, or an arm64 host) does with guest code beyond
/// plain MMIO: an exception the guest takes itself, data aborts KVM cannot decode, a read-only slot,
/// and WFI without an in-kernel GIC (this file); PSCI CPU_ON with two vCPUs, kicks and Invoke
/// (<c>Arm64ExecutionTests.Threads.cs</c>). Each assertion is what the kernel did, with the kernel
/// code that makes it so.
/// </summary>
public partial class Arm64ExecutionTests
{
    private const ulong CodeAddress = Arm64TestVm.CodeAddress;
    private const ulong RamSize = Arm64TestVm.RamSize;
    // No slot here: every access is an MMIO exit. 1 GiB aligned, so that the SMP guest's page table
    // can map this whole GiB as Device memory with one block descriptor.
    private const ulong MmioBase = 0x4000_0000;
    private const ulong UnmappedAddress = MmioBase + 0x40;

    private Kvm _kvm = null!;

    [SetUp]
    public void Open() => _kvm = Kvm.Open();

    [TearDown]
    public void Close() => _kvm.Dispose();

    [Test]
    public void UndefinedInstruction_IsTakenAtTheGuestsVbarPlus0x200_WithoutAnExit()
    {
        // UDF at EL1 is an exception the CPU takes to EL1 itself (nothing in HCR_EL2 routes it to
        // EL2), so KVM never sees it: the first exit is the handler's MMIO write. Offset 0x200 is the
        // vector "current EL with SP_ELx, synchronous" (KVM_ARM_VCPU_INIT resets PSTATE to EL1h).
        const ulong Vbar = 0x2000; // VBAR_EL1 is 2 KiB aligned
        using var vm = _kvm.CreateVirtualMachine();
        var code = new A64().Undefined().BranchToSelf()
            .PadTo((int)(Vbar + 0x200 - CodeAddress))
            .ReadSystemRegister(5, A64.EsrEl1)
            .ReadSystemRegister(6, A64.ElrEl1)
            .Mov(1, MmioBase)
            .Store(8, 5, 1)
            .Store(8, 6, 1, 8)
            .BranchToSelf();
        using var vcpu = Arm64TestVm.Boot(vm, code);
        vcpu.Arm64.SetSystemRegister(A64.VbarEl1, Vbar);

        ulong esr = ExpectMmioWrite(vcpu, MmioBase);
        ulong elr = ExpectMmioWrite(vcpu, MmioBase + 8);
        Assert.That(esr >> 26 & 0x3F, Is.Zero, $"ESR_EL1.EC: 0, unknown reason (ESR_EL1 0x{esr:X})");
        Assert.That(esr, Is.EqualTo(0x0200_0000UL), "IL set (a 32-bit instruction), ISS 0");
        Assert.That(elr, Is.EqualTo(CodeAddress), "ELR_EL1: the UDF itself");
    }

    // A load pair and a post-indexed load: a data abort on either has no valid instruction syndrome
    // (ESR_EL2.ISV 0: the architecture gives one only for single loads and stores without
    // writeback), so KVM cannot tell what to emulate.
    [TestCase("ldp")]
    [TestCase("ldr post-index")]
    public void LoadWithoutSyndrome_OutsideTheSlots_FailsKvmRunWithEnosys_AndTheVcpuStaysUsable(string form)
    {
        // arch/arm64/kvm/mmio.c io_mem_abort: without a valid syndrome and without
        // KVM_CAP_ARM_NISV_TO_USER, "Data abort outside memslots with no valid syndrome info" and
        // return -ENOSYS, which ends KVM_RUN with that error. Nothing was emulated: the PC stays.
        using var vm = _kvm.CreateVirtualMachine();
        using var vcpu = Arm64TestVm.Boot(vm, UndecodableLoad(form, out ulong loadAt));

        var refused = Assert.Throws<KvmException>(() => vcpu.Run());
        Assert.That((refused!.Operation, refused.ErrnoName), Is.EqualTo(("KVM_RUN", "ENOSYS")), refused.Message);
        Assert.That(vcpu.Arm64.Pc, Is.EqualTo(loadAt), "KVM left the PC at the load");

        vcpu.Arm64.Pc = loadAt + 4; // skip the load, as a VMM that emulated it would
        Assert.That(ExpectMmioWrite(vcpu, MmioBase), Is.EqualTo(MmioBase), "the vCPU runs on after the failed KVM_RUN");
    }

    [TestCase("ldp")]
    [TestCase("ldr post-index")]
    public void LoadWithoutSyndrome_WithNisvToUser_IsAnArmNisvExitAtTheAddress(string form)
    {
        // The same io_mem_abort, with the capability enabled: exit KVM_EXIT_ARM_NISV with the fault
        // IPA (the page from HPFAR_EL2, the low 12 bits from FAR_EL2: the whole address) and
        // ESR_EL2 reduced to CM, WnR and the fault status code. Again the PC stays at the load.
        Assert.That(_kvm.HasCapability(KvmCapability.ArmNisvToUser), Is.True);
        using var vm = _kvm.CreateVirtualMachine();
        vm.EnableCapability(KvmCapability.ArmNisvToUser);
        using var vcpu = Arm64TestVm.Boot(vm, UndecodableLoad(form, out ulong loadAt));

        var exit = vcpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.ArmNisv), exit.ToString());
        Assert.That(exit.ArmNisv.FaultIpa, Is.EqualTo(UnmappedAddress));
        ulong iss = exit.ArmNisv.EsrIss;
        Assert.That(iss & ~0x17FUL, Is.Zero, $"only CM (bit 8), WnR (bit 6) and DFSC (bits 5:0) survive: 0x{iss:X}");
        Assert.That(iss & 1 << 6, Is.Zero, $"WnR 0: a read (0x{iss:X})");
        Assert.That(iss & 0x3C, Is.EqualTo(0x04UL), $"DFSC: a translation fault, no stage-2 mapping there (0x{iss:X})");
        Assert.That(vcpu.Arm64.Pc, Is.EqualTo(loadAt), "the PC stays at the load: the VMM emulates it or injects an abort");
    }

    [Test]
    public void ReadOnlySlot_AWriteIsAnMmioExit_LoadsReadTheSlotWithoutExits()
    {
        // KVM maps a KVM_MEM_READONLY slot read-only at stage 2. A load is an ordinary access; a
        // store faults, and kvm_handle_guest_abort hands a write to a non-writable slot to
        // io_mem_abort like any MMIO: an exit with the slot address, and the memory untouched.
        const ulong Rom = 0x20000;
        const ulong Old = 0x5555_6666_7777_8888, Other = 0x1111_2222_3333_4444, New = 0xCAFE_F00D_1234_5678;
        Assert.That(_kvm.HasCapability(KvmCapability.ReadOnlyMem), Is.True);
        using var vm = _kvm.CreateVirtualMachine();
        var code = new A64()
            .Mov(1, Rom)
            .Load(8, 2, 1, 0x10)      // x2 <- ROM: no exit
            .Mov(3, New)
            .Store(8, 3, 1, 0x18)     // ROM <- x3: an MMIO write exit
            .Load(8, 4, 1, 0x18)      // x4 <- ROM: no exit
            .Mov(5, MmioBase)
            .Store(8, 2, 5)           // report x2
            .Store(8, 4, 5, 8)        // report x4
            .BranchToSelf();
        using var vcpu = Arm64TestVm.Boot(vm, code);
        var rom = vm.AddMemorySlot(Rom, (ulong)VirtualMachine.PageSize, MemorySlotFlags.ReadOnly);
        rom.Write(Rom + 0x10, Other);
        rom.Write(Rom + 0x18, Old);

        var exit = vcpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio), exit.ToString());
        Assert.That((exit.Mmio.Address, exit.Mmio.IsWrite, exit.Mmio.Length), Is.EqualTo((Rom + 0x18, true, 8)),
            "the first exit is the store into the slot: the load before it read memory");
        Assert.That(BitConverter.ToUInt64(exit.Mmio.Data), Is.EqualTo(New));
        Assert.That(rom.Read<ulong>(Rom + 0x18), Is.EqualTo(Old), "KVM did not write the slot");

        Assert.That(ExpectMmioWrite(vcpu, MmioBase), Is.EqualTo(Other), "the load before the store read the slot");
        Assert.That(ExpectMmioWrite(vcpu, MmioBase + 8), Is.EqualTo(Old), "the load after it read the unchanged slot, without an exit");
    }

    [TestCase("Run(TimeSpan)")]
    [TestCase("RequestExit")]
    public void Wfi_WithoutAnInKernelGic_BlocksInKvmRun_UntilInterrupted_ThenTheGuestGoesOn(string how)
    {
        // KVM traps WFI (HCR_EL2.TWI) and kvm_handle_wfx calls kvm_vcpu_wfi, which blocks in
        // kvm_vcpu_halt until an interrupt is pending — with no GIC and the timers off, never — or a
        // signal arrives; then it calls kvm_incr_pc. The run loop sees the signal and ends KVM_RUN
        // with EINTR, and kvm_arch_vcpu_ioctl_run commits the pending PC increment before returning
        // "to give userspace a consistent view": the PC is past the WFI.
        using var vm = _kvm.CreateVirtualMachine();
        var code = new A64().Mov(1, MmioBase).Store(8, 1, 1, 8); // "about to wait": the next run starts at the WFI
        ulong wfiAt = CodeAddress + (ulong)code.Position;
        code.Instruction(A64.Wfi).Store(8, 1, 1).BranchToSelf();
        using var vcpu = Arm64TestVm.Boot(vm, code);
        ExpectMmioWrite(vcpu, MmioBase + 8);

        VcpuExitReason reason;
        if (how == "RequestExit")
        {
            var kicker = KickWhenRunning(vcpu, TimeSpan.FromMilliseconds(100));
            reason = vcpu.Run().Reason;
            Wait.Join(kicker, "the kicking thread");
        }
        else
        {
            reason = vcpu.Run(TimeSpan.FromMilliseconds(100)).Reason;
        }

        Assert.That(reason, Is.EqualTo(VcpuExitReason.Interrupted), "the WFI blocked inside KVM_RUN until the kick");
        Assert.That(vcpu.Arm64.Pc, Is.EqualTo(wfiAt + 4), "KVM completed the WFI before returning");
        Assert.That(ExpectMmioWrite(vcpu, MmioBase), Is.EqualTo(MmioBase), "the next run goes on after the WFI");
    }

    /// <summary>A guest whose load from <see cref="UnmappedAddress"/> (in <paramref name="form"/>) has no valid syndrome; then an MMIO write.</summary>
    private static A64 UndecodableLoad(string form, out ulong loadAt)
    {
        var code = new A64().Mov(2, UnmappedAddress);
        loadAt = CodeAddress + (ulong)code.Position;
        code.Instruction(form switch
        {
            "ldp" => A64.Ldp(3, 4, 2),                    // ldp x3, x4, [x2]
            "ldr post-index" => A64.LdrPostIndex(3, 2, 8), // ldr x3, [x2], #8
            _ => throw new ArgumentOutOfRangeException(nameof(form), form, null),
        });
        return code.Mov(1, MmioBase).Store(8, 1, 1).BranchToSelf();
    }


    /// <summary>Runs <paramref name="vcpu"/> to its next exit, which must be an 8-byte MMIO write to <paramref name="address"/>; returns the data.</summary>
    private static ulong ExpectMmioWrite(Vcpu vcpu, ulong address)
    {
        var exit = vcpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio), exit.ToString());
        Assert.That((exit.Mmio.Address, exit.Mmio.IsWrite, exit.Mmio.Length), Is.EqualTo((address, true, 8)), exit.ToString());
        return BitConverter.ToUInt64(exit.Mmio.Data);
    }

    /// <summary>
    /// A thread that waits until <paramref name="vcpu"/> is inside Run, waits <paramref name="delay"/>
    /// more, then calls <see cref="Vcpu.RequestExit"/> — also when the wait failed, so the test's run
    /// never hangs.
    /// </summary>
    private static Thread KickWhenRunning(Vcpu vcpu, TimeSpan delay)
    {
        var thread = new Thread(() =>
        {
            try
            {
                SpinWait.SpinUntil(() => vcpu.IsRunning, Wait.Bound);
                Thread.Sleep(delay);
            }
            finally
            {
                vcpu.RequestExit();
            }
        }) { IsBackground = true, Name = "kicker" };
        thread.Start();
        return thread;
    }
}
