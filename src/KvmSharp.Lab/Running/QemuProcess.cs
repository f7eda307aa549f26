using System.Diagnostics;
using System.Text;
using KvmSharp.Lab.Provisioning;

namespace KvmSharp.Lab.Running;

/// <summary>
/// One QEMU process and its console. QEMU is started through <c>setpriv --pdeathsig KILL</c> from a
/// thread that lives until QEMU exits (Linux delivers the parent-death signal when the *thread* that
/// forked the child ends), so the kernel kills QEMU if this process dies however it dies; timeouts,
/// cancellation and disposal kill it explicitly. The console (QEMU's standard output) and QEMU's own
/// messages are kept as a tail of lines for error reports; the init's "ready" and "error" lines are
/// recognised as they arrive.
/// </summary>
internal sealed class QemuProcess : IDisposable
{
    public const string ReadyPrefix = "kvmsharp-lab: ready ";
    public const string ErrorPrefix = "kvmsharp-lab: error: ";
    private const int TailLines = 60;

    private readonly Process _process;
    private readonly Queue<string> _tail = new();
    private readonly TaskCompletionSource<string> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Task _readers;
    private string? _error;

    private QemuProcess(Process process)
    {
        _process = process;
        // Blocking reads for the machine's whole life: threads of their own, not the pool's.
        _readers = Task.WhenAll(
            Task.Factory.StartNew(() => ReadLines(process.StandardOutput.BaseStream, ""), CancellationToken.None,
                TaskCreationOptions.LongRunning, TaskScheduler.Default),
            Task.Factory.StartNew(() => ReadLines(process.StandardError.BaseStream, "qemu: "), CancellationToken.None,
                TaskCreationOptions.LongRunning, TaskScheduler.Default));
    }

    /// <summary>Completes with the guest kernel's release when the init says it is ready.</summary>
    public Task<string> Ready => _ready.Task;

    /// <summary>Completes when QEMU has exited and its output has been read.</summary>
    public Task Exited => _exited.Task;

    public int Id => _process.Id;

    public int ExitCode => _process.ExitCode;

    /// <summary>The init's error line, if it printed one.</summary>
    public string? InitError => _error;

    /// <summary>The last lines of the console and of QEMU's messages.</summary>
    public string ConsoleTail()
    {
        lock (_tail)
            return string.Join("\n", _tail);
    }

    public static QemuProcess Start(string qemu, IReadOnlyList<string> arguments, string? searchPath)
    {
        string? setpriv = Programs.Find("setpriv", searchPath);
        var psi = new ProcessStartInfo(setpriv ?? qemu)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (setpriv != null)
        {
            psi.ArgumentList.Add("--pdeathsig");
            psi.ArgumentList.Add("KILL");
            psi.ArgumentList.Add(qemu);
        }
        foreach (string a in arguments)
            psi.ArgumentList.Add(a);

        var started = new TaskCompletionSource<QemuProcess>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            var process = new Process { StartInfo = psi };
            QemuProcess machine;
            try
            {
                process.Start();
                machine = new QemuProcess(process);
            }
            catch (Exception e)
            {
                process.Dispose();
                started.SetException(new LabException($"Could not start {qemu}: {e.Message}", e));
                return;
            }
            started.SetResult(machine);
            process.WaitForExit();
            machine._readers.ContinueWith(_ => machine._exited.TrySetResult(), TaskScheduler.Default);
        })
        {
            IsBackground = true,
            Name = "kvmsharp-lab qemu",
        };
        thread.Start();
        var result = started.Task.GetAwaiter().GetResult();
        result._process.StandardInput.Close();
        return result;
    }

    /// <summary>Kills QEMU (if it still runs) and waits until it is gone.</summary>
    public void Kill()
    {
        try
        {
            if (!_process.HasExited)
                _process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
        _process.WaitForExit();
    }

    public void Dispose()
    {
        Kill();
        Exited.Wait(TimeSpan.FromSeconds(10));
        _process.Dispose();
    }

    private void ReadLines(Stream stream, string prefix)
    {
        var line = new StringBuilder();
        var buffer = new byte[4096];
        var decoder = Encoding.UTF8.GetDecoder();
        var chars = new char[Encoding.UTF8.GetMaxCharCount(buffer.Length)];
        int n;
        try
        {
            while ((n = stream.Read(buffer)) > 0)
            {
                int count = decoder.GetChars(buffer, 0, n, chars, 0);
                for (int i = 0; i < count; i++)
                {
                    char c = chars[i];
                    if (c == '\n')
                    {
                        Line(prefix + line.ToString().TrimEnd('\r'));
                        line.Clear();
                    }
                    else if (c != '\r' || line.Length > 0)
                    {
                        line.Append(c);
                    }
                }
            }
        }
        catch (IOException)
        {
            // QEMU went away.
        }
        if (line.Length > 0)
            Line(prefix + line.ToString());
    }

    private void Line(string text)
    {
        // The serial console carries terminal control sequences (SeaBIOS clears the screen).
        text = StripControl(text);
        if (text.Length == 0)
            return;
        lock (_tail)
        {
            _tail.Enqueue(text);
            while (_tail.Count > TailLines)
                _tail.Dequeue();
        }
        int ready = text.IndexOf(ReadyPrefix, StringComparison.Ordinal);
        if (ready >= 0)
            _ready.TrySetResult(text[(ready + ReadyPrefix.Length)..].Trim());
        int error = text.IndexOf(ErrorPrefix, StringComparison.Ordinal);
        if (error >= 0)
            _error ??= text[(error + ErrorPrefix.Length)..].Trim();
    }

    private static string StripControl(string text)
    {
        var clean = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '\x1b')
            {
                // Skip an escape sequence: ESC [ params final, or ESC and one character.
                if (i + 1 < text.Length && text[i + 1] == '[')
                {
                    i += 2;
                    while (i < text.Length && (text[i] < '@' || text[i] > '~'))
                        i++;
                }
                else
                {
                    i++;
                }
                continue;
            }
            if (c >= ' ' || c == '\t')
                clean.Append(c);
        }
        return clean.ToString().TrimEnd();
    }
}
