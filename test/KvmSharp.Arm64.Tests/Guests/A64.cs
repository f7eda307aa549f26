using System.Buffers.Binary;

namespace KvmSharp.Arm64.Tests.Guests;

/// <summary>
/// A few A64 instructions, encoded by the Arm Architecture Reference Manual's formats (C6.2), for
/// small test guests: an arm64 assembler cannot run inside the arm64 lab machine, and a handful of
/// fixed-width words needs none. <see cref="A64Tests"/> checks every encoding against the one
/// GNU as gives for the same instruction.
/// </summary>
internal sealed partial class A64
{
    private readonly List<uint> _words = [];

    /// <summary>The code so far, little-endian.</summary>
    public byte[] ToArray()
    {
        var bytes = new byte[_words.Count * 4];
        for (int i = 0; i < _words.Count; i++)
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(i * 4), _words[i]);
        return bytes;
    }

    /// <summary>Byte offset of the next instruction.</summary>
    public int Position => _words.Count * 4;

    internal A64 Emit(uint word)
    {
        _words.Add(word);
        return this;
    }

    /// <summary>MOVZ Xd, #imm16, LSL #shift (shift 0, 16, 32 or 48).</summary>
    public static uint MovZ(int xd, ushort imm16, int shift = 0) => 0xD2800000u | Hw(shift) | ((uint)imm16 << 5) | Reg(xd);

    /// <summary>MOVK Xd, #imm16, LSL #shift.</summary>
    public static uint MovK(int xd, ushort imm16, int shift = 0) => 0xF2800000u | Hw(shift) | ((uint)imm16 << 5) | Reg(xd);

    /// <summary>STR of <paramref name="size"/> bytes (1: STRB Wt, 2: STRH Wt, 4: STR Wt, 8: STR Xt) to [Xn, #offset].</summary>
    public static uint Str(int size, int rt, int xn, int offset = 0) => LoadStore(size, load: false, rt, xn, offset);

    /// <summary>LDR of <paramref name="size"/> bytes (zero-extended) from [Xn, #offset].</summary>
    public static uint Ldr(int size, int rt, int xn, int offset = 0) => LoadStore(size, load: true, rt, xn, offset);

    /// <summary>HVC #imm16: a hypervisor call (PSCI, when KVM handles it).</summary>
    public static uint Hvc(ushort imm16 = 0) => 0xD4000002u | ((uint)imm16 << 5);

    /// <summary>B to a byte offset relative to this instruction (0: a branch to itself).</summary>
    public static uint B(int byteOffset) => 0x14000000u | ((uint)(byteOffset >> 2) & 0x03FFFFFFu);

    /// <summary>ADD Xd, Xn, #imm12.</summary>
    public static uint AddImmediate(int xd, int xn, int imm12) => 0x91000000u | ((uint)imm12 << 10) | Reg(xn) << 5 | Reg(xd);

    /// <summary>WFI: wait for interrupt.</summary>
    public const uint Wfi = 0xD503207F;

    /// <summary>NOP.</summary>
    public const uint Nop = 0xD503201F;

    /// <summary>Loads a 64-bit constant into Xd (MOVZ + up to three MOVK).</summary>
    public A64 Mov(int xd, ulong value)
    {
        Emit(MovZ(xd, (ushort)value));
        for (int shift = 16; shift < 64; shift += 16)
            if ((ushort)(value >> shift) != 0)
                Emit(MovK(xd, (ushort)(value >> shift), shift));
        return this;
    }

    public A64 Store(int size, int rt, int xn, int offset = 0) => Emit(Str(size, rt, xn, offset));

    public A64 Load(int size, int rt, int xn, int offset = 0) => Emit(Ldr(size, rt, xn, offset));

    public A64 HypervisorCall(ushort imm16 = 0) => Emit(Hvc(imm16));

    public A64 BranchToSelf() => Emit(B(0));

    public A64 Add(int xd, int xn, int imm12) => Emit(AddImmediate(xd, xn, imm12));

    public A64 Instruction(uint word) => Emit(word);

    private static uint Hw(int shift) => shift is 0 or 16 or 32 or 48
        ? (uint)(shift / 16) << 21
        : throw new ArgumentOutOfRangeException(nameof(shift), shift, "MOVZ/MOVK shift by 0, 16, 32 or 48.");

    private static uint Reg(int r) => r is >= 0 and <= 31 ? (uint)r : throw new ArgumentOutOfRangeException(nameof(r), r, "A64 registers are 0..31.");

    private static uint LoadStore(int size, bool load, int rt, int xn, int offset)
    {
        uint sizeBits = size switch
        {
            1 => 0u,
            2 => 1u,
            4 => 2u,
            8 => 3u,
            _ => throw new ArgumentOutOfRangeException(nameof(size), size, "1, 2, 4 or 8 bytes."),
        };
        if (offset < 0 || offset % size != 0 || offset / size > 0xFFF)
            throw new ArgumentOutOfRangeException(nameof(offset), offset, "An unsigned offset, a multiple of the size.");
        // LDR/STR (immediate, unsigned offset): size:111:0:01:opc:imm12:Rn:Rt, opc 00 store, 01 load.
        return (sizeBits << 30) | 0x39000000u | (load ? 1u << 22 : 0u) | ((uint)(offset / size) << 10) | Reg(xn) << 5 | Reg(rt);
    }
}
