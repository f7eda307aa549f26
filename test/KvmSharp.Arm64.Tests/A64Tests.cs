using KvmSharp.Arm64.Tests.Guests;

namespace KvmSharp.Arm64.Tests;

/// <summary>
/// The test guests' encoder against GNU as: each expected word is what
/// <c>aarch64-linux-gnu-as</c> 2.40 (Debian's binutils-aarch64-linux-gnu) assembled for the
/// instruction in the test name, so a wrong field in <see cref="A64"/> fails here, not as a puzzling
/// guest exit.
/// </summary>
public class A64Tests
{
    [TestCase(0xD2A20001u, "movz x1, #0x1000, lsl #16")]
    [TestCase(0xF2B08000u, "movk x0, #0x8400, lsl #16")]
    [TestCase(0xD2800540u, "movz x0, #42")]
    [TestCase(0xF9000020u, "str x0, [x1]")]
    [TestCase(0xF9000422u, "str x2, [x1, #8]")]
    [TestCase(0xF9400022u, "ldr x2, [x1]")]
    [TestCase(0x39000423u, "strb w3, [x1, #1]")]
    [TestCase(0x79000423u, "strh w3, [x1, #2]")]
    [TestCase(0xB9000423u, "str w3, [x1, #4]")]
    [TestCase(0x39400C24u, "ldrb w4, [x1, #3]")]
    [TestCase(0x79400C24u, "ldrh w4, [x1, #6]")]
    [TestCase(0xB9400C24u, "ldr w4, [x1, #12]")]
    [TestCase(0xD4000002u, "hvc #0")]
    [TestCase(0x14000000u, "b .")]
    [TestCase(0x91002021u, "add x1, x1, #8")]
    [TestCase(0xD503207Fu, "wfi")]
    [TestCase(0xD503201Fu, "nop")]
    public void Encoding_MatchesGnuAs(uint expected, string instruction)
    {
        uint actual = instruction switch
        {
            "movz x1, #0x1000, lsl #16" => A64.MovZ(1, 0x1000, 16),
            "movk x0, #0x8400, lsl #16" => A64.MovK(0, 0x8400, 16),
            "movz x0, #42" => A64.MovZ(0, 42),
            "str x0, [x1]" => A64.Str(8, 0, 1),
            "str x2, [x1, #8]" => A64.Str(8, 2, 1, 8),
            "ldr x2, [x1]" => A64.Ldr(8, 2, 1),
            "strb w3, [x1, #1]" => A64.Str(1, 3, 1, 1),
            "strh w3, [x1, #2]" => A64.Str(2, 3, 1, 2),
            "str w3, [x1, #4]" => A64.Str(4, 3, 1, 4),
            "ldrb w4, [x1, #3]" => A64.Ldr(1, 4, 1, 3),
            "ldrh w4, [x1, #6]" => A64.Ldr(2, 4, 1, 6),
            "ldr w4, [x1, #12]" => A64.Ldr(4, 4, 1, 12),
            "hvc #0" => A64.Hvc(),
            "b ." => A64.B(0),
            "add x1, x1, #8" => A64.AddImmediate(1, 1, 8),
            "wfi" => A64.Wfi,
            "nop" => A64.Nop,
            _ => throw new ArgumentException(instruction),
        };
        Assert.That(actual, Is.EqualTo(expected), $"{instruction}: 0x{actual:X8}, GNU as says 0x{expected:X8}");
    }

    [Test]
    public void Mov_LoadsA64BitConstantWithMovzAndMovk()
    {
        var code = new A64().Mov(0, 0x8400_0008).ToArray();
        Assert.That(code, Is.EqualTo(new byte[] { 0x00, 0x01, 0x80, 0xD2, 0x00, 0x80, 0xB0, 0xF2 }),
            "movz x0, #8; movk x0, #0x8400, lsl #16");
    }
}
