using KvmSharp.Interop;
using KvmSharp.Registers;
using KvmSharp.Tests.Model;
using M = KvmSharp.Tests.Model.S390xKernelModel;

namespace KvmSharp.Tests.Registers;

/// <summary>Which s390x KVM the model plays.</summary>
internal enum S390xKvm
{
    /// <summary>Current KVM on a machine with vector registers: PREFIX|GPRS|ACRS|CRS|ARCH0|PFAULT|DIAG318|VRS; GET_MP_STATE returns the state.</summary>
    Current,

    /// <summary>Every facility (RICCB, BPBC, GSCB, ETOKEN too); GET_MP_STATE fills its struct.</summary>
    AllFacilities,

    /// <summary>A machine without vector registers: FPRS instead of VRS.</summary>
    FprsOnly,

    /// <summary>Only PREFIX|GPRS|ACRS|CRS: ARCH0 and PFAULT by ONE_REG, FPRs by KVM_GET/SET_FPU; no normal/clear reset.</summary>
    Minimal,
}

/// <summary>The s390x strategy against the strict s390x kernel model, for four kinds of KVM.</summary>
[TestFixture(S390xKvm.Current)]
[TestFixture(S390xKvm.AllFacilities)]
[TestFixture(S390xKvm.FprsOnly)]
[TestFixture(S390xKvm.Minimal)]
internal sealed class S390xRegisterSyncTests(S390xKvm kvm) : RegisterSyncModelFixture
{
    private M S390Model => (M)Model;

    private S390xModelCpu Mc => S390Model.Cpu(Guest);

    private S390xRegisterSync S => Cpu.S390x;

    private S390xModelCpu State(ModelVcpu v) => S390Model.Cpu(v);

    private bool Offered(S390xRegisterSets set) => (S.KernelSyncSets & set) != 0;

    private S390xRegisterSets FpSet => Offered(S390xRegisterSets.Vrs) ? S390xRegisterSets.Vrs : S390xRegisterSets.Fprs;

    private string Calls => string.Join(", ", Model.Counts.Where(kv => kv.Value > 0).Select(kv => $"{kv.Key}={kv.Value}"));

    private ref T RunField<T>(int offset) where T : unmanaged => ref Guest.RunField<T>(offset);

    /// <summary>The call must fail in the kernel with <paramref name="errno"/>; the model's record of it is then expected.</summary>
    private void ExpectKernelError(Action call, int errno)
    {
        var ex = Assert.Throws<KvmException>(call);
        Assert.That(ex!.Errno, Is.EqualTo(errno), ex.Message);
        Assert.That(Model.Violations, Has.Count.EqualTo(1), "the model saw the refused call");
        Model.Violations.Clear();
    }

    // ---- the fixture's contract ------------------------------------------------------------------

    protected override KvmArchitecture Architecture => KvmArchitecture.S390x;

    protected override KernelModel CreateModel() => kvm switch
    {
        S390xKvm.Current => new M(),
        S390xKvm.AllFacilities => new M(M.AllValidRegs, getMpStateFillsStruct: true),
        S390xKvm.FprsOnly => new M((M.DefaultValidRegs & ~M.VRS) | M.FPRS),
        _ => new M(M.PREFIX | M.GPRS | M.ACRS | M.CRS, vcpuResets: false),
    };

    protected override ulong GuestPc(ModelVcpu v) => State(v).PswAddr;

    protected override void SetGuestPc(ModelVcpu v, ulong value) => State(v).PswAddr = value;

    protected override ulong GuestGpr(ModelVcpu v, int index) => State(v).Gprs[index];

    protected override void SetGuestGpr(ModelVcpu v, int index, ulong value) => State(v).Gprs[index] = value;

    protected override MpState GuestMpState(ModelVcpu v) => State(v).Stopped ? MpState.Stopped : MpState.Operating;

    protected override MpState RunningMpState => MpState.Operating;

    protected override uint HotExit(ModelVcpu v) => M.InstructionIntercept(v);

    protected override int ExpectedHotExitIoctls => 1;

    protected override int ExpectedPcReadIoctls => 0;

    protected override int LevelWrites(SyncLevel level) => S390Model.LevelWrites(level);

    // ---- kvm_valid_regs ------------------------------------------------------------------------

