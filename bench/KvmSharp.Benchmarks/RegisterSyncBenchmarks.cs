using BenchmarkDotNet.Attributes;

namespace KvmSharp.Benchmarks;

/// <summary>
/// The cost of an exit whose handler reads RIP and writes RAX (guest <c>out 0x10, ax</c> in a
/// loop; each exit checks that the guest output the RAX written at the exit before), four ways in
/// one run so that the ratios are meaningful (see <see cref="RegisterSyncWay"/>):
/// <list type="bullet">
/// <item><see cref="RawCSyncRegs"/> (baseline): C with KVM_CAP_SYNC_REGS, 1 ioctl per exit.</item>
/// <item><see cref="KvmSharpLazy"/>: KvmSharp's register cache with sync regs (its default), 1 ioctl per exit.</item>
/// <item><see cref="RawEager"/>: C# P/Invoke doing KVM_GET_REGS + KVM_SET_REGS + KVM_RUN, 3 ioctls per exit.</item>
/// <item><see cref="KvmSharpEager"/>: KvmSharp with <c>UseSyncRegs = false</c>, also 3 ioctls per exit.</item>
/// </list>
/// Each invocation does <see cref="Exits"/> exits, so the reported time and allocation are per exit.
/// <c>--count-ioctls</c> (see <see cref="Program"/>) runs the same loops under strace.
/// </summary>
/// <remarks>
/// The guest is real-mode code, which kvm-pvm emulates, so a KVM_RUN round trip costs ~8 µs and
/// every register ioctl ~5 µs there: the ratios show the ioctls saved, and what KvmSharp's cache
/// costs on top of the C baseline.
/// </remarks>
[MemoryDiagnoser]
public class RegisterSyncBenchmarks
{
    /// <summary>Exits per benchmark invocation (BenchmarkDotNet divides by this).</summary>
    public const int Exits = 1000;

    private RegisterSyncLoop? _loop;

    [GlobalSetup(Target = nameof(RawCSyncRegs))]
    public void SetupRawC() => _loop = RegisterSyncLoop.Create(RegisterSyncWay.RawCSyncRegs);

    [GlobalSetup(Target = nameof(KvmSharpLazy))]
    public void SetupKvmSharpLazy() => _loop = RegisterSyncLoop.Create(RegisterSyncWay.KvmSharpLazy);

    [GlobalSetup(Target = nameof(RawEager))]
    public void SetupRawEager() => _loop = RegisterSyncLoop.Create(RegisterSyncWay.RawEager);

    [GlobalSetup(Target = nameof(KvmSharpEager))]
    public void SetupKvmSharpEager() => _loop = RegisterSyncLoop.Create(RegisterSyncWay.KvmSharpEager);

    [GlobalSetup(Target = nameof(KvmSharpRunnerLazy))]
    public void SetupKvmSharpRunnerLazy() => _loop = RegisterSyncLoop.Create(RegisterSyncWay.KvmSharpRunnerLazy);

    [GlobalCleanup]
    public void Cleanup()
    {
        _loop?.Dispose();
        _loop = null;
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Exits, Description = "raw C, sync regs")]
    public void RawCSyncRegs() => _loop!.Run(Exits);

    [Benchmark(OperationsPerInvoke = Exits, Description = "KvmSharp lazy (sync regs)")]
    public void KvmSharpLazy() => _loop!.Run(Exits);

    [Benchmark(OperationsPerInvoke = Exits, Description = "KvmSharp lazy, VcpuRunner + device")]
    public void KvmSharpRunnerLazy() => _loop!.Run(Exits);

    [Benchmark(OperationsPerInvoke = Exits, Description = "raw P/Invoke GET/SET_REGS")]
    public void RawEager() => _loop!.Run(Exits);

    [Benchmark(OperationsPerInvoke = Exits, Description = "KvmSharp UseSyncRegs=false")]
    public void KvmSharpEager() => _loop!.Run(Exits);
}
