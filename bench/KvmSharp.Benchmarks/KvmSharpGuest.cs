namespace KvmSharp.Benchmarks;

/// <summary>
/// A KvmSharp VM with one memory slot holding a real-mode guest at <see cref="GuestCode.Address"/>
/// and one vCPU about to run it (CS base 0, RIP at the code): the managed side of every benchmark.
/// </summary>
internal sealed class KvmSharpGuest : IDisposable
{
    private readonly Kvm _kvm;
    private readonly VirtualMachine _vm;

    public KvmSharpGuest(ReadOnlySpan<byte> code)
    {
        _kvm = Kvm.Open();
        try
        {
            _vm = _kvm.CreateVirtualMachine();
            var slot = _vm.AddMemorySlot(0, GuestCode.MemorySize);
            slot.Write(GuestCode.Address, code);
            Vcpu = _vm.CreateVcpu();
            ref var s = ref Vcpu.X86.EditSpecialRegisters();
            s.Cs.Base = 0;
            s.Cs.Selector = 0;
            ref var g = ref Vcpu.X86.EditGprs();
            g.Rip = GuestCode.Address;
            g.Rflags = 2;
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public Vcpu Vcpu { get; } = null!;

    public void Dispose()
    {
        Vcpu?.Dispose();
        _vm?.Dispose();
        _kvm.Dispose();
    }
}
