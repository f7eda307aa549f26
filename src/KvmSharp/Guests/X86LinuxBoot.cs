using System.Buffers.Binary;
using System.Text;
using KvmSharp.Registers;

namespace KvmSharp.Guests;

/// <summary>
/// Loads an x86_64 Linux kernel the way its 64-bit boot protocol (<c>Documentation/arch/x86/boot.rst</c>,
/// "64-bit boot protocol") asks a boot loader to, and points a vCPU at its entry: the kernel at its
/// load address, an initrd as high as the kernel allows, the command line, the zero page
/// (<c>struct boot_params</c>: the image's setup header, the initrd and command line, an e820 map built
/// from the VM's memory slots), an MP table listing every vCPU of the VM and the IOAPIC,
/// identity-mapped page tables over the first 4 GiB, a GDT with the boot
/// protocol's <c>__BOOT_CS</c> (0x10) and <c>__BOOT_DS</c> (0x18), the CPUID KVM supports (with the KVM
/// signature leaf, the hypervisor bit, the TSC-deadline timer where KVM emulates it, and each vCPU's APIC id) and the MSRs a kernel expects from
/// firmware (fast strings in IA32_MISC_ENABLE, MTRRs enabled with write-back as the default type).
/// </summary>
/// <remarks>
/// <para>The structures live in the first 128 KiB of guest memory plus the command line at 0x20000, so
/// the VM needs writable RAM from guest-physical 0 (one slot covering at least 0x9FC00 is simplest);
/// the kernel (<see cref="LinuxBzImage.InitSize"/> bytes from its load address, 16 MiB for a stock
/// kernel) and the initrd must lie in RAM below 4 GiB. The e820 map lists every writable slot as RAM
/// except the legacy hole 0x9FC00–0x100000 (EBDA, VGA, BIOS), and read-only slots as reserved.</para>
/// <para>The guest gets no ACPI tables; an MP table (Intel MP specification 1.4, at 0x9FC00) tells
/// Linux about the in-kernel IOAPIC (ISA IRQ n on pin n, as KVM routes them) and about every vCPU the
/// VM has when <see cref="Load"/> is called: create them all first (each gets CPUID and MSRs here; run
/// each on its own thread — the others wait in KVM until vCPU 0's kernel starts them with INIT/SIPI).
/// Create the in-kernel interrupt controller and the PIT before the vCPUs. There is no PCI bus
/// (<c>pci=off</c>), and the guest can power off only by rebooting (see
/// <see cref="LinuxBootOptions.CommandLine"/>).</para>
/// </remarks>
public static class X86LinuxBoot
{
    /// <summary>Boot protocol code segment selector (<c>__BOOT_CS</c>).</summary>
    public const ushort BootCodeSelector = 0x10;

    /// <summary>Boot protocol data segment selector (<c>__BOOT_DS</c>).</summary>
    public const ushort BootDataSelector = 0x18;

    /// <summary>
    /// Kernel parameters for a guest of this loader, which has no firmware, ACPI tables or PCI bus:
    /// <c>reboot=k</c> (reboot — and so power off — through the keyboard controller's reset, which
    /// <see cref="Devices.ResetDevice"/> turns into <see cref="RunStopReason.GuestReset"/>),
    /// <c>panic=-1</c> (reboot at once on a panic), <c>acpi=off</c>, <c>pci=off</c> (probe neither),
    /// <c>io_delay=none</c> (no port 0x80 writes as delays), <c>nomodules</c>, and
    /// <c>initcall_blacklist=i8042_init</c>: there is no PS/2 controller, and its driver's probe
    /// would otherwise spend thousands of port reads timing out. Add a console, e.g. <c>console=ttyS0</c>.
    /// </summary>
    public const string MinimalCommandLine = "reboot=k panic=-1 acpi=off pci=off io_delay=none nomodules initcall_blacklist=i8042_init";

    /// <summary>Where the zero page goes.</summary>
    public const ulong ZeroPageAddress = 0x7000;

    /// <summary>Where the command line goes.</summary>
    public const ulong CommandLineAddress = 0x20000;

    private const ulong Gdt = 0x500, Tss = 0x580, StackTop = 0x8FF0, Pml4 = 0x9000, Pdpt = 0xA000, Pd = 0xB000;
    private const ushort TssSelector = 0x20;
    private const int TssLimit = 0x67;
    private const ulong LowRamEnd = 0x9FC00, HighRamStart = 0x10_0000, FourGiB = 1UL << 32;
    private const int MaxE820Entries = 128; // E820_MAX_ENTRIES_ZEROPAGE

