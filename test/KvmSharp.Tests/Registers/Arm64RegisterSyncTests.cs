using System.Buffers.Binary;
using KvmSharp.Interop;
using KvmSharp.Registers;
using KvmSharp.Tests.Model;

namespace KvmSharp.Tests.Registers;

/// <summary>The shared register-sync suite and the arm64-specific behaviour, against the strict arm64 kernel model.</summary>
[TestFixture]
internal sealed class Arm64RegisterSyncTests : RegisterSyncModelFixture
{
    private const ulong MmioAddress = 0x0900_0000;

    private Arm64KernelModel Arm => (Arm64KernelModel)Model;

    private Arm64RegisterSync A64 => Cpu.Arm64;

    protected override KvmArchitecture Architecture => KvmArchitecture.Arm64;

    protected override KernelModel CreateModel() => new Arm64KernelModel();

    protected override void Prepare(Vcpu vcpu) => vcpu.Arm64.Initialize();

    protected override ulong GuestPc(ModelVcpu v) => Arm.State(v).Pc;

    protected override void SetGuestPc(ModelVcpu v, ulong value) => Arm.State(v).Pc = value;

    protected override ulong GuestGpr(ModelVcpu v, int index) => Arm.State(v).X(index);

    protected override void SetGuestGpr(ModelVcpu v, int index, ulong value) => Arm.State(v).SetX(index, value);

    protected override MpState GuestMpState(ModelVcpu v) => Arm.State(v).MpState;

    protected override MpState RunningMpState => MpState.Runnable;

    /// <summary>An MMIO store of X0 (a device register write: the typical hot exit).</summary>
    protected override uint HotExit(ModelVcpu v) => Arm.MmioExit(v, MmioAddress, 4, isWrite: true, register: 0);

    /// <summary>GET_ONE_REG (PC) + SET_ONE_REG (X0; a pending MMIO write need not be completed first: its completion only moves the PC) + KVM_RUN, which completes it.</summary>
        protected override int ExpectedHotExitIoctls => 3;

    protected override int ExpectedPcReadIoctls => 1;

    protected override int LevelWrites(SyncLevel level) => Arm.LevelWrites(level);

    protected override bool HasResetLevelState => false;

    private uint MmioRead(ModelVcpu v, int register, int length = 8) => Arm.MmioExit(v, MmioAddress, length, isWrite: false, register);

    // ---- bring-up --------------------------------------------------------------------------------

    [Test]
    public void BeforeInitialize_RegisterAccessThrowsWithoutAskingKvm_AndRunFailsWithEnoexec()
    {
        using var raw = Vm.CreateVcpu();
        var regs = raw.Arm64;
        Model.ResetCounts();
        var e = Assert.Throws<InvalidOperationException>(() => _ = regs.ProgramCounter);
        Assert.That(e!.Message, Does.Contain("call Initialize first").And.Contain("ENOEXEC").And.Contain("KVM_ARM_VCPU_INIT"));
        Assert.Throws<InvalidOperationException>(() => regs.SetGeneralRegister(0, 1));
        Assert.Throws<InvalidOperationException>(() => _ = regs.MpState);
        Assert.Throws<InvalidOperationException>(() => _ = regs.Events);
        Assert.Throws<InvalidOperationException>(() => _ = regs.SystemRegisterIds);
        Assert.Throws<InvalidOperationException>(regs.Synchronize);
        Assert.Throws<InvalidOperationException>(() => regs.SaveState());
        Assert.That(Model.TotalIoctls, Is.Zero, "nothing reached the kernel");
        Assert.That(regs.IsInitialized, Is.False);

        var run = Assert.Throws<KvmException>(() => raw.Run());
        Assert.That((run!.Operation, run.ErrnoName), Is.EqualTo(("KVM_RUN", "ENOEXEC")));
    }

