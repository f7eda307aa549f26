using System.Buffers.Binary;
using Iced.Intel;
using KvmSharp.Guests;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

/// <summary>Real guest code on /dev/kvm: real mode, long mode at CPL0 and at CPL3.</summary>
public class GuestCodeTests : KvmTestBase
{
    [Test]
    public void RealMode_PioOut_HostReadsData()
    {
        using var g = TestGuest.RealMode(Kvm, a =>
        {
            a.mov(al, 0x5A);
            a.@out(0x80, al);
            a.mov(ax, 0x1234);
            a.mov(dx, 0x3F8);
            a.@out(dx, ax);
            a.hlt();
        });
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io));
        var io = exit.Io;
        Assert.That((io.Direction, io.Port, io.Size, io.Count), Is.EqualTo((IoDirection.Out, (ushort)0x80, 1, 1)));
        Assert.That(io.Data.ToArray(), Is.EqualTo(new byte[] { 0x5A }));
        exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io));
        Assert.That((exit.Io.Port, exit.Io.Size, exit.Io.Value), Is.EqualTo(((ushort)0x3F8, 2, 0x1234u)));
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
    }

    [Test]
    public void LongModeCpl0_PioIn_HostInjects_GuestStores()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(dx, 0x71);
            a.@in(eax, dx);
            a.mov(__dword_ptr[TestGuest.DataAddress], eax);
            a.hlt();
        });
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io));
        Assert.That((exit.Io.Direction, exit.Io.Port, exit.Io.Size), Is.EqualTo((IoDirection.In, (ushort)0x71, 4)));
        exit.Io.SetValue(0xCAFEF00D);
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(g.Ram.Read<uint>(TestGuest.DataAddress), Is.EqualTo(0xCAFEF00D));
    }

    [Test]
    public void LongModeCpl0_StringPioIn_CountGreaterThanOne_HostFillsEveryItem()
    {
        // KVM's emulator batches `rep ins` into one exit with count > 1 (it reads ahead up to a
        // page); `rep outs` it hands over an item at a time, which the next test covers.
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rdi, TestGuest.DataAddress);
            a.mov(ecx, 8);
            a.mov(dx, 0x60);
            a.rep.insw();
            a.hlt();
        });
        int items = 0;
        VcpuExit exit;
        while ((exit = g.Cpu.Run()).Reason == VcpuExitReason.Io)
        {
            var io = exit.Io;
            Assert.That((io.Port, io.Direction, io.Size), Is.EqualTo(((ushort)0x60, IoDirection.In, 2)));
            if (items == 0) Assert.That(io.Count, Is.GreaterThan(1), "string IN is batched");
            var data = io.Data;
            Assert.That(data.Length, Is.EqualTo(io.Count * 2));
            for (int i = 0; i < io.Count; i++, items++)
                BinaryPrimitives.WriteUInt16LittleEndian(data.Slice(i * 2), (ushort)(0x100 + items));
        }
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(items, Is.EqualTo(8));
        for (int i = 0; i < 8; i++)
            Assert.That(g.Ram.Read<ushort>(TestGuest.DataAddress + (ulong)i * 2), Is.EqualTo((ushort)(0x100 + i)));
    }

    [Test]
    public void LongModeCpl0_StringPioOut_DeliversEveryItem()
    {
        byte[] message = "KVM#!"u8.ToArray();
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rsi, TestGuest.DataAddress);
            a.mov(ecx, message.Length);
            a.mov(dx, 0xE9);
            a.rep.outsb();
            a.hlt();
        });
        g.Ram.Write(TestGuest.DataAddress, message);
        var received = new List<byte>();
        VcpuExit exit;
        while ((exit = g.Cpu.Run()).Reason == VcpuExitReason.Io)
        {
            Assert.That((exit.Io.Port, exit.Io.Direction, exit.Io.Size), Is.EqualTo(((ushort)0xE9, IoDirection.Out, 1)));
            received.AddRange(exit.Io.Data.ToArray());
        }
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(received, Is.EqualTo(message));
    }

    [Test]
    public void LongModeCpl0_MmioWriteAndRead_WithInjectedData()
    {
        const ulong mmio = 0x1000_0000; // identity-mapped, but no slot backs it
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rbx, mmio);
            a.mov(eax, 0x11223344);
            a.mov(__dword_ptr[rbx + 8], eax);
            a.mov(rcx, __qword_ptr[rbx + 16]);
            a.mov(__qword_ptr[TestGuest.DataAddress], rcx);
            a.hlt();
        });
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio));
        var w = exit.Mmio;
        Assert.That((w.Address, w.Length, w.IsWrite), Is.EqualTo((mmio + 8, 4, true)));
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(w.Data), Is.EqualTo(0x11223344u));

        exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio));
        var r = exit.Mmio;
        Assert.That((r.Address, r.Length, r.IsWrite), Is.EqualTo((mmio + 16, 8, false)));
        BinaryPrimitives.WriteUInt64LittleEndian(r.Data, 0x0123456789ABCDEF);
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(g.Ram.Read<ulong>(TestGuest.DataAddress), Is.EqualTo(0x0123456789ABCDEFUL));
    }

    [Test]
    public void Hlt_IsAnExit_AndRipPointsPastIt()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(eax, 7);
            a.hlt();
        });
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(g.Cpu.X86.Rax, Is.EqualTo(7));
        Assert.That(g.Cpu.X86.Rip, Is.EqualTo(TestGuest.CodeAddress + 6)); // mov eax,imm32 (5) + hlt (1)
    }

    [Test]
    public void ReadOnlySlot_GuestWrite_BecomesMmioExit_MemoryUnchanged()
    {
        const ulong romBase = 0x400000;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rbx, romBase);
            a.mov(rax, __qword_ptr[rbx]);          // reads work
            a.mov(__qword_ptr[TestGuest.DataAddress], rax);
            a.mov(__dword_ptr[rbx + 0x10], 0x5555); // writes exit
            a.hlt();
        });
        var rom = g.Vm.AddMemorySlot(romBase, 0x1000, MemorySlotFlags.ReadOnly);
        rom.Span.Fill(0xA5);
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio));
        Assert.That((exit.Mmio.Address, exit.Mmio.IsWrite, exit.Mmio.Length), Is.EqualTo((romBase + 0x10, true, 4)));
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(exit.Mmio.Data), Is.EqualTo(0x5555u));
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(rom.Read<uint>(romBase + 0x10), Is.EqualTo(0xA5A5A5A5u), "a read-only slot must not change");
        Assert.That(g.Ram.Read<ulong>(TestGuest.DataAddress), Is.EqualTo(0xA5A5A5A5A5A5A5A5UL));
    }

    [Test]
    public void TwoSlots_AtDifferentAddresses_GuestUsesBoth()
    {
        const ulong second = 0x800000;
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rbx, second);
            a.mov(rax, __qword_ptr[rbx]);
            a.add(rax, 1);
            a.mov(__qword_ptr[rbx + 8], rax);
            a.mov(__qword_ptr[TestGuest.DataAddress], rax);
            a.hlt();
        });
        var hi = g.Vm.AddMemorySlot(second, 0x200000);
        hi.Write(second, 41UL);
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        Assert.That(hi.Read<ulong>(second + 8), Is.EqualTo(42UL));
        Assert.That(g.Ram.Read<ulong>(TestGuest.DataAddress), Is.EqualTo(42UL));
        Assert.That(g.Vm.MemorySlots, Has.Count.EqualTo(2));
    }

    [Test]
    public void Cpl3_SseAndAvx_ResultReportedByPortIo()
    {
        // (1.5 + 2.25) * 4 with SSE2 scalar math, then an AVX 256-bit add of two vectors; CPL3 runs natively.
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rax, BitConverter.DoubleToInt64Bits(1.5));
            a.movq(xmm0, rax);
            a.mov(rax, BitConverter.DoubleToInt64Bits(2.25));
            a.movq(xmm1, rax);
            a.addsd(xmm0, xmm1);
            a.mov(rax, BitConverter.DoubleToInt64Bits(4.0));
            a.movq(xmm1, rax);
            a.mulsd(xmm0, xmm1);
            a.cvttsd2si(eax, xmm0);
            a.mov(dx, 0x500);
            a.@out(dx, eax);                                       // 15
            a.mov(rbx, TestGuest.DataAddress);
            a.vmovdqu(ymm2, __ymmword_ptr[rbx]);
            a.vpaddd(ymm2, ymm2, __ymmword_ptr[rbx + 32]);
            a.vmovdqu(__ymmword_ptr[rbx + 64], ymm2);
            a.mov(eax, __dword_ptr[rbx + 64 + 28]);
            a.@out(dx, eax);                                       // 8 + 80 = 88
            a.mov(eax, 0);
            a.@out(dx, eax);
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.jmp(spin);
        }, new X86LongModeOptions { UserMode = true, EnableAvx = true, FaultPort = TestGuest.FaultPort });
        for (int i = 0; i < 8; i++)
        {
            g.Ram.Write(TestGuest.DataAddress + (ulong)i * 4, (uint)(i + 1));
            g.Ram.Write(TestGuest.DataAddress + 32 + (ulong)i * 4, (uint)((i + 1) * 10));
        }
        var results = new List<uint>();
        for (int i = 0; i < 3; i++)
        {
            var exit = g.Cpu.Run();
            Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io), "exit " + i + ": " + exit.ToString());
            Assert.That(exit.Io.Port, Is.Not.EqualTo((ushort)TestGuest.FaultPort), $"guest faulted with vector {exit.Io.Value}");
            results.Add(exit.Io.Value);
        }
        Assert.That(results, Is.EqualTo(new uint[] { 15, 88, 0 }));
        Assert.That(g.Cpu.X86.Cs.Dpl, Is.EqualTo(3), "the guest ran at CPL3");
    }

    [Test]
    public void Cpl3_PageFault_ReachesGuestIdtHandler_WithCr2AndErrorCode()
    {
        const ulong unmapped = 0x8000_0000; // above the 1 GiB identity map
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(rbx, unmapped);
            a.mov(__qword_ptr[rbx], rax);
            a.hlt();
        }, new X86LongModeOptions { UserMode = true, FaultPort = TestGuest.FaultPort });
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io));
        Assert.That((exit.Io.Port, exit.Io.Value), Is.EqualTo(((ushort)TestGuest.FaultPort, 14u)), "vector 14 (#PF) reported by the IDT stub");
        Assert.That(g.Cpu.X86.Cr2, Is.EqualTo(unmapped));
        ulong errorCode = g.Ram.Read<ulong>(g.Cpu.X86.Rsp);
        Assert.That(errorCode & 0x6, Is.EqualTo(0x6UL), "error code: write access from user mode");
        Assert.That(g.Cpu.X86.Cs.Selector, Is.EqualTo(X86LongMode.KernelCode), "the handler runs at CPL0");
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
    }

    [Test]
    public void Cpl3_InvalidOpcode_ReachesGuestIdtHandler()
    {
        using var g = TestGuest.LongMode(Kvm, a => a.ud2(), new X86LongModeOptions { UserMode = true, FaultPort = TestGuest.FaultPort });
        var exit = g.Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Io));
        Assert.That((exit.Io.Port, exit.Io.Value), Is.EqualTo(((ushort)TestGuest.FaultPort, 6u)));
        Assert.That(g.Ram.Read<ulong>(g.Cpu.X86.Rsp), Is.EqualTo(TestGuest.CodeAddress), "the #UD frame's RIP is the faulting instruction");
    }

    [Test]
    public void FaultWithNoIdt_IsShutdown()
    {
        using var g = TestGuest.LongMode(Kvm, a => a.ud2(), new X86LongModeOptions { UserMode = true, InstallIdt = false });
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Shutdown));
    }

    /// <summary>
    /// popcnt at CPL0, where kernels differ: kvm-pvm runs CPL0 code in KVM's instruction emulator,
    /// which lacks popcnt, so the run ends with an internal error (emulation failure, with data
    /// words); stock KVM runs guest code on the (possibly emulated) CPU, which simply executes it.
    /// </summary>
    [Test]
    public void Cpl0Popcnt_IsAnEmulationFailureOnKvmPvm_AndSimplyExecutedOnStockKvm()
    {
        using var g = TestGuest.LongMode(Kvm, a =>
        {
            a.mov(eax, 0xF0F1);
            a.popcnt(ebx, eax);
            a.hlt();
        });
        var exit = g.Cpu.Run();
        if (IsKvmPvm)
        {
            Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.InternalError), "kvm-pvm: " + exit.ToString());
            var e = exit.InternalError;
            Assert.That(e.Suberror, Is.EqualTo(InternalErrorSuberror.Emulation));
            Assert.That(e.Data.Length, Is.GreaterThan(0), "KVM reports data words with the emulation failure");
        }
        else
        {
            Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Hlt), "stock KVM: " + exit.ToString());
            Assert.That(g.Cpu.X86.Rbx, Is.EqualTo(9UL), "popcnt(0xF0F1) = 4 + 4 + 1");
        }
    }
}
