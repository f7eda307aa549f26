using System.Globalization;
using System.Text.RegularExpressions;
using KvmSharp.Interop.S390x;

namespace KvmSharp.Tests.Interop;

/// <summary>
/// s390x's <c>kvm_sync_regs.bpbc</c> is a bit-field, whose place only the big-endian target ABI
/// decides. Bit positions are no constant expressions, so the s390x cross compiler folds a read of the
/// byte at <see cref="kvm_sync_regs.BpbcByteOffset"/> with <c>-O2</c> and the test reads the constant
/// loaded into the return register from the assembly.
/// </summary>
[TestFixture]
public partial class S390xBitFieldLayoutTests
{
    [Test]
    public void Bpbc_byte_field_is_at_BpbcByteOffset()
    {
        var field = typeof(kvm_sync_regs).GetField(nameof(kvm_sync_regs.bpbc_byte))!;

        Assert.That(UapiLayoutGenerator.Offset(field), Is.EqualTo(kvm_sync_regs.BpbcByteOffset));
    }

    [Test]
    public void Bpbc_is_the_most_significant_bit_of_its_byte()
    {
        var toolchain = UapiLayoutTests.Require(UapiToolchain.S390xCross);
        var source = $$"""
            #include <linux/kvm.h>
            typedef union { struct kvm_sync_regs r; unsigned char b[sizeof(struct kvm_sync_regs)]; } kvmsharp_sync_regs_bytes;
            unsigned int kvmsharp_bpbc(void) { return ((kvmsharp_sync_regs_bytes){ .r.bpbc = 1 }).b[{{kvm_sync_regs.BpbcByteOffset}}]; }
            unsigned int kvmsharp_reserved2(void) { return ((kvmsharp_sync_regs_bytes){ .r.reserved2 = 0x7f }).b[{{kvm_sync_regs.BpbcByteOffset}}]; }
            """;

        var result = toolchain.Compile(source, "s390x-bpbc", "-O2", "-S", "-o", "-");

        Assert.That(result.ExitCode, Is.Zero, () => $"{toolchain.Compiler} failed on {result.SourcePath}:\n{result.StdErr}");
        using (Assert.EnterMultipleScope())
        {
            Assert.That(ReturnedConstant(result.StdOut, "kvmsharp_bpbc"), Is.EqualTo(kvm_sync_regs.BpbcBit), () => result.StdOut);
            // reserved2 : 7 takes the other seven bits, so bpbc is the only flag in that byte.
            Assert.That(ReturnedConstant(result.StdOut, "kvmsharp_reserved2"), Is.EqualTo(0xFF & ~kvm_sync_regs.BpbcBit), () => result.StdOut);
        }
    }

    /// <summary>The immediate that <paramref name="function"/> loads into %r2 (the s390x return register), or -1.</summary>
    private static int ReturnedConstant(string assembly, string function)
    {
        var start = assembly.IndexOf(function + ":\n", StringComparison.Ordinal);
        var match = start < 0 ? Match.Empty : LoadReturnRegister().Match(assembly, start);
        return match.Success ? int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) : -1;
    }

    [GeneratedRegex(@"\blg?hi\s+%r2,(-?\d+)")]
    private static partial Regex LoadReturnRegister();
}