    // struct boot_params offsets (arch/x86/include/uapi/asm/bootparam.h).
    private const int ExtRamdiskImage = 0x0C0, ExtRamdiskSize = 0x0C4, ExtCmdLinePtr = 0x0C8, E820Count = 0x1E8,
        SetupHeaderStart = 0x1F1, VidMode = 0x1FA, TypeOfLoader = 0x210, Code32Start = 0x214, RamdiskImage = 0x218,
        RamdiskSize = 0x21C, CmdLinePtr = 0x228, E820Table = 0x2D0;

    private const uint MsrMiscEnable = 0x1A0, MsrMtrrDefType = 0x2FF;
    private const ulong MiscEnableFastString = 1, MtrrEnable = 1 << 11, MtrrTypeWriteBack = 6;

    /// <summary>"KVMKVMKVM\0\0\0" as CPUID 0x40000000 returns it in EBX, ECX, EDX.</summary>
    private const uint KvmSignatureEbx = 0x4B4D564B, KvmSignatureEcx = 0x564B4D56, KvmSignatureEdx = 0x4D;
    private const uint KvmCpuidSignature = 0x40000000;

    /// <summary>
    /// Writes the kernel, initrd, command line, zero page, page tables and GDT into the VM's memory and
    /// sets <paramref name="vcpu"/>'s CPUID, MSRs and registers (the registers through its cache: they
    /// reach KVM with the first run) so that it enters the kernel's 64-bit entry point with RSI at the
    /// zero page and interrupts off.
    /// </summary>
    /// <param name="vcpu">The VM's boot vCPU (x86_64, id 0), before its first run, in a VM whose in-kernel
    /// interrupt controller exists (<see cref="VirtualMachine.CreateIrqChip"/>) and whose other vCPUs, if
    /// any, exist already.</param>
    /// <param name="kernel">The kernel, from <see cref="LinuxBzImage.Parse"/>.</param>
    /// <param name="options">Command line and initrd; none when null.</param>
    /// <returns>Where everything went, and the e820 map the kernel was given.</returns>
    /// <exception cref="ArgumentException">The command line is too long or not ASCII; the VM's memory
    /// lacks RAM for the boot structures, the MP table, the kernel or the initrd (the message names the
    /// range needed and the slots there are); a kernel address the image does not allow; the vCPU is not
    /// vCPU 0; more vCPUs than the MP table holds.</exception>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel interrupt controller, or another thread owns a vCPU.</exception>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not x86_64.</exception>
    /// <exception cref="KvmException">KVM_SET_CPUID2 or KVM_SET_MSRS failed.</exception>
    public static LinuxBootLayout Load(Vcpu vcpu, LinuxBzImage kernel, LinuxBootOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(vcpu);
        ArgumentNullException.ThrowIfNull(kernel);
        options ??= new LinuxBootOptions();
        var vm = vcpu.VirtualMachine;
        vm.Kvm.RequireArch(KvmArchitecture.X86_64, nameof(X86LinuxBoot));
        if (!vm.HasIrqChip)
            throw new InvalidOperationException("Linux needs interrupts: create the in-kernel interrupt controller (VirtualMachine.CreateIrqChip, and CreatePit for its timer) before the vCPU.");

        if (vcpu.Id != 0)
            throw new ArgumentException($"vCPU {vcpu.Id} cannot boot Linux: KVM starts vCPU 0 as the boot processor, and the others wait for its INIT/SIPI.", nameof(vcpu));
        var cpus = vm.Vcpus.OrderBy(v => v.Id).ToList();
        if (cpus.Count > X86MpTable.MaxCpus)
            throw new ArgumentException($"The VM has {cpus.Count} vCPUs; the MP table X86LinuxBoot writes lists at most {X86MpTable.MaxCpus}.", nameof(vcpu));
        byte[] commandLine = CommandLineBytes(options.CommandLine, kernel);
        var map = BuildMemoryMap(vm.MemorySlots);
        RequireRam(map, 0, CommandLineAddress + (ulong)commandLine.Length + 1, "the boot structures (zero page, page tables, GDT, stack) and the command line");
        if (vm.FindSlot(X86MpTable.Address) is not { IsReadOnly: false } mpSlot || !mpSlot.Contains(X86MpTable.Address, X86MpTable.MaxSize))
            throw new ArgumentException($"Guest memory 0x{X86MpTable.Address:X}..0x{X86MpTable.Address + X86MpTable.MaxSize:X} (the EBDA, where the MP table goes) must be in a writable slot; extend the slot at 0 to at least 0xA0000.", nameof(vcpu));

        ulong kernelAddress = KernelAddress(kernel, options.KernelAddress);
        ulong kernelEnd = kernelAddress + Math.Max(kernel.InitSize, (ulong)kernel.Kernel.Length);
        if (kernelEnd > FourGiB)
            throw new ArgumentException($"The kernel at 0x{kernelAddress:X} needs memory up to 0x{kernelEnd:X}, past the first 4 GiB the boot page tables map.", nameof(options));
        RequireRam(map, kernelAddress, kernelEnd, $"the kernel (0x{kernel.Kernel.Length:X} bytes, 0x{kernel.InitSize:X} while it decompresses)");
        ulong initrdSize = (ulong)options.Initrd.Length;
        ulong initrdAddress = initrdSize == 0 ? 0 : PlaceInitrd(map, initrdSize, kernelEnd, kernel.InitrdAddressMax);

        vm.WriteGuest(kernelAddress, kernel.Kernel.Span);
        if (initrdSize > 0) vm.WriteGuest(initrdAddress, options.Initrd.Span);
        vm.WriteGuest(CommandLineAddress, [.. commandLine, 0]);
        vm.WriteGuest(ZeroPageAddress, ZeroPage(kernel, kernelAddress, initrdAddress, initrdSize, map));
        WritePageTables(vm);
        WriteGdt(vm);

        var supported = vm.Kvm.GetSupportedCpuid();
        var leaf1 = supported.FirstOrDefault(e => e.Function == 1);
        vm.WriteGuest(X86MpTable.Address, X86MpTable.Build([.. cpus.Select(c => c.Id)], leaf1.Eax, leaf1.Edx));
        bool tscDeadline = vm.Kvm.HasCapability(KvmCapability.TscDeadlineTimer);
        foreach (var cpu in cpus)
        {
            SetCpuid(cpu, supported, tscDeadline);
            SetFirmwareMsrs(cpu);
        }
        SetRegisters(vcpu.X86, kernelAddress + 0x200);
        return new LinuxBootLayout(kernelAddress, kernelAddress + 0x200, ZeroPageAddress, CommandLineAddress, initrdAddress, initrdSize, map);
    }