    [Test]
    public void KvmValidRegs_SetByKvmAtCreation_DecidesWhereEachSetLives()
    {
        var offered = (S390xRegisterSets)S390Model.ValidRegs;
        Assert.That(S.KernelSyncSets, Is.EqualTo(offered));
        Assert.That(S.SupportedSets & S390xRegisterSets.Arch0, Is.EqualTo(S390xRegisterSets.Arch0), "ARCH0 has ONE_REG ids when the block is missing");
        Assert.That((S.SupportedSets & S390xRegisterSets.Riccb) != 0, Is.EqualTo((offered & S390xRegisterSets.Riccb) != 0), "RICCB has no ioctl");
        if ((offered & S390xRegisterSets.Riccb) == 0)
            Assert.Throws<NotSupportedException>(() => _ = S.RuntimeInstrumentationControls.Length);
        if ((offered & S390xRegisterSets.Vrs) == 0)
            Assert.Throws<NotSupportedException>(() => S.GetVectorRegister(16));
        if ((offered & S390xRegisterSets.Diag318) == 0)
            Assert.Throws<NotSupportedException>(() => S.Diag318 = 1);

        Guest.Guest = HotExit;
        Cpu.Run();
        S.SetGeneralRegister(1, 1);
        S.Prefix = 0x4000;
        Cpu.Run();
        Assert.That(RunField<ulong>(M.ValidRegsOff), Is.EqualTo(S390Model.ValidRegs), "kvm_valid_regs is KVM's output: never written");
    }

    // ---- exits store, entries load -----------------------------------------------------------------

    [Test]
    public void EveryExit_StoresTheSyncBlocks_SoReadingThemCostsNoIoctl()
    {
        Guest.Guest = v =>
        {
            var c = State(v);
            c.PswMask = 0x0705000180000000;
            c.Crs[0] = 0x14000;
            c.Acrs[3] = 0xACACACAC;
            c.Prefix = 0x6000;
            c.Vrs[2 * 2] = 0x4000000000000000;
            c.Fpc = 0x00080000;
            c.CpuTimer = 0x1234;
            c.ClockComparator = 0x5678;
            c.PfaultToken = 0x8000;
            return HotExit(v);
        };
        Cpu.Run();
        Model.ResetCounts();
        Assert.That(S.PswMask, Is.EqualTo(0x0705000180000000UL));
        Assert.That(S.GetControlRegister(0), Is.EqualTo(0x14000UL));
        Assert.That(S.GetAccessRegister(3), Is.EqualTo(0xACACACACu));
        Assert.That(S.Prefix, Is.EqualTo(0x6000u));
        Assert.That(S.GetFloatingPointRegister(2), Is.EqualTo(0x4000000000000000UL));
        Assert.That(S.Fpc, Is.EqualTo(0x00080000u));
        Assert.That(S.CpuTimer, Is.EqualTo(0x1234UL));
        Assert.That(S.ClockComparator, Is.EqualTo(0x5678UL));
        Assert.That(S.PfaultToken, Is.EqualTo(0x8000UL));

        int oneRegs = (Offered(S390xRegisterSets.Arch0) ? 0 : 2) + (Offered(S390xRegisterSets.Pfault) ? 0 : 1);
        int fpus = Offered(FpSet) ? 0 : 1;
        Assert.That(Model.TotalIoctls, Is.EqualTo(oneRegs + fpus), Calls);
        Assert.That(Model.Count(KvmIoctls.KVM_GET_ONE_REG), Is.EqualTo(oneRegs), "ONE_REG only for what the sync area lacks");
        Assert.That(Model.Count(KvmIoctls.S390x.KVM_GET_FPU), Is.EqualTo(fpus));
    }

    [Test]
    public void DirtySets_AreFlaggedInKvmDirtyRegs_AndKvmConsumesThemAtEntry()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        S.SetGeneralRegister(1, 0x11);
        S.SetControlRegister(2, 0x22);
        S.Prefix = 0x8000;
        S.SetAccessRegister(4, 0x44);
        var expected = S390xRegisterSets.Gprs | S390xRegisterSets.Crs | S390xRegisterSets.Prefix | S390xRegisterSets.Acrs;
        Assert.That(S.DirtySets, Is.EqualTo(expected));
        Assert.That(S.PendingSets, Is.EqualTo(S390xRegisterSets.None), "flags are set right before the entry");

