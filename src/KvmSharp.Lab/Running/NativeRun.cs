using System.Diagnostics;

namespace KvmSharp.Lab.Running;

/// <summary>Runs a command right here, on this host's own KVM: no QEMU, the output copied as it comes.</summary>
internal static class NativeRun
{
    public static async Task<LabResult> RunAsync(IReadOnlyList<string> command, LabOptions options, LabLocation location, CancellationToken cancellationToken)
    {
        var psi = new ProcessStartInfo(command[0])
        {
            // Null: the command inherits this process's standard input; else it reads the given stream.
            RedirectStandardInput = options.StandardInput is not null,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = options.WorkingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (string arg in command.Skip(1))
            psi.ArgumentList.Add(arg);
        psi.Environment.Clear();
        foreach (var (name, value) in RunScript.Environment(options))
            psi.Environment[name] = value;

        options.LogWriter.WriteLine(location.ToString());
        options.LogWriter.Flush();
        var clock = Stopwatch.StartNew();
        using var process = new Process { StartInfo = psi };
        try
        {
            process.Start();
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new LabException($"Could not start {command[0]}: {e.Message}", e);
        }
        if (options.StandardInput is { } input)
            FeedInput(input, process.StandardInput.BaseStream);
        var copies = Task.WhenAll(
            CopyAsync(process.StandardOutput.BaseStream, options.StandardOutput ?? Console.OpenStandardOutput()),
            CopyAsync(process.StandardError.BaseStream, options.StandardError ?? Console.OpenStandardError()));
        try
        {
            using var timeout = options.CommandTimeout is { } limit ? new CancellationTokenSource(limit) : new CancellationTokenSource();
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, cancellationToken);
            try
            {
                await process.WaitForExitAsync(linked.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new LabTimeoutException($"The command did not end within {options.CommandTimeout!.Value.TotalSeconds:0} s and was killed: {string.Join(' ', command)}",
                    duringBoot: false, options.CommandTimeout.Value);
            }
            await copies.ConfigureAwait(false);
            return new LabResult(process.ExitCode, location, TimeSpan.Zero, clock.Elapsed);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Copies <paramref name="input"/> to the command on a thread of its own (a read may block for ever), then closes its end.</summary>
    private static void FeedInput(Stream input, Stream stdin)
    {
        new Thread(() =>
        {
            try
            {
                input.CopyTo(stdin);
            }
            catch (IOException)
            {
                // The command closed its input or ended.
            }
            finally
            {
                try
                {
                    stdin.Dispose();
                }
                catch (IOException)
                {
                }
            }
        }) { IsBackground = true, Name = "kvmsharp-lab stdin" }.Start();
    }

    private static async Task CopyAsync(Stream from, Stream to)
    {
        var buffer = new byte[16 * 1024];
        int n;
        while ((n = await from.ReadAsync(buffer).ConfigureAwait(false)) > 0)
        {
            await to.WriteAsync(buffer.AsMemory(0, n)).ConfigureAwait(false);
            await to.FlushAsync().ConfigureAwait(false);
        }
    }
}
