// FuzzHarness: a mutational, coverage-guided fuzzer for a guest "parser", one VM per core. Each
// execution restores the VM to a snapshot (only the dirtied pages are copied back), writes the input
// into guest memory, runs until the guest is done, faults or times out, and reads the coverage map.
using System.Diagnostics;
using FuzzHarness;
using KvmSharp;
using KvmSharp.Lab;

// Where /dev/kvm does not work, fuzz in a KvmSharp.Lab machine (a stock Linux KVM under QEMU).
if (KvmLab.RelaunchIfNeeded(args, new LabOptions { Log = Console.Out }) is int labExitCode)
    return labExitCode;

int seconds = 60, workers = Environment.ProcessorCount;
for (int i = 0; i < args.Length - 1; i++)
{
    if (args[i] == "--seconds") seconds = int.Parse(args[++i]);
    else if (args[i] == "--workers") workers = int.Parse(args[++i]);
}

try
{
    using var kvm = Kvm.Open();
    var corpus = new Corpus();
    var found = new TaskCompletionSource<(byte[] Input, string Kind)>(TaskCreationOptions.RunContinuationsAsynchronously);
    long execs = 0;
    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(seconds));
    var sw = Stopwatch.StartNew();
    var threads = Enumerable.Range(0, workers).Select(w => new Thread(() =>
    {
        try
        {
            using var fuzzer = new Fuzzer(kvm, corpus, seed: 1234 + w);
            while (!cts.IsCancellationRequested && !found.Task.IsCompleted)
            {
                var crash = fuzzer.RunOne();
                Interlocked.Increment(ref execs);
                if (crash is { } c) found.TrySetResult(c);
            }
        }
        catch (Exception e)
        {
            found.TrySetException(e);
        }
    }) { IsBackground = true, Name = $"fuzz worker {w}" }).ToArray();
    foreach (var t in threads) t.Start();

    Console.WriteLine($"fuzzing with {workers} worker(s), one VM each, for at most {seconds} s");
    while (!found.Task.Wait(1000) && !cts.IsCancellationRequested)
        Console.WriteLine($"  {sw.Elapsed.TotalSeconds,5:F0} s  {Interlocked.Read(ref execs),9:N0} execs  {Interlocked.Read(ref execs) / sw.Elapsed.TotalSeconds,8:N0} execs/s  corpus {corpus.Count}");
    cts.Cancel();
    foreach (var t in threads) t.Join();
    double rate = Interlocked.Read(ref execs) / sw.Elapsed.TotalSeconds;
    if (found.Task.IsCompletedSuccessfully)
    {
        var (input, kind) = found.Task.Result;
        Console.WriteLine($"CRASH after {sw.Elapsed.TotalSeconds:F2} s and {execs:N0} execs ({rate:N0} execs/s): {kind}");
        Console.WriteLine($"  input ({input.Length} bytes): {Convert.ToHexString(input)}  \"{new string(input.Select(b => b is >= 32 and < 127 ? (char)b : '.').ToArray())}\"");
        return 0;
    }
    if (found.Task.IsFaulted) throw found.Task.Exception!.InnerException!;
    Console.WriteLine($"no crash found in {seconds} s ({execs:N0} execs, {rate:N0} execs/s)");
    return 1;
}
catch (KvmUnavailableException e)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

/// <summary>One worker: a VM, a mutator, and the loop that runs one input.</summary>
internal sealed class Fuzzer(Kvm kvm, Corpus corpus, int seed) : IDisposable
{
    private readonly FuzzVm _vm = new(kvm, Target.Assemble());
    private readonly Mutator _mutator = new(seed);

    /// <summary>Runs one mutated input; returns what crashed (and a copy of the input), or null.</summary>
    public (byte[] Input, string Crash)? RunOne()
    {
        var input = _mutator.Mutate(corpus.Pick(_mutator.Random));
        _vm.Restore();
        var exit = _vm.Run(input);
        string? crash = null;
        if (exit.Reason == VcpuExitReason.Io && exit.Io.Port == Target.FaultPort)
        {
            uint vector = exit.Io.Value;
            crash = vector switch
            {
                14 => $"page fault (#PF) writing 0x{_vm.Cpu.X86.Cr2:X}",
                6 => "invalid opcode (#UD)",
                _ => $"exception vector {vector}",
            };
        }
        else if (exit.Reason == VcpuExitReason.Interrupted) crash = "hang (no exit within 1 s)";
        else if (!(exit.Reason == VcpuExitReason.Io && exit.Io.Port == Target.DonePort)) crash = "unexpected exit " + exit.ToString();
        corpus.Offer(input, _vm.Coverage);
        return crash is null ? null : (input.ToArray(), crash);
    }

    public void Dispose() => _vm.Dispose();
}
