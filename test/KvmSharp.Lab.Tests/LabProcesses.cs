using System.Runtime.InteropServices;

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

    /// <summary>Whether <paramref name="pid"/> exists and is not a zombie.</summary>
    public static bool IsRunning(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[stat.LastIndexOf(')') + 2] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Makes this process adopt its orphaned descendants (PR_SET_CHILD_SUBREAPER), or stop adopting.</summary>
    public static bool SetChildSubreaper(bool on) => prctl(PrSetChildSubreaper, on ? 1u : 0u, 0, 0, 0) == 0;

    /// <summary>
    /// Reaps <paramref name="pid"/> once it has ended and is this process's child (adopted as subreaper);
    /// no-op when it still runs or is gone. An orphan that died while its dying parent still held it is
    /// a zombie that becomes this process's child only a moment later (waitpid: ECHILD until then), so
    /// this retries for up to 10 s while the zombie exists.
    /// </summary>
    public static void Reap(int pid)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!IsRunning(pid))
        {
            int r = waitpid(pid, out _, WNoHang);
            if (r == pid || !File.Exists($"/proc/{pid}/stat") || DateTime.UtcNow > deadline)
                return;
            if (r < 0 && Marshal.GetLastPInvokeError() == EIntr)
                continue;
            Thread.Sleep(10);
        }
    }

    private const int PrSetChildSubreaper = 36, WNoHang = 1, EIntr = 4;

    [DllImport("libc", SetLastError = true)]
    private static extern int prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    [DllImport("libc", SetLastError = true)]
    private static extern int waitpid(int pid, out int status, int options);

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