    private static byte[] CommandLineBytes(string commandLine, LinuxBzImage kernel)
    {
        ArgumentNullException.ThrowIfNull(commandLine, nameof(LinuxBootOptions.CommandLine));
        foreach (char c in commandLine)
            if (c is < ' ' or > '~')
                throw new ArgumentException($"The kernel command line must be printable ASCII; it has U+{(int)c:X4} at {commandLine.IndexOf(c)}.", "options");
        if ((uint)commandLine.Length > kernel.CommandLineSize)
            throw new ArgumentException($"The kernel command line is {commandLine.Length} bytes; this kernel takes at most {kernel.CommandLineSize} (cmdline_size).", "options");
        return Encoding.ASCII.GetBytes(commandLine);
    }

    private static ulong KernelAddress(LinuxBzImage kernel, ulong? requested)
    {
        if (requested is not { } address || address == kernel.PreferredAddress)
            return kernel.PreferredAddress;
        if (!kernel.IsRelocatable)
            throw new ArgumentException($"This kernel is not relocatable: it loads at 0x{kernel.PreferredAddress:X} only, not 0x{address:X}.", "options");
        if (address < HighRamStart || (kernel.KernelAlignment != 0 && address % kernel.KernelAlignment != 0))
            throw new ArgumentException($"Kernel address 0x{address:X} must be at least 1 MiB and a multiple of the kernel's alignment 0x{kernel.KernelAlignment:X}.", "options");
        return address;
    }

    /// <summary>
    /// The e820 map of the VM's slots: writable slots are RAM except the legacy hole (0x9FC00–1 MiB),
    /// read-only ones reserved; touching RAM ranges merged; in address order.
    /// </summary>
    internal static List<E820Entry> BuildMemoryMap(IReadOnlyList<MemorySlot> slots)
    {
        var entries = new List<E820Entry>();
        foreach (var slot in slots.OrderBy(s => s.GuestPhysicalAddress))
        {
            ulong start = slot.GuestPhysicalAddress, end = slot.EndAddress;
            if (slot.IsReadOnly)
            {
                Add(start, end, E820Entry.Reserved);
                continue;
            }
            if (start < LowRamEnd) Add(start, Math.Min(end, LowRamEnd), E820Entry.Ram);
            if (end > HighRamStart) Add(Math.Max(start, HighRamStart), end, E820Entry.Ram);
        }
        if (entries.Count > MaxE820Entries)
            throw new ArgumentException($"The VM's memory slots make {entries.Count} e820 ranges; the zero page holds {MaxE820Entries}.", "vcpu");
        return entries;

        void Add(ulong start, ulong end, uint type)
        {
            if (entries.Count > 0 && entries[^1] is var last && last.Type == type && last.End == start)
                entries[^1] = last with { Size = end - last.Address };
            else
                entries.Add(new E820Entry(start, end - start, type));
        }
    }

