using KvmSharp.Registers;
using KvmSharp.Tests.Model;

namespace KvmSharp.Tests.Registers;

/// <summary>
/// The behavioural suite every register strategy must pass, run against a strict kernel model of
/// its architecture (one sealed subclass per arch). The "guest" is a callback the model runs on
/// each KVM_RUN, reading and writing the model's own copy of the vCPU state.
/// </summary>
internal abstract class RegisterSyncModelFixture
{
    protected KernelModel Model { get; private set; } = null!;
    protected Kvm Kvm { get; private set; } = null!;
    protected VirtualMachine Vm { get; private set; } = null!;
    protected Vcpu Cpu { get; private set; } = null!;
    protected ModelVcpu Guest => Model.Vcpus[Cpu.Id];
    protected IRegisterSync Regs => Cpu.Registers;

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

    /// <summary>The MP state of a running vCPU on this arch (RUNNABLE on arm64, OPERATING on s390x).</summary>
    protected abstract MpState RunningMpState { get; }

    /// <summary>Makes the exit a typical hot one (arm64: an MMIO write; s390x: an instruction intercept); returns its reason.</summary>
    protected abstract uint HotExit(ModelVcpu v);

    /// <summary>Ioctls for one exit whose handler reads the PC and writes general register 0, run included.</summary>
    protected abstract int ExpectedHotExitIoctls { get; }

    /// <summary>Ioctls that reading the PC after an exit costs.</summary>
    protected abstract int ExpectedPcReadIoctls { get; }

    /// <summary>False for an arch with no state of level Reset (arm64: only the timer counters are Full, the rest Runtime).</summary>
    protected virtual bool HasResetLevelState => true;

    /// <summary>How many register values of exactly <paramref name="level"/> the model was given since <see cref="KernelModel.ResetCounts"/>.</summary>
    protected abstract int LevelWrites(SyncLevel level);

    [SetUp]
    public void CreateVcpu()
    {
        Model = CreateModel();
        Kvm = Kvm.Open(Model, Kvm.DefaultDevicePath, Architecture);
        Vm = Kvm.CreateVirtualMachine();
        Cpu = Vm.CreateVcpu();
        Prepare(Cpu);
    }

    [TearDown]
    public void CheckModel()
    {
        Cpu?.Dispose();
        Vm?.Dispose();
        Kvm?.Dispose();
        if (Model is not null)
        {
            Assert.That(Model.Violations, Is.Empty, "the strict kernel model saw calls the real kernel would reject");
            Assert.That((Model.LiveMappings, Model.LiveFds), Is.EqualTo((0, 0)), "mappings and fds left behind");
        }
    }

    [Test]
    public void RegistersWrittenBeforeARun_AreWhatTheGuestSees()
    {
        ulong seenPc = 0, seenGpr = 0;
        Guest.Guest = v => { seenPc = GuestPc(v); seenGpr = GuestGpr(v, 1); return HotExit(v); };
        Regs.ProgramCounter = 0x4000;
        Regs.SetGeneralRegister(1, 0x1111_2222_3333_4444);
        Cpu.Run();
        Assert.That((seenPc, seenGpr), Is.EqualTo((0x4000UL, 0x1111_2222_3333_4444UL)));
    }

    [Test]
    public void WhatTheGuestChanged_IsWhatTheHostReads()
    {
        Regs.ProgramCounter = 0x4000;
        Guest.Guest = v => { SetGuestGpr(v, 2, 0xABCD); SetGuestPc(v, GuestPc(v) + 4); return HotExit(v); };
        Cpu.Run();
        Assert.That(Regs.GetGeneralRegister(2), Is.EqualTo(0xABCDUL));
        Assert.That(Regs.ProgramCounter, Is.EqualTo(0x4004UL));
    }

    [Test]
    public void AFetchAfterAWrite_DoesNotClobberIt()
    {
        Guest.Guest = v => { SetGuestGpr(v, 3, 0xDEAD); return HotExit(v); };
        Cpu.Run();
        Regs.SetGeneralRegister(3, 7);
        _ = Regs.ProgramCounter;
        Regs.Synchronize();
        Assert.That(Regs.GetGeneralRegister(3), Is.EqualTo(7UL), "Synchronize must not overwrite a dirty register");
        ulong seen = 0;
        Guest.Guest = v => { seen = GuestGpr(v, 3); return HotExit(v); };
        Cpu.Run();
        Assert.That(seen, Is.EqualTo(7UL));
    }

