using KvmSharp.Arm64.Tests.Guests;
using static KvmSharp.Arm64.Tests.Guests.A64;

namespace KvmSharp.Arm64.Tests;

/// <summary>The register-traffic encodings (<c>A64.Registers.cs</c>) against what <c>aarch64-linux-gnu-as</c> 2.40 assembled.</summary>
public class A64RegisterEncodingTests
{
    [TestCase(0xD538D080u, "mrs x0, tpidr_el1")]
    [TestCase(0xD53B4405u, "mrs x5, fpcr")]
    [TestCase(0xD53B4426u, "mrs x6, fpsr")]
    [TestCase(0xD5384027u, "mrs x7, elr_el1")]
    [TestCase(0xD5384008u, "mrs x8, spsr_el1")]
    [TestCase(0xD5384109u, "mrs x9, sp_el0")]
    [TestCase(0xD51BD042u, "msr tpidr_el0, x2")]
    [TestCase(0xD518D083u, "msr tpidr_el1, x3")]
    [TestCase(0x3D8043E3u, "str q3, [sp, #256]")]
    [TestCase(0x3DC0FFFFu, "ldr q31, [sp, #1008]")]
    [TestCase(0x3D800420u, "str q0, [x1, #16]")]
    [TestCase(0xF9007BFEu, "str x30, [sp, #240]")]
    [TestCase(0xF94003E0u, "ldr x0, [sp]")]
    [TestCase(0x91007BBDu, "add x29, x29, #30")]
    [TestCase(0x10000009u, "adr x9, .")]
    [TestCase(0x8B010029u, "add x9, x1, x1")]
    [TestCase(0x8B010121u, "add x1, x9, x1")]
    public void Encoding_MatchesGnuAs(uint expected, string instruction)
    {
        uint actual = instruction switch
        {
            "mrs x0, tpidr_el1" => Mrs(0, TpidrEl1),
            "mrs x5, fpcr" => Mrs(5, Fpcr),
            "mrs x6, fpsr" => Mrs(6, Fpsr),
            "mrs x7, elr_el1" => Mrs(7, ElrEl1),
            "mrs x8, spsr_el1" => Mrs(8, SpsrEl1),
            "mrs x9, sp_el0" => Mrs(9, SpEl0),
            "msr tpidr_el0, x2" => Msr(TpidrEl0, 2),
            "msr tpidr_el1, x3" => Msr(TpidrEl1, 3),
            "str q3, [sp, #256]" => StrQ(3, Sp, 256),
            "ldr q31, [sp, #1008]" => LdrQ(31, Sp, 1008),
            "str q0, [x1, #16]" => StrQ(0, 1, 16),
            "str x30, [sp, #240]" => Str(8, 30, Sp, 240),
            "ldr x0, [sp]" => Ldr(8, 0, Sp),
            "add x29, x29, #30" => AddImmediate(29, 29, 30),
            "adr x9, ." => AdrSelf(9),
            "add x9, x1, x1" => AddRegister(9, 1, 1),
            "add x1, x9, x1" => AddRegister(1, 9, 1),
            _ => throw new ArgumentException(instruction),
        };
        Assert.That(actual, Is.EqualTo(expected), $"{instruction}: 0x{actual:X8}, GNU as says 0x{expected:X8}");
    }
}