    private static void RequireRam(List<E820Entry> map, ulong start, ulong end, string what)
    {
        if (map.Any(e => e.Type == E820Entry.Ram && e.Address <= start && end <= e.End)) return;
        string ram = string.Join(", ", map.Where(e => e.Type == E820Entry.Ram).Select(e => $"0x{e.Address:X}..0x{e.End:X}"));
        throw new ArgumentException($"Guest RAM 0x{start:X}..0x{end:X} is needed for {what}, but the VM's RAM (e820) is {(ram.Length == 0 ? "empty" : ram)}.", "vcpu");
    }

    /// <summary>The highest page-aligned place in RAM above the kernel whose last byte is at most <paramref name="addressMax"/>.</summary>
    private static ulong PlaceInitrd(List<E820Entry> map, ulong size, ulong kernelEnd, uint addressMax)
    {
        const ulong Page = 0x1000;
        ulong limit = Math.Min((ulong)addressMax + 1, FourGiB);
        foreach (var e in map.Where(e => e.Type == E820Entry.Ram).OrderByDescending(e => e.Address))
        {
            ulong top = Math.Min(e.End, limit);
            ulong bottom = Math.Max(e.Address, kernelEnd);
            if (top < size || top - size < bottom) continue;
            ulong address = (top - size) & ~(Page - 1);
            if (address >= bottom) return address;
        }
        throw new ArgumentException(
            $"The initrd (0x{size:X} bytes) does not fit: it needs RAM above the kernel's end 0x{kernelEnd:X} and below 0x{limit:X} " +
            $"(initrd_addr_max 0x{addressMax:X}); the VM's RAM is {string.Join(", ", map.Where(e => e.Type == E820Entry.Ram).Select(e => $"0x{e.Address:X}..0x{e.End:X}"))}.", "options");
    }

