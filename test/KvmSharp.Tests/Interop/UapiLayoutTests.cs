using System.Globalization;
using System.Reflection;
using KvmSharp.Interop.X86;
using KvmSharp.Registers;

namespace KvmSharp.Tests.Interop;

/// <summary>Compiles the generated static assertions against each architecture's uapi headers.</summary>
[TestFixture]
public class UapiLayoutTests
{
    [TestCase("x86_64")]
    [TestCase("arm64")]
    [TestCase("s390x")]
    public void Structs_ioctls_and_register_ids_match_the_uapi_headers(string arch)
    {
        var toolchain = Require(UapiToolchain.ForHeaders(arch));

        var result = toolchain.Compile(UapiLayoutGenerator.Generate(arch), $"layout-{arch}", "-fsyntax-only");

        Assert.That(result.ExitCode, Is.Zero,
            () => $"{toolchain.Compiler} rejected the {arch} layout assertions in {result.SourcePath}:\n{result.StdErr}");
    }

    [Test]
    public void A_wrong_expected_offset_makes_the_compile_fail()
    {
        var rip = typeof(kvm_regs).GetField(nameof(kvm_regs.rip))!;

        AssertOnlyTheWrongCheckFails("x86_64", c => c.Source == rip && c.Actual.Contains("offsetof", StringComparison.Ordinal), _ => "129");
    }

    [TestCase("arm64", typeof(Arm64RegisterIds), nameof(Arm64RegisterIds.V), 31)]
    [TestCase("arm64", typeof(Arm64RegisterIds), nameof(Arm64RegisterIds.PtimerCnt), null)]
    [TestCase("s390x", typeof(S390xRegisterIds), nameof(S390xRegisterIds.Gbea), null)]
    public void A_wrong_register_id_makes_the_compile_fail(string arch, Type holder, string member, int? argument)
    {
        var source = holder.GetMember(member, BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static).Single();
        int[]? arguments = argument is int n ? [n] : null;

        // The id one bit off, as an id computed from a wrong offset or typed wrong would be.
        AssertOnlyTheWrongCheckFails(arch, c => c.Source == source && (c.Arguments ?? []).SequenceEqual(arguments ?? []),
            expected => UapiLayoutGenerator.Hex(ulong.Parse(expected[2..^3], NumberStyles.HexNumber, CultureInfo.InvariantCulture) ^ 1));
    }

    /// <summary>Compiles <paramref name="arch"/>'s checks with the one <paramref name="pick"/> finds made wrong: only it may fail, naming its member.</summary>
    private static void AssertOnlyTheWrongCheckFails(string arch, Predicate<LayoutCheck> pick, Func<string, string> wrongExpected)
    {
        var toolchain = Require(UapiToolchain.ForHeaders(arch));
        var checks = UapiLayoutGenerator.Checks(arch).ToList();
        var index = checks.FindIndex(pick);
        Assert.That(index, Is.Not.Negative, "no such check");
        var wrong = checks[index] with { Expected = wrongExpected(checks[index].Expected) };
        checks[index] = wrong;

        var result = toolchain.Compile(UapiLayoutGenerator.Render(checks), $"layout-{arch}-perturbed", "-fsyntax-only");

        Assert.That(result.ExitCode, Is.Not.Zero, $"gcc accepted {wrong.Message}: the layout harness cannot fail");
        Assert.That(result.StdErr, Does.Contain(wrong.Message));
        Assert.That(result.StdErr.Split("error:").Length - 1, Is.EqualTo(1), () => $"only the perturbed check should fail:\n{result.StdErr}");
        Directory.Delete(Path.GetDirectoryName(result.SourcePath)!, recursive: true);
    }

    internal static UapiToolchain Require(UapiToolchain toolchain)
    {
        if (toolchain.Missing() is { } missing)
            Assert.Fail(missing);
        return toolchain;
    }
}
