using KvmSharp;
using KvmSharp.Guests;
using KvmSharp.Snapshots;

namespace FuzzHarness;

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

    /// <summary>Keeps a copy of <paramref name="input"/> if it set a coverage byte nobody had set before.</summary>
    public void Offer(ReadOnlySpan<byte> input, ReadOnlySpan<byte> coverage)
    {
        lock (_inputs)
        {
            bool fresh = false;
            for (int i = 0; i < coverage.Length; i++)
                if (coverage[i] != 0 && !_seen[i]) fresh = _seen[i] = true;
            if (fresh) _inputs.Add(input.ToArray());
        }
    }
}

/// <summary>
/// One VM running the <see cref="Target"/> guest at CPL3 in long mode, with dirty tracking and a
/// snapshot taken right before the guest's first instruction: each execution restores it (only the
/// pages the last run dirtied are copied back), loads an input and runs.
/// </summary>
internal sealed class FuzzVm : IDisposable
{
    private readonly VirtualMachine _vm;
    private readonly MemorySlot _ram;
    private readonly VmSnapshot _snapshot;

    public FuzzVm(Kvm kvm, byte[] code)
    {
        _vm = kvm.CreateVirtualMachine();
        try
        {
            _vm.EnableDirtyTracking();
            _ram = _vm.AddMemorySlot(0, 0x200000);
            _ram.Write(Target.Code, code);
            Cpu = _vm.CreateVcpu();
            X86LongMode.Setup(Cpu, _ram, Target.Code, Target.StackTop,
                new X86LongModeOptions { UserMode = true, FaultPort = Target.FaultPort });
            Cpu.X86.Rdi = Target.Input;
            _snapshot = _vm.CreateSnapshot();
        }
        catch
        {
            _vm.Dispose();
            throw;
        }
    }

    public Vcpu Cpu { get; }

    /// <summary>The guest's coverage map after a run.</summary>
    public ReadOnlySpan<byte> Coverage => _ram.GetSpan(Target.Coverage, Target.CoverageBytes);

    /// <summary>Back to the snapshot.</summary>
    public void Restore() => _vm.Restore(_snapshot);

    /// <summary>Writes <paramref name="input"/> into guest memory and runs until an exit, or 1 s.</summary>
    public VcpuExit Run(ReadOnlySpan<byte> input)
    {
        _ram.Write(Target.Input, input);        // tracked: restored after this run too
        Cpu.X86.Rsi = (ulong)input.Length;      // through kvm_run: no ioctl
        return Cpu.Run(TimeSpan.FromSeconds(1));
    }

    public void Dispose() => _vm.Dispose();
}

/// <summary>
/// Mutates corpus inputs into one reused buffer (no allocation per execution): 1–3 of insert,
/// replace, append, remove.
/// </summary>
internal sealed class Mutator(int seed)
{
    private readonly byte[] _input = new byte[Target.MaxInput];

    public Random Random { get; } = new(seed);

    /// <summary>Copies <paramref name="parent"/>, mutates the copy and returns it (valid until the next call).</summary>
    public ReadOnlySpan<byte> Mutate(byte[] parent)
    {
        int length = parent.Length;
        parent.CopyTo(_input, 0);
        int n = 1 + Random.Next(3);
        for (int i = 0; i < n; i++)
        {
            int op = Random.Next(4);
            if (length == 0 || op == 0)
            {
                if (length < Target.MaxInput)
                {
                    int at = Random.Next(length + 1);
                    Array.Copy(_input, at, _input, at + 1, length - at);
                    _input[at] = (byte)Random.Next(256);
                    length++;
                }
            }
            else if (op == 1) _input[Random.Next(length)] = (byte)Random.Next(256);
            else if (op == 2 && length < Target.MaxInput) _input[length++] = (byte)Random.Next(256);
            else
            {
                int at = Random.Next(length);
                Array.Copy(_input, at + 1, _input, at, length - at - 1);
                length--;
            }
        }
        return _input.AsSpan(0, length);
    }
}
