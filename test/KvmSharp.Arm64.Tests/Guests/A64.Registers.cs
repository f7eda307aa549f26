namespace KvmSharp.Arm64.Tests.Guests;

// Register traffic for the register tests: system-register moves and 128-bit SIMD&FP loads and stores.
internal sealed partial class A64
{
    /// <summary>Register number 31 as the base of a load or store: the stack pointer of the current EL (SP_EL1 at EL1h).</summary>
    public const int Sp = 31;

    /// <summary>A system register by its encoding (op0, op1, CRn, CRm, op2), as MRS and MSR name it.</summary>
    public readonly record struct SystemRegister(int Op0, int Op1, int CRn, int CRm, int Op2)
    {
        public static readonly SystemRegister TpidrEl0 = new(3, 3, 13, 0, 2);
        public static readonly SystemRegister TpidrEl1 = new(3, 0, 13, 0, 4);
        public static readonly SystemRegister Fpcr = new(3, 3, 4, 4, 0);
        public static readonly SystemRegister Fpsr = new(3, 3, 4, 4, 1);
        public static readonly SystemRegister ElrEl1 = new(3, 0, 4, 0, 1);
        public static readonly SystemRegister SpsrEl1 = new(3, 0, 4, 0, 0);
        public static readonly SystemRegister SpEl0 = new(3, 0, 4, 1, 0);

        /// <summary>The o0:op1:CRn:CRm:op2 field of MRS/MSR (bits 19–5); op0 is 2 or 3.</summary>
        internal uint Field => Op0 is 2 or 3 && Op1 is >= 0 and <= 7 && CRn is >= 0 and <= 15 && CRm is >= 0 and <= 15 && Op2 is >= 0 and <= 7
            ? (uint)(Op0 - 2) << 19 | (uint)Op1 << 16 | (uint)CRn << 12 | (uint)CRm << 8 | (uint)Op2 << 5
            : throw new ArgumentOutOfRangeException(nameof(Op0), this, "op0 2–3, op1 0–7, CRn 0–15, CRm 0–15, op2 0–7.");
    }

    /// <summary>MRS Xt, sysreg: reads a system register.</summary>
    public static uint MrsWord(int xt, SystemRegister register) => 0xD5300000u | register.Field | Reg(xt);

    /// <summary>MSR sysreg, Xt: writes a system register.</summary>
    public static uint MsrWord(SystemRegister register, int xt) => 0xD5100000u | register.Field | Reg(xt);

    /// <summary>STR Qt, [Xn|SP, #offset]: stores a 128-bit SIMD&amp;FP register (offset a multiple of 16).</summary>
    public static uint StrQ(int qt, int xn, int offset = 0) => 0x3D800000u | QOffset(offset) | Reg(xn) << 5 | Reg(qt);

    /// <summary>LDR Qt, [Xn|SP, #offset]: loads a 128-bit SIMD&amp;FP register.</summary>
    public static uint LdrQ(int qt, int xn, int offset = 0) => 0x3DC00000u | QOffset(offset) | Reg(xn) << 5 | Reg(qt);

    /// <summary>ADR Xd, . : the address of this instruction (its PC).</summary>
    public static uint AdrSelf(int xd) => 0x10000000u | Reg(xd);

    /// <summary>ADD Xd, Xn, Xm.</summary>
    public static uint AddRegister(int xd, int xn, int xm) => 0x8B000000u | Reg(xm) << 16 | Reg(xn) << 5 | Reg(xd);

    public A64 Adr(int xd) => Emit(AdrSelf(xd));

    public A64 Add(int xd, int xn, Register xm) => Emit(AddRegister(xd, xn, xm.Number));

    /// <summary>A register operand (to tell ADD's register form from its immediate form).</summary>
    public readonly record struct Register(int Number);

    public A64 Mrs(int xt, SystemRegister register) => Emit(MrsWord(xt, register));

    public A64 Msr(SystemRegister register, int xt) => Emit(MsrWord(register, xt));

    public A64 StoreQ(int qt, int xn, int offset = 0) => Emit(StrQ(qt, xn, offset));

    public A64 LoadQ(int qt, int xn, int offset = 0) => Emit(LdrQ(qt, xn, offset));

    private static uint QOffset(int offset) => offset >= 0 && offset % 16 == 0 && offset / 16 <= 0xFFF
        ? (uint)(offset / 16) << 10
        : throw new ArgumentOutOfRangeException(nameof(offset), offset, "An unsigned offset, a multiple of 16.");
}
