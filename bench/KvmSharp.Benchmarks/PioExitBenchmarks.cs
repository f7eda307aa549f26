using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;

namespace KvmSharp.Benchmarks;

/// <summary>
/// The cost of one PIO exit round trip (guest <c>out</c> → KVM_RUN returns → KVM_RUN again), three
/// ways (and the run loop), in one run so that the ratios are meaningful:
/// <list type="bullet">
/// <item><see cref="RawC"/> (baseline): a gcc-compiled C loop doing all exits in one native call.</item>
/// <item><see cref="RawPInvoke"/>: the same loop in C# over bare libc imports.</item>
/// <item><see cref="KvmSharpLibrary"/>: <see cref="Vcpu.Run"/> and the typed exit view.</item>
/// <item><see cref="KvmSharpRunner"/>: <see cref="VcpuRunner"/> dispatching to a device on an <see cref="Devices.IoBus"/>.</item>
/// </list>
/// Each invocation does <see cref="Exits"/> exits, so the reported time and allocation are per exit.
/// </summary>
/// <remarks>
/// The guest is real-mode code, which kvm-pvm emulates (~0.5 µs per instruction), so absolute
/// numbers there are dominated by the kernel; the ratio to <see cref="RawC"/> is the library's cost.
/// </remarks>
[MemoryDiagnoser]
public class PioExitBenchmarks
{
    /// <summary>Exits per benchmark invocation (BenchmarkDotNet divides by this).</summary>
    public const int Exits = 1000;

    private NativePioLoop? _native;
    private RawKvmVm? _raw;
    private KvmSharpGuest? _guest;
    private Vcpu? _vcpu;

    // ---- raw C ------------------------------------------------------------------------------

    [GlobalSetup(Target = nameof(RawC))]
    public void SetupRawC()
    {
        _native = new NativePioLoop();
        _native.Run(1); // fail fast, and complete the first (slow) entry outside the measurement
    }

    [GlobalCleanup(Target = nameof(RawC))]
    public void CleanupRawC() => _native?.Dispose();

    [Benchmark(Baseline = true, OperationsPerInvoke = Exits, Description = "raw C (gcc -O2)")]
    public void RawC() => _native!.Run(Exits);

    // ---- raw P/Invoke -----------------------------------------------------------------------

    [GlobalSetup(Target = nameof(RawPInvoke))]
    public void SetupRawPInvoke()
    {
        _raw = new RawKvmVm();
        _raw.RunOneExit();
    }

    [GlobalCleanup(Target = nameof(RawPInvoke))]
    public void CleanupRawPInvoke() => _raw?.Dispose();

    [Benchmark(OperationsPerInvoke = Exits, Description = "raw P/Invoke")]
    public void RawPInvoke()
    {
        var raw = _raw!;
        for (int i = 0; i < Exits; i++)
            raw.RunOneExit();
    }

    // ---- KvmSharp ---------------------------------------------------------------------------

    [GlobalSetup(Target = nameof(KvmSharpLibrary))]
    public void SetupKvmSharp()
    {
        _guest = new KvmSharpGuest(GuestCode.Code);
        _vcpu = _guest.Vcpu;
        KvmSharpOneExit(_vcpu);
    }

    [GlobalCleanup(Target = nameof(KvmSharpLibrary))]
    public void CleanupKvmSharp() => _guest?.Dispose();

    [Benchmark(OperationsPerInvoke = Exits, Description = "KvmSharp Vcpu.Run")]
    public void KvmSharpLibrary()
    {
        var vcpu = _vcpu!;
        for (int i = 0; i < Exits; i++)
            KvmSharpOneExit(vcpu);
    }

    private static void KvmSharpOneExit(Vcpu vcpu)
    {
        // What a typical exit handler does: run, look at the reason, read the port.
        // (exit.Io also checks the reason itself and throws on a non-I/O exit.)
        var exit = vcpu.Run();
        if (exit.Reason != VcpuExitReason.Io || exit.Io.Port != GuestCode.Port)
            ThrowUnexpectedExit(exit.ToString(), exit.Reason == VcpuExitReason.Io ? exit.Io.Port : 0);
    }

    // ---- KvmSharp VcpuRunner -------------------------------------------------------------------

    private VcpuRunner? _runner;
    private CountingPort? _port;

    [GlobalSetup(Target = nameof(KvmSharpRunner))]
    public void SetupKvmSharpRunner()
    {
        _guest = new KvmSharpGuest(GuestCode.Code);
        _port = new CountingPort();
        var bus = new Devices.IoBus();
        bus.MapPorts(GuestCode.Port, 1, _port);
        _runner = new VcpuRunner(_guest.Vcpu, bus) { UnclaimedPolicy = Devices.UnclaimedAccessPolicy.Stop };
        KvmSharpRunner();
    }

    [GlobalCleanup(Target = nameof(KvmSharpRunner))]
    public void CleanupKvmSharpRunner() => _guest?.Dispose();

    /// <summary>The recommended loop: <see cref="VcpuRunner"/> dispatching each OUT to a device on the port, which stops it after <see cref="Exits"/>.</summary>
    [Benchmark(OperationsPerInvoke = Exits, Description = "KvmSharp VcpuRunner")]
    public void KvmSharpRunner()
    {
        _port!.Left = Exits;
        var result = _runner!.Run();
        if (result.Reason != RunStopReason.StopRequested || result.Exits != Exits)
            throw new InvalidOperationException($"The runner stopped with {result.Reason} after {result.Exits} exits (last {result.LastExit}); expected StopRequested after {Exits}.");
    }

    /// <summary>A port device that counts the guest's writes and stops the runner at the last one.</summary>
    private sealed class CountingPort : Devices.IIoDevice
    {
        public int Left;

        public void Read(Devices.IoContext context, ulong offset, Span<byte> data) => data.Clear();

        public void Write(Devices.IoContext context, ulong offset, ReadOnlySpan<byte> data)
        {
            if (--Left == 0) context.RequestStop();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowUnexpectedExit(string reason, int port) =>
        throw new InvalidOperationException($"Expected a PIO exit on port 0x{GuestCode.Port:x}, got {reason} (port 0x{port:x}).");
}
