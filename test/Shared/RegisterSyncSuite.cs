using KvmSharp.Registers;

namespace KvmSharp.Testing;

/// <summary>
/// The behavioural suite every register strategy must pass — one suite, two kinds of kernel: the
/// strict kernel models of the x86 suite (<c>RegisterSyncModelFixture</c>: the "guest" is a
/// callback that reads and writes the model's copy of the vCPU) and the real arm64 KVM of the
/// arm64 suite (<c>Arm64RealKernelSuite</c>: the guest is A64 code). A subclass supplies the vCPU,
/// the ioctl counts, and four guest behaviours; the tests are the same text for both.
/// </summary>
internal abstract class RegisterSyncSuite
{
    protected abstract Vcpu Cpu { get; }
    protected IRegisterSync Regs => Cpu.Registers;

    /// <summary>The MP state of a running vCPU on this arch (RUNNABLE on arm64, OPERATING on s390x).</summary>
    protected abstract MpState RunningMpState { get; }

    /// <summary>The MP state the kernel holds now, read past the cache.</summary>
    protected abstract MpState KernelMpState();

    /// <summary>Ioctls for one exit whose handler reads the PC and writes general register 0, run included.</summary>
    protected abstract int ExpectedHotExitIoctls { get; }

    /// <summary>Ioctls that reading the PC after an exit costs.</summary>
    protected abstract int ExpectedPcReadIoctls { get; }

    /// <summary>False for an arch with no state of level Reset (arm64: only the timer counter is Full, the rest Runtime).</summary>
    protected virtual bool HasResetLevelState => true;

    protected abstract void ResetCounts();
    protected abstract int TotalIoctls { get; }
    /// <summary>The counts by ioctl, for messages.</summary>
    protected abstract string CountsText { get; }

    /// <summary>How many register values of exactly <paramref name="level"/> the kernel was given since <see cref="ResetCounts"/>.</summary>
    protected abstract int LevelWrites(SyncLevel level);

    // ---- guest behaviours: each is installed for the runs that follow and returns its entry PC ----

    /// <summary>At each run the guest records its PC and general register <paramref name="gpr"/> (see <see cref="Reported"/>), then makes a hot exit.</summary>
    protected abstract ulong GuestReports(int gpr);

    /// <summary>What the guest recorded at its last run of <see cref="GuestReports"/>.</summary>
    protected abstract (ulong Pc, ulong Gpr) Reported { get; }

    /// <summary>At its next run the guest sets general register <paramref name="gpr"/> to <paramref name="value"/>, moves on, and makes a hot exit at <see cref="WriteExitPc"/>.</summary>
    protected abstract ulong GuestWrites(int gpr, ulong value);

    /// <summary>The PC of <see cref="GuestWrites"/>' exit.</summary>
    protected abstract ulong WriteExitPc { get; }

    /// <summary>At each run the guest makes a typical hot exit (arm64: an MMIO write of W0; s390x: an instruction intercept).</summary>
    protected abstract ulong GuestHotExits();

    /// <summary>At each run the guest computes X1 = X1 * 3 + 1 (general register 1), and makes a hot exit.</summary>
    protected abstract ulong GuestSteps();

    private string Counts => $"{TotalIoctls} ioctls: {CountsText}";

    [Test]
    public void RegistersWrittenBeforeARun_AreWhatTheGuestSees()
    {
        ulong entry = GuestReports(1);
        Regs.ProgramCounter = entry;
        Regs.SetGeneralRegister(1, 0x1111_2222_3333_4444);
        Cpu.Run();
        Assert.That(Reported, Is.EqualTo((entry, 0x1111_2222_3333_4444UL)));
    }

    [Test]
    public void WhatTheGuestChanged_IsWhatTheHostReads()
    {
        Regs.ProgramCounter = GuestWrites(2, 0xABCD);
        Cpu.Run();
        Assert.That(Regs.GetGeneralRegister(2), Is.EqualTo(0xABCDUL));
        Assert.That(Regs.ProgramCounter, Is.EqualTo(WriteExitPc));
    }

    [Test]
    public void AFetchAfterAWrite_DoesNotClobberIt()
    {
        Regs.ProgramCounter = GuestWrites(3, 0xDEAD);
        Cpu.Run();
        Regs.SetGeneralRegister(3, 7);
        _ = Regs.ProgramCounter;
        Regs.Synchronize();
        Assert.That(Regs.GetGeneralRegister(3), Is.EqualTo(7UL), "Synchronize must not overwrite a dirty register");
        Regs.ProgramCounter = GuestReports(3);
        Cpu.Run();
        Assert.That(Reported.Gpr, Is.EqualTo(7UL));
    }