    private static byte[] ZeroPage(LinuxBzImage kernel, ulong kernelAddress, ulong initrdAddress, ulong initrdSize, List<E820Entry> map)
    {
        var page = new byte[4096];
        kernel.SetupHeader.Span.CopyTo(page.AsSpan(SetupHeaderStart));
        var p = page.AsSpan();
        BinaryPrimitives.WriteUInt16LittleEndian(p[VidMode..], 0xFFFF);                // "normal" video mode: no mode switch
        p[TypeOfLoader] = 0xFF;                                                         // a loader without an assigned id
        BinaryPrimitives.WriteUInt32LittleEndian(p[Code32Start..], (uint)kernelAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(p[RamdiskImage..], (uint)initrdAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(p[RamdiskSize..], (uint)initrdSize);
        BinaryPrimitives.WriteUInt32LittleEndian(p[CmdLinePtr..], (uint)CommandLineAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(p[ExtRamdiskImage..], (uint)(initrdAddress >> 32));
        BinaryPrimitives.WriteUInt32LittleEndian(p[ExtRamdiskSize..], (uint)(initrdSize >> 32));
        BinaryPrimitives.WriteUInt32LittleEndian(p[ExtCmdLinePtr..], (uint)(CommandLineAddress >> 32));
        p[E820Count] = (byte)map.Count;
        for (int i = 0; i < map.Count; i++)
        {
            var entry = p.Slice(E820Table + 20 * i, 20);
            BinaryPrimitives.WriteUInt64LittleEndian(entry, map[i].Address);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[8..], map[i].Size);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[16..], map[i].Type);
        }
        return page;
    }

    /// <summary>PML4 → one PDPT → four page directories of 2 MiB pages: the first 4 GiB identity-mapped, writable, supervisor only.</summary>
    private static void WritePageTables(VirtualMachine vm)
    {
        const ulong P = 1, W = 2, PS = 0x80;
        var tables = new byte[0x6000];
        var t = tables.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(t, Pdpt | P | W);
        for (int d = 0; d < 4; d++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(t[(int)(Pdpt - Pml4 + (ulong)d * 8)..], (Pd + (ulong)d * 0x1000) | P | W);
            for (int i = 0; i < 512; i++)
                BinaryPrimitives.WriteUInt64LittleEndian(t[(int)(Pd - Pml4 + (ulong)d * 0x1000 + (ulong)i * 8)..], (((ulong)d << 30) | ((ulong)i << 21)) | P | W | PS);
        }
        vm.WriteGuest(Pml4, tables);
    }

    private static void WriteGdt(VirtualMachine vm)
    {
        Span<byte> gdt = stackalloc byte[48];
        ReadOnlySpan<ulong> entries =
        [
            0, 0,
            0x00AF9B000000FFFF, // 0x10 __BOOT_CS: 64-bit code, DPL0, present, accessed
            0x00CF93000000FFFF, // 0x18 __BOOT_DS: flat data, DPL0, present, accessed
            (TssLimit & 0xFFFF) | ((Tss & 0xFFFFFF) << 16) | (0x8BUL << 40), // 0x20: 64-bit TSS (busy), as VM entry wants TR
            0,
        ];
        for (int i = 0; i < entries.Length; i++) BinaryPrimitives.WriteUInt64LittleEndian(gdt[(i * 8)..], entries[i]);
        vm.WriteGuest(Gdt, gdt);
        vm.WriteGuest(Tss, new byte[TssLimit + 1]);
    }

    /// <summary>KVM's supported CPUID with what firmware would add: the APIC id, the hypervisor bit, the KVM signature leaf.</summary>
    private static void SetCpuid(Vcpu vcpu, CpuidEntry[] supported, bool tscDeadline)
    {
        var entries = supported.ToList();
        uint apicId = (uint)vcpu.Id;
        // Bit 24: the TSC-deadline timer, which KVM's local APIC emulates but KVM_GET_SUPPORTED_CPUID
        // leaves out. Without it Linux calibrates the APIC timer against other clocks, and on a busy
        // host may give up on it ("APIC timer disabled due to verification failure").
        uint leaf1Ecx = (1u << 31) | (tscDeadline ? 1u << 24 : 0);
        for (int i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            entries[i] = e.Function switch
            {
                // EBX[31:24] initial APIC id; ECX bit 31: running under a hypervisor; bit 24 above.
                1 => e with { Ebx = (e.Ebx & 0x00FFFFFF) | (apicId << 24), Ecx = e.Ecx | leaf1Ecx },
                // Extended topology: EDX is the x2APIC id.
                0xB or 0x1F => e with { Edx = apicId },
                _ => e,
            };
        }
        if (!entries.Any(e => e.Function == KvmCpuidSignature))
            entries.Add(new CpuidEntry(KvmCpuidSignature, 0, 0, KvmCpuidSignature + 1, KvmSignatureEbx, KvmSignatureEcx, KvmSignatureEdx));
        vcpu.SetCpuid(entries.ToArray());
    }

    /// <summary>What firmware leaves in MSRs for a kernel: fast string operations on, MTRRs on with write-back memory by default.</summary>
    private static void SetFirmwareMsrs(Vcpu vcpu)
    {
        // These go straight to KVM (MTRRdefType is not an MSR the cache holds): flush and forget the cache first.
        vcpu.Registers.Invalidate();
        vcpu.WriteMsrDirect(MsrMiscEnable, MiscEnableFastString);
        vcpu.WriteMsrDirect(MsrMtrrDefType, MtrrEnable | MtrrTypeWriteBack);
    }

    private static void SetRegisters(X86RegisterSync x86, ulong entryPoint)
    {
        ref var s = ref x86.EditSpecialRegisters();
        s.Cr0 = 0x1 /* PE */ | 0x10 /* ET */ | 0x80000000 /* PG */;
        s.Cr3 = Pml4;
        s.Cr4 = 0x20; // PAE
        s.Efer = 0x100 /* LME */ | 0x400 /* LMA */;
        s.Gdt = new X86DescriptorTable { Base = Gdt, Limit = 6 * 8 - 1 };
        s.Idt = default;
        s.Cs = new X86Segment { Selector = BootCodeSelector, Limit = 0xFFFFFFFF, Type = 11, Present = 1, S = 1, L = 1, G = 1 };
        var data = new X86Segment { Selector = BootDataSelector, Limit = 0xFFFFFFFF, Type = 3, Present = 1, S = 1, Db = 1, G = 1 };
        s.Ds = s.Es = s.Fs = s.Gs = s.Ss = data;
        s.Tr = new X86Segment { Selector = TssSelector, Base = Tss, Limit = TssLimit, Type = 11, Present = 1 };
        s.Ldt = new X86Segment { Type = 2, Present = 1, Unusable = 1 };

        ref var g = ref x86.EditGprs();
        g = default;
        g.Rip = entryPoint;
        g.Rsi = ZeroPageAddress;
        g.Rsp = g.Rbp = StackTop;
        g.Rflags = 0x2; // interrupts off; bit 1 reads as 1
    }
}
