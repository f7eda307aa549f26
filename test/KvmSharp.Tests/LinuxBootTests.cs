using KvmSharp.Devices;
using KvmSharp.Guests;
using KvmSharp.Tests.Guests;
using KvmSharp.Snapshots;

namespace KvmSharp.Tests;

/// <summary>
/// A stock Linux kernel (Debian's 6.1, the lab's) booted on stock KVM with <see cref="X86LinuxBoot"/>,
/// the in-kernel irqchip and PIT, a <see cref="Uart16550"/> console on IRQ 4 and a
/// <see cref="ResetDevice"/>: to a busybox init, commands run through the UART both ways, the reboot
/// that ends the run, and a snapshot of the booted guest restored with its shell still answering.
/// </summary>
public class LinuxBootTests : KvmTestBase
{
    [Test]
    public void BootsToInit_RunsCommandsOverTheUart_AndItsRebootEndsTheRun()
    {
        using var g = LinuxTestGuest.Boot(Kvm);
        string boot = g.Console;
        Assert.That(boot, Does.Contain($"{LinuxTestGuest.InitMarker} {LinuxTestGuest.KernelRelease}"), "init ran, on the kernel that was loaded");
        Assert.That(boot, Does.Contain("Hypervisor detected: KVM"), "CPUID has the KVM signature leaf");
        Assert.That(boot, Does.Contain($"Command line: {LinuxTestGuest.CommandLine}"), "the kernel read the command line from the zero page");
        Assert.That(boot, Does.Contain("x2apic enabled").And.Contain("APIC: Switch to symmetric I/O mode"), "the MP table told it about the IOAPIC; KVM's APIC does x2APIC");
        Assert.That(boot.Contains("TSC deadline timer available"), Is.EqualTo(Kvm.HasCapability(KvmCapability.TscDeadlineTimer)),
            "CPUID offers the TSC-deadline timer exactly when KVM emulates it");
        Assert.That(boot, Does.Not.Contain("APIC timer disabled"));

        var (uname, status) = g.Run("uname -r");
        Assert.That((uname.Trim(), status), Is.EqualTo((LinuxTestGuest.KernelRelease, 0)));

        // The UART's interrupts reach the guest through the in-kernel PIC: the line this command
        // arrived on was received on IRQ 4.
        var (interrupts, _) = g.Run("cat /proc/interrupts");
        var serial = interrupts.Split('\n').FirstOrDefault(l => l.Contains("ttyS0"));
        Assert.That(serial, Is.Not.Null, interrupts);
        Assert.That(serial!.TrimStart(), Does.StartWith("4:"), "ttyS0 on IRQ 4");
        Assert.That(serial, Does.Contain("IO-APIC"), "through the IOAPIC's pin 4 (the MP table's ISA IRQ 4)");
        Assert.That(long.Parse(serial.Split(':', 2)[1].Trim().Split(' ')[0]), Is.GreaterThan(0), "IRQ 4 was delivered");

        // Both ways: the guest reads a line the host typed and answers with it transformed.
        var (echo, echoStatus) = g.Run("read -r x; echo \"got:$x\" | tr a-z A-Z", input: "hello uart");
        Assert.That((echo.Trim(), echoStatus), Is.EqualTo(("GOT:HELLO UART", 0)));

        var (memory, _) = g.Run("grep MemTotal /proc/meminfo");
        Assert.That(memory, Does.Match(@"MemTotal:\s+2[0-9]{5} kB"), "about 256 MiB from the e820 map");
        var (clock, _) = g.Run("cat /sys/devices/system/clocksource/clocksource0/current_clocksource");
        Assert.That(clock.Trim(), Is.EqualTo("kvm-clock"), "the guest uses KVM's paravirtual clock");

        g.Send("reboot -f\n");
        var end = g.WaitForEnd(TimeSpan.FromMinutes(1));
        Assert.That((end.Reason, end.Address), Is.EqualTo((RunStopReason.GuestReset, (ulong)ResetDevice.KeyboardControllerPort)), "reboot=k: the keyboard controller's reset");
        Assert.That(g.Reset.ResetCount, Is.GreaterThanOrEqualTo(1));
    }

