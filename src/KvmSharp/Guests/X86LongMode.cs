using System.Buffers.Binary;
using KvmSharp.Registers;

namespace KvmSharp.Guests;

/// <summary>
/// Sets up an x86 vCPU in 64-bit long mode: identity-mapped page tables (2 MiB pages over the
/// first <see cref="MappedBytes"/>, user-accessible), a flat GDT with kernel and user segments, a
/// TSS with an I/O permission bitmap that allows every port, RFLAGS.IOPL as the options say
/// (default 3: user mode may use every port), and an IDT whose handlers report the vector on
/// <see cref="X86LongModeOptions.FaultPort"/> and halt. The boilerplate every 64-bit guest needs,
/// written once.
/// </summary>
/// <remarks>
/// <para>The structures take the first 64 KiB of the slot (<see cref="ReservedBytes"/>); put code and data
/// above. The CPL0 pieces use only descriptor-table loads and plain integer instructions, so they also
/// work on software KVMs that emulate CPL0 (kvm-pvm). Fault handlers run at CPL0 on the stack in
/// <see cref="KernelStackTop"/>: on a fault the host sees an I/O exit on the fault port whose value is
/// the vector, then a HLT exit; the error code is at the stack pointer and CR2 holds a page-fault address.</para>
/// <para>Port I/O from user mode: the architecture allows IN/OUT when CPL ≤ RFLAGS.IOPL, and only
/// otherwise consults the TSS I/O permission bitmap. The TR that KVM is given is a busy 64-bit TSS
/// (type 11, what LTR leaves and what Intel's VM entry demands in IA-32e mode); some CPUs — QEMU's
/// emulated AMD SVM, where this project's tests run — refuse the bitmap of a TR whose hidden type is
/// not "available" and raise #GP on every user-mode IN/OUT. So user mode gets IOPL 3 by default,
/// which every x86 CPU honours; the all-ports bitmap stays for KVMs that ignore IOPL (kvm-pvm).</para>
/// <para>The CPU itself writes guest memory here, and dirty-page tracking reports those pages (all
/// below <see cref="ReservedBytes"/>) besides what the guest's own stores touched: the page tables
/// (their accessed/dirty bits are preset, but a nested-paging walk may still count as a write to
/// them), descriptor tables, and the kernel stack when a fault is delivered.</para>
/// </remarks>
public static class X86LongMode
{
    /// <summary>Bytes at the start of the slot used by the page tables, GDT, TSS, IDT, handlers and kernel stack.</summary>
    public const ulong ReservedBytes = 0x10000;

    /// <summary>Guest-physical (= virtual) bytes identity-mapped by the page tables: 1 GiB. Above it every access faults.</summary>
    public const ulong MappedBytes = 1UL << 30;

    /// <summary>GDT selector of the 64-bit kernel code segment.</summary>
    public const ushort KernelCode = 0x08;
    /// <summary>GDT selector of the kernel data segment.</summary>
    public const ushort KernelData = 0x10;
    /// <summary>GDT selector (RPL 3) of the user data segment; STAR-compatible (kernel data + 8).</summary>
    public const ushort UserData = 0x18 | 3;
    /// <summary>GDT selector (RPL 3) of the 64-bit user code segment; STAR-compatible (kernel data + 16).</summary>
    public const ushort UserCode = 0x20 | 3;
    /// <summary>GDT selector of the TSS.</summary>
    public const ushort TssSelector = 0x28;

    private const ulong Pml4 = 0x1000, Pdpt = 0x2000, Pd = 0x3000, Gdt = 0x4000, Tss = 0x5000, Idt = 0x8000, Stubs = 0x9000;
    private const int TssIoBitmapOffset = 0x68, TssSize = TssIoBitmapOffset + 8192 + 1;
    private const int StubSize = 8;

    /// <summary>The offset, within the slot, of the top of the kernel stack faults run on.</summary>
    public const ulong KernelStackTop = 0xF000;

