using System.Runtime.CompilerServices;
using KvmSharp.Arm64.Tests.Guests;

namespace KvmSharp.Benchmarks;

/// <summary>
/// The arm64 guests (A64 code at EL1 with the MMU off, from the arm64 tests' encoder) and a KvmSharp
/// VM running one: RAM at guest-physical 0, an initialised vCPU about to run the code at
/// <see cref="CodeAddress"/>. <see cref="Arm64NativeVm"/> sets up the same guest with plain ioctls.
/// </summary>
internal sealed class Arm64Guest : IDisposable
{
    public const ulong CodeAddress = 0x1000;
    public const ulong RamSize = 0x10000;
    /// <summary>No slot there: every store is an MMIO exit.</summary>
    public const ulong MmioAddress = 0x1000_0000;

    /// <summary><c>mov x1, MMIO; loop: str w0, [x1]; b loop</c>: each KVM_RUN is one MMIO exit round trip.</summary>
    public static byte[] StoreW0Code => StoreLoop(4).Code;

    /// <summary>
    /// <c>mov x1, MMIO; loop: str x0, [x1]; b loop</c>: each exit shows the X0 the host wrote at the
    /// previous one, so a register write that did not reach the guest is caught.
    /// </summary>
    public static byte[] StoreX0Code => StoreLoop(8).Code;

    /// <summary>Where the store of <see cref="StoreX0Code"/> is: the PC at each of its exits.</summary>
    public static ulong StoreX0Pc => CodeAddress + (ulong)StoreLoop(8).Store;

    private static (byte[] Code, int Store) StoreLoop(int size)
    {
        var a = new A64().Mov(1, MmioAddress);
        int store = a.Position;
        a.Store(size, 0, 1).Instruction(A64.B(-4));
        return (a.ToArray(), store);
    }

    /// <summary>
    /// Increments one byte in each of <paramref name="pages"/> pages from <see cref="DirtyPagesGuest.FirstPage"/>
    /// (the bytes the x86 guest writes, checked with <see cref="DirtyPagesGuest.CheckBytes"/>), then
    /// stores W0 to MMIO (one exit) and starts over:
    /// <code>
    /// start: mov x2, FirstPage; mov x3, pages; mov x5, 4096; mov x1, MMIO
    /// next:  ldrb w4, [x2]; add x4, x4, #1; strb w4, [x2]; add x2, x2, x5
    ///        subs x3, x3, #1; b.ne next
    ///        str w0, [x1]; b start
    /// </code>
    /// </summary>
    public static byte[] DirtyPagesCode(int pages)
    {
        var a = new A64().Mov(2, DirtyPagesGuest.FirstPage).Mov(3, (ulong)pages).Mov(5, 4096).Mov(1, MmioAddress);
        int next = a.Position;
        a.Load(1, 4, 2).Add(4, 4, 1).Store(1, 4, 2).Instruction(A64.AddRegister(2, 2, 5))
            .SubtractSettingFlags(3, 3, 1).BranchIf(A64.Condition.Ne, next)
            .Store(4, 0, 1);
        a.Instruction(A64.B(-a.Position));
        return a.ToArray();
    }

    private readonly Kvm _kvm;

    /// <param name="code">The guest.</param>
    /// <param name="ramSize">RAM at guest-physical 0.</param>
    /// <param name="backend">Dirty tracking to turn on before the vCPU exists (null: none).</param>
    public Arm64Guest(ReadOnlySpan<byte> code, ulong ramSize = RamSize, DirtyLogBackend? backend = null)
    {
        _kvm = Kvm.Open();
        try
        {
            Vm = _kvm.CreateVirtualMachine();
            if (backend is { } b) Vm.EnableDirtyTracking(b);
            Ram = Vm.AddMemorySlot(0, ramSize);
            Ram.Write(CodeAddress, code);
            Cpu = Vm.CreateVcpu();
            Cpu.Arm64.Initialize();
            Cpu.Arm64.Pc = CodeAddress;
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public VirtualMachine Vm { get; } = null!;
    public MemorySlot Ram { get; } = null!;
    public Vcpu Cpu { get; } = null!;

    /// <summary>Runs to the next exit, which must be an MMIO write to <see cref="MmioAddress"/>; returns it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static MmioExit RunToMmio(Vcpu cpu)
    {
        var exit = cpu.Run();
        if (exit.Reason != VcpuExitReason.Mmio) ThrowUnexpectedExit(exit.ToString());
        var mmio = exit.Mmio;
        if (mmio.Address != MmioAddress || !mmio.IsWrite) ThrowUnexpectedExit($"an MMIO {(mmio.IsWrite ? "write" : "read")} at 0x{mmio.Address:x}");
        return mmio;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowUnexpectedExit(string exit) =>
        throw new InvalidOperationException($"Expected an MMIO write to 0x{MmioAddress:x}, got {exit}.");

    public void Dispose()
    {
        Cpu?.Dispose();
        Vm?.Dispose();
        _kvm.Dispose();
    }
}
