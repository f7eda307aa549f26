using System.Buffers.Binary;
using System.Runtime.InteropServices;
using KvmSharp.Arm64.Tests.Guests;
using KvmSharp.Interop;
using KvmSharp.Registers;
using static KvmSharp.Arm64.Tests.Guests.Arm64TestVm;

namespace KvmSharp.Arm64.Tests;

/// <summary>
/// The arm64 register cache on a real arm64 KVM: every core register both ways between host and
/// guest, system registers found through KVM_GET_REG_LIST, the timer counter, and the ioctls each
/// scenario costs — counted on the real kernel, and equal to what the kernel model
/// (<c>Arm64RegisterSyncTests</c> in the x86 suite) claims.
/// </summary>
public class Arm64RegisterTests
{
    private const ulong SaveArea = 0x8000;     // SP_EL1: the guest stores its registers here
    private const int FpBase = 256, MiscBase = 768, LoadBase = 1024;
    private const ulong FpenNoTraps = 3UL << 20; // CPACR_EL1.FPEN: SIMD&FP at EL1 without a trap (it resets to 0: trapped)

    private static ulong XValue(int n) => 0x1000_0000_0000_0000UL + (ulong)(n + 1) * 0x0001_0001_0001_0001UL;
    private static UInt128 VValue(int n) => (UInt128)(0xA000_0000_0000_0000UL + (ulong)n) << 64 | (0x5000UL + (ulong)n);
    private static UInt128 LoadedV(int n) => (UInt128)(0xC000_0000_0000_0000UL + (ulong)n) << 64 | (0x7000UL + (ulong)n);

    [Test]
    public void CoreRegisters_TheGuestSeesWhatTheHostWrote_AndTheHostReadsWhatTheGuestChanged()
    {
        // The guest stores X0–X30, V0–V31 and the FP/exception registers to its save area (SP_EL1),
        // then adds n+1 to Xn (n < 30), loads V0–V31 from memory the host filled, and writes X0 to
        // the MMIO address in X30.
        var code = new A64();
        for (int n = 0; n <= 30; n++) code.Store(8, n, A64.Sp, 8 * n);
        for (int n = 0; n < 32; n++) code.StoreQ(n, A64.Sp, FpBase + 16 * n);
        ulong[] misc = [A64.Fpcr, A64.Fpsr, A64.ElrEl1, A64.SpsrEl1, A64.SpEl0];
        for (int i = 0; i < misc.Length; i++) code.ReadSystemRegister(0, misc[i]).Store(8, 0, A64.Sp, MiscBase + 8 * i);
        code.Load(8, 0, A64.Sp);
        for (int n = 0; n < 30; n++) code.Add(n, n, n + 1);
        for (int n = 0; n < 32; n++) code.LoadQ(n, A64.Sp, LoadBase + 16 * n);
        int exitAt = code.Position;
        code.Store(8, 0, 30).BranchToSelf();
        using var t = new Arm64TestVm(code);
        var arm = t.Arm;

        Assert.That(arm.Pstate & 0xF, Is.EqualTo(0x5UL), "KVM_ARM_VCPU_INIT: EL1h");
        arm.SetSystemRegister(A64.CpacrEl1, FpenNoTraps);
        for (int n = 0; n < 30; n++) arm.SetGeneralRegister(n, XValue(n));
        arm.X30 = MmioBase;
        for (int n = 0; n < 32; n++) arm.SetV(n, VValue(n));
        for (int n = 0; n < 32; n++) t.Ram.Write(SaveArea + LoadBase + 16 * (ulong)n, ToBytes(LoadedV(n)));
        ulong[] miscValues = [0x0300_0000, 0x0800_0000, 0x1234_5678, 0x3C5, 0xABCD_0000]; // FPCR DN|FZ, FPSR QC, ELR, SPSR EL1h masked, SP_EL0
        arm.SpEl1 = SaveArea;
        arm.Fpcr = (uint)miscValues[0];
        arm.Fpsr = (uint)miscValues[1];
        arm.ElrEl1 = miscValues[2];
        arm.SetSpsr(0, miscValues[3]);
        arm.Sp = miscValues[4];

        var mmio = t.RunToMmio();
        Assert.That((mmio.Address, mmio.Length, BinaryPrimitives.ReadUInt64LittleEndian(mmio.Data)), Is.EqualTo((MmioBase, 8, XValue(0) + 1)));

        // What the guest saw: the host's values, stored by the guest.
        for (int n = 0; n < 30; n++) Assert.That(ReadU64(t, 8 * n), Is.EqualTo(XValue(n)), $"X{n} as the guest saw it");
        Assert.That(ReadU64(t, 8 * 30), Is.EqualTo(MmioBase), "X30 as the guest saw it");
        for (int n = 0; n < 32; n++) Assert.That(ReadU128(t, FpBase + 16 * n), Is.EqualTo(VValue(n)), $"V{n} as the guest saw it");
        for (int i = 0; i < misc.Length; i++) Assert.That(ReadU64(t, MiscBase + 8 * i), Is.EqualTo(miscValues[i]), $"{Arm64RegisterIds.Name(misc[i])} as the guest saw it");

        // What the host reads back: the guest's changes (the cache was forgotten at the exit).
        for (int n = 0; n < 30; n++) Assert.That(arm.GetGeneralRegister(n), Is.EqualTo(XValue(n) + (ulong)n + 1), $"X{n} after the guest's ADD");
        for (int n = 0; n < 32; n++) Assert.That(arm.GetV(n), Is.EqualTo(LoadedV(n)), $"V{n} after the guest's LDR");
        Assert.That(arm.Pc, Is.EqualTo(CodeAddress + (ulong)exitAt), "at an MMIO exit the PC is the faulting store's");
        Assert.That(arm.SpEl1, Is.EqualTo(SaveArea));
        Assert.That(arm.Pstate & 0xF, Is.EqualTo(0x5UL));
    }

