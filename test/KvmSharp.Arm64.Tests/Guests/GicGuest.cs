namespace KvmSharp.Arm64.Tests.Guests;

/// <summary>
/// A guest at EL1 that takes interrupts from an in-kernel GICv3 at <see cref="DistributorBase"/> /
/// <see cref="RedistributorBase"/> (vCPU 0's; MMU off, so every GIC access is Device memory): it
/// enables the SPIs and PPIs it is given (group 1, priority 0x80, SPIs routed to affinity 0.0.0.0),
/// wakes its redistributor, turns on the CPU interface (ICC_SRE_EL1.SRE, ICC_PMR_EL1 0xFF,
/// ICC_IGRPEN1_EL1), installs its vector table, reports "ready" with an 8-byte write to
/// <see cref="ReadyAddress"/> (of the first SPI's GICD_ICFGR as it read it before configuring anything),
/// unmasks IRQs and waits in WFI. Its IRQ handler reads the INTID from
/// ICC_IAR1_EL1, writes it to <see cref="IntidAddress"/> (an MMIO exit), stops the virtual timer,
/// writes ICC_EOIR1_EL1 and returns to the WFI loop.
/// </summary>
internal static class GicGuest
{
    public const ulong DistributorBase = 0x0800_0000;
    public const ulong RedistributorBase = 0x080A_0000;
    public const ulong IntidAddress = Arm64TestVm.MmioBase;
    public const ulong ReadyAddress = Arm64TestVm.MmioBase + 8;
    public const ulong Vbar = 0x2000; // 2 KiB aligned, in RAM after the code

    private const int IrqVector = 0x280; // current EL with SP_ELx, IRQ

    // GICD_* (distributor) and GICR_* (SGI_base frame, 64 KiB into a redistributor) offsets.
    private const int GicdCtlr = 0x0, GicdIgroupr = 0x80, GicdIsenabler = 0x100, GicdIpriorityr = 0x400, GicdIcfgr = 0xC00, GicdIrouter = 0x6000;
    private const int GicrWaker = 0x14, SgiBase = 0x1_0000, GicrIgroupr0 = 0x80, GicrIsenabler0 = 0x100, GicrIpriorityr = 0x400;
    private const uint GicdCtlrEnableGrp1 = 1 << 1, GicdCtlrAre = 1 << 4;
    private const int Priority = 0x80;

    /// <summary>The guest's code, for <see cref="Arm64TestVm.CodeAddress"/>.</summary>
    /// <param name="spis">SPIs to enable as level-triggered (GICD_ICFGR; KVM resets SPIs to edge).</param>
    /// <param name="edgeSpis">SPIs to enable as edge-triggered (GICD_ICFGR).</param>
    /// <param name="ppis">PPIs to enable in vCPU 0's redistributor.</param>
    /// <param name="timerTicks">If set, arms the virtual timer to fire after this many ticks (CNTV_TVAL_EL0, CNTV_CTL_EL0.ENABLE).</param>
    public static A64 Code(int[]? spis = null, int[]? edgeSpis = null, int[]? ppis = null, ulong? timerTicks = null)
    {
        int[] allSpis = [.. spis ?? [], .. edgeSpis ?? []];
        var code = new A64().Mov(1, DistributorBase);
        // x9: GICD_ICFGR of the first SPI as KVM reset it, before the guest configures anything (the ready report).
        code.Mov(9, 0);
        if (allSpis.Length > 0) code.Load(4, 9, 1, GicdIcfgr + 4 * (allSpis[0] / 16));
        code.Mov(2, GicdCtlrAre | GicdCtlrEnableGrp1).Store(4, 2, 1, GicdCtlr);
        foreach (var (register, mask) in Masks(allSpis, 32))
        {
            code.Mov(2, mask).Store(4, 2, 1, GicdIgroupr + 4 * register);
            code.Store(4, 2, 1, GicdIsenabler + 4 * register);
        }
        // Each SPI's configuration explicitly: level (0b00) or edge (0b10), whatever KVM reset it to.
        foreach (int register in allSpis.Select(i => i / 16).Distinct())
        {
            uint edges = Masks([.. (edgeSpis ?? []).Where(i => i / 16 == register)], 16, bitsPerIntid: 2, bit: 1).SingleOrDefault().Mask;
            code.Mov(2, edges).Store(4, 2, 1, GicdIcfgr + 4 * register);
        }
        code.Mov(2, Priority);
        foreach (int spi in allSpis)
        {
            code.Store(1, 2, 1, GicdIpriorityr + spi);
            code.Store(8, A64.Xzr, 1, GicdIrouter + 8 * spi); // affinity 0.0.0.0: vCPU 0
        }

        code.Mov(5, RedistributorBase).Store(4, A64.Xzr, 5, GicrWaker); // ProcessorSleep = 0
        int wake = code.Position;
        code.Load(4, 6, 5, GicrWaker).BranchIfNonZero(4, 6, wake);    // until ChildrenAsleep reads 0
        code.Mov(7, RedistributorBase + SgiBase);
        foreach (var (_, mask) in Masks(ppis ?? [], 32))
        {
            code.Mov(2, mask).Store(4, 2, 7, GicrIgroupr0).Store(4, 2, 7, GicrIsenabler0);
            code.Mov(2, Priority);
            foreach (int ppi in ppis!) code.Store(1, 2, 7, GicrIpriorityr + ppi);
        }

        code.Mov(2, 1).WriteSystemRegister(A64.IccSreEl1, 2).InstructionBarrier();
        code.Mov(2, 0xFF).WriteSystemRegister(A64.IccPmrEl1, 2);
        code.Mov(2, 1).WriteSystemRegister(A64.IccIgrpen1El1, 2);
        code.Mov(2, Vbar).WriteSystemRegister(A64.VbarEl1, 2).InstructionBarrier();
        if (timerTicks is ulong ticks)
            code.Mov(2, ticks).WriteSystemRegister(A64.CntvTvalEl0, 2).Mov(2, 1).WriteSystemRegister(A64.CntvCtlEl0, 2);
        code.Mov(8, Arm64TestVm.MmioBase).Store(8, 9, 8, (int)(ReadyAddress - Arm64TestVm.MmioBase));
        code.UnmaskIrqs();
        int loop = code.Position;
        code.Instruction(A64.Wfi).Instruction(A64.B(loop - code.Position));

        code.PadTo((int)(Vbar - Arm64TestVm.CodeAddress) + IrqVector)
            .ReadSystemRegister(0, A64.IccIar1El1)
            .Store(8, 0, 8)                                   // report the INTID
            .WriteSystemRegister(A64.CntvCtlEl0, A64.Xzr)     // the timer's line low again
            .WriteSystemRegister(A64.IccEoir1El1, 0)
            .ExceptionReturn();
        return code;
    }

    /// <summary>The register index and bit mask of each register that holds some of <paramref name="intids"/>.</summary>
    private static IEnumerable<(int Register, uint Mask)> Masks(int[] intids, int perRegister, int bitsPerIntid = 1, int bit = 0) =>
        intids.GroupBy(i => i / perRegister)
            .Select(g => (g.Key, g.Aggregate(0u, (mask, i) => mask | 1u << (i % perRegister * bitsPerIntid + bit))));
}