    [Test]
    public void Initialize_UsesThePreferredTarget_AndPsci02()
    {
        var st = Arm.State(Guest);
        Assert.That((A64.IsInitialized, A64.Target), Is.EqualTo((true, Arm64KernelModel.TargetGenericV8)));
        Assert.That((st.Initialized, st.Features), Is.EqualTo((true, 1u << Arm64KernelModel.FeaturePsci02)));
        Assert.That(Model.Count(KvmIoctls.Arm64.KVM_ARM_PREFERRED_TARGET), Is.EqualTo(1));
        Assert.That(A64.MpState, Is.EqualTo(MpState.Runnable));
    }

    [Test]
    public void PowerOffInit_LeavesTheVcpuStopped_UntilMadeRunnable()
    {
        using var second = Vm.CreateVcpu();
        second.Arm64.Initialize(powerOff: true);
        var st = Arm.State(Model.Vcpus[second.Id]);
        Assert.That(st.MpState, Is.EqualTo(MpState.Stopped));
        Assert.That(second.Registers.MpState, Is.EqualTo(MpState.Stopped));

        second.Registers.MpState = MpState.Runnable;
        Assert.That(st.MpState, Is.EqualTo(MpState.Stopped), "an MP state write waits for the next run or flush");
        second.Registers.Invalidate();
        Assert.That(st.MpState, Is.EqualTo(MpState.Runnable));
    }

    [Test]
    public void ReInitialize_FlushesDirtyRegistersFirst_ThenForgetsTheCache()
    {
        A64.X5 = 7;
        Model.ResetCounts();
        A64.Initialize();
        Assert.That(Model.Count(KvmIoctls.KVM_SET_ONE_REG), Is.EqualTo(1), "the dirty X5 is written before the reset, never dropped");
        Assert.That(Arm.State(Guest).Inits, Is.EqualTo(2));
        Model.ResetCounts();
        Assert.That(A64.X5, Is.Zero, "VCPU_INIT reset X5; the cache fetched it again");
        Assert.That(A64.Pstate, Is.EqualTo(Arm64KernelModel.PstateEl1hDaifMasked));
        Assert.That(Model.Count(KvmIoctls.KVM_GET_ONE_REG), Is.EqualTo(2));
    }

    // ---- ids, sizes, the register list -------------------------------------------------------

    // The ids' values are compared with the uapi macros by the layout tests (UapiLayoutTests, from
    // [UapiValue]); this checks what the headers cannot: sizes, names, ranges and the model's list.
    [Test]
    public void OneRegIds_HaveTheirSizesNamesAndRanges()
    {
        Assert.Multiple(() =>
        {
            Assert.That(
                (Arm64RegisterIds.SizeOf(Arm64RegisterIds.V(31)), Arm64RegisterIds.SizeOf(Arm64RegisterIds.Fpsr), Arm64RegisterIds.SizeOf(Arm64RegisterIds.Pc)),
                Is.EqualTo((16, 4, 8)));
            Assert.That(Arm64RegisterSync.CoreRegisterIds, Is.EqualTo(Arm64KernelModel.ListedIds.Where(id => (id & Arm64KernelModel.CoprocMask) == Arm64KernelModel.CoreGroup)));
            Assert.That(Arm64RegisterIds.Name(Arm64RegisterIds.V(31)), Is.EqualTo("V31"));
            Assert.That(Arm64RegisterIds.Name(Arm64RegisterIds.Spsr(3)), Is.EqualTo("SPSR[3]"));
            Assert.That(Arm64RegisterIds.Name(Arm64KernelModel.VbarEl1), Is.EqualTo("S3_0_C12_C0_0"));
        });
        Assert.Throws<ArgumentOutOfRangeException>(() => Arm64RegisterIds.X(31));
        Assert.Throws<ArgumentOutOfRangeException>(() => Arm64RegisterIds.V(32));
        Assert.Throws<ArgumentOutOfRangeException>(() => Arm64RegisterIds.Spsr(5));
    }

