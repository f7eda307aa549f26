using KvmSharp.Registers;

namespace KvmSharp.Arm64.Tests.Guests;

// Control flow, exclusives, system registers and the odd instructions the execution tests need.
// Branch targets are byte positions in the code (a label is an earlier Position); the encoders take
// the offset from the branch itself. A64ControlEncodingTests checks each against GNU as.
internal sealed partial class A64
{
    /// <summary>Condition codes of B.cond (C1.2.4).</summary>
    public enum Condition : uint
    {
        Eq = 0,
        Ne = 1,
    }

    // System registers by their KVM ONE_REG id: the id's low 16 bits are op0:op1:CRn:CRm:op2, the
    // very field MRS and MSR carry at bits 20:5, so host and guest name a register the same way.
    public static readonly ulong SctlrEl1 = Arm64RegisterIds.SystemRegister(3, 0, 1, 0, 0);
    public static readonly ulong Ttbr0El1 = Arm64RegisterIds.SystemRegister(3, 0, 2, 0, 0);
    public static readonly ulong TcrEl1 = Arm64RegisterIds.SystemRegister(3, 0, 2, 0, 2);
    public static readonly ulong ElrEl1 = Arm64RegisterIds.SystemRegister(3, 0, 4, 0, 1); // a core register for KVM; here only its encoding
    public static readonly ulong EsrEl1 = Arm64RegisterIds.SystemRegister(3, 0, 5, 2, 0);
    public static readonly ulong MairEl1 = Arm64RegisterIds.SystemRegister(3, 0, 10, 2, 0);
    public static readonly ulong VbarEl1 = Arm64RegisterIds.SystemRegister(3, 0, 12, 0, 0);
    public static readonly ulong CpacrEl1 = Arm64RegisterIds.SystemRegister(3, 0, 1, 0, 2);
    public static readonly ulong SpsrEl1 = Arm64RegisterIds.SystemRegister(3, 0, 4, 0, 0); // a core register for KVM; here only its encoding
    public static readonly ulong SpEl0 = Arm64RegisterIds.SystemRegister(3, 0, 4, 1, 0);   // likewise
    public static readonly ulong Fpcr = Arm64RegisterIds.SystemRegister(3, 3, 4, 4, 0); // likewise
    public static readonly ulong Fpsr = Arm64RegisterIds.SystemRegister(3, 3, 4, 4, 1); // likewise
    public static readonly ulong TpidrEl0 = Arm64RegisterIds.SystemRegister(3, 3, 13, 0, 2);
    public static readonly ulong TpidrEl1 = Arm64RegisterIds.SystemRegister(3, 0, 13, 0, 4);

    /// <summary>ISB: instruction synchronization barrier.</summary>
    public const uint Isb = 0xD5033FDF;

    /// <summary>LDXR Xt, [Xn]: load exclusive, 64 bits.</summary>
    public static uint Ldxr(int xt, int xn) => 0xC85F7C00u | Reg(xn) << 5 | Reg(xt);

    /// <summary>STXR Ws, Xt, [Xn]: store exclusive, 64 bits; Ws gets 0 on success, 1 on failure.</summary>
    public static uint Stxr(int ws, int xt, int xn) => 0xC8007C00u | Reg(ws) << 16 | Reg(xn) << 5 | Reg(xt);

    /// <summary>CBZ Wt/Xt (<paramref name="size"/> 4 or 8) to a byte offset from this instruction.</summary>
    public static uint Cbz(int size, int rt, int byteOffset) => CompareAndBranch(size, nonZero: false, rt, byteOffset);

    /// <summary>CBNZ Wt/Xt (<paramref name="size"/> 4 or 8) to a byte offset from this instruction.</summary>
    public static uint Cbnz(int size, int rt, int byteOffset) => CompareAndBranch(size, nonZero: true, rt, byteOffset);

    /// <summary>B.cond to a byte offset from this instruction.</summary>
    public static uint BCond(Condition condition, int byteOffset) => 0x54000000u | Imm19(byteOffset) << 5 | (uint)condition;

    /// <summary>SUBS Xd, Xn, #imm12 (sets the flags).</summary>
    public static uint SubsImmediate(int xd, int xn, int imm12) => 0xF1000000u | Imm12(imm12) << 10 | Reg(xn) << 5 | Reg(xd);

    /// <summary>MRS Xt, &lt;register&gt;, the register named by its ONE_REG id (<see cref="Arm64RegisterIds.SystemRegister"/>).</summary>
    public static uint Mrs(int xt, ulong systemRegisterId) => 0xD5200000u | SysRegField(systemRegisterId) | Reg(xt);