    [Test]
    public void SystemRegisters_FromTheRegisterList_ReachTheGuest_AndComeBack()
    {
        ulong tpidrEl1 = A64.TpidrEl1, tpidrEl0 = A64.TpidrEl0;
        var code = new A64()
            .ReadSystemRegister(0, tpidrEl1)
            .WriteSystemRegister(tpidrEl0, 2)
            .Store(8, 0, 1)           // MMIO <- TPIDR_EL1 as the guest reads it
            .BranchToSelf();
        using var t = new Arm64TestVm(code);
        var arm = t.Arm;
        Assert.That(arm.SystemRegisterIds, Does.Contain(tpidrEl1).And.Contain(tpidrEl0).And.Contain(Arm64RegisterIds.TimerCnt),
            "KVM_GET_REG_LIST lists the thread-id registers and the virtual counter");
        Assert.That(arm.SystemRegisterIds.Any(Arm64RegisterIds.IsCore), Is.False, "core registers are not system registers");
        arm.SetSystemRegister(tpidrEl1, 0x1111_2222_3333_4444);
        arm.X1 = MmioBase;
        arm.X2 = 0x5555_6666_7777_8888;
        ulong counterBefore = arm.TimerCounter;

        var mmio = t.RunToMmio();
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(mmio.Data), Is.EqualTo(0x1111_2222_3333_4444UL), "the guest read the host's TPIDR_EL1");
        Assert.That(arm.GetSystemRegister(tpidrEl0), Is.EqualTo(0x5555_6666_7777_8888UL), "the host reads the guest's TPIDR_EL0");
        Assert.That(arm.TimerCounter, Is.GreaterThan(counterBefore), "the virtual counter moved while the guest ran");
    }

    // ---- what each scenario costs, counted on the real kernel -----------------------------------

    [Test]
    public void ReadingThePc_AfterAnExit_CostsOneOneReg_AndASecondReadNone()
    {
        using var t = new Arm64TestVm(new A64().Mov(1, MmioBase).Store(4, 0, 1).BranchToSelf(), countIoctls: true);
        t.RunToMmio();
        t.Kernel!.ResetCounts();
        ulong pc = t.Arm.Pc;
        Assert.That(t.Kernel.TotalIoctls, Is.EqualTo(1), t.Counts);
        Assert.That(t.Kernel.Count(KvmIoctls.KVM_GET_ONE_REG), Is.EqualTo(1), t.Counts);
        Assert.That(t.Arm.Pc, Is.EqualTo(pc));
        Assert.That(t.Kernel.TotalIoctls, Is.EqualTo(1), "the second read is served by the cache");
    }

    [Test]
    public void AHotMmioHandler_ThatReadsThePcAndWritesX0_CostsWhatTheModelSays()
    {
        // The guest stores W0 to MMIO forever; the handler reads the PC and writes X0. The model
        // (Arm64RegisterSyncTests.ExpectedHotExitIoctls = 3) says: GET_ONE_REG (PC), SET_ONE_REG (X0),
        // KVM_RUN — whose entry completes the MMIO write (it only advances the PC, so X0 may be
        // written before it).
        var code = new A64().Mov(1, MmioBase);
        int store = code.Position;
        code.Store(4, 0, 1).Instruction(A64.B(-4));
        using var t = new Arm64TestVm(code, countIoctls: true);
        t.RunToMmio();
        for (uint i = 1; i <= 5; i++)
        {
            t.Kernel!.ResetCounts();
            Assert.That(t.Arm.Pc, Is.EqualTo(CodeAddress + (ulong)store));
            t.Arm.X0 = i;
            var mmio = t.RunToMmio();
            Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(mmio.Data), Is.EqualTo(i), "the guest stored the X0 the handler wrote");
            Assert.That(t.Kernel.TotalIoctls, Is.EqualTo(3), t.Counts);
            Assert.That((t.Kernel.Count(KvmIoctls.KVM_GET_ONE_REG), t.Kernel.Count(KvmIoctls.KVM_SET_ONE_REG), t.Kernel.Count(KvmIoctls.KVM_RUN)),
                Is.EqualTo((1, 1, 1)), t.Counts);
        }
    }

    [Test]
    public void ARunWithoutRegisterAccess_CostsOnlyKvmRun()
    {
        var code = new A64().Mov(1, MmioBase).Store(4, 0, 1).Instruction(A64.B(-4));
        using var t = new Arm64TestVm(code, countIoctls: true);
        t.RunToMmio();
        t.Kernel!.ResetCounts();
        for (int i = 0; i < 10; i++) t.RunToMmio();
        Assert.That(t.Kernel.Counts.Keys, Is.EquivalentTo(new[] { "KVM_RUN" }), t.Counts);
        Assert.That(t.Kernel.Count(KvmIoctls.KVM_RUN), Is.EqualTo(10));
    }

    [Test]
    public void AfterAnMmioWrite_AGprWriteWaitsForTheRun_APcWriteCompletesTheAccessFirst()
    {
        var code = new A64().Mov(1, MmioBase);
        int store = code.Position;
        code.Store(8, 3, 1)            // MMIO <- x3
            .Store(8, 3, 1, 8)         // MMIO+8 <- x3 again: shows what the guest has in x3 now
            .BranchToSelf();
        using var t = new Arm64TestVm(code, countIoctls: true);
        t.RunToMmio();
        t.Kernel!.ResetCounts();
        t.Arm.X3 = 0x3333;
        Assert.That((t.Kernel.TotalIoctls, t.Arm.HasPendingAccess), Is.EqualTo((0, true)), "no completion run for a GPR after an MMIO write: " + t.Counts);
        var mmio = t.RunToMmio();
        Assert.That((mmio.Address, BinaryPrimitives.ReadUInt64LittleEndian(mmio.Data)), Is.EqualTo((MmioBase + 8, 0x3333UL)),
            "KVM completed the first store at this entry (PC + 4) and the guest saw the new X3");

        // A PC write is different: KVM would add 4 to it at the next entry, so the access is completed first.
        t.Kernel.ResetCounts();
        t.Arm.Pc = CodeAddress + (ulong)store;
        Assert.That((t.Kernel.Count(KvmIoctls.KVM_RUN), t.Arm.HasPendingAccess), Is.EqualTo((1, false)), t.Counts);
        mmio = t.RunToMmio();
        Assert.That(mmio.Address, Is.EqualTo(MmioBase), "the guest restarted at the first store, not 4 bytes past it");
    }

    [Test]
    public void AWriteAfterAnMmioRead_CompletesTheAccessFirst()
    {
        var code = new A64()
            .Mov(1, MmioBase)
            .Load(8, 2, 1, 0x10)       // x2 <- MMIO (the host answers)
            .Store(8, 3, 1, 0x20)      // MMIO <- x3: shows the host's write reached the guest
            .BranchToSelf();
        using var t = new Arm64TestVm(code, countIoctls: true);
        var mmio = t.RunToMmio();
        ulong loadPc = t.Arm.Pc;
        BinaryPrimitives.WriteUInt64LittleEndian(mmio.Data, 0xFEED_FACE_CAFE_BEEF);
        Assert.That(t.Arm.HasPendingAccess, Is.True);

        t.Kernel!.ResetCounts();
        t.Arm.X3 = 0x3333;
        Assert.That(t.Kernel.Count(KvmIoctls.KVM_RUN), Is.EqualTo(1), "the write first let KVM finish the load (KVM_RUN with immediate_exit): " + t.Counts);
        Assert.That(t.Arm.HasPendingAccess, Is.False);
        Assert.That(t.Arm.X2, Is.EqualTo(0xFEED_FACE_CAFE_BEEFUL), "the load's data is in X2");
        Assert.That(t.Arm.Pc, Is.EqualTo(loadPc + 4), "and the PC is past the load");

        mmio = t.RunToMmio();
        Assert.That((mmio.Address, BinaryPrimitives.ReadUInt64LittleEndian(mmio.Data)), Is.EqualTo((MmioBase + 0x20, 0x3333UL)));
    }

    // ---- MP state and levels -------------------------------------------------------------------

    [Test]
    public void AStoppedVcpu_StaysStoppedAcrossSaveAndRestore_AndRunsWhenMadeRunnable()
    {
        using var t = new Arm64TestVm(new A64().Mov(1, MmioBase).Store(8, 1, 1).BranchToSelf(), powerOff: true);
        Assert.That(t.Arm.MpState, Is.EqualTo(MpState.Stopped), "KVM_ARM_VCPU_POWER_OFF");
        var saved = t.Arm.SaveState();

        // A powered-off vCPU waits inside KVM_RUN until it is turned on; a timeout ends the wait.
        Assert.That(t.Cpu.Run(TimeSpan.FromMilliseconds(300)).Reason, Is.EqualTo(VcpuExitReason.Interrupted));
        t.Arm.MpState = MpState.Runnable;
        t.Arm.RestoreState(saved);
        t.Arm.Invalidate();
        Assert.That(t.Arm.MpState, Is.EqualTo(MpState.Stopped), "the restore brought the stopped state back to KVM");
        Assert.That(t.Cpu.Run(TimeSpan.FromMilliseconds(300)).Reason, Is.EqualTo(VcpuExitReason.Interrupted), "still stopped");
        Assert.That(t.Arm.Pc, Is.EqualTo(CodeAddress), "no guest instruction ran");

        t.Arm.MpState = MpState.Runnable;
        var mmio = t.RunToMmio();
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(mmio.Data), Is.EqualTo(MmioBase), "runnable again: the guest ran");
        t.Arm.Invalidate();
        Assert.That(t.Arm.MpState, Is.EqualTo(MpState.Runnable));
    }

    [Test]
    public void PostResetWritesEveryRegisterButTheCounters_PostInitWritesThemToo()
    {
        using var t = new Arm64TestVm(new A64().Mov(1, MmioBase).Store(8, 1, 1).Instruction(A64.B(-4)), countIoctls: true);
        t.RunToMmio();
        t.Arm.CompletePendingAccess();
        t.Arm.Synchronize();
        var written = new List<ulong>();
        t.Kernel!.IoctlHook = (ioctl, arg) =>
        {
            if (ioctl.Name == KvmIoctls.KVM_SET_ONE_REG.Name) written.Add((ulong)Marshal.ReadInt64(arg)); // kvm_one_reg.id
            return null; // the real kernel does the call
        };
        int core = Arm64RegisterSync.CoreRegisterIds.Count, system = t.Arm.SystemRegisterIds.Count;
        // The counters of level Full that this kernel lists. Linux 6.1 lists the virtual timer's
        // CTL, CNT and CVAL only (guest.c copy_timer_indices): PTIMER_CNT is not listed, so not cached.
        var counters = new[] { Arm64RegisterIds.TimerCnt, Arm64RegisterIds.PtimerCnt }.Where(t.Arm.SystemRegisterIds.Contains).ToArray();
        Assert.That(counters, Does.Contain(Arm64RegisterIds.TimerCnt));
        if (Environment.OSVersion.Version is { Major: 6, Minor: 1 })
            Assert.That(counters, Is.EqualTo(new[] { Arm64RegisterIds.TimerCnt }), "Linux 6.1 does not list PTIMER_CNT");

        t.Arm.PostReset();
        Assert.That(written.Intersect(counters), Is.Empty, "PostReset never moves guest time");
        Assert.That(written, Is.Unique);
        Assert.That(written, Has.Count.EqualTo(core + system - counters.Length),
            "every core and listed system register but the counters; the real KVM took them all: "
            + string.Join(" ", Arm64RegisterSync.CoreRegisterIds.Concat(t.Arm.SystemRegisterIds).Except(written).Select(Arm64RegisterIds.Name)));

        written.Clear();
        t.Arm.PostInit();
        Assert.That(written, Has.Count.EqualTo(core + system));
        Assert.That(written, Is.SupersetOf(counters), "PostInit writes the counters too");

        var mmio = t.RunToMmio();
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(mmio.Data), Is.EqualTo(MmioBase), "the guest runs on after both pushes");
    }

    private static ulong ReadU64(Arm64TestVm t, int offset)
    {
        Span<byte> b = stackalloc byte[8];
        t.Ram.Read(SaveArea + (ulong)offset, b);
        return BinaryPrimitives.ReadUInt64LittleEndian(b);
    }

    private static UInt128 ReadU128(Arm64TestVm t, int offset)
    {
        Span<byte> b = stackalloc byte[16];
        t.Ram.Read(SaveArea + (ulong)offset, b);
        return BinaryPrimitives.ReadUInt128LittleEndian(b);
    }

    private static byte[] ToBytes(UInt128 v)
    {
        var b = new byte[16];
        BinaryPrimitives.WriteUInt128LittleEndian(b, v);
        return b;
    }
}