    [Test]
    public void RegistersOfEverySize_TravelWithTheirOwnSize()
    {
        var v31 = new UInt128(0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210);
        A64.SetV(31, v31);
        A64.Fpsr = 0x0800_009F;
        A64.Fpcr = 0x0300_0000;
        A64.SetSpsr(2, 0x3C5);
        A64.ElrEl1 = 0xFFFF_0000_0000_1000;
        UInt128 seenV = 0;
        Guest.Guest = v =>
        {
            var st = Arm.State(v);
            seenV = st.Regs[Arm64KernelModel.VId(31)];
            st.Regs[Arm64KernelModel.VId(7)] = UInt128.MaxValue;
            st.Regs[Arm64KernelModel.FpcrId] = 0x0040_0000;
            return HotExit(v);
        };
        Cpu.Run();
        var st = Arm.State(Guest);
        Assert.That(seenV, Is.EqualTo(v31));
        Assert.That((ulong)st.Regs[Arm64KernelModel.FpsrId], Is.EqualTo(0x0800_009FUL));
        Assert.That(st.Get(Arm64KernelModel.Spsr0Id + 4), Is.EqualTo(0x3C5UL));
        Assert.That(st.Get(Arm64KernelModel.ElrEl1Id), Is.EqualTo(0xFFFF_0000_0000_1000UL));
        Assert.That((A64.GetV(7), A64.Fpcr, A64.GetV(31)), Is.EqualTo((UInt128.MaxValue, 0x0040_0000u, v31)));
    }

    [Test]
    public void RegisterList_IsSizedWithE2big_ThenHoldsTheNonCoreRegisters()
    {
        Model.ResetCounts();
        var ids = A64.SystemRegisterIds;
        Assert.That(Model.Count(KvmIoctls.KVM_GET_REG_LIST), Is.EqualTo(2), "a sizing call (E2BIG) and the real one");
        Assert.That(ids, Is.EqualTo(Arm64KernelModel.NonCoreIds), "core ids filtered out, order kept");
        Assert.That(ids, Does.Contain(Arm64RegisterIds.TimerCnt).And.Contain(Arm64KernelModel.CcsidrDemuxId));
        _ = A64.SystemRegisterIds;
        _ = A64.GetSystemRegister(Arm64KernelModel.SctlrEl1);
        Assert.That(Model.Count(KvmIoctls.KVM_GET_REG_LIST), Is.EqualTo(2), "the list is fetched once");
        Assert.That(ids, Is.Not.InstanceOf<ulong[]>(), "read-only");
    }

    [Test]
    public void SystemRegisters_AreReadAndWrittenOneByOne()
    {
        _ = A64.SystemRegisterIds;
        Model.ResetCounts();
        Assert.That(A64.GetSystemRegister(Arm64KernelModel.SctlrEl1), Is.EqualTo(0x30D0_0800UL));
        Assert.That(A64.GetSystemRegister(Arm64KernelModel.CcsidrDemuxId), Is.EqualTo(0x7003_E01AUL), "a U32 register");
        Assert.That(Model.Count(KvmIoctls.KVM_GET_ONE_REG), Is.EqualTo(2));

        A64.SetSystemRegister(Arm64KernelModel.VbarEl1, 0x8_0000);
        A64.SetSystemRegister(Arm64KernelModel.TpidrEl0, 0xABCD);
        Guest.Guest = HotExit;
        Cpu.Run();
        var st = Arm.State(Guest);
        Assert.That((st.Get(Arm64KernelModel.VbarEl1), st.Get(Arm64KernelModel.TpidrEl0)), Is.EqualTo((0x8_0000UL, 0xABCDUL)));
        Assert.That(Model.Count(KvmIoctls.KVM_SET_ONE_REG), Is.EqualTo(2));

        Assert.Throws<ArgumentOutOfRangeException>(() => A64.SetSystemRegister(Arm64KernelModel.CcsidrDemuxId, 1UL << 32));
        var notListed = Assert.Throws<ArgumentException>(() => A64.GetSystemRegister(Arm64RegisterIds.SystemRegister(3, 0, 5, 2, 0)));
        Assert.That(notListed!.Message, Does.Contain("KVM_GET_REG_LIST"));
        var core = Assert.Throws<ArgumentException>(() => A64.SetSystemRegister(Arm64RegisterIds.Pc, 0));
        Assert.That(core!.Message, Does.Contain("core register"));
    }

