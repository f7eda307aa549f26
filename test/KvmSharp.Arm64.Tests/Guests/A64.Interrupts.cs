using KvmSharp.Registers;

namespace KvmSharp.Arm64.Tests.Guests;

// What an interrupt-taking guest needs: the GICv3 CPU interface and virtual timer registers (by
// ONE_REG id, as in A64.Control.cs), masking IRQs in PSTATE.DAIF, and ERET. A64ControlEncodingTests
// checks each against GNU as.
internal sealed partial class A64
{
    public static readonly ulong IccPmrEl1 = Arm64RegisterIds.SystemRegister(3, 0, 4, 6, 0);
    public static readonly ulong IccIar1El1 = Arm64RegisterIds.SystemRegister(3, 0, 12, 12, 0);
    public static readonly ulong IccEoir1El1 = Arm64RegisterIds.SystemRegister(3, 0, 12, 12, 1);
    public static readonly ulong IccSreEl1 = Arm64RegisterIds.SystemRegister(3, 0, 12, 12, 5);
    public static readonly ulong IccIgrpen1El1 = Arm64RegisterIds.SystemRegister(3, 0, 12, 12, 7);
    public static readonly ulong CntvTvalEl0 = Arm64RegisterIds.SystemRegister(3, 3, 14, 3, 0);
    public static readonly ulong CntvCtlEl0 = Arm64RegisterIds.SystemRegister(3, 3, 14, 3, 1);

    /// <summary>Register number 31 as the source of MSR: XZR, zero.</summary>
    public const int Xzr = 31;

    /// <summary>ERET: return from an exception to ELR_EL1 with SPSR_EL1.</summary>
    public const uint Eret = 0xD69F03E0;

    /// <summary>MSR DAIFClr, #imm4: clears PSTATE's D, A, I, F mask bits set in <paramref name="mask"/> (bit 1 = I, IRQs).</summary>
    public static uint DaifClr(int mask) => 0xD50340FFu | Imm4(mask) << 8;

    /// <summary>MSR DAIFSet, #imm4: sets PSTATE's D, A, I, F mask bits set in <paramref name="mask"/>.</summary>
    public static uint DaifSet(int mask) => 0xD50340DFu | Imm4(mask) << 8;

    /// <summary>Unmasks IRQs (PSTATE.I = 0): DAIFClr #2.</summary>
    public A64 UnmaskIrqs() => Emit(DaifClr(2));

    public A64 ExceptionReturn() => Emit(Eret);

    private static uint Imm4(int mask) => mask is >= 0 and <= 15 ? (uint)mask : throw new ArgumentOutOfRangeException(nameof(mask), mask, "0..15.");
}