    [Test]
    public void TwoVcpus_BothComeUp_AndRunProcesses()
    {
        using var g = LinuxTestGuest.Boot(Kvm, cpus: 2);
        string boot = g.Console;
        Assert.That(boot, Does.Contain("smp: Brought up 1 node, 2 CPUs"), "vCPU 0's kernel started vCPU 1 with INIT/SIPI through KVM's local APICs");
        Assert.That(g.Run("nproc"), Is.EqualTo(("2\n", 0)));
        // Both CPUs take timer interrupts: the local timer line counts on each.
        var (interrupts, _) = g.Run("grep LOC: /proc/interrupts");
        var counts = interrupts.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).Take(2).Select(long.Parse).ToArray();
        Assert.That(counts, Has.Length.EqualTo(2).And.All.GreaterThan(0), interrupts);
        g.Send("reboot -f\n");
        Assert.That(g.WaitForEnd(TimeSpan.FromMinutes(1)).Reason, Is.EqualTo(RunStopReason.GuestReset));
    }

    [Test]
    public void SnapshotOfABootedGuest_RestoredShellStillAnswers()
    {
        using var g = LinuxTestGuest.Boot(Kvm);
        Assert.That(g.Run("echo before"), Is.EqualTo(("before\n", 0)));
        g.Thread.Pause();
        var snapshot = g.Vm.CreateSnapshot();
        byte[] uart = g.Uart.CaptureState(); // the UART runs in this process: not KVM's, not in the snapshot
        g.Thread.Resume();

        Assert.That(g.Run("echo changed > /marker; cat /marker"), Is.EqualTo(("changed\n", 0)), "the guest moves on after the snapshot");
        for (int round = 1; round <= 2; round++)
        {
            g.Thread.Pause();
            if (round == 2)
            {
                // The UART as the guest's console driver leaves it while it prints (it masks the UART's
                // interrupts and polls): a restore that left the UART so would leave the restored
                // driver waiting for a receive interrupt that never comes. The UART's own state is put back.
                g.Uart.Write(default, 1, [0]); // IER = 0, as an OUT to 0x3F9 writes it
            }
            g.Vm.Restore(snapshot);
            g.Uart.RestoreState(uart);
            g.Thread.Resume();
            var (output, status) = g.Run($"cat /marker 2>/dev/null || echo no marker; echo round {round}");
            Assert.That((output, status), Is.EqualTo(($"no marker\nround {round}\n", 0)), $"restore {round}: the shell answers, in the state of the snapshot");
        }
    }

    [Test]
    public void ASavedSnapshot_LoadedIntoAFreshVm_GivesTheSameShellThere()
    {
        byte[] saved, uart;
        using (var original = LinuxTestGuest.Boot(Kvm))
        {
            Assert.That(original.Run("echo cloned > /marker"), Is.EqualTo(("", 0)));
            original.Thread.Pause();
            using var stream = new MemoryStream();
            original.Vm.CreateSnapshot().Save(stream);
            saved = stream.ToArray();
            uart = original.Uart.CaptureState();
        }

        // A new VM like it (its own boot, just begun, is overwritten), whose TSC and KVM clock are
        // far behind the snapshot's: the restore brings memory, registers, devices, timers and clock.
        using var clone = new LinuxTestGuest(Kvm);
        clone.Thread.Pause();
        var snapshot = VmSnapshot.Load(new MemoryStream(saved));
        Assert.That(snapshot.HasDeviceState, Is.True);
        clone.Vm.Restore(snapshot);
        clone.Uart.RestoreState(uart);
        clone.Thread.Resume();
        Assert.That(clone.Run("cat /marker; uname -r"), Is.EqualTo(($"cloned\n{LinuxTestGuest.KernelRelease}\n", 0)),
            "the original's files and shell, in another VM");
        Assert.That(clone.Run("sleep 1; echo slept"), Is.EqualTo(("slept\n", 0)), "its timer works there");
    }

    [Test]
    public void Load_WritesTheZeroPageAndE820Map_AndPointsTheVcpuAtTheEntry()
    {
        using var vm = Kvm.CreateVirtualMachine();
        vm.CreateIrqChip();
        var low = vm.AddMemorySlot(0, 0x10_0000);                    // 0..1 MiB
        vm.AddMemorySlot(0xF000_0000, 0x10_0000, MemorySlotFlags.ReadOnly);    // a "ROM" at 0xF000_0000
        vm.AddMemorySlot(0x10_0000, 128 << 20);                      // 1..129 MiB (the kernel needs 16..80 MiB)
        using var cpu = vm.CreateVcpu();
        var kernel = LinuxBzImage.Parse(File.ReadAllBytes(LinuxTestGuest.Images.KernelImage));
        byte[] initrd = new byte[0x12345];
        initrd[0] = 0xAB;
        var layout = X86LinuxBoot.Load(cpu, kernel, new LinuxBootOptions { CommandLine = "console=ttyS0 hello", Initrd = initrd });

        Assert.That(layout.MemoryMap, Is.EqualTo(new[]
        {
            new E820Entry(0, 0x9FC00, E820Entry.Ram),
            new E820Entry(0x10_0000, 128 << 20, E820Entry.Ram),
            new E820Entry(0xF000_0000, 0x10_0000, E820Entry.Reserved),
        }), "RAM below the legacy hole and above 1 MiB, merged across slots; the read-only slot reserved");
        Assert.That((layout.KernelAddress, layout.EntryPoint), Is.EqualTo((kernel.PreferredAddress, kernel.PreferredAddress + 0x200)));
        Assert.That(layout.InitrdAddress % 0x1000, Is.Zero);
        Assert.That(layout.InitrdAddress + layout.InitrdSize, Is.LessThanOrEqualTo(0x10_0000UL + (128 << 20)).And.GreaterThan(0x10_0000UL + (128 << 20) - 0x1000), "as high as RAM allows");
        Assert.That(layout.InitrdAddress, Is.GreaterThanOrEqualTo(layout.KernelAddress + kernel.InitSize), "above the kernel's decompression area");
        Assert.That(vm.GetGuestSpan(layout.InitrdAddress, 1)[0], Is.EqualTo(0xAB));

        ulong zp = layout.ZeroPage;
        Assert.That(low.Read<byte>(zp + 0x1E8), Is.EqualTo(3), "e820_entries");
        Assert.That((low.Read<ulong>(zp + 0x2D0 + 20), low.Read<ulong>(zp + 0x2D0 + 28), low.Read<uint>(zp + 0x2D0 + 36)),
            Is.EqualTo((0x10_0000UL, 128UL << 20, E820Entry.Ram)), "the second e820 entry as struct boot_e820_entry");
        Assert.That(low.Read<uint>(zp + 0x202), Is.EqualTo(0x53726448u), "the setup header was copied (HdrS)");
        Assert.That(low.Read<byte>(zp + 0x210), Is.EqualTo(0xFF), "type_of_loader");
        Assert.That((low.Read<uint>(zp + 0x218), low.Read<uint>(zp + 0x21C)), Is.EqualTo(((uint)layout.InitrdAddress, (uint)initrd.Length)), "ramdisk_image, ramdisk_size");
        uint cmdline = low.Read<uint>(zp + 0x228);
        Assert.That(System.Text.Encoding.ASCII.GetString(low.GetGuestSpan(cmdline, 20)), Is.EqualTo("console=ttyS0 hello\0"));
        Assert.That(vm.GetGuestSpan(layout.KernelAddress, 16).ToArray(), Is.EqualTo(kernel.Kernel.Span[..16].ToArray()));

        var regs = cpu.X86;
        Assert.That((regs.Rip, regs.Rsi, regs.Rflags & 0x200), Is.EqualTo((layout.EntryPoint, zp, 0UL)), "entry, RSI = zero page, interrupts off");
        var s = regs.SpecialRegisters;
        Assert.That((s.Cs.Selector, s.Cs.L, s.Ds.Selector, s.Efer & 0x500), Is.EqualTo(((ushort)0x10, (byte)1, (ushort)0x18, 0x500UL)), "64-bit __BOOT_CS, __BOOT_DS, long mode active");
        Assert.That(low.Read<ulong>(s.Cr3) & 1, Is.EqualTo(1UL), "the PML4 at CR3 is present");
        var mp = low.GetGuestSpan(0x9FC00, 16).ToArray();
        Assert.That(System.Text.Encoding.ASCII.GetString(mp, 0, 4), Is.EqualTo("_MP_"));
        Assert.That(mp.Aggregate(0, (a, b) => a + b) & 0xFF, Is.Zero, "the floating pointer's checksum");
        uint config = BitConverter.ToUInt32(mp, 4);
        int length = low.Read<ushort>(config + 4);
        var table = low.GetGuestSpan(config, length).ToArray();
        Assert.That((System.Text.Encoding.ASCII.GetString(table, 0, 4), table.Aggregate(0, (a, b) => a + b) & 0xFF), Is.EqualTo(("PCMP", 0)));
        Assert.That((table[44], table[45], table[47] & 3), Is.EqualTo(((byte)0, (byte)0, 3)), "one processor entry: APIC id 0, enabled boot processor");
        Assert.That(BitConverter.ToUInt16(table, 34), Is.EqualTo(1 + 1 + 1 + 16 + 2), "CPU, bus, IOAPIC, 16 ISA IRQs, LINT0/1");
        var exit = cpu.Run(TimeSpan.FromSeconds(30)).Reason;
        Assert.That(exit, Is.AnyOf(VcpuExitReason.Io, VcpuExitReason.Mmio, VcpuExitReason.Interrupted), "KVM accepts the state and runs the kernel (until its first port access, or the time limit)");
    }

    [Test]
    public void Load_RefusesWhatCannotBoot_NamingTheProblem()
    {
        var kernel = LinuxBzImage.Parse(File.ReadAllBytes(LinuxTestGuest.Images.KernelImage));
        using (var vm = Kvm.CreateVirtualMachine())
        {
            vm.AddMemorySlot(0, 64 << 20);
            using var cpu = vm.CreateVcpu();
            var ex = Assert.Throws<InvalidOperationException>(() => X86LinuxBoot.Load(cpu, kernel));
            Assert.That(ex!.Message, Does.Contain("CreateIrqChip"));
        }
        using (var vm = Kvm.CreateVirtualMachine())
        {
            vm.CreateIrqChip();
            vm.AddMemorySlot(0, 128 << 20);
            using var boot = vm.CreateVcpu();
            using var second = vm.CreateVcpu();
            var ex = Assert.Throws<ArgumentException>(() => X86LinuxBoot.Load(second, kernel));
            Assert.That(ex!.Message, Does.Contain("vCPU 1 cannot boot Linux"));
        }
        using (var vm = Kvm.CreateVirtualMachine())
        {
            vm.CreateIrqChip();
            vm.AddMemorySlot(0, 8 << 20);                                 // ends below the kernel's 16 MiB
            using var cpu = vm.CreateVcpu();
            var ex = Assert.Throws<ArgumentException>(() => X86LinuxBoot.Load(cpu, kernel));
            Assert.That(ex!.Message, Does.Contain("0x1000000").And.Contain("the kernel").And.Contain("0x100000..0x800000"));
        }
        using (var vm = Kvm.CreateVirtualMachine())
        {
            vm.CreateIrqChip();
            vm.AddMemorySlot(0, 96 << 20);                                // the kernel needs 16..80 MiB: 16 MiB above it
            using var cpu = vm.CreateVcpu();
            var tooBig = new LinuxBootOptions { Initrd = new byte[24 << 20] };
            var ex = Assert.Throws<ArgumentException>(() => X86LinuxBoot.Load(cpu, kernel, tooBig));
            Assert.That(ex!.Message, Does.Contain("initrd").And.Contain("does not fit"));
            var tooLong = new LinuxBootOptions { CommandLine = new string('x', (int)kernel.CommandLineSize + 1) };
            ex = Assert.Throws<ArgumentException>(() => X86LinuxBoot.Load(cpu, kernel, tooLong));
            Assert.That(ex!.Message, Does.Contain("cmdline_size").And.Contain(kernel.CommandLineSize.ToString()));
            ex = Assert.Throws<ArgumentException>(() => X86LinuxBoot.Load(cpu, kernel, new LinuxBootOptions { CommandLine = "a\nb" }));
            Assert.That(ex!.Message, Does.Contain("printable ASCII"));
            ex = Assert.Throws<ArgumentException>(() => X86LinuxBoot.Load(cpu, kernel, new LinuxBootOptions { KernelAddress = 0x30_1000 }));
            Assert.That(ex!.Message, Does.Contain("alignment"));
            var fits = X86LinuxBoot.Load(cpu, kernel, new LinuxBootOptions { Initrd = new byte[4 << 20], KernelAddress = 0x20_0000 });
            Assert.That(fits.KernelAddress, Is.EqualTo(0x20_0000UL), "a relocatable kernel loads at an aligned address of the caller's choice");
        }
    }
}
