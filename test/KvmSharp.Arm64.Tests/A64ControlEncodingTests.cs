using KvmSharp.Arm64.Tests.Guests;

namespace KvmSharp.Arm64.Tests;

/// <summary>
/// The encoders of <c>A64.Control.cs</c> against GNU as, as <see cref="A64Tests"/> does for the
/// others: each expected word is what <c>aarch64-linux-gnu-as</c> 2.40 assembled for the instruction
/// in the test name (a branch written <c>.-8</c> targets 8 bytes before itself).
/// </summary>
public class A64ControlEncodingTests
{
    [TestCase(0xC85F7C23u, "ldxr x3, [x1]")]
    [TestCase(0xC8047C23u, "stxr w4, x3, [x1]")]
    [TestCase(0x35FFFFC4u, "cbnz w4, .-8")]
    [TestCase(0xB4FFFFE5u, "cbz x5, .-4")]
    [TestCase(0xB5000082u, "cbnz x2, .+16")]
    [TestCase(0x34000000u, "cbz w0, .")]
    [TestCase(0xF1000442u, "subs x2, x2, #1")]
    [TestCase(0x54FFFF61u, "b.ne .-20")]
    [TestCase(0x54000040u, "b.eq .+8")]
    [TestCase(0xD5385205u, "mrs x5, esr_el1")]
    [TestCase(0xD5384026u, "mrs x6, elr_el1")]
    [TestCase(0xD518C009u, "msr vbar_el1, x9")]
    [TestCase(0xD518A209u, "msr mair_el1, x9")]
    [TestCase(0xD5182049u, "msr tcr_el1, x9")]
    [TestCase(0xD5182009u, "msr ttbr0_el1, x9")]
    [TestCase(0xD5181009u, "msr sctlr_el1, x9")]
    [TestCase(0xD5033FDFu, "isb")]
    [TestCase(0x00000000u, "udf #0")]
    [TestCase(0x00001234u, "udf #0x1234")]
    [TestCase(0xA9401043u, "ldp x3, x4, [x2]")]
    [TestCase(0xA97F1043u, "ldp x3, x4, [x2, #-16]")]
    [TestCase(0xF8408443u, "ldr x3, [x2], #8")]
    [TestCase(0xF85F8443u, "ldr x3, [x2], #-8")]
    [TestCase(0xD50342FFu, "msr daifclr, #2")]
    [TestCase(0xD50342DFu, "msr daifset, #2")]
    [TestCase(0xD69F03E0u, "eret")]
    [TestCase(0xD538CC00u, "mrs x0, icc_iar1_el1")]
    [TestCase(0xD518CC20u, "msr icc_eoir1_el1, x0")]
    [TestCase(0xD518CCA1u, "msr icc_sre_el1, x1")]
    [TestCase(0xD5184601u, "msr icc_pmr_el1, x1")]
    [TestCase(0xD518CCE1u, "msr icc_igrpen1_el1, x1")]
    [TestCase(0xD51BE321u, "msr cntv_ctl_el0, x1")]
    [TestCase(0xD51BE301u, "msr cntv_tval_el0, x1")]
    [TestCase(0xD51BE33Fu, "msr cntv_ctl_el0, xzr")]
    public void Encoding_MatchesGnuAs(uint expected, string instruction)
    {
        uint actual = instruction switch
        {
            "ldxr x3, [x1]" => A64.Ldxr(3, 1),
            "stxr w4, x3, [x1]" => A64.Stxr(4, 3, 1),
            "cbnz w4, .-8" => A64.Cbnz(4, 4, -8),
            "cbz x5, .-4" => A64.Cbz(8, 5, -4),
            "cbnz x2, .+16" => A64.Cbnz(8, 2, 16),
            "cbz w0, ." => A64.Cbz(4, 0, 0),
            "subs x2, x2, #1" => A64.SubsImmediate(2, 2, 1),
            "b.ne .-20" => A64.BCond(A64.Condition.Ne, -20),
            "b.eq .+8" => A64.BCond(A64.Condition.Eq, 8),
            "mrs x5, esr_el1" => A64.Mrs(5, A64.EsrEl1),
            "mrs x6, elr_el1" => A64.Mrs(6, A64.ElrEl1),
            "msr vbar_el1, x9" => A64.Msr(A64.VbarEl1, 9),
            "msr mair_el1, x9" => A64.Msr(A64.MairEl1, 9),
            "msr tcr_el1, x9" => A64.Msr(A64.TcrEl1, 9),
            "msr ttbr0_el1, x9" => A64.Msr(A64.Ttbr0El1, 9),
            "msr sctlr_el1, x9" => A64.Msr(A64.SctlrEl1, 9),
            "isb" => A64.Isb,
            "udf #0" => A64.Udf(),
            "udf #0x1234" => A64.Udf(0x1234),
            "ldp x3, x4, [x2]" => A64.Ldp(3, 4, 2),
            "ldp x3, x4, [x2, #-16]" => A64.Ldp(3, 4, 2, -16),
            "ldr x3, [x2], #8" => A64.LdrPostIndex(3, 2, 8),
            "ldr x3, [x2], #-8" => A64.LdrPostIndex(3, 2, -8),
            "msr daifclr, #2" => A64.DaifClr(2),
            "msr daifset, #2" => A64.DaifSet(2),
            "eret" => A64.Eret,
            "mrs x0, icc_iar1_el1" => A64.Mrs(0, A64.IccIar1El1),
            "msr icc_eoir1_el1, x0" => A64.Msr(A64.IccEoir1El1, 0),
            "msr icc_sre_el1, x1" => A64.Msr(A64.IccSreEl1, 1),
            "msr icc_pmr_el1, x1" => A64.Msr(A64.IccPmrEl1, 1),
            "msr icc_igrpen1_el1, x1" => A64.Msr(A64.IccIgrpen1El1, 1),
            "msr cntv_ctl_el0, x1" => A64.Msr(A64.CntvCtlEl0, 1),
            "msr cntv_tval_el0, x1" => A64.Msr(A64.CntvTvalEl0, 1),
            "msr cntv_ctl_el0, xzr" => A64.Msr(A64.CntvCtlEl0, A64.Xzr),
            _ => throw new ArgumentException(instruction),
        };
        Assert.That(actual, Is.EqualTo(expected), $"{instruction}: 0x{actual:X8}, GNU as says 0x{expected:X8}");
    }

