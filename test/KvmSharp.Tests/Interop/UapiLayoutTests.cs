using KvmSharp.Interop.X86;

namespace KvmSharp.Tests.Interop;

/// <summary>Compiles the generated static assertions against each architecture's uapi headers.</summary>
[TestFixture]
public class UapiLayoutTests
{
    [TestCase("x86_64")]
    [TestCase("arm64")]
    [TestCase("s390x")]
    public void Structs_and_ioctls_match_the_uapi_headers(string arch)
    {
        var toolchain = Require(UapiToolchain.ForHeaders(arch));

        var result = toolchain.Compile(UapiLayoutGenerator.Generate(arch), $"layout-{arch}", "-fsyntax-only");

        Assert.That(result.ExitCode, Is.Zero,
            () => $"{toolchain.Compiler} rejected the {arch} layout assertions in {result.SourcePath}:\n{result.StdErr}");
    }

    [Test]
    public void A_wrong_expected_offset_makes_the_compile_fail()
    {
        var toolchain = Require(UapiToolchain.ForHeaders("x86_64"));
        var checks = UapiLayoutGenerator.Checks("x86_64").ToList();
        var rip = typeof(kvm_regs).GetField(nameof(kvm_regs.rip))!;
        var index = checks.FindIndex(c => c.Source == rip && c.Actual.Contains("offsetof", StringComparison.Ordinal));
        Assert.That(index, Is.Not.Negative, "no offset check for kvm_regs.rip");
        var wrong = checks[index] with { Expected = "129" };
        checks[index] = wrong;

        var result = toolchain.Compile(UapiLayoutGenerator.Render(checks), "layout-x86_64-perturbed", "-fsyntax-only");

        Assert.That(result.ExitCode, Is.Not.Zero, "gcc accepted a wrong offset: the layout harness cannot fail");
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
