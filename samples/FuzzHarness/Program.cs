// FuzzHarness: a mutational, coverage-guided fuzzer for a guest "parser", one VM per core. Each
// execution restores the VM to a snapshot (only the dirtied pages are copied back), writes the input
// into guest memory, runs until the guest is done, faults or times out, and reads the coverage map.
using System.Diagnostics;
using FuzzHarness;
using KvmSharp;
using KvmSharp.Guests;
using KvmSharp.Snapshots;

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
                var (input, crash) = fuzzer.RunOne();
                Interlocked.Increment(ref execs);
                if (crash is not null) found.TrySetResult((input, crash));
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

/// <summary>Inputs that reached new coverage, shared by all workers.</summary>
internal sealed class Corpus
{
    private readonly List<byte[]> _inputs = [[]];
    private readonly bool[] _seen = new bool[Target.CoverageBytes];

    public int Count
    {
        get
        {
            lock (_inputs) return _inputs.Count;
        }
    }

    public byte[] Pick(Random random)
    {
        lock (_inputs) return _inputs[random.Next(_inputs.Count)];
    }

    /// <summary>Keeps <paramref name="input"/> if it set a coverage byte nobody had set before.</summary>
    public void Offer(byte[] input, ReadOnlySpan<byte> coverage)
    {
        lock (_inputs)
        {
            bool fresh = false;
            for (int i = 0; i < coverage.Length; i++)
                if (coverage[i] != 0 && !_seen[i]) fresh = _seen[i] = true;
            if (fresh) _inputs.Add(input);
        }
    }
}

/// <summary>One VM and the loop that runs one input on it.</summary>
internal sealed class Fuzzer : IDisposable
{
    private readonly VirtualMachine _vm;
    private readonly MemorySlot _ram;
    private readonly Vcpu _cpu;
    private readonly VmSnapshot _snapshot;
    private readonly Corpus _corpus;
    private readonly Random _random;

    public Fuzzer(Kvm kvm, Corpus corpus, int seed)
    {
        _corpus = corpus;
        _random = new Random(seed);
        _vm = kvm.CreateVirtualMachine();
        _vm.EnableDirtyTracking();
        _ram = _vm.AddMemorySlot(0, 0x200000);
        _ram.Write(Target.Code, Target.Assemble());
        _cpu = _vm.CreateVcpu();
        X86LongMode.Setup(_cpu, _ram, Target.Code, Target.StackTop,
            new X86LongModeOptions { UserMode = true, FaultPort = Target.FaultPort });
        _cpu.X86.Rdi = Target.Input;
        _snapshot = _vm.CreateSnapshot();
    }

    public (byte[] Input, string? Crash) RunOne()
    {
        byte[] input = Mutate(_corpus.Pick(_random));
        _vm.Restore(_snapshot);                       // only the pages the last run dirtied are copied
        _ram.Write(Target.Input, input);              // tracked: restored after this run too
        _cpu.X86.Rsi = (ulong)input.Length;           // through kvm_run: no ioctl
        var exit = _cpu.Run(TimeSpan.FromSeconds(1));
        string? crash = null;
        if (exit.Reason == VcpuExitReason.Io && exit.Io.Port == Target.FaultPort)
        {
            uint vector = exit.Io.Value;
            crash = vector switch
            {
                14 => $"page fault (#PF) writing 0x{_cpu.X86.Cr2:X}",
                6 => "invalid opcode (#UD)",
                _ => $"exception vector {vector}",
            };
        }
        else if (exit.Reason == VcpuExitReason.Interrupted) crash = "hang (no exit within 1 s)";
        else if (!(exit.Reason == VcpuExitReason.Io && exit.Io.Port == Target.DonePort)) crash = "unexpected exit " + exit.ToString();
        _corpus.Offer(input, _ram.GetSpan(Target.Coverage, Target.CoverageBytes));
        return (input, crash);
    }

    private byte[] Mutate(byte[] parent)
    {
        var list = new List<byte>(parent);
        int n = 1 + _random.Next(3);
        for (int i = 0; i < n; i++)
        {
            int op = _random.Next(4);
            if (list.Count == 0 || op == 0)
            {
                if (list.Count < Target.MaxInput) list.Insert(_random.Next(list.Count + 1), (byte)_random.Next(256));
            }
            else if (op == 1) list[_random.Next(list.Count)] = (byte)_random.Next(256);
            else if (op == 2 && list.Count < Target.MaxInput) list.Add((byte)_random.Next(256));
            else list.RemoveAt(_random.Next(list.Count));
        }
        return [.. list];
    }

    public void Dispose() => _vm.Dispose();
}
