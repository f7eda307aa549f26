using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using KvmSharp.Guests;

namespace KvmSharp.Benchmarks;

/// <summary>
/// The guest of <see cref="RestoreBenchmarks"/>: 64-bit code at CPL3 (which kvm-pvm runs natively,
/// so that 512 writes cost no instruction emulation) that increments one byte in each of
/// <c>pages</c> consecutive pages from <see cref="FirstPage"/>, then does <c>out 0x10, al</c> (one
/// exit) and starts over. Every run from an exit to the next therefore dirties exactly those pages
/// of its own; on stock KVM the CPU's page-table walks also dirty X86LongMode's page-table pages
/// (below <see cref="X86LongMode.ReservedBytes"/>, with AMD nested paging after every run), which
/// every restore — KvmSharp's and raw C's alike — copies back too.
/// </summary>
internal static class DirtyPagesGuest
{
    public const ulong Entry = 0x10000, StackTop = 0x80000, FirstPage = 0x100000;
    public const ushort Port = 0x10;

    /// <summary>The guest sizes of the full grid, in MiB.</summary>
    public static readonly int[] SizesMiB = [16, 64, 256];

    /// <summary>The dirty-page counts of the full grid.</summary>
    public static readonly int[] PageCounts = [1, 8, 64, 512];

