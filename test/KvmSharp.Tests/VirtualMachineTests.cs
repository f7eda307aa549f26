using KvmSharp.Interop;
using KvmSharp.Tests.Guests;
using KvmSharp.Tests.Model;

namespace KvmSharp.Tests;

public class VirtualMachineTests : KvmTestBase
{
    [Test]
    public void OverlappingSlot_IsRefusedBeforeTheIoctl_NamingSlotAndRange()
    {
        using var vm = Kvm.CreateVirtualMachine();
        vm.AddMemorySlot(0x100000, 0x10000);
        var ex = Assert.Throws<ArgumentException>(() => vm.AddMemorySlot(0x108000, 0x10000));
        Assert.That(ex!.Message, Does.Contain("overlaps memory slot 0").And.Contain("0x108000..0x118000").And.Contain("0x100000..0x110000"));
        Assert.That(vm.MemorySlots, Has.Count.EqualTo(1));
    }

    [TestCase(0x1001UL, 0x1000UL, "not aligned")]
    [TestCase(0x1000UL, 0x1800UL, "not a multiple of the page size")]
    [TestCase(0x1000UL, 0UL, "greater than 0")]
    [TestCase(0xFFFF_FFFF_FFFF_F000UL, 0x2000UL, "wraps")]
    public void InvalidSlotGeometry_IsRefused(ulong gpa, ulong size, string expected)
    {
        using var vm = Kvm.CreateVirtualMachine();
        var ex = Assert.Throws<ArgumentException>(() => vm.AddMemorySlot(gpa, size));
        Assert.That(ex!.Message, Does.Contain(expected));
    }

    [Test]
    public void KernelRefusal_IsKvmExceptionWithIoctlErrnoAndArguments_AndNothingLeaks()
    {
        var kernel = new RecordingKernel();
        using var kvm = Kvm.Open(kernel, Kvm.DefaultDevicePath, KvmArchitecture.X86_64);
        using var vm = kvm.CreateVirtualMachine();
        int maps = kernel.LiveMappings;
        kernel.FailNext(KvmIoctls.KVM_SET_USER_MEMORY_REGION, Errno.EEXIST);
        var ex = Assert.Throws<KvmException>(() => vm.AddMemorySlot(0x200000, 0x4000));
        Assert.That(ex!.Operation, Is.EqualTo("KVM_SET_USER_MEMORY_REGION"));
        Assert.That(ex.ErrnoName, Is.EqualTo("EEXIST"));
        Assert.That(ex.Message, Does.Contain("slot 0").And.Contain("gpa 0x200000").And.Contain("size 0x4000"));
        Assert.That(ex, Is.InstanceOf<IOException>());
        Assert.That(kernel.LiveMappings, Is.EqualTo(maps), "the guest RAM mapping is released on failure");
        Assert.That(vm.MemorySlots, Is.Empty);
        Assert.That(vm.AddMemorySlot(0x200000, 0x4000).Slot, Is.EqualTo(0), "the VM stays usable");
    }

    [Test]
    public void DuplicateVcpuId_IsRefused_AndKernelErrorsNameTheIoctl()
    {
        using var vm = Kvm.CreateVirtualMachine();
        vm.CreateVcpu(0);
        Assert.Throws<ArgumentException>(() => vm.CreateVcpu(0));
        var ex = Assert.Throws<KvmException>(() => vm.CreateVcpu(1 << 30));
        Assert.That(ex!.Operation, Is.EqualTo("KVM_CREATE_VCPU"));
        Assert.That(ex.ErrnoName, Is.EqualTo("EINVAL"));
        Assert.That(ex.Message, Does.Contain("vcpu id 1073741824"));
        Assert.That(vm.Vcpus, Has.Count.EqualTo(1));
    }

