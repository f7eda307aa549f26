using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;

namespace KvmSharp.Tests;

/// <summary>
/// The source layout of <c>src/</c> (KvmSharp and KvmSharp.Lab): no file over <see cref="MaxLines"/>
/// lines, at most one public type per file, and the <c>unsafe</c> keyword only in
/// <c>src/KvmSharp/Interop/</c>. Each failure names the offending files.
/// </summary>
public partial class SourceRulesTests
{
    private const int MaxLines = 600;
    private const string UnsafeFolder = "src/KvmSharp/Interop/";

    [Test]
    public void NoSourceFile_IsLongerThanTheLimit()
    {
        var offenders = SourceFiles()
            .Select(f => (f.Path, Lines: File.ReadAllLines(f.FullPath).Length))
            .Where(f => f.Lines > MaxLines)
            .Select(f => $"{f.Path}: {f.Lines} lines")
            .ToList();
        AssertNone(offenders, $"Source files over {MaxLines} lines (split them, e.g. into partial classes by concern)");
    }

    [Test]
    public void NoSourceFile_DeclaresMoreThanOnePublicType()
    {
        var offenders = new List<string>();
        foreach (var (path, fullPath) in SourceFiles())
        {
            var lines = File.ReadAllLines(fullPath);
            // Types at namespace level start at column 0 with a file-scoped namespace, at 4 with a block-scoped one.
            string indent = lines.Any(l => BlockScopedNamespace().IsMatch(l)) ? "    " : "";
            var types = lines
                .Where(l => l.StartsWith(indent, StringComparison.Ordinal))
                .Select(l => PublicTypeDeclaration().Match(l[indent.Length..]))
                .Where(m => m.Success)
                .Select(m => m.Groups["name"].Value)
                .ToList();
            if (types.Count > 1) offenders.Add($"{path}: {string.Join(", ", types)}");
        }
        AssertNone(offenders, "Source files declaring more than one public type (give each its own file, named after it)");
    }

    [Test]
    public void UnsafeCode_IsOnlyInInterop()
    {
        var offenders = new List<string>();
        foreach (var (path, fullPath) in SourceFiles())
        {
            if (path.StartsWith(UnsafeFolder, StringComparison.Ordinal)) continue;
            var lines = File.ReadAllLines(fullPath);
            for (int i = 0; i < lines.Length; i++)
            {
                // The keyword in code, not in a comment or a string literal (case-sensitive: Unsafe.SizeOf is fine).
                string code = StringOrComment().Replace(lines[i], "");
                if (UnsafeKeyword().IsMatch(code)) offenders.Add($"{path}:{i + 1}: {lines[i].Trim()}");
            }
        }
        AssertNone(offenders, $"The unsafe keyword outside {UnsafeFolder} (move the operation behind a safe helper there)");
    }

    [Test]
    public void RegisterStrategies_CallOnlyDownwards()
    {
        // ARCHITECTURE.md §1: the strategies get the vCPU's core (VcpuCore) and never call up into
        // the public objects (identifiers in code, not in comments or strings, count).
        var offenders = new List<string>();
        foreach (var (path, fullPath) in SourceFiles().Where(f => f.Path.StartsWith(StrategyFolder, StringComparison.Ordinal)))
        {
            var lines = File.ReadAllLines(fullPath);
            for (int i = 0; i < lines.Length; i++)
            {
                string code = StringOrComment().Replace(lines[i], "");
                if (UpperLayerType().IsMatch(code)) offenders.Add($"{path}:{i + 1}: {lines[i].Trim()}");
            }
        }
        AssertNone(offenders, $"Code in {StrategyFolder} naming Vcpu or VirtualMachine (use VcpuCore, or pass the value down)");
        var strategies = typeof(Vcpu).Assembly.GetTypes().Where(t => t.Namespace == "KvmSharp.Registers" && t.IsClass).ToList();
        Assert.That(strategies.Select(t => t.Name), Does.Contain("X86RegisterSync").And.Contain("Arm64RegisterSync").And.Contain("S390xRegisterSync"));
        var upward = strategies
            .SelectMany(t => t.GetFields(System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic)
                .Where(f => f.FieldType == typeof(Vcpu) || f.FieldType == typeof(VirtualMachine))
                .Select(f => $"{t.Name}.{f.Name}"))
            .ToList();
        AssertNone(upward, "Register strategy fields holding a Vcpu or VirtualMachine");
    }

    private const string StrategyFolder = "src/KvmSharp/Registers/";

    [GeneratedRegex(@"(?:Vcpu|VirtualMachine)")]
    private static partial Regex UpperLayerType();

    /// <summary>Fails with <paramref name="rule"/> and one line per offender unless there is none.</summary>
    private static void AssertNone(List<string> offenders, string rule) =>
        Assert.That(offenders, Is.Empty, $"{rule}:{Environment.NewLine}  {string.Join(Environment.NewLine + "  ", offenders)}");

    /// <summary>Every .cs file under src/ (build output excluded), with its path relative to the repository root ('/'-separated).</summary>
    private static List<(string Path, string FullPath)> SourceFiles()
    {
        string root = RepositoryRoot();
        string src = Path.Combine(root, "src");
        var files = Directory.EnumerateFiles(src, "*.cs", SearchOption.AllDirectories)
            .Select(f => (Path: Path.GetRelativePath(root, f).Replace('\\', '/'), FullPath: f))
            .Where(f => !f.Path.Split('/').Any(part => part is "obj" or "bin"))
            .OrderBy(f => f.Path, StringComparer.Ordinal)
            .ToList();
        Assert.That(files, Is.Not.Empty, $"No source files found under {src}.");
        return files;
    }

    /// <summary>The repository root: two folders above this test's source file (test/KvmSharp.Tests/).</summary>
    private static string RepositoryRoot([CallerFilePath] string thisFile = "")
    {
        string root = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(thisFile)!, "..", ".."));
        if (!Directory.Exists(Path.Combine(root, "src")))
            Assert.Fail($"No src/ folder in {root}, the repository root derived from this test's source path {thisFile}.");
        return root;
    }

    [GeneratedRegex(@"^(?:\[[^\]]*\]\s*)*public\s+(?:(?:sealed|static|readonly|abstract|partial|ref|unsafe|new|file)\s+)*(?:class|struct|enum|interface|record(?:\s+(?:class|struct))?|delegate\s+[\w<>\[\],.?\s]+?)\s+(?<name>\w+)")]
    private static partial Regex PublicTypeDeclaration();

    [GeneratedRegex(@"^\s*namespace\s+[\w.]+\s*(?:\{\s*)?$")]
    private static partial Regex BlockScopedNamespace();

    [GeneratedRegex(@"""(?:\\.|[^""\\])*""|'(?:\\.|[^'\\])+'|//.*")]
    private static partial Regex StringOrComment();

    [GeneratedRegex(@"\bunsafe\b")]
    private static partial Regex UnsafeKeyword();
}
