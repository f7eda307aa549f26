namespace KvmSharp.Lab.Tests;

/// <summary>What runs on the host: QEMU processes and their parents, read from /proc.</summary>
internal static class LabProcesses
{
    /// <summary>Pids of QEMU system emulators whose parent is <paramref name="parent"/>.</summary>
    public static IReadOnlyList<int> QemuChildrenOf(int parent)
    {
        var found = new List<int>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid))
                continue;
            string stat;
            try
            {
                stat = File.ReadAllText(Path.Combine(dir, "stat"));
            }
            catch (IOException)
            {
                continue; // gone meanwhile
            }
            // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split at the last ')'.
            int open = stat.IndexOf('('), close = stat.LastIndexOf(')');
            if (open < 0 || close < open)
                continue;
            string comm = stat[(open + 1)..close];
            var rest = stat[(close + 2)..].Split(' ');
            if (comm.StartsWith("qemu-system", StringComparison.Ordinal) && rest.Length > 1 && int.Parse(rest[1]) == parent)
                found.Add(pid);
        }
        return found;
    }

    /// <summary>Waits until <paramref name="condition"/> holds, polling, for at most <paramref name="timeout"/>.</summary>
    public static bool WaitUntil(Func<bool> condition, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
                return false;
            Thread.Sleep(100);
        }
        return true;
    }
}