    [Test]
    public void AHotExitThatReadsPcAndWritesGpr0_CostsTheExpectedIoctls()
    {
        Regs.ProgramCounter = GuestHotExits();
        Cpu.Run();
        for (int i = 0; i < 5; i++)
        {
            ResetCounts();
            _ = Regs.ProgramCounter;
            Regs.SetGeneralRegister(0, (ulong)i);
            Cpu.Run();
            Assert.That(TotalIoctls, Is.EqualTo(ExpectedHotExitIoctls), Counts);
        }
    }

    [Test]
    public void ReadingThePc_FetchesOnlyThePc()
    {
        Regs.ProgramCounter = GuestHotExits();
        Cpu.Run();
        ResetCounts();
        _ = Regs.ProgramCounter;
        Assert.That(TotalIoctls, Is.EqualTo(ExpectedPcReadIoctls), Counts);
        _ = Regs.ProgramCounter;
        Assert.That(TotalIoctls, Is.EqualTo(ExpectedPcReadIoctls), "a second read is served by the cache");
    }

    [Test]
    public void ARuntimeFlush_WritesNoResetOrFullState_PostResetAndPostInitDo()
    {
        Regs.ProgramCounter = GuestHotExits();
        Cpu.Run();
        Regs.Synchronize();
        Regs.SetGeneralRegister(4, 1);
        ResetCounts();
        Cpu.Run();
        Assert.That((LevelWrites(SyncLevel.Reset), LevelWrites(SyncLevel.Full)), Is.EqualTo((0, 0)), "a run writes back only what was dirtied");
        Assert.That(LevelWrites(SyncLevel.Runtime), Is.GreaterThan(0), "the dirty GPR was written");

        Regs.Synchronize();
        ResetCounts();
        Regs.PostReset();
        Cpu.Run(); // sets handed over in kvm_run are loaded at this entry
        if (HasResetLevelState)
            Assert.That(LevelWrites(SyncLevel.Reset), Is.GreaterThan(0), "PostReset writes reset-level state");
        else
            Assert.That(LevelWrites(SyncLevel.Runtime), Is.GreaterThan(0), "PostReset writes back the runtime state it holds");
        Assert.That(LevelWrites(SyncLevel.Full), Is.EqualTo(0), "PostReset does not write full-level state");

        Regs.Synchronize();
        ResetCounts();
        Regs.PostInit();
        Cpu.Run();
        Assert.That(LevelWrites(SyncLevel.Full), Is.GreaterThan(0), "PostInit writes full-level state");
    }

    [Test]
    public void SaveRunRestore_TheGuestRepeatsItselfExactly()
    {
        Regs.ProgramCounter = GuestSteps();
        Cpu.Run();
        var saved = Regs.SaveState();
        var first = RunAndRecord(4);
        Regs.RestoreState(saved);
        var second = RunAndRecord(4);
        Assert.That(second, Is.EqualTo(first));
        Assert.That(first.Select(r => r.Item1).Distinct().Count(), Is.EqualTo(4), "the guest made progress");
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
        Assert.That(KernelMpState(), Is.EqualTo(MpState.Stopped));
        Assert.That(Regs.MpState, Is.EqualTo(MpState.Stopped));
        var saved = Regs.SaveState();
        Regs.MpState = RunningMpState;
        Regs.Invalidate();
        Assert.That(KernelMpState(), Is.EqualTo(RunningMpState));
        Regs.RestoreState(saved);
        Regs.Invalidate();
        Assert.That(KernelMpState(), Is.EqualTo(MpState.Stopped));
    }

    [Test]
    public void InvalidateFlushesDirtyWritesFirst()
    {
        Regs.ProgramCounter = GuestHotExits();
        Cpu.Run();
        Regs.SetGeneralRegister(5, 0x55);
        Regs.Invalidate();
        Regs.ProgramCounter = GuestReports(5);
        Cpu.Run();
        Assert.That(Reported.Gpr, Is.EqualTo(0x55UL));
        Assert.That(Regs.GetGeneralRegister(5), Is.EqualTo(0x55UL));
    }

    [Test]
    public void BadRegisterIndex_IsRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Regs.GetGeneralRegister(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => Regs.SetGeneralRegister(64, 0));
    }
}