    // ---- the per-register cache --------------------------------------------------------------

    [Test]
    public void ReadingAfterAnExit_FetchesExactlyTheRegistersRead()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        Model.ResetCounts();
        _ = A64.X3;
        _ = A64.Pc;
        _ = A64.X3;
        _ = A64.GetV(2);
        Assert.That(Model.TotalIoctls, Is.EqualTo(3));
        Assert.That(Model.Count(KvmIoctls.KVM_GET_ONE_REG), Is.EqualTo(3));
    }

    [Test]
    public void ARunWithoutWrites_CostsOnlyKvmRun()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        A64.Synchronize();
        Model.ResetCounts();
        Cpu.Run();
        Assert.That(Model.Counts.Keys, Is.EquivalentTo(new[] { "KVM_RUN" }));
        Assert.That(Model.Count(KvmIoctls.KVM_RUN), Is.EqualTo(1));
    }

    [Test]
    public void Synchronize_FetchesEverythingOnce()
    {
        Model.ResetCounts();
        A64.Synchronize();
        int listed = Arm64KernelModel.ListedIds.Count;
        Assert.That(Model.Count(KvmIoctls.KVM_GET_ONE_REG), Is.EqualTo(listed), "75 core registers and every listed system register");
        Assert.That((Model.Count(KvmIoctls.KVM_GET_MP_STATE), Model.Count(KvmIoctls.Arm64.KVM_GET_VCPU_EVENTS)), Is.EqualTo((1, 1)));
        Model.ResetCounts();
        A64.Synchronize();
        Assert.That(Model.TotalIoctls, Is.Zero);
    }

    [Test]
    public void Levels_RuntimeAndResetPushesWriteTheSame_OnlyFullWritesTheCounters()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        A64.Synchronize();
        A64.X4 = 1;
        Model.ResetCounts();
        Cpu.Run();
        Assert.That((LevelWrites(SyncLevel.Runtime), LevelWrites(SyncLevel.Reset), LevelWrites(SyncLevel.Full)), Is.EqualTo((1, 0, 0)),
            "a run writes back only the dirty register");

        int runtimeRegisters = Arm64KernelModel.ListedIds.Count - 1 + 2; // all but the listed counter (TIMER_CNT), plus MP state and events
        A64.Synchronize();
        Model.ResetCounts();
        A64.Push(SyncLevel.Runtime);
        Assert.That((LevelWrites(SyncLevel.Runtime), LevelWrites(SyncLevel.Full)), Is.EqualTo((runtimeRegisters, 0)));
        Model.ResetCounts();
        A64.PostReset();
        Assert.That((LevelWrites(SyncLevel.Runtime), LevelWrites(SyncLevel.Full)), Is.EqualTo((runtimeRegisters, 0)), "PostReset ≡ Push(Runtime) on arm64");
        Model.ResetCounts();
        A64.PostInit();
        Assert.That((LevelWrites(SyncLevel.Runtime), LevelWrites(SyncLevel.Full)), Is.EqualTo((runtimeRegisters, 1)), "PostInit adds TIMER_CNT (PTIMER_CNT is not listed by Linux 6.1, so not cached)");
    }

    [Test]
    public void PushWritesOnlyRegistersItHasRead()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        _ = A64.Pc;
        _ = A64.TimerCounter;
        Model.ResetCounts();
        A64.PostInit();
        Assert.That(Model.Count(KvmIoctls.KVM_SET_ONE_REG), Is.EqualTo(2), "PC and TIMER_CNT: what was never read is not written");
        Assert.That(Model.Count(KvmIoctls.KVM_SET_MP_STATE), Is.Zero);
    }

    // ---- timer counters --------------------------------------------------------------------------

    [Test]
    public void TimerCounter_IsWrittenOnlyByPostInitRestoreStateOrAnExplicitWrite()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        A64.Synchronize();
        Model.ResetCounts();
        A64.Push(SyncLevel.Runtime);
        A64.PostReset();
        A64.Invalidate();
        Cpu.Run();
        Assert.That(Arm.WritesOf(Arm64RegisterIds.TimerCnt), Is.Zero, "runtime and reset pushes never move guest time");

        A64.Synchronize();
        Model.ResetCounts();
        A64.PostInit();
        Assert.That((Arm.WritesOf(Arm64RegisterIds.TimerCnt), Arm.WritesOf(Arm64RegisterIds.PtimerCnt)), Is.EqualTo((1, 0)), "PTIMER_CNT is not listed, so never cached or written");

        var saved = A64.SaveState();
        Cpu.Run();
        Model.ResetCounts();
        A64.RestoreState(saved);
        Assert.That(Arm.WritesOf(Arm64RegisterIds.TimerCnt), Is.EqualTo(1));
        Assert.That(Arm.State(Guest).Get(Arm64KernelModel.TimerCntId), Is.EqualTo(BinaryPrimitives.ReadUInt64LittleEndian(saved.Get(Arm64RegisterIds.TimerCnt))));

        Model.ResetCounts();
        A64.TimerCounter = 0x4242;
        Cpu.Run();
        Assert.That(Arm.WritesOf(Arm64RegisterIds.TimerCnt), Is.EqualTo(1), "a dirty counter is written whatever its level");
    }

    // ---- MMIO completion ---------------------------------------------------------------------

    [Test]
    public void AfterAnMmioRead_WritingPcAndX0_TheGuestSeesExactlyTheNewValues()
    {
        A64.Pc = 0x1000;
        Guest.Guest = v => MmioRead(v, register: 0);
        var exit = Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio));
        BinaryPrimitives.WriteUInt64LittleEndian(exit.Mmio.Data, 0xDADA_DADA);
        Assert.That(A64.Pc, Is.EqualTo(0x1000UL), "before completion the PC is the faulting instruction's");
        Assert.That(A64.HasPendingAccess, Is.True);

        Model.ResetCounts();
        A64.Pc = 0x2000;
        Assert.That(Model.Count(KvmIoctls.KVM_RUN), Is.EqualTo(1), "the first write completes the access (immediate_exit run)");
        Assert.That(A64.HasPendingAccess, Is.False);
        A64.X0 = 0x1234;
        Assert.That(Model.Count(KvmIoctls.KVM_RUN), Is.EqualTo(1), "only once per exit");

        ulong seenPc = 0, seenX0 = 0;
        Guest.Guest = v => { seenPc = GuestPc(v); seenX0 = GuestGpr(v, 0); return HotExit(v); };
        Cpu.Run();
        Assert.That((seenPc, seenX0), Is.EqualTo((0x2000UL, 0x1234UL)), "not PC+4, not the MMIO data");
        Assert.That(Arm.State(Guest).Completions, Is.EqualTo(1));
    }

    [Test]
    public void AfterAnMmioWrite_AGprWriteWaitsForTheNextRun_APcWriteCompletesFirst()
    {
        A64.Pc = 0x1000;
        Guest.Guest = HotExit; // an MMIO write
        Cpu.Run();
        Assert.That(A64.HasPendingAccess, Is.True);
        Model.ResetCounts();
        A64.X3 = 0x33;
        Assert.That((Model.TotalIoctls, A64.HasPendingAccess), Is.EqualTo((0, true)), "a GPR write needs no completion run after an MMIO write");
        Assert.That(A64.Pc, Is.EqualTo(0x1000UL), "still the faulting store's PC");
        A64.Pc = 0x2000;
        Assert.That((Model.Count(KvmIoctls.KVM_RUN), A64.HasPendingAccess), Is.EqualTo((1, false)), "a PC write completes the write first, or KVM would add 4 to it");

        ulong seenPc = 0, seenX3 = 0;
        Guest.Guest = v => { seenPc = GuestPc(v); seenX3 = GuestGpr(v, 3); return HotExit(v); };
        Cpu.Run();
        Assert.That((seenPc, seenX3), Is.EqualTo((0x2000UL, 0x33UL)));
        Assert.That(Arm.State(Guest).Completions, Is.EqualTo(1));
    }

    [Test]
    public void AfterAnMmioRead_WithoutWrites_KvmCompletesItAtTheNextRun()
    {
        A64.Pc = 0x1000;
        Guest.Guest = v => MmioRead(v, register: 3, length: 4);
        var exit = Cpu.Run();
        BinaryPrimitives.WriteUInt32LittleEndian(exit.Mmio.Data, 0xCAFE_F00D);
        Assert.That(A64.X3, Is.Zero, "reads do not complete the access");
        ulong seenPc = 0, seenX3 = 0;
        Guest.Guest = v => { seenPc = GuestPc(v); seenX3 = GuestGpr(v, 3); return HotExit(v); };
        Model.ResetCounts();
        Cpu.Run();
        Assert.That((seenPc, seenX3), Is.EqualTo((0x1004UL, 0xCAFE_F00DUL)));
        Assert.That(Model.Count(KvmIoctls.KVM_RUN), Is.EqualTo(1));
        Assert.That((A64.Pc, A64.X3), Is.EqualTo((0x1004UL, 0xCAFE_F00DUL)), "the cache was invalidated by the run");
    }

    [Test]
    public void AWriteAfterAnMmioExit_SeesTheCompletedStateForRegistersItDidNotWrite()
    {
        A64.Pc = 0x1000;
        Guest.Guest = v => MmioRead(v, register: 7);
        var exit = Cpu.Run();
        BinaryPrimitives.WriteUInt64LittleEndian(exit.Mmio.Data, 0x77);
        Assert.That(A64.Pc, Is.EqualTo(0x1000UL));
        A64.X1 = 1;
        Assert.That((A64.Pc, A64.X7), Is.EqualTo((0x1004UL, 0x77UL)), "values read before the completion were forgotten");
    }

    [Test]
    public void SaveState_CompletesAPendingAccess_SoTheSnapshotIsConsistent()
    {
        A64.Pc = 0x1000;
        Guest.Guest = v => MmioRead(v, register: 2);
        var exit = Cpu.Run();
        BinaryPrimitives.WriteUInt64LittleEndian(exit.Mmio.Data, 0x55);
        var saved = A64.SaveState();
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(saved.Get(Arm64RegisterIds.Pc)), Is.EqualTo(0x1004UL));
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(saved.Get(Arm64RegisterIds.X(2))), Is.EqualTo(0x55UL));
        Assert.That(Arm.State(Guest).Completions, Is.EqualTo(1));
    }

    [Test]
    public void AUserImmediateExitRun_CompletesTheAccess_SoNoSecondCompletionRunIsMade()
    {
        Guest.Guest = v => MmioRead(v, register: 0);
        Cpu.Run();
        Cpu.RequestExit();
        var exit = Cpu.Run();
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Interrupted));
        Assert.That(A64.HasPendingAccess, Is.False);
        Model.ResetCounts();
        A64.X0 = 9;
        Assert.That(Model.Count(KvmIoctls.KVM_RUN), Is.Zero);
        Assert.That(Arm.State(Guest).Completions, Is.EqualTo(1));
    }

    // ---- MP state, events, save/restore ------------------------------------------------------

    [Test]
    public void MpStatesArm64DoesNotHave_AreRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => A64.MpState = MpState.Halted);
        Assert.Throws<ArgumentOutOfRangeException>(() => A64.MpState = MpState.Operating);
        A64.MpState = MpState.Suspended;
        A64.Invalidate();
        Assert.That(GuestMpState(Guest), Is.EqualTo(MpState.Suspended));
    }

    [Test]
    public void Events_RoundTrip_AndAreSavedAndRestored()
    {
        var before = A64.Events;
        Assert.That(before, Is.EqualTo(new Arm64VcpuEvents(false, true, false, 0)));
        A64.Events = new Arm64VcpuEvents(SErrorPending: true, SErrorHasEsr: true, ExtDabtPending: false, SErrorEsr: 0x1234);
        A64.Invalidate();
        Assert.That((Arm.State(Guest).SErrorPending, Arm.State(Guest).SErrorEsr), Is.EqualTo((true, 0x1234UL)));
        Assert.That(A64.Events, Is.EqualTo(new Arm64VcpuEvents(true, true, false, 0x1234)));
        var saved = A64.SaveState();
        Assert.That(saved.Get(Arm64RegisterIds.EventsKey).Length, Is.EqualTo(64));
        Assert.That(saved.Get(Arm64RegisterIds.MpStateKey).Length, Is.EqualTo(4));
    }

    [Test]
    public void SaveState_HoldsEveryRegisterWithItsSize()
    {
        var saved = A64.SaveState();
        var expected = Arm64KernelModel.ListedIds.Append(Arm64RegisterIds.MpStateKey).Append(Arm64RegisterIds.EventsKey);
        Assert.That(saved.Sets, Is.EquivalentTo(expected));
        foreach (ulong id in Arm64KernelModel.ListedIds)
            Assert.That(saved.Get(id).Length, Is.EqualTo(Arm64KernelModel.SizeOf(id)), Arm64RegisterIds.Name(id));
    }

    [Test]
    public void RestoreState_RefusesStatesOfAnotherShape()
    {
        var full = A64.SaveState();
        var missing = new SortedDictionary<ulong, byte[]>(full.Sets.Where(k => k != Arm64RegisterIds.Pc).ToDictionary(k => k, k => full.Get(k).ToArray()));
        var e = Assert.Throws<ArgumentException>(() => A64.RestoreState(new RegisterState(KvmArchitecture.Arm64, missing)));
        Assert.That(e!.Message, Does.Contain("PC"));

        var extra = new SortedDictionary<ulong, byte[]>(full.Sets.ToDictionary(k => k, k => full.Get(k).ToArray()))
        {
            [Arm64RegisterIds.SystemRegister(3, 0, 5, 2, 0)] = new byte[8],
        };
        Assert.Throws<ArgumentException>(() => A64.RestoreState(new RegisterState(KvmArchitecture.Arm64, extra)));

        var wrongArch = new SortedDictionary<ulong, byte[]>(full.Sets.ToDictionary(k => k, k => full.Get(k).ToArray()));
        Assert.Throws<ArgumentException>(() => A64.RestoreState(new RegisterState(KvmArchitecture.S390x, wrongArch)));
        Assert.That(Model.Count(KvmIoctls.KVM_SET_ONE_REG), Is.Zero, "nothing was written");
    }

    [Test]
    public unsafe void TheModel_RefusesWhatKvmRefuses()
    {
        ulong value = 0;
        ulong* reg = stackalloc ulong[2];
        reg[1] = (ulong)&value;
        reg[0] = 0x6030_0000_0010_00D4; // FPSR with U64 size bits: it is a U32 register
        Assert.That(Model.Ioctl(Cpu.Fd, KvmIoctls.KVM_GET_ONE_REG, (nint)reg), Is.EqualTo(-Errno.EINVAL));
        reg[0] = Arm64RegisterIds.SystemRegister(3, 0, 5, 2, 0); // ESR_EL1: not in this model's list
        Assert.That(Model.Ioctl(Cpu.Fd, KvmIoctls.KVM_SET_ONE_REG, (nint)reg), Is.EqualTo(-Errno.ENOENT));
        uint halted = (uint)MpState.Halted;
        Assert.That(Model.Ioctl(Cpu.Fd, KvmIoctls.KVM_SET_MP_STATE, (nint)(&halted)), Is.EqualTo(-Errno.EINVAL));
        ulong* init = stackalloc ulong[4];
        init[0] = 0; // target 0, not the preferred one
        Assert.That(Model.Ioctl(Cpu.Fd, KvmIoctls.Arm64.KVM_ARM_VCPU_INIT, (nint)init), Is.EqualTo(-Errno.EINVAL));
        Assert.That(Model.Violations, Has.Count.EqualTo(4));
        Model.Violations.Clear(); // deliberate
    }

    [Test]
    public void RunTakesTheArm64FastPath_OnceTheThreadOwnsTheVcpu_WithOrWithoutDirtyRegisters()
    {
        using var raw = Vm.CreateVcpu();
        raw.Arm64.Initialize();
        Assert.That(raw.CanRunArm64Fast, Is.False, "before the first run (signal mask not set yet)");
        Assert.That(Cpu.CanRunFast, Is.False, "Run's inlined block is x86's");
        Guest.Guest = HotExit;
        Cpu.Run();
        Assert.That(Cpu.CanRunArm64Fast, Is.True, "nothing dirty");
        A64.X0 = 1;
        A64.Pc = A64.Pc; // PC after an MMIO write: completed first, then dirty too
        Assert.That(Cpu.CanRunArm64Fast, Is.True, "dirty registers are written back with ONE_REG on the fast path");
        Model.ResetCounts();
        Cpu.Run();
        Assert.That((Model.Count(KvmIoctls.KVM_SET_ONE_REG), Model.Count(KvmIoctls.KVM_RUN)), Is.EqualTo((2, 1)));
        Assert.That(Arm.State(Guest).X(0), Is.EqualTo(1UL));
        Cpu.Hold();
        Assert.That(Cpu.CanRunArm64Fast, Is.True, "a run loop (VcpuRunner) takes it too");
        Cpu.Unhold();
        Assert.That(Cpu.CanRunArm64Fast, Is.False, "released: the next Run takes the vCPU again first");
        Cpu.Run();
        Assert.That(Cpu.CanRunArm64Fast, Is.True);
    }

    [Test]
    public void OnTheFastPath_ARefusedWriteBack_KeepsItAndTheRegistersAfterIt_DirtyInOrder()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        A64.X1 = 11;
        A64.Pstate = 0x3C9; // EL2h: needs nested virtualisation
        A64.X2 = 22;
        Assert.That(Cpu.CanRunArm64Fast, Is.True);
        Model.ResetCounts();
        var e = Assert.Throws<KvmException>(() => Cpu.Run());
        Assert.That((e!.Operation, e.ErrnoName), Is.EqualTo(("KVM_SET_ONE_REG", "EINVAL")));
        Assert.That(e.Message, Does.Contain("PSTATE"));
        Assert.That((Model.Count(KvmIoctls.KVM_SET_ONE_REG), Model.Count(KvmIoctls.KVM_RUN)), Is.EqualTo((2, 0)), "X1, then the refused PSTATE; no entry");
        Model.Violations.Clear(); // deliberate
        Assert.That((Cpu.IsRunning, Cpu.CanRunArm64Fast), Is.EqualTo((false, true)), "still this thread's, not running");
        Assert.That(Arm.State(Guest).X(1), Is.EqualTo(11UL));
        A64.Pstate = 0x3C5;
        Model.ResetCounts();
        Cpu.Run();
        Assert.That((Model.Count(KvmIoctls.KVM_SET_ONE_REG), Model.Count(KvmIoctls.KVM_RUN)), Is.EqualTo((2, 1)), "PSTATE and X2, once each");
        Assert.That((Arm.State(Guest).Get(Arm64KernelModel.PstateId), Arm.State(Guest).X(2)), Is.EqualTo((0x3C5UL, 22UL)));
    }

    [Test]
    public void ASetThatKvmRefuses_FailsAtTheWriteBack_AndStaysDirty()
    {
        A64.Pstate = 0x3C9; // EL2h: needs nested virtualisation
        var e = Assert.Throws<KvmException>(() => Cpu.Run());
        Assert.That((e!.Operation, e.ErrnoName), Is.EqualTo(("KVM_SET_ONE_REG", "EINVAL")));
        Assert.That(e.Message, Does.Contain("PSTATE"));
        Assert.That(Model.Violations, Has.Count.EqualTo(1));
        Model.Violations.Clear(); // deliberate
        A64.Pstate = 0x3C5;
        Guest.Guest = HotExit;
        Cpu.Run();
        Assert.That(Arm.State(Guest).Get(Arm64KernelModel.PstateId), Is.EqualTo(0x3C5UL));
    }
}
