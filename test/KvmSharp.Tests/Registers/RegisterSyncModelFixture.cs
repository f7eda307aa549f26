using KvmSharp.Registers;
using KvmSharp.Testing;
using KvmSharp.Tests.Model;

namespace KvmSharp.Tests.Registers;

/// <summary>
/// <see cref="RegisterSyncSuite"/> against a strict kernel model of the arch (one sealed subclass
/// per arch). The "guest" is a callback the model runs on each KVM_RUN, reading and writing the
/// model's own copy of the vCPU state; the same suite runs on the real arm64 KVM in the arm64 suite.
/// </summary>
internal abstract class RegisterSyncModelFixture : RegisterSyncSuite
{
    private const ulong Entry = 0x4000, StepEntry = 0x8000;
    private (ulong, ulong) _reported;

    protected KernelModel Model { get; private set; } = null!;
    protected Kvm Kvm { get; private set; } = null!;
    protected VirtualMachine Vm { get; private set; } = null!;
    protected override Vcpu Cpu => _cpu;
    private Vcpu _cpu = null!;
    protected ModelVcpu Guest => Model.Vcpus[Cpu.Id];

    protected abstract KvmArchitecture Architecture { get; }

    /// <summary>A model of the arch's KVM with the capabilities a current kernel reports.</summary>
    protected abstract KernelModel CreateModel();

    /// <summary>Whatever the arch needs before the first run (arm64: KVM_ARM_VCPU_INIT).</summary>
    protected virtual void Prepare(Vcpu vcpu) { }

    /// <summary>The guest's view of its PC / general registers / MP state, in the model.</summary>
    protected abstract ulong GuestPc(ModelVcpu v);
    protected abstract void SetGuestPc(ModelVcpu v, ulong value);
    protected abstract ulong GuestGpr(ModelVcpu v, int index);
    protected abstract void SetGuestGpr(ModelVcpu v, int index, ulong value);
    protected abstract MpState GuestMpState(ModelVcpu v);

    /// <summary>Makes the exit a typical hot one (arm64: an MMIO write; s390x: an instruction intercept); returns its reason.</summary>
    protected abstract uint HotExit(ModelVcpu v);

    protected override MpState KernelMpState() => GuestMpState(Guest);
    protected override void ResetCounts() => Model.ResetCounts();
    protected override int TotalIoctls => Model.TotalIoctls;
    protected override string CountsText => string.Join(", ", Model.Counts.Select(kv => $"{kv.Key}={kv.Value}"));

    protected override ulong GuestReports(int gpr)
    {
        Guest.Guest = v => { _reported = (GuestPc(v), GuestGpr(v, gpr)); return HotExit(v); };
        return Entry;
    }

    protected override (ulong Pc, ulong Gpr) Reported => _reported;

    protected override ulong GuestWrites(int gpr, ulong value)
    {
        Guest.Guest = v => { SetGuestGpr(v, gpr, value); SetGuestPc(v, GuestPc(v) + 4); return HotExit(v); };
        return Entry;
    }

    protected override ulong WriteExitPc => Entry + 4;

    protected override ulong GuestHotExits()
    {
        Guest.Guest = HotExit;
        return Entry;
    }

    protected override ulong GuestSteps()
    {
        Guest.Guest = v => { SetGuestGpr(v, 1, GuestGpr(v, 1) * 3 + 1); SetGuestPc(v, GuestPc(v) + 2); return HotExit(v); };
        return StepEntry;
    }

    [SetUp]
    public void CreateVcpu()
    {
        Model = CreateModel();
        Kvm = Kvm.Open(Model, Kvm.DefaultDevicePath, Architecture);
        Vm = Kvm.CreateVirtualMachine();
        _cpu = Vm.CreateVcpu();
        Prepare(_cpu);
    }

    [TearDown]
    public void CheckModel()
    {
        _cpu?.Dispose();
        Vm?.Dispose();
        Kvm?.Dispose();
        if (Model is not null)
        {
            Assert.That(Model.Violations, Is.Empty, "the strict kernel model saw calls the real kernel would reject");
            Assert.That((Model.LiveMappings, Model.LiveFds), Is.EqualTo((0, 0)), "mappings and fds left behind");
        }
    }
}
