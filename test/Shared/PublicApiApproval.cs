using System.Reflection;
using System.Runtime.CompilerServices;
using System.Text;
using NUnit.Framework;
using PublicApiGenerator;

namespace KvmSharp.Testing;

/// <summary>
/// Approval check of a shipped assembly's public API: the API as PublicApiGenerator prints it must
/// equal <c>PublicApi/&lt;assembly&gt;.approved.txt</c> beside the calling test's source file, so that
/// every change to the public surface is deliberate. On a mismatch it writes
/// <c>&lt;assembly&gt;.received.txt</c> next to it (git ignores those) and fails with the first
/// differing lines; with <see cref="AcceptVariable"/>=1 it overwrites the approved file instead and
/// fails once, saying so.
/// </summary>
/// <remarks>
/// The folder comes from the caller's source path, which is absolute: it holds wherever the test
/// application runs, including a KvmSharp.Lab machine, which shares the host's files at the same paths.
/// </remarks>
internal static class PublicApiApproval
{
    /// <summary>Set to 1 to accept the received API as the new approved one.</summary>
    public const string AcceptVariable = "KVMSHARP_ACCEPT_API";

    /// <summary>How many diff lines a failure message shows at most.</summary>
    private const int MaxDiffLines = 40;

    /// <summary>
    /// Records print as records (a record turned class is an API change). Assembly attributes that
    /// say nothing about the surface (friend assemblies, the target framework) are left out; the
    /// rest (e.g. IsAotCompatible, IsTrimmable) are promises to users and stay.
    /// </summary>
    private static readonly ApiGeneratorOptions Options = new()
    {
        TreatRecordsAsClasses = false,
        ExcludeAttributes =
        [
            "System.Runtime.CompilerServices.InternalsVisibleToAttribute",
            "System.Runtime.Versioning.TargetFrameworkAttribute",
        ],
    };

    /// <summary>Fails unless the public API of <paramref name="assembly"/> is the approved one.</summary>
    public static void Verify(Assembly assembly, [CallerFilePath] string callerFilePath = "")
    {
        string name = assembly.GetName().Name!;
        string directory = Path.Combine(Path.GetDirectoryName(callerFilePath)!, "PublicApi");
        if (!Directory.Exists(directory))
            Assert.Fail($"The approved API's folder {directory} does not exist (derived from the test's source path {callerFilePath}).");
        string approvedPath = Path.Combine(directory, name + ".approved.txt");
        string receivedPath = Path.Combine(directory, name + ".received.txt");

        string received = Normalise(assembly.GeneratePublicApi(Options));
        string? approved = File.Exists(approvedPath) ? Normalise(File.ReadAllText(approvedPath)) : null;
        if (received == approved)
        {
            File.Delete(receivedPath);
            return;
        }

        string diff = Diff(approved ?? "", received);
        if (Environment.GetEnvironmentVariable(AcceptVariable) == "1")
        {
            File.WriteAllText(approvedPath, received);
            File.Delete(receivedPath);
            Assert.Fail($"""
                {AcceptVariable}=1: the public API of {name} {(approved is null ? "had no approved file" : "changed")}; {approvedPath} now holds it.
                Review it (git diff), commit it with the change, and run again without {AcceptVariable}.
                {diff}
                """);
        }

        File.WriteAllText(receivedPath, received);
        Assert.Fail($"""
            The public API of {name} differs from {(approved is null ? "its approved file, which is missing" : "the approved one")}:
              approved: {approvedPath}
              received: {receivedPath}
            {diff}
            If the change is deliberate, accept it: cp {receivedPath} {approvedPath}
            (or run the test with {AcceptVariable}=1) and commit the approved file with the change.
            """);
    }

    /// <summary>LF line endings, no trailing blanks, one final newline: the same text on every platform.</summary>
    private static string Normalise(string api) =>
        string.Join('\n', api.ReplaceLineEndings("\n").Split('\n').Select(l => l.TrimEnd())).TrimEnd('\n') + "\n";

    /// <summary>
    /// A short unified-style diff of <paramref name="approved"/> and <paramref name="received"/>:
    /// '-' lines only in the approved API, '+' lines only in the received one, ' ' context, at most
    /// <see cref="MaxDiffLines"/> lines.
    /// </summary>
    internal static string Diff(string approved, string received)
    {
        string[] a = approved.Length == 0 ? [] : approved.TrimEnd('\n').Split('\n');
        string[] b = received.Length == 0 ? [] : received.TrimEnd('\n').Split('\n');
        int prefix = 0;
        while (prefix < a.Length && prefix < b.Length && a[prefix] == b[prefix]) prefix++;
        int suffix = 0;
        while (suffix < a.Length - prefix && suffix < b.Length - prefix && a[^(suffix + 1)] == b[^(suffix + 1)]) suffix++;

        // Longest common subsequence of the differing middle: the API files are a few thousand lines
        // and a change touches a few, so the table stays small.
        int n = a.Length - prefix - suffix, m = b.Length - prefix - suffix;
        var lcs = new int[n + 1, m + 1];
        for (int i = n - 1; i >= 0; i--)
            for (int j = m - 1; j >= 0; j--)
                lcs[i, j] = a[prefix + i] == b[prefix + j] ? lcs[i + 1, j + 1] + 1 : Math.Max(lcs[i + 1, j], lcs[i, j + 1]);

        var lines = new List<string>();
        var same = new List<string>();
        void Same(string line) => same.Add(" " + line);
        void Flush(bool last)
        {
            // Three lines of context on each side of a change; a longer run between two changes is elided.
            if (lines.Count == 0) lines.AddRange(same.TakeLast(3));
            else if (last) lines.AddRange(same.Take(3));
            else if (same.Count <= 6) lines.AddRange(same);
            else lines.AddRange([.. same.Take(3), $"@@ {same.Count - 6} unchanged lines @@", .. same.TakeLast(3)]);
            same.Clear();
        }

        for (int k = 0; k < prefix; k++) Same(a[k]);
        int x = 0, y = 0;
        while (x < n || y < m)
        {
            if (x < n && y < m && a[prefix + x] == b[prefix + y]) { Same(a[prefix + x]); x++; y++; continue; }
            if (same.Count > 0 || lines.Count == 0) Flush(last: false);
            if (x < n && (y == m || lcs[x + 1, y] >= lcs[x, y + 1])) lines.Add("-" + a[prefix + x++]);
            else lines.Add("+" + b[prefix + y++]);
        }
        for (int k = a.Length - suffix; k < a.Length; k++) Same(a[k]);
        Flush(last: true);

        int first = Math.Max(prefix - 3, 0) + 1;
        var text = new StringBuilder($"@@ -{first} +{first} @@ (-: only in approved, +: only in received)\n");
        foreach (string line in lines.Take(MaxDiffLines)) text.Append(line).Append('\n');
        if (lines.Count > MaxDiffLines) text.Append($"… and {lines.Count - MaxDiffLines} more lines\n");
        return text.ToString().TrimEnd('\n');
    }
}