    [Test]
    public void AHotExitThatReadsPcAndWritesGpr0_CostsTheExpectedIoctls()
    {
        Guest.Guest = v => { SetGuestPc(v, GuestPc(v) + 4); return HotExit(v); };
        Cpu.Run();
        for (int i = 0; i < 5; i++)
        {
            Model.ResetCounts();
            _ = Regs.ProgramCounter;
            Regs.SetGeneralRegister(0, (ulong)i);
            Cpu.Run();
            Assert.That(Model.TotalIoctls, Is.EqualTo(ExpectedHotExitIoctls), string.Join(", ", Model.Counts.Select(kv => $"{kv.Key}={kv.Value}")));
        }
    }

    [Test]
    public void ReadingThePc_FetchesOnlyThePc()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        Model.ResetCounts();
        _ = Regs.ProgramCounter;
        Assert.That(Model.TotalIoctls, Is.EqualTo(ExpectedPcReadIoctls), string.Join(", ", Model.Counts.Select(kv => $"{kv.Key}={kv.Value}")));
        _ = Regs.ProgramCounter;
        Assert.That(Model.TotalIoctls, Is.EqualTo(ExpectedPcReadIoctls), "a second read is served by the cache");
    }

    [Test]
    public void ARuntimeFlush_WritesNoResetOrFullState_PostResetAndPostInitDo()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        Regs.Synchronize();
        Regs.SetGeneralRegister(4, 1);
        Model.ResetCounts();
        Cpu.Run();
        Assert.That((LevelWrites(SyncLevel.Reset), LevelWrites(SyncLevel.Full)), Is.EqualTo((0, 0)), "a run writes back only what was dirtied");
        Assert.That(LevelWrites(SyncLevel.Runtime), Is.GreaterThan(0), "the dirty GPR was written");

        Regs.Synchronize();
        Model.ResetCounts();
        Regs.PostReset();
        Cpu.Run(); // sets handed over in kvm_run are loaded at this entry
        if (HasResetLevelState)
            Assert.That(LevelWrites(SyncLevel.Reset), Is.GreaterThan(0), "PostReset writes reset-level state");
        else
            Assert.That(LevelWrites(SyncLevel.Runtime), Is.GreaterThan(0), "PostReset writes back the runtime state it holds");
        Assert.That(LevelWrites(SyncLevel.Full), Is.EqualTo(0), "PostReset does not write full-level state");

        Regs.Synchronize();
        Model.ResetCounts();
        Regs.PostInit();
        Cpu.Run();
        Assert.That(LevelWrites(SyncLevel.Full), Is.GreaterThan(0), "PostInit writes full-level state");
    }

    [Test]
    public void SaveRunRestore_TheGuestRepeatsItselfExactly()
    {
        Regs.ProgramCounter = 0x8000;
        Guest.Guest = v => { SetGuestGpr(v, 1, GuestGpr(v, 1) * 3 + 1); SetGuestPc(v, GuestPc(v) + 2); return HotExit(v); };
        Cpu.Run();
        var saved = Regs.SaveState();
        var first = RunAndRecord(4);
        Regs.RestoreState(saved);
        var second = RunAndRecord(4);
        Assert.That(second, Is.EqualTo(first));
        Regs.RestoreState(saved);
        Assert.That(Regs.SaveState().ContentEquals(saved), Is.True, "the cache holds the restored state");
    }

    private List<(ulong, ulong)> RunAndRecord(int n)
    {
        var seen = new List<(ulong, ulong)>();
        for (int i = 0; i < n; i++)
        {
            Cpu.Run();
            seen.Add((Regs.GetGeneralRegister(1), Regs.ProgramCounter));
        }
        return seen;
    }

    [Test]
    public void MpState_RoundTrips_AndAStoppedVcpuStaysStoppedAcrossSaveRestore()
    {
        Regs.MpState = MpState.Stopped;
        Regs.Invalidate();
        Assert.That(GuestMpState(Guest), Is.EqualTo(MpState.Stopped));
        Assert.That(Regs.MpState, Is.EqualTo(MpState.Stopped));
        var saved = Regs.SaveState();
        Regs.MpState = RunningMpState;
        Regs.Invalidate();
        Assert.That(GuestMpState(Guest), Is.EqualTo(RunningMpState));
        Regs.RestoreState(saved);
        Regs.Invalidate();
        Assert.That(GuestMpState(Guest), Is.EqualTo(MpState.Stopped));
    }

    [Test]
    public void InvalidateFlushesDirtyWritesFirst()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        Regs.SetGeneralRegister(5, 0x55);
        Regs.Invalidate();
        ulong seen = 0;
        Guest.Guest = v => { seen = GuestGpr(v, 5); return HotExit(v); };
        Cpu.Run();
        Assert.That(seen, Is.EqualTo(0x55UL));
        Assert.That(Regs.GetGeneralRegister(5), Is.EqualTo(0x55UL));
    }

    [Test]
    public void BadRegisterIndex_IsRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Regs.GetGeneralRegister(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => Regs.SetGeneralRegister(64, 0));
    }
}