        ulong seenDirty = ulong.MaxValue;
        Guest.Guest = v => { seenDirty = v.RunField<ulong>(M.DirtyRegsOff); return HotExit(v); };
        Model.ResetCounts();
        Cpu.Run();
        Assert.That(Model.TotalIoctls, Is.EqualTo(1), Calls);
        Assert.That(Mc.LastEntryDirtyRegs, Is.EqualTo((ulong)expected), "exactly the written sets were flagged");
        Assert.That(seenDirty, Is.Zero, "KVM zeroes kvm_dirty_regs when it loads the sets");
        Assert.That((Mc.Gprs[1], Mc.Crs[2], Mc.Prefix, Mc.Acrs[4]), Is.EqualTo((0x11UL, 0x22UL, 0x8000u, 0x44u)));
        Assert.That(S.DirtySets, Is.EqualTo(S390xRegisterSets.None));
        Assert.That(S.PendingSets, Is.EqualTo(S390xRegisterSets.None));
    }

    [Test]
    public void ThePswTheHostWrites_IsWhatTheGuestSees_WithoutAnyDirtyBit()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        S.PswMask = 0x0000000180000000;
        S.PswAddress = 0x10000;
        Assert.That(S.DirtySets, Is.EqualTo(S390xRegisterSets.None));
        (ulong, ulong) seen = default;
        Guest.Guest = v => { seen = (State(v).PswMask, State(v).PswAddr); return HotExit(v); };
        Cpu.Run();
        Assert.That(seen, Is.EqualTo((0x0000000180000000UL, 0x10000UL)));
        Assert.That(Mc.LastEntryDirtyRegs, Is.Zero, "KVM loads the PSW at every entry; it has no dirty bit");
    }

    [Test]
    public void OneReg_IsUsedOnlyForWhatTheSyncAreaLacks()
    {
        Guest.Guest = v => { State(v).Gbea = 0x6000; State(v).PfaultSelect = 7; return HotExit(v); };
        Cpu.Run();
        Model.ResetCounts();
        _ = S.TodProgrammableRegister;
        _ = S.CpuTimer;
        _ = S.ClockComparator;
        _ = S.ProgramParameter;
        Assert.That(S.BreakingEventAddress, Is.EqualTo(0x6000UL));
        _ = S.PfaultToken;
        _ = S.PfaultCompare;
        Assert.That(S.PfaultSelect, Is.EqualTo(7UL));
        S.CpuTimer = 0x7777;
        Cpu.Run();

        bool arch0 = Offered(S390xRegisterSets.Arch0), pfault = Offered(S390xRegisterSets.Pfault);
        Assert.That(Model.Count(KvmIoctls.KVM_GET_ONE_REG), Is.EqualTo((arch0 ? 0 : 5) + (pfault ? 0 : 3)), Calls);
        Assert.That(Model.Count(KvmIoctls.KVM_SET_ONE_REG), Is.EqualTo(arch0 ? 0 : 1), "only the written register");
        Assert.That(Model.Count(KvmIoctls.KVM_GET_REG_LIST), Is.Zero, "s390x has no register list");
        Assert.That(Mc.LastEntryDirtyRegs & M.ARCH0, Is.EqualTo(arch0 ? M.ARCH0 : 0UL));
        Assert.That(Mc.CpuTimer, Is.EqualTo(0x7777UL));
    }

    [Test]
    public void BeforeTheFirstExit_BlocksKvmKeepsElsewhere_AreFetchedWithTheirIoctls()
    {
        // What a kernel may hold that the zeroed kvm_run page does not show.
        Mc.Crs[0] = 0xE0;
        Mc.CpuTimer = 0x999;
        Model.ResetCounts();
        Assert.That(S.GetControlRegister(0), Is.EqualTo(0xE0UL));
        Assert.That(S.CpuTimer, Is.EqualTo(0x999UL));
        Assert.That(S.PfaultToken, Is.EqualTo(S390xRegisterSync.PfaultTokenInvalid), "a new vCPU's token is invalid, not 0");
        Assert.That(Model.Count(KvmIoctls.S390x.KVM_GET_SREGS), Is.EqualTo(1), Calls);
        Assert.That(Model.Count(KvmIoctls.KVM_GET_ONE_REG), Is.EqualTo(2), "one ONE_REG per register read");

        Model.ResetCounts();
        _ = S.GetGeneralRegister(3);
        _ = S.GetAccessRegister(3);
        _ = S.Prefix;
        _ = S.ProgramCounter;
        _ = S.GetFloatingPointRegister(0);
        Assert.That(Model.TotalIoctls, Is.EqualTo(Offered(FpSet) ? 0 : 1), "GPRs, ACRs, FP live in kvm_run; the prefix starts at 0: " + Calls);

        Guest.Guest = HotExit;
        Cpu.Run();
        Model.ResetCounts();
        _ = S.GetControlRegister(1);
        _ = S.ClockComparator;
        Assert.That(Model.TotalIoctls, Is.EqualTo(Offered(S390xRegisterSets.Arch0) ? 0 : 1), "after an exit kvm_run has them: " + Calls);
    }

    [Test]
    public void PushBeforeTheFirstExit_NeverHandsOverASetItHasNotRead()
    {
        S.PostReset();
        Guest.Guest = HotExit;
        Cpu.Run();
        Assert.That(Mc.LastEntryDirtyRegs & (M.CRS | M.ARCH0 | M.PFAULT), Is.Zero, "CRs, ARCH0 and PFAULT were not read yet");
        Assert.That(Mc.PfaultToken, Is.EqualTo(S390xModelCpu.PfaultTokenInvalid), "the zeroed page must not become the token");

        S.Synchronize();
        S.PostReset();
        Cpu.Run();
        Assert.That(Mc.LastEntryDirtyRegs, Is.EqualTo(S390Model.ValidRegs), "after a read, every block KVM offers is handed over");
        Assert.That(Mc.PfaultToken, Is.EqualTo(S390xModelCpu.PfaultTokenInvalid));
    }

    [Test]
    public void Push_RuntimeHandsOverGprsAndFp_ResetAddsTheRest_FullAddsMpStateAndEpoch()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        S.Synchronize();
        Model.ResetCounts();
        S.Push(SyncLevel.Runtime);
        Assert.That(Model.TotalIoctls, Is.EqualTo(Offered(FpSet) ? 0 : 1), Calls);
        Cpu.Run();
        ulong fp = (ulong)(FpSet & S.KernelSyncSets);
        Assert.That(Mc.LastEntryDirtyRegs, Is.EqualTo(M.GPRS | fp));

        Assert.That(S390xRegisterSync.LevelOf(S390xRegisterSets.Psw), Is.EqualTo(SyncLevel.Runtime));
        Assert.That(S390xRegisterSync.LevelOf(S390xRegisterSets.Vrs), Is.EqualTo(SyncLevel.Runtime));
        Assert.That(S390xRegisterSync.LevelOf(S390xRegisterSets.Crs), Is.EqualTo(SyncLevel.Reset));
        Assert.That(S390xRegisterSync.LevelOf(S390xRegisterSets.Arch0), Is.EqualTo(SyncLevel.Reset));
        Assert.That(S390xRegisterSync.LevelOf(S390xRegisterSets.MpState), Is.EqualTo(SyncLevel.Full));
        Assert.That(S390xRegisterSync.LevelOf(S390xRegisterSets.EpochDifference), Is.EqualTo(SyncLevel.Full));
        Assert.Throws<ArgumentException>(() => S390xRegisterSync.LevelOf(S390xRegisterSets.Gprs | S390xRegisterSets.Crs));

        S.Synchronize();
        Model.ResetCounts();
        S.PostInit();
        Assert.That(Model.Count(KvmIoctls.KVM_SET_MP_STATE), Is.EqualTo(1), Calls);
        Assert.That(Model.Count(KvmIoctls.KVM_SET_ONE_REG), Is.EqualTo(1 + (Offered(S390xRegisterSets.Arch0) ? 0 : 5) + (Offered(S390xRegisterSets.Pfault) ? 0 : 3)), "epoch difference, and ARCH0/PFAULT when KVM lacks the blocks");
        Assert.That(Model.Count(KvmIoctls.S390x.KVM_SET_SREGS), Is.Zero, "ACRs and CRs travel in kvm_run");
    }

    // ---- BPBC ------------------------------------------------------------------------------------

    [Test]
    public void Bpbc_IsBit0x80OfByte1420OfTheSyncArea()
    {
        if (!Offered(S390xRegisterSets.Bpbc))
        {
            Assert.Throws<NotSupportedException>(() => _ = S.BranchPredictionBlocking);
            return;
        }
        int at = M.SyncOff + KvmSharp.Interop.S390x.kvm_sync_regs.BpbcByteOffset;
        Assert.That(at, Is.EqualTo(320 + 1420));
        RunField<byte>(at) = 0x01; // a reserved2 bit: not BPBC
        Assert.That(S.BranchPredictionBlocking, Is.False);
        S.BranchPredictionBlocking = true;
        Assert.That(RunField<byte>(at), Is.EqualTo(0x81), "bit 0x80, the other bits kept");
        Guest.Guest = HotExit;
        Cpu.Run();
        Assert.That(Mc.Bpbc, Is.True);
        Assert.That(Mc.LastEntryDirtyRegs & M.BPBC, Is.EqualTo(M.BPBC));

        Guest.Guest = v => { State(v).Bpbc = false; return HotExit(v); };
        Cpu.Run();
        Assert.That(S.BranchPredictionBlocking, Is.False);
        Assert.That(RunField<byte>(at) & 0x80, Is.Zero);
    }

    // ---- facility blocks and vector registers -------------------------------------------------------

    [Test]
    public void FacilityBlocks_TravelInKvmRun()
    {
        if (!Offered(S390xRegisterSets.Riccb | S390xRegisterSets.Gscb | S390xRegisterSets.Etoken))
        {
            Assert.Throws<NotSupportedException>(() => S.Etoken = 1);
            return;
        }
        Guest.Guest = HotExit;
        Cpu.Run();
        S.EditRuntimeInstrumentationControls()[0] = 0x80;
        S.EditGuardedStorageControls()[8] = 0x42;
        S.Etoken = 0xE7;
        S.EtokenExtension = 0xE8;
        S.Diag318 = 0x318;
        Model.ResetCounts();
        Cpu.Run();
        Assert.That(Model.TotalIoctls, Is.EqualTo(1), Calls);
        Assert.That(Mc.LastEntryDirtyRegs, Is.EqualTo(M.RICCB | M.GSCB | M.ETOKEN | M.DIAG318));
        Assert.That((Mc.Riccb[0], Mc.Etoken, Mc.EtokenExtension, Mc.Diag318), Is.EqualTo(((byte)0x80, 0xE7UL, 0xE8UL, 0x318UL)));
        Assert.That(S.GuardedStorageControls[8], Is.EqualTo(0x42));
    }

    [Test]
    public void VectorRegisters_OverlayTheFloatingPointRegisters()
    {
        if (!Offered(S390xRegisterSets.Vrs))
        {
            Assert.Throws<NotSupportedException>(() => S.SetVectorRegister(0, 1));
            S.SetFloatingPointRegister(15, 0xF15);
            Guest.Guest = HotExit;
            Cpu.Run();
            Assert.That(Mc.Vrs[30], Is.EqualTo(0xF15UL));
            return;
        }
        S.SetVectorRegister(17, new UInt128(0x1111, 0x2222));
        S.SetFloatingPointRegister(3, 0x3333);
        Assert.That(S.GetVectorRegister(3) >> 64, Is.EqualTo((UInt128)0x3333), "FPR 3 is the leftmost doubleword of V3");
        Guest.Guest = HotExit;
        Cpu.Run();
        Assert.That((Mc.Vrs[34], Mc.Vrs[35], Mc.Vrs[6]), Is.EqualTo((0x1111UL, 0x2222UL, 0x3333UL)));
        Assert.Throws<ArgumentOutOfRangeException>(() => S.GetVectorRegister(32));
        Assert.Throws<ArgumentOutOfRangeException>(() => S.GetFloatingPointRegister(16));
    }

    // ---- resets ----------------------------------------------------------------------------------

    [Test]
    public void InitialReset_KeepsADirtyGpr_AndResetsPswPrefixControlRegistersAndTimers()
    {
        Guest.Guest = v =>
        {
            var c = State(v);
            c.PswAddr = 0x5000;
            c.Prefix = 0x2000;
            c.Crs[1] = 0xC1;
            c.CpuTimer = 0x100;
            c.Gbea = 0x200;
            return HotExit(v);
        };
        Cpu.Run();
        S.SetGeneralRegister(6, 0x66);
        S.SetControlRegister(1, 0x1234);
        S.Prefix = 0x40000;
        S.CpuTimer = 0x777;
        S.InitialReset();

        Assert.That((S.PswAddress, S.PswMask, S.Prefix), Is.EqualTo((0UL, 0UL, 0u)));
        Assert.That((S.GetControlRegister(0), S.GetControlRegister(1), S.GetControlRegister(14)), Is.EqualTo((0xE0UL, 0UL, 0xC2000000UL)));
        Assert.That((S.CpuTimer, S.BreakingEventAddress), Is.EqualTo((0UL, 1UL)));
        Assert.That(S.GetGeneralRegister(6), Is.EqualTo(0x66UL), "the initial reset does not touch GPRs");
        Assert.That((S.DirtySets | S.PendingSets) & (S390xRegisterSets.Prefix | S390xRegisterSets.Crs | S390xRegisterSets.Arch0), Is.EqualTo(S390xRegisterSets.None),
            "writes the reset overrides are not handed over again");

        (ulong Gpr6, ulong Cr1, uint Prefix, ulong Addr, ulong Cputm) seen = default;
        Guest.Guest = v => { var c = State(v); seen = (c.Gprs[6], c.Crs[1], c.Prefix, c.PswAddr, c.CpuTimer); return HotExit(v); };
        Cpu.Run();
        Assert.That(seen, Is.EqualTo((0x66UL, 0UL, 0u, 0UL, 0UL)), "the written GPR survives; what the reset resets stays reset");
    }

    [Test]
    public void NormalReset_KeepsWritesToWhatItDoesNotReset_AndInvalidatesThePfaultToken()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        if (!S.SupportsNormalAndClearReset)
        {
            Model.ResetCounts();
            Assert.Throws<NotSupportedException>(() => S.NormalReset());
            Assert.Throws<NotSupportedException>(() => S.ClearReset());
            Assert.That(Model.Count(KvmIoctls.S390x.KVM_S390_NORMAL_RESET) + Model.Count(KvmIoctls.S390x.KVM_S390_CLEAR_RESET), Is.Zero);
            return;
        }
        S.PswMask = 0x0000008180000000; // with PSW.RI
        S.Prefix = 0x30000;
        S.PfaultSelect = 5;
        S.PfaultToken = 0x1000;
        S.SetControlRegister(6, 0x66);
        S.NormalReset();
        Assert.That(S.Prefix, Is.EqualTo(0x30000u), "the normal reset leaves the prefix");
        Assert.That(S.PfaultToken, Is.EqualTo(S390xRegisterSync.PfaultTokenInvalid));
        Assert.That(S.PfaultSelect, Is.EqualTo(5UL));
        Assert.That(S.GetControlRegister(6), Is.EqualTo(0x66UL));
        Assert.That(S.PswMask, Is.EqualTo(0x0000000180000000UL), "the normal reset clears PSW.RI");

        Cpu.Run();
        Assert.That((Mc.Prefix, Mc.PfaultToken, Mc.PfaultSelect, Mc.Crs[6]), Is.EqualTo((0x30000u, S390xModelCpu.PfaultTokenInvalid, 5UL, 0x66UL)));
        Assert.That(Mc.LastEntryDirtyRegs & (M.CRS | M.PFAULT), Is.Zero, "written with ioctls before the reset, not handed over after it");
    }

    [Test]
    public void ClearReset_ClearsEvenRegistersWrittenJustBefore()
    {
        if (!S.SupportsNormalAndClearReset)
        {
            Assert.Throws<NotSupportedException>(() => S.ClearReset());
            return;
        }
        Guest.Guest = v => { State(v).Gprs[2] = 2; State(v).Vrs[0] = 3; return HotExit(v); };
        Cpu.Run();
        S.SetGeneralRegister(2, 7);
        S.SetAccessRegister(1, 9);
        S.ClearReset();
        Assert.That((S.GetGeneralRegister(2), S.GetAccessRegister(1), S.GetFloatingPointRegister(0)), Is.EqualTo((0UL, 0u, 0UL)));
        Guest.Guest = HotExit;
        Cpu.Run();
        Assert.That((Mc.Gprs[2], Mc.Acrs[1], Mc.Vrs[0]), Is.EqualTo((0UL, 0u, 0UL)));
    }

    [Test]
    public void SetInitialPsw_NeedsAStoppedVcpu_AndFlushesAPendingStopFirst()
    {
        Model.ResetCounts();
        S.SetInitialPsw(0x0000000180000000, 0x10000);
        Assert.That(Model.TotalIoctls, Is.EqualTo(1), "a new vCPU is stopped: " + Calls);
        Assert.That((S.PswMask, S.PswAddress), Is.EqualTo((0x0000000180000000UL, 0x10000UL)));
        ulong seen = 0;
        Guest.Guest = v => { seen = State(v).PswAddr; return HotExit(v); };
        Cpu.Run();
        Assert.That(seen, Is.EqualTo(0x10000UL));

        ExpectKernelError(() => S.SetInitialPsw(0, 0x20000), Errno.EBUSY);

        S.MpState = MpState.Stopped;
        S.SetInitialPsw(0, 0x20000);
        Assert.That(Mc.Stopped, Is.True);
        Assert.That(S.PswAddress, Is.EqualTo(0x20000UL));
    }

    // ---- MP state ----------------------------------------------------------------------------------

    [Test]
    public void MpState_IsReadWhicheverWayKvmReturnsIt()
    {
        Assert.That(S.MpState, Is.EqualTo(MpState.Stopped), "a new vCPU is stopped");
        Guest.Guest = HotExit;
        Cpu.Run();
        Model.ResetCounts();
        Assert.That(S.MpState, Is.EqualTo(MpState.Operating), "KVM_RUN started it");
        Assert.That(S.MpState, Is.EqualTo(MpState.Operating));
        Assert.That(Model.Count(KvmIoctls.KVM_GET_MP_STATE), Is.EqualTo(1), "cached until the next run");
    }

    [Test]
    public void MpState_OnceSetByUserspace_AStoppedVcpuNoLongerRuns()
    {
        S.MpState = MpState.Stopped;
        Guest.Guest = HotExit;
        ExpectKernelError(() => Cpu.Run(), Errno.EINVAL);
        Assert.That(S390Model.UserCpuStateControl, Is.True);
        S.MpState = MpState.Operating;
        Cpu.Run();
        Assert.That(Guest.Entries, Is.EqualTo(1));
    }

    [Test]
    public void MpState_KvmRefusesLoadAndCheckStop_AndNonS390StatesAreRefusedAtOnce()
    {
        S.MpState = MpState.Load;
        ExpectKernelError(() => S.Invalidate(), Errno.ENXIO);
        S.MpState = MpState.CheckStop;
        ExpectKernelError(() => S.Invalidate(), Errno.ENXIO);
        Assert.Throws<ArgumentOutOfRangeException>(() => S.MpState = MpState.Halted);
        S.MpState = MpState.Operating;
        S.Invalidate();
    }

    // ---- runs that do not enter ------------------------------------------------------------------

    [Test]
    public void ImmediateExit_LeavesTheFlaggedSetsPending_UntilTheNextEntry()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        S.SetGeneralRegister(3, 0x33);
        S.SetControlRegister(3, 0x333);
        Cpu.RequestExit();
        Assert.That(Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Interrupted));
        Assert.That(S.PendingSets, Is.EqualTo(S390xRegisterSets.Gprs | S390xRegisterSets.Crs), "KVM returned before loading them");
        Model.ResetCounts();
        Assert.That((S.GetGeneralRegister(3), S.GetControlRegister(3)), Is.EqualTo((0x33UL, 0x333UL)));
        Assert.That(Model.TotalIoctls, Is.Zero, Calls);
        Cpu.CancelExitRequest();
        Cpu.Run();
        Assert.That((Mc.Gprs[3], Mc.Crs[3]), Is.EqualTo((0x33UL, 0x333UL)));
        Assert.That(S.PendingSets, Is.EqualTo(S390xRegisterSets.None));
    }

    [Test]
    public void Invalidate_WritesWhatAnIoctlCanCarry_AndLeavesTheRestFlagged()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        S.SetControlRegister(3, 0x3C);
        S.Prefix = 0xA000;
        S.ClockComparator = 0xCC;
        Model.ResetCounts();
        S.Invalidate();
        Assert.That(Model.Count(KvmIoctls.S390x.KVM_SET_SREGS), Is.EqualTo(1), Calls);
        Assert.That(Model.Count(KvmIoctls.KVM_SET_ONE_REG), Is.EqualTo(Offered(S390xRegisterSets.Arch0) ? 5 : 1),
            "a flagged ARCH0 block is written whole; a ONE_REG-cached register alone");
        Assert.That(Mc.Crs[3], Is.EqualTo(0x3CUL), "written now");
        Assert.That(Mc.ClockComparator, Is.EqualTo(0xCCUL), "written now");
        Assert.That(S.PendingSets, Is.EqualTo(S390xRegisterSets.Prefix), "the prefix has no ioctl: it waits for the next entry");
        Assert.That(S.GetControlRegister(3), Is.EqualTo(0x3CUL));
        Cpu.Run();
        Assert.That(Mc.Prefix, Is.EqualTo(0xA000u));
    }

    // ---- save and restore ------------------------------------------------------------------------

    [Test]
    public void RestoreState_HandsTheSyncBlocksOverInKvmRun_AndWritesOnlyTheRestNow()
    {
        Guest.Guest = HotExit;
        Cpu.Run();
        var saved = S.SaveState();
        Assert.That(saved.Sets.Select(k => (S390xRegisterSets)k).Aggregate(S390xRegisterSets.None, (a, b) => a | b), Is.EqualTo(S.SupportedSets));
        Model.ResetCounts();
        S.RestoreState(saved);
        bool arch0 = Offered(S390xRegisterSets.Arch0), pfault = Offered(S390xRegisterSets.Pfault);
        Assert.That(Model.Count(KvmIoctls.KVM_SET_MP_STATE), Is.EqualTo(1), Calls);
        Assert.That(Model.Count(KvmIoctls.KVM_SET_ONE_REG), Is.EqualTo(1 + (arch0 ? 0 : 5) + (pfault ? 0 : 3)), Calls);
        Assert.That(Model.Count(KvmIoctls.S390x.KVM_SET_FPU), Is.EqualTo(Offered(FpSet) ? 0 : 1), Calls);
        Assert.That(Model.TotalIoctls, Is.EqualTo(2 + (arch0 ? 0 : 5) + (pfault ? 0 : 3) + (Offered(FpSet) ? 0 : 1)), Calls);
        Cpu.Run();
        Assert.That(Mc.LastEntryDirtyRegs, Is.EqualTo(S390Model.ValidRegs), "every sync block is loaded at the entry");
    }

    [Test]
    public void RestoreState_RefusesAStateOfAnotherShape()
    {
        var saved = S.SaveState();
        var sets = new SortedDictionary<ulong, byte[]>();
        foreach (ulong k in saved.Sets) sets[k] = saved.Get(k).ToArray();

        var missing = new SortedDictionary<ulong, byte[]>(sets);
        missing.Remove((ulong)S390xRegisterSets.Crs);
        Assert.Throws<ArgumentException>(() => S.RestoreState(new RegisterState(KvmArchitecture.S390x, missing)));

        var resized = new SortedDictionary<ulong, byte[]>(sets) { [(ulong)S390xRegisterSets.Gprs] = new byte[8] };
        Assert.Throws<ArgumentException>(() => S.RestoreState(new RegisterState(KvmArchitecture.S390x, resized)));

        var other = FpSet == S390xRegisterSets.Vrs ? S390xRegisterSets.Fprs : S390xRegisterSets.Vrs;
        var extra = new SortedDictionary<ulong, byte[]>(sets) { [(ulong)other] = new byte[132] };
        Assert.Throws<ArgumentException>(() => S.RestoreState(new RegisterState(KvmArchitecture.S390x, extra)), "a set this vCPU cannot load");

        Assert.Throws<ArgumentException>(() => S.RestoreState(new RegisterState(KvmArchitecture.Arm64, sets)));
        Assert.That(S.SaveState().ContentEquals(saved), Is.True, "a refused state changes nothing");
    }

    [Test]
    public void AHotExit_WritingManyRegisters_StillCostsOnlyKvmRun()
    {
        Guest.Guest = v => { State(v).PswAddr += 4; return HotExit(v); };
        Cpu.Run();
        for (int i = 0; i < 3; i++)
        {
            Model.ResetCounts();
            S.ProgramCounter += 2;
            S.SetGeneralRegister(0, (ulong)i);
            S.SetGeneralRegister(15, 0xF000);
            S.SetAccessRegister(2, 2);
            S.SetControlRegister(0, 0xE0 | (ulong)i);
            S.Prefix = 0x2000;
            if (Offered(FpSet)) S.SetFloatingPointRegister(1, (ulong)i);
            if (Offered(S390xRegisterSets.Arch0)) S.CpuTimer = (ulong)i;
            Cpu.Run();
            Assert.That(Model.TotalIoctls, Is.EqualTo(1), Calls);
            Assert.That(Mc.Crs[0], Is.EqualTo(0xE0 | (ulong)i));
        }
    }

    [Test]
    public void ADisposedVcpu_RefusesRegisterAccess()
    {
        var s = S;
        _ = s.MpState;
        _ = s.EpochDifference;
        _ = s.CpuTimer; // all cached now: their cache is freed with the vCPU
        Cpu.Dispose();
        Assert.Throws<ObjectDisposedException>(() => _ = s.ProgramCounter);
        Assert.Throws<ObjectDisposedException>(() => s.SetGeneralRegister(0, 1));
        Assert.Throws<ObjectDisposedException>(() => s.Invalidate());
        Assert.Throws<ObjectDisposedException>(() => s.MpState = MpState.Stopped);
        Assert.Throws<ObjectDisposedException>(() => _ = s.MpState, "cached MP state");
        Assert.Throws<ObjectDisposedException>(() => _ = s.EpochDifference, "cached epoch difference");
        Assert.Throws<ObjectDisposedException>(() => s.EpochDifference = 1);
        Assert.Throws<ObjectDisposedException>(() => _ = s.CpuTimer, "cached CPU timer");
        Assert.Throws<ObjectDisposedException>(() => s.CpuTimer = 1);
    }
}