    [Test]
    public void RemovingASlot_FreesItsRange_AndTheGuestThenSeesMmio()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(Iced.Intel.AssemblerRegisters.rbx, 0x400000UL);
            a.mov(Iced.Intel.AssemblerRegisters.rax, Iced.Intel.AssemblerRegisters.__qword_ptr[Iced.Intel.AssemblerRegisters.rbx]);
            a.hlt();
        });
        var extra = g.Vm.AddMemorySlot(0x400000, 0x1000);
        extra.Dispose();
        extra.Dispose();
        Assert.That(extra.IsDisposed, Is.True);
        Assert.Throws<ObjectDisposedException>(() => _ = extra.Span);
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Mmio));
        var again = g.Vm.AddMemorySlot(0x400000, 0x1000);
        Assert.That(again.Slot, Is.EqualTo(extra.Slot), "the slot number is reused");
    }

    /// <summary>
    /// A slot with huge pages: its host memory congruent to its guest address modulo 2 MiB (also at an
    /// address that is not 2 MiB-aligned), ordinary memory to guest and host, and — where the kernel
    /// offers transparent huge pages — backed by them once the guest has touched it.
    /// </summary>
    [Test]
    public void HugePageSlots_AreMappedCongruentToTheirAddress_AndBackedByHugePages()
    {
        const ulong Data = 0x600000, Size = 0x400000, Odd = 0xA01000;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            // Store each page's index into its first qword, across both 2 MiB halves.
            var loop = a.CreateLabel();
            a.xor(Iced.Intel.AssemblerRegisters.ecx, Iced.Intel.AssemblerRegisters.ecx);
            a.mov(Iced.Intel.AssemblerRegisters.rbx, Data);
            a.Label(ref loop);
            a.mov(Iced.Intel.AssemblerRegisters.__qword_ptr[Iced.Intel.AssemblerRegisters.rbx], Iced.Intel.AssemblerRegisters.rcx);
            a.add(Iced.Intel.AssemblerRegisters.rbx, 0x1000);
            a.inc(Iced.Intel.AssemblerRegisters.ecx);
            a.cmp(Iced.Intel.AssemblerRegisters.ecx, (int)(Size / 0x1000));
            a.jne(loop);
            a.hlt();
        });
        var data = g.Vm.AddMemorySlot(Data, Size, hugePages: true);
        var odd = g.Vm.AddMemorySlot(Odd, 0x200000, hugePages: true);
        const ulong TwoMiB = 0x200000;
        Assert.That((ulong)data.Mapping.DangerousGetHandle() % TwoMiB, Is.Zero, "2 MiB-aligned like its guest address");
        Assert.That((ulong)odd.Mapping.DangerousGetHandle() % TwoMiB, Is.EqualTo(Odd % TwoMiB), "congruent to its guest address modulo 2 MiB");

        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        for (ulong page = 0; page < Size / 0x1000; page++)
            Assert.That(data.Read<ulong>(Data + page * 0x1000), Is.EqualTo(page), $"page {page}");
        odd.Write(Odd + 0x1FFFF8, 0xABCDUL);
        Assert.That(odd.Span[^8], Is.EqualTo(0xCD));

        string thp = File.ReadAllText("/sys/kernel/mm/transparent_hugepage/enabled");
        long hugeKb = AnonHugePagesKb((ulong)data.Mapping.DangerousGetHandle());
        if (thp.Contains("[never]", StringComparison.Ordinal))
            Assert.That(hugeKb, Is.Zero, "transparent huge pages are off in this kernel");
        else
            Assert.That(hugeKb, Is.GreaterThanOrEqualTo(2048), $"THP '{thp.Trim()}': the guest's first touch faulted in huge pages");
    }

    /// <summary>AnonHugePages of the mapping (VMA) in /proc/self/smaps that contains <paramref name="address"/>.</summary>
    private static long AnonHugePagesKb(ulong address)
    {
        bool inside = false;
        foreach (string line in File.ReadLines("/proc/self/smaps"))
        {
            int dash = line.IndexOf('-');
            if (dash > 0 && line.IndexOf(' ') > dash && ulong.TryParse(line.AsSpan(0, dash), System.Globalization.NumberStyles.HexNumber, null, out ulong start)
                && ulong.TryParse(line.AsSpan(dash + 1, line.IndexOf(' ') - dash - 1), System.Globalization.NumberStyles.HexNumber, null, out ulong end))
                inside = start <= address && address < end;
            else if (inside && line.StartsWith("AnonHugePages:", StringComparison.Ordinal))
                return long.Parse(line["AnonHugePages:".Length..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
        }
        Assert.Fail($"no mapping in /proc/self/smaps contains 0x{address:X}");
        return 0;
    }

    [Test]
    public void SlotAccessors_CheckBounds_AndNameTheSlot()
    {
        using var vm = Kvm.CreateVirtualMachine();
        var slot = vm.AddMemorySlot(0x10000, 0x2000);
        slot.Write(0x11FF8, 0x1122334455667788UL);
        Assert.That(slot.Read<ulong>(0x11FF8), Is.EqualTo(0x1122334455667788UL));
        Assert.That(slot.Span[0x1FF8], Is.EqualTo(0x88));
        Assert.That(slot.Memory.Span[0x1FFF], Is.EqualTo(0x11));
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => slot.Read<ulong>(0x11FFC));
        Assert.That(ex!.Message, Does.Contain("slot 0").And.Contain("0x11FFC"));
        Assert.Throws<ArgumentOutOfRangeException>(() => slot.Write(0xF000, 1));
        Assert.That(vm.FindSlot(0x10000), Is.SameAs(slot));
        Assert.That(vm.FindSlot(0x12000), Is.Null);
    }

    [Test]
    public void GuestRam_IsAdvisedDontFork()
    {
        using var vm = Kvm.CreateVirtualMachine();
        var slot = vm.AddMemorySlot(0, 0x3000);
        string start = slot.HostAddress.ToString("x");
        string smaps = File.ReadAllText("/proc/self/smaps");
        int at = smaps.IndexOf(start + "-", StringComparison.Ordinal);
        Assert.That(at, Is.GreaterThanOrEqualTo(0), "mapping listed in smaps");
        int flags = smaps.IndexOf("VmFlags:", at, StringComparison.Ordinal);
        string line = smaps.Substring(flags, smaps.IndexOf('\n', flags) - flags);
        Assert.That(line, Does.Contain(" dc"), "VmFlags shows dc (do not copy on fork)");
    }

    [Test]
    public void DisposingTheVm_DisposesSlotsAndVcpus_AndNothingLeaks()
    {
        var kernel = new RecordingKernel();
        using var kvm = Kvm.Open(kernel, Kvm.DefaultDevicePath, KvmArchitecture.X86_64);
        int fds = KvmUnavailableTests.FdCount();
        for (int i = 0; i < 20; i++)
        {
            var vm = kvm.CreateVirtualMachine();
            var slot = vm.AddMemorySlot(0, 0x10000);
            var rom = vm.AddMemorySlot(0x100000, 0x1000, MemorySlotFlags.ReadOnly);
            var cpu = vm.CreateVcpu();
            var cpu2 = vm.CreateVcpu();
            Assert.That(kernel.LiveMappings, Is.EqualTo(4), "two slots and two kvm_run pages");
            vm.Dispose();
            vm.Dispose();
            Assert.That(slot.IsDisposed && rom.IsDisposed && cpu.IsDisposed && cpu2.IsDisposed, Is.True);
            Assert.Throws<ObjectDisposedException>(() => cpu.Run());
            Assert.Throws<ObjectDisposedException>(() => vm.CreateVcpu());
            Assert.That((kernel.LiveMappings, kernel.LiveFds), Is.EqualTo((0, 1)), "only /dev/kvm stays open");
        }
        Assert.That(KvmUnavailableTests.FdCount(), Is.EqualTo(fds), "no fd left in /proc/self/fd");
    }

    [Test]
    public void EnableCapability_UserSpaceMsr_TurnsAnUnknownRdmsrIntoAnExit_WhoseDataTheGuestReads()
    {
        const uint UnknownMsr = 0x4000_1234; // no MSR KVM emulates
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(Iced.Intel.AssemblerRegisters.ecx, UnknownMsr);
            a.rdmsr();
            a.mov(Iced.Intel.AssemblerRegisters.__dword_ptr[TestGuest.DataAddress], Iced.Intel.AssemblerRegisters.eax);
            a.mov(Iced.Intel.AssemblerRegisters.__dword_ptr[TestGuest.DataAddress + 4], Iced.Intel.AssemblerRegisters.edx);
            a.hlt();
        });
        // KVM_MSR_EXIT_REASON_INVAL | _UNKNOWN | _FILTER: whatever KVM cannot handle goes to user space.
        g.Vm.EnableCapability(KvmCapability.X86UserSpaceMsr, 0b111);
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.X86Rdmsr), "without the capability KVM would inject #GP");
        var msr = exit.X86Msr;
        Assert.That(msr.Index, Is.EqualTo(UnknownMsr));
        Assert.That(msr.ExitReasonFlags, Is.Not.Zero);
        Assert.That(msr.Error, Is.False, "an exit arrives with the access allowed");
        msr.Data = 0x1122_3344_5566_7788;
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(g.Ram.Read<ulong>(TestGuest.DataAddress), Is.EqualTo(0x1122_3344_5566_7788UL), "EDX:EAX got the handler's value");

        var refused = Assert.Throws<KvmException>(() => g.Vm.EnableCapability((KvmCapability)0x7FFF_0000));
        Assert.That(refused!.Message, Does.Contain("KVM_ENABLE_CAP").And.Contain("EINVAL"));
    }

    [Test]
    public void X86MsrExit_Error_MakesTheGuestsAccessRaiseGeneralProtection()
    {
        const uint UnknownMsr = 0x4000_1234;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(Iced.Intel.AssemblerRegisters.ecx, UnknownMsr);
            a.rdmsr();
            a.hlt();
        }, new KvmSharp.Guests.X86LongModeOptions { FaultPort = TestGuest.FaultPort });
        g.Vm.EnableCapability(KvmCapability.X86UserSpaceMsr, 0b111);
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.X86Rdmsr));
        var msr = exit.X86Msr;
        msr.Error = true;
        Assert.That(msr.Error, Is.True, "kvm_run.msr.error reads back");
        exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io), "the RDMSR must fault, not complete to the HLT");
        Assert.That((exit.Io.Port, exit.Io.Value), Is.EqualTo(((ushort)TestGuest.FaultPort, 13u)), "the IDT stub reports #GP (vector 13)");
    }
}

public class MemorySlotLimitTests : KvmTestBase
{
    [Test]
    public void SlotCountLimit_FromNrMemSlots_IsEnforcedBeforeTheIoctl()
    {
        var kernel = new RecordingKernel
        {
            IoctlHook = (req, arg) => req == KvmIoctls.KVM_CHECK_EXTENSION && arg == (int)KvmCapability.NrMemSlots ? 2 : null,
        };
        using var kvm = Kvm.Open(kernel, Kvm.DefaultDevicePath, KvmArchitecture.X86_64);
        using var vm = kvm.CreateVirtualMachine();
        vm.AddMemorySlot(0, 0x1000);
        vm.AddMemorySlot(0x1000, 0x1000);
        int before = kernel.Count(KvmIoctls.KVM_SET_USER_MEMORY_REGION);
        var ex = Assert.Throws<InvalidOperationException>(() => vm.AddMemorySlot(0x2000, 0x1000));
        Assert.That(ex!.Message, Does.Contain("all 2 memory slots").And.Contain("0x2000..0x3000"));
        Assert.That(kernel.Count(KvmIoctls.KVM_SET_USER_MEMORY_REGION), Is.EqualTo(before));
    }
}