    /// <summary>
    /// Writes the structures into <paramref name="slot"/> and sets <paramref name="vcpu"/>'s registers
    /// (through its register cache; they reach KVM with the next run) so that it starts at
    /// <paramref name="entryPoint"/> in 64-bit mode, at CPL0 or CPL3 as the options say. Also gives the
    /// vCPU KVM's supported CPUID (KVM_SET_CPUID2) so that CPUID-dependent bits (CR4.OSXSAVE) are accepted.
    /// </summary>
    /// <param name="vcpu">An x86_64 vCPU that has not run yet.</param>
    /// <param name="slot">Guest RAM starting at guest-physical 0, at least <see cref="ReservedBytes"/> long.</param>
    /// <param name="entryPoint">Guest address of the first instruction.</param>
    /// <param name="stackTop">Initial RSP.</param>
    /// <param name="options">Privilege level, fault port and extended state; defaults when null.</param>
    /// <exception cref="ArgumentException">The slot does not start at 0, is too small, an address is outside the mapped range, or
    /// <see cref="X86LongModeOptions.IoPrivilegeLevel"/> is above 3.</exception>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not x86_64.</exception>
    /// <exception cref="KvmException">An ioctl failed.</exception>
    public static void Setup(Vcpu vcpu, MemorySlot slot, ulong entryPoint, ulong stackTop, X86LongModeOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(vcpu);
        ArgumentNullException.ThrowIfNull(slot);
        options ??= new X86LongModeOptions();
        if (slot.GuestPhysicalAddress != 0 || slot.Size < ReservedBytes)
            throw new ArgumentException($"X86LongMode needs a slot at guest-physical 0 of at least 0x{ReservedBytes:X} bytes; got {slot}.", nameof(slot));
        if (options.IoPrivilegeLevel > 3)
            throw new ArgumentOutOfRangeException(nameof(options), options.IoPrivilegeLevel, "IoPrivilegeLevel must be 0-3.");
        if (entryPoint >= MappedBytes || stackTop > MappedBytes)
            throw new ArgumentException($"Entry 0x{entryPoint:X} and stack 0x{stackTop:X} must lie in the identity-mapped first 0x{MappedBytes:X} bytes.");
        var x86 = vcpu.X86;

        WritePageTables(slot);
        WriteGdt(slot);
        WriteTss(slot);
        WriteIdt(slot, options);

        vcpu.SetCpuid(vcpu.VirtualMachine.Kvm.GetSupportedCpuid());

        ref var s = ref x86.EditSpecialRegisters();
        s.Cr3 = Pml4;
        s.Cr4 = 0x20 /* PAE */ | 0x200 /* OSFXSR */ | 0x400 /* OSXMMEXCPT */ | (options.EnableAvx ? 0x40000UL /* OSXSAVE */ : 0);
        s.Cr0 = 0x1 /* PE */ | 0x2 /* MP */ | 0x10 /* ET */ | 0x20 /* NE */ | 0x10000 /* WP */ | 0x80000000 /* PG */;
        s.Efer = 0x100 /* LME */ | 0x400 /* LMA */ | 0x1 /* SCE */;
        s.Gdt = new X86DescriptorTable { Base = Gdt, Limit = 0x37 };
        s.Idt = options.InstallIdt ? new X86DescriptorTable { Base = Idt, Limit = 256 * 16 - 1 } : default;
        bool user = options.UserMode;
        s.Cs = CodeSegment(user ? UserCode : KernelCode, user ? (byte)3 : (byte)0);
        var data = DataSegment(user ? UserData : KernelData, user ? (byte)3 : (byte)0);
        s.Ds = s.Es = s.Fs = s.Gs = s.Ss = data;
        s.Tr = new X86Segment { Base = Tss, Limit = TssSize - 1, Selector = TssSelector, Type = 11, Present = 1 };
        s.Ldt = new X86Segment { Selector = 0, Type = 2, Present = 1, Unusable = 1 };

        ref var g = ref x86.EditGprs();
        g = default;
        g.Rip = entryPoint;
        g.Rsp = stackTop;
        g.Rflags = 0x2 | ((ulong)options.IoPrivilegeLevel << 12); // bit 1 is reserved (reads as 1); IOPL in bits 12-13

        if (options.EnableAvx)
            x86.Xcr0 = 0x7; // x87 | SSE | AVX
    }