    /// <summary>MSR &lt;register&gt;, Xt, the register named by its ONE_REG id.</summary>
    public static uint Msr(ulong systemRegisterId, int xt) => 0xD5000000u | SysRegField(systemRegisterId) | Reg(xt);

    /// <summary>UDF #imm16: permanently undefined.</summary>
    public static uint Udf(ushort imm16 = 0) => imm16;

    /// <summary>LDP Xt1, Xt2, [Xn, #offset] (signed offset, a multiple of 8 in -512..504).</summary>
    public static uint Ldp(int xt1, int xt2, int xn, int offset = 0)
    {
        if (offset % 8 != 0 || offset is < -512 or > 504)
            throw new ArgumentOutOfRangeException(nameof(offset), offset, "A multiple of 8 in -512..504.");
        return 0xA9400000u | ((uint)(offset / 8) & 0x7F) << 15 | Reg(xt2) << 10 | Reg(xn) << 5 | Reg(xt1);
    }

    /// <summary>LDR Xt, [Xn], #imm9: load, then add <paramref name="offset"/> (-256..255) to Xn.</summary>
    public static uint LdrPostIndex(int xt, int xn, int offset)
    {
        if (offset is < -256 or > 255)
            throw new ArgumentOutOfRangeException(nameof(offset), offset, "-256..255.");
        return 0xF8400400u | ((uint)offset & 0x1FF) << 12 | Reg(xn) << 5 | Reg(xt);
    }

    public A64 LoadExclusive(int xt, int xn) => Emit(Ldxr(xt, xn));

    public A64 StoreExclusive(int ws, int xt, int xn) => Emit(Stxr(ws, xt, xn));

    /// <summary>CBZ to <paramref name="target"/>, a byte position in this code.</summary>
    public A64 BranchIfZero(int size, int rt, int target) => Emit(Cbz(size, rt, target - Position));

    /// <summary>CBNZ to <paramref name="target"/>, a byte position in this code.</summary>
    public A64 BranchIfNonZero(int size, int rt, int target) => Emit(Cbnz(size, rt, target - Position));

    /// <summary>B.cond to <paramref name="target"/>, a byte position in this code.</summary>
    public A64 BranchIf(Condition condition, int target) => Emit(BCond(condition, target - Position));

    public A64 SubtractSettingFlags(int xd, int xn, int imm12) => Emit(SubsImmediate(xd, xn, imm12));

    public A64 ReadSystemRegister(int xt, ulong systemRegisterId) => Emit(Mrs(xt, systemRegisterId));

    public A64 WriteSystemRegister(ulong systemRegisterId, int xt) => Emit(Msr(systemRegisterId, xt));

    public A64 InstructionBarrier() => Emit(Isb);

    public A64 Undefined(ushort imm16 = 0) => Emit(Udf(imm16));

    /// <summary>Pads with NOPs up to byte position <paramref name="position"/> (e.g. an exception vector).</summary>
    public A64 PadTo(int position)
    {
        if (position < Position || position % 4 != 0)
            throw new ArgumentOutOfRangeException(nameof(position), position, $"A word position at or after {Position}.");
        while (Position < position) Emit(Nop);
        return this;
    }

    private static uint CompareAndBranch(int size, bool nonZero, int rt, int byteOffset)
    {
        uint sf = size switch
        {
            4 => 0u,
            8 => 1u << 31,
            _ => throw new ArgumentOutOfRangeException(nameof(size), size, "4 (Wt) or 8 (Xt)."),
        };
        return sf | 0x34000000u | (nonZero ? 1u << 24 : 0u) | Imm19(byteOffset) << 5 | Reg(rt);
    }

    private static uint Imm19(int byteOffset) =>
        byteOffset % 4 == 0 && byteOffset >= -(1 << 20) && byteOffset < 1 << 20
            ? (uint)(byteOffset >> 2) & 0x7FFFF
            : throw new ArgumentOutOfRangeException(nameof(byteOffset), byteOffset, "A word offset within ±1 MiB.");

    private static uint Imm12(int imm12) =>
        imm12 is >= 0 and <= 0xFFF ? (uint)imm12 : throw new ArgumentOutOfRangeException(nameof(imm12), imm12, "0..4095.");

    private static uint SysRegField(ulong id) =>
        Arm64RegisterIds.GroupOf(id) == Arm64RegisterIds.SystemRegisterGroup && (id & 0xC000) == 0xC000
            ? (uint)(id & 0xFFFF) << 5
            : throw new ArgumentException($"Not an op0=3 system register id: 0x{id:X16}.", nameof(id));
}
