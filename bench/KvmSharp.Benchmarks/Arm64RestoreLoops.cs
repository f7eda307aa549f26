using System.Runtime.InteropServices;
using KvmSharp.Registers;

namespace KvmSharp.Benchmarks;

/// <summary>
/// The arm64 dirty-pages VM: <see cref="Arm64Guest.DirtyPagesCode"/>, which writes the bytes the
/// x86 <see cref="DirtyPagesGuest"/> writes and exits with an MMIO store, run to its exit twice.
/// </summary>
internal sealed class Arm64DirtyPagesVm : IDirtyPagesVm
{
    private readonly Arm64Guest _guest;

    public Arm64DirtyPagesVm(int sizeMiB, int pages, DirtyLogBackend? backend)
    {
        _guest = new Arm64Guest(Arm64Guest.DirtyPagesCode(pages), DirtyPagesGuest.CheckFits(sizeMiB, pages), backend);
        try
        {
            DirtyPagesGuest.Settle(this, pages, otherPagesBelow: 0); // the MMU is off: no page-table writes
        }
        catch
        {
            _guest.Dispose();
            throw;
        }
    }

    public VirtualMachine Vm => _guest.Vm;
    public MemorySlot Ram => _guest.Ram;
    public Vcpu Cpu => _guest.Cpu;
    public void RunToExit() => Arm64Guest.RunToMmio(_guest.Cpu);
    public void Dispose() => _guest.Dispose();
}

// The arm64 raw C way of the restore benchmarks (the KvmSharp and full-copy ways run the arm64
// guest through IDirtyPagesVm).
internal abstract partial class RestoreLoop
{
    /// <summary>True in an arm64 process: the restore ways then run arm64 guests.</summary>
    public static bool IsArm64 => RuntimeInformation.ProcessArchitecture == Architecture.Arm64;

    /// <summary>
    /// <c>arm64_vm.c</c>'s own VM of the same guest, set up and run twice the same way, with its own
    /// snapshot of the same registers (the ids KvmSharp saves, checked to be as many).
    /// </summary>
    private sealed class Arm64RawCLoop : RestoreLoop
    {
        private readonly Arm64NativeVm _native;

        public Arm64RawCLoop(RestoreWay way, int sizeMiB, int pages) : base(way, sizeMiB, pages)
        {
            _native = new Arm64NativeVm(Arm64Guest.DirtyPagesCode(pages), DirtyPagesGuest.CheckFits(sizeMiB, pages), way.Backend());
            try
            {
                _native.Run(DirtyPagesVm.RunsInSetup);
                DirtyPagesGuest.CheckBytes(_native.Memory, pages, DirtyPagesVm.RunsInSetup);
                int saved = _native.Snapshot();
                int kvmSharp = KvmSharpRegisterCount.Value;
                if (saved != kvmSharp)
                    throw new InvalidOperationException($"The raw C snapshot holds {saved} registers, KvmSharp's {kvmSharp}: they would not restore the same.");
            }
            catch
            {
                _native.Dispose();
                throw;
            }
        }

        public override void Run() => _native.Run(1);
        public override void Restore() => _native.Restore();
        protected override ReadOnlySpan<byte> Memory => _native.Memory;
        public override void Dispose() => _native.Dispose();
    }

    /// <summary>How many ONE_REG registers KvmSharp's arm64 state holds (without MP state and events).</summary>
    private static readonly Lazy<int> KvmSharpRegisterCount = new(() =>
    {
        using var guest = new Arm64Guest(Arm64Guest.StoreW0Code);
        var state = guest.Cpu.Registers.SaveState();
        return state.Sets.Count(k => k != Arm64RegisterIds.MpStateKey && k != Arm64RegisterIds.EventsKey);
    });
}