    private static X86Segment CodeSegment(ushort selector, byte dpl) =>
        new() { Selector = selector, Limit = 0xFFFFFFFF, Type = 11, Present = 1, Dpl = dpl, S = 1, L = 1, G = 1 };

    private static X86Segment DataSegment(ushort selector, byte dpl) =>
        new() { Selector = selector, Limit = 0xFFFFFFFF, Type = 3, Present = 1, Dpl = dpl, S = 1, Db = 1, G = 1 };

    private static void WritePageTables(MemorySlot slot)
    {
        // Accessed and Dirty are preset, so the guest's MMU never writes the tables: dirty-page
        // tracking then reports exactly the pages the guest's own instructions wrote.
        const ulong P = 1, W = 2, U = 4, A = 0x20, D = 0x40, PS = 0x80;
        slot.GetSpan(Pml4, 0x3000).Clear();
        slot.Write(Pml4, Pdpt | P | W | U | A);
        slot.Write(Pdpt, Pd | P | W | U | A);
        for (ulong i = 0; i < 512; i++)
            slot.Write(Pd + i * 8, (i << 21) | P | W | U | A | D | PS);
    }

    private static void WriteGdt(MemorySlot slot)
    {
        Span<ulong> gdt =
        [
            0,
            // Accessed bits preset, so loading a segment never writes the GDT.
            0x00AF9B000000FFFF, // 0x08 kernel code: 64-bit, DPL0, present, execute/read
            0x00CF93000000FFFF, // 0x10 kernel data: DPL0, read/write
            0x00CFF3000000FFFF, // 0x18 user data: DPL3
            0x00AFFB000000FFFF, // 0x20 user code: 64-bit, DPL3
            TssDescriptorLow(Tss, TssSize - 1),
            Tss >> 32,          // 0x28 TSS, high half
        ];
        for (int i = 0; i < gdt.Length; i++) slot.Write(Gdt + (ulong)i * 8, gdt[i]);
    }

    private static ulong TssDescriptorLow(ulong @base, ulong limit) =>
        (limit & 0xFFFF) | ((@base & 0xFFFFFF) << 16) | (0x8BUL << 40) /* present, 64-bit TSS (busy) */
        | (((limit >> 16) & 0xF) << 48) | (((@base >> 24) & 0xFF) << 56);

    private static void WriteTss(MemorySlot slot)
    {
        var tss = slot.GetSpan(Tss, TssSize);
        tss.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(tss.Slice(4), KernelStackTop);           // RSP0
        BinaryPrimitives.WriteUInt16LittleEndian(tss.Slice(0x66), TssIoBitmapOffset);     // I/O map base
        tss[TssSize - 1] = 0xFF;                                                          // bitmap terminator; all ports allowed
    }

    private static void WriteIdt(MemorySlot slot, X86LongModeOptions options)
    {
        for (int v = 0; v < 256; v++)
        {
            ulong handler = Stubs + (ulong)(v * StubSize);
            // mov al, v ; out port, al ; hlt ; jmp back to hlt
            slot.Write(handler, (ReadOnlySpan<byte>)[0xB0, (byte)v, 0xE6, options.FaultPort, 0xF4, 0xEB, 0xFD, 0x90]);
            ulong lo = (handler & 0xFFFF) | ((ulong)KernelCode << 16) | (0x8EUL << 40) /* present, DPL0, interrupt gate */
                       | (((handler >> 16) & 0xFFFF) << 48);
            slot.Write(Idt + (ulong)v * 16, lo);
            slot.Write(Idt + (ulong)v * 16 + 8, handler >> 32);
        }
    }
}