    [Test]
    public void Branches_ToAnEarlierPosition_TakeTheOffsetFromTheBranch()
    {
        // loop: ldxr x3, [x1]; add x3, x3, #1; stxr w4, x3, [x1]; cbnz w4, loop; subs x2, x2, #1; b.ne loop
        var code = new A64();
        int loop = code.Position;
        code.LoadExclusive(3, 1).Add(3, 3, 1).StoreExclusive(4, 3, 1).BranchIfNonZero(4, 4, loop)
            .SubtractSettingFlags(2, 2, 1).BranchIf(A64.Condition.Ne, loop);
        Assert.That(code.ToArray(), Is.EqualTo(Words(0xC85F7C23, 0x91000463, 0xC8047C23, 0x35FFFFA4, 0xF1000442, 0x54FFFF61)),
            "GNU as for the loop above");
    }

    [Test]
    public void PadTo_FillsWithNopsUpToAVectorOffset()
    {
        var code = new A64().Undefined().PadTo(12).Undefined(1);
        Assert.That(code.ToArray(), Is.EqualTo(Words(0, A64.Nop, A64.Nop, 1)));
        Assert.That(() => code.PadTo(8), Throws.InstanceOf<ArgumentOutOfRangeException>(), "backwards");
    }

    [Test]
    public void Encoders_RefuseWhatTheirFieldsCannotHold()
    {
        Assert.That(() => A64.Cbz(8, 0, 2), Throws.InstanceOf<ArgumentOutOfRangeException>(), "not a word offset");
        Assert.That(() => A64.BCond(A64.Condition.Ne, 1 << 20), Throws.InstanceOf<ArgumentOutOfRangeException>(), "beyond ±1 MiB");
        Assert.That(() => A64.Ldp(0, 1, 2, 4), Throws.InstanceOf<ArgumentOutOfRangeException>(), "not a multiple of 8");
        Assert.That(() => A64.LdrPostIndex(0, 1, 256), Throws.InstanceOf<ArgumentOutOfRangeException>(), "beyond imm9");
        Assert.That(() => A64.Mrs(0, KvmSharp.Registers.Arm64RegisterIds.Pc), Throws.ArgumentException, "a core register id");
    }

    private static byte[] Words(params uint[] words) => words.SelectMany(BitConverter.GetBytes).ToArray();
}
