namespace KvmSharp.Arm64.Tests.Guests;

// Register traffic for the register tests: 128-bit SIMD&FP loads and stores, ADR and register ADD.
// (System-register moves are A64.Control.cs's MRS/MSR by ONE_REG id.)
internal sealed partial class A64
{
    /// <summary>Register number 31 as the base of a load or store: the stack pointer of the current EL (SP_EL1 at EL1h).</summary>
    public const int Sp = 31;

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

    public A64 StoreQ(int qt, int xn, int offset = 0) => Emit(StrQ(qt, xn, offset));

    public A64 LoadQ(int qt, int xn, int offset = 0) => Emit(LdrQ(qt, xn, offset));

    private static uint QOffset(int offset) => offset >= 0 && offset % 16 == 0 && offset / 16 <= 0xFFF
        ? (uint)(offset / 16) << 10
        : throw new ArgumentOutOfRangeException(nameof(offset), offset, "An unsigned offset, a multiple of 16.");
}