    /// <summary>
    /// <code>
    /// start: mov rdi, FirstPage
    ///        mov ecx, pages
    /// next:  inc byte [rdi]
    ///        add rdi, 0x1000
    ///        dec ecx
    ///        jnz next
    ///        out 0x10, al
    ///        jmp start
    /// </code>
    /// </summary>
    public static byte[] Code(int pages)
    {
        byte[] code =
        [
            0x48, 0xBF, 0, 0, 0, 0, 0, 0, 0, 0,     // 0:  mov rdi, imm64
            0xB9, 0, 0, 0, 0,                       // 10: mov ecx, imm32
            0xFE, 0x07,                             // 15: inc byte [rdi]
            0x48, 0x81, 0xC7, 0x00, 0x10, 0, 0,     // 17: add rdi, 0x1000
            0xFF, 0xC9,                             // 24: dec ecx
            0x75, unchecked((byte)(15 - 28)),       // 26: jnz 15
            0xE6, (byte)Port,                       // 28: out 0x10, al
            0xEB, unchecked((byte)(0 - 32)),        // 30: jmp 0
        ];
        BinaryPrimitives.WriteUInt64LittleEndian(code.AsSpan(2), FirstPage);
        BinaryPrimitives.WriteInt32LittleEndian(code.AsSpan(11), pages);
        return code;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void RunToExit(Vcpu cpu)
    {
        var exit = cpu.Run();
        if (exit.Reason != VcpuExitReason.Io || exit.Io.Port != Port) ThrowUnexpectedExit(exit.ToString());
    }

    /// <summary>Checks that each of the guest's bytes holds <paramref name="value"/> (the number of runs since the image was clean).</summary>
    public static void CheckBytes(ReadOnlySpan<byte> memory, int pages, byte value)
    {
        for (int i = 0; i < pages; i++)
        {
            byte b = memory[(int)FirstPage + i * 4096];
            if (b != value)
                throw new InvalidOperationException($"Guest byte at 0x{FirstPage + (ulong)i * 4096:x} is {b}, expected {value}: memory was not restored (or not written).");
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowUnexpectedExit(string exit) =>
        throw new InvalidOperationException($"Expected a PIO exit on port 0x{Port:x}, got {exit}.");

    /// <summary>The RAM size of a <paramref name="sizeMiB"/> MiB guest, checked to hold <paramref name="pages"/> pages from <see cref="FirstPage"/>.</summary>
    public static ulong CheckFits(int sizeMiB, int pages)
    {
        ulong size = (ulong)sizeMiB << 20;
        if (pages < 1 || FirstPage + (ulong)pages * 4096 > size)
            throw new ArgumentOutOfRangeException(nameof(pages), pages, $"{pages} pages from 0x{FirstPage:x} do not fit in {sizeMiB} MiB.");
        return size;
    }

    /// <summary>
    /// Runs a new dirty-pages VM to its exit twice, so that it sits at an exit with every page the
    /// guest touches mapped and its bytes hold <see cref="DirtyPagesVm.RunsInSetup"/>. With tracking
    /// on, checks that the second run dirtied exactly the guest's <paramref name="pages"/> pages and
    /// nothing else but pages below <paramref name="otherPagesBelow"/> (on x86 X86LongMode's
    /// structures, which the CPU itself writes on stock KVM; none on arm64 with the MMU off).
    /// </summary>
    public static void Settle(IDirtyPagesVm vm, int pages, ulong otherPagesBelow)
    {
        vm.RunToExit();
        vm.Vm.DirtyTracker?.Harvest().Dispose(); // forget the setup's writes and the first run's
        vm.RunToExit();
        if (vm.Vm.DirtyTracker is { } tracker)
        {
            using var dirty = tracker.Harvest();
            var expected = Enumerable.Range(0, pages).Select(i => FirstPage + (ulong)i * 4096);
            var data = dirty.Addresses().Where(a => a >= FirstPage);
            var other = dirty.Addresses().Where(a => a < FirstPage).ToList();
            if (!data.SequenceEqual(expected) || other.Any(a => a >= otherPagesBelow))
                throw new InvalidOperationException(
                    $"A run dirtied {dirty.Count} pages ({string.Join(", ", dirty.Addresses().Take(12).Select(a => $"0x{a:x}"))}…), not the {pages} " +
                    $"from 0x{FirstPage:x} and, at most, pages below 0x{otherPagesBelow:x}.");
        }
        CheckBytes(vm.Ram.Span, pages, DirtyPagesVm.RunsInSetup);
    }
}

/// <summary>A VM running the dirty-pages guest, at its exit: <see cref="DirtyPagesVm"/> (x86) or <see cref="Arm64DirtyPagesVm"/>.</summary>
internal interface IDirtyPagesVm : IDisposable
{
    VirtualMachine Vm { get; }
    MemorySlot Ram { get; }
    Vcpu Cpu { get; }

    /// <summary>Runs from the exit to the next one (checked), dirtying the guest's pages.</summary>
    void RunToExit();
}

/// <summary>
/// A KvmSharp VM running <see cref="DirtyPagesGuest"/>: RAM of the given size at guest-physical 0,
/// dirty tracking with the given back end (none if null), run to its exit twice so that the vCPU
/// sits at an exit with every page the guest touches mapped. With tracking on, the constructor
/// checks that the second run dirtied exactly the expected pages of the guest's data, and nothing
/// else but X86LongMode's structures (which the CPU itself writes on stock KVM).
/// </summary>
internal sealed class DirtyPagesVm : IDirtyPagesVm
{
    private readonly Kvm _kvm;

    public DirtyPagesVm(int sizeMiB, int pages, DirtyLogBackend? backend)
    {
        ulong size = DirtyPagesGuest.CheckFits(sizeMiB, pages);
        Pages = pages;
        _kvm = Kvm.Open();
        try
        {
            Vm = _kvm.CreateVirtualMachine();
            if (backend is { } b) Vm.EnableDirtyTracking(b); // before the vCPU: the dirty ring needs that
            Ram = Vm.AddMemorySlot(0, size);
            Ram.Write(DirtyPagesGuest.Entry, DirtyPagesGuest.Code(pages));
            Cpu = Vm.CreateVcpu();
            X86LongMode.Setup(Cpu, Ram, DirtyPagesGuest.Entry, DirtyPagesGuest.StackTop, new X86LongModeOptions { UserMode = true });
            DirtyPagesGuest.Settle(this, pages, otherPagesBelow: X86LongMode.ReservedBytes);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The dirty-pages VM of this process's architecture.</summary>
    public static IDirtyPagesVm Create(int sizeMiB, int pages, DirtyLogBackend? backend) =>
        RestoreLoop.IsArm64 ? new Arm64DirtyPagesVm(sizeMiB, pages, backend) : new DirtyPagesVm(sizeMiB, pages, backend);

    public void RunToExit() => DirtyPagesGuest.RunToExit(Cpu);

    /// <summary>How many times the constructor ran the guest: the value of its bytes now.</summary>
    public const byte RunsInSetup = 2;

    public int Pages { get; }
    public VirtualMachine Vm { get; } = null!;
    public MemorySlot Ram { get; } = null!;
    public Vcpu Cpu { get; } = null!;

    public void Dispose()
    {
        Vm?.Dispose();
        _kvm.Dispose();
    }
}
