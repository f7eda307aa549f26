using System.Diagnostics;
using KvmSharp.Lab.Boot;
using KvmSharp.Lab.Provisioning;

namespace KvmSharp.Lab.Running;

/// <summary>
/// Runs one command in a fresh lab machine: provisions, writes the run folder (the command's
/// script, the initramfs, a tmpfs mount point), boots QEMU, feeds the command's input
/// (<see cref="InputRelay"/>), streams the command's output as the machine writes it, and returns
/// the exit code the machine's init recorded. QEMU never outlives the call, and the run folder is
/// removed.
/// </summary>
internal static class LabMachine
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(50);

    public static async Task<LabResult> RunAsync(IReadOnlyList<string> command, LabOptions options, LabArchitecture arch,
        IReadOnlyList<int> forwardedArguments, bool carryInput, CancellationToken cancellationToken)
    {
        var assets = new Provisioner(options, arch).Ensure();
        string runDirectory = CreateRunDirectory();
        // Each forwarded argument names a host socket; inside, it names the relay's socket in the run's tmpfs.
        var forwards = forwardedArguments
            .Select((index, i) => new SocketForward(command[index], $"kvmsharp.forward{i}", Path.Combine(runDirectory, "tmp", $"forward{i}.sock")))
            .ToArray();
        if (forwards.Length > 0)
        {
            var rewritten = command.ToArray();
            for (int i = 0; i < forwards.Length; i++)
                rewritten[forwardedArguments[i]] = forwards[i].GuestPath;
            command = rewritten;
        }
        QemuProcess? qemu = null;
        InputRelay? input = null;
        try
        {
            Directory.CreateDirectory(Path.Combine(runDirectory, "tmp"));
            File.CreateSymbolicLink(Path.Combine(runDirectory, "busybox"), assets.Busybox);
            input = carryInput ? InputRelay.Create(options, runDirectory) : null;
            File.WriteAllText(Path.Combine(runDirectory, "run.sh"), RunScript.Build(command, options, arch, runDirectory, assets, forwards, input is not null));
            string initrd = Path.Combine(runDirectory, "initrd.cpio");
            Initramfs.Write(initrd, assets);

            var clock = Stopwatch.StartNew();
            qemu = QemuProcess.Start(assets.Qemu, QemuCommand.Arguments(arch, options, assets, initrd, runDirectory, forwards, input?.SocketPath), options.SearchPath);

            // Boot: until the init says it is ready, QEMU ends, the boot timeout or cancellation.
            var bootDeadline = Task.Delay(options.BootTimeout, CancellationToken.None);
            var cancelled = Task.Delay(Timeout.Infinite, cancellationToken);
            var first = await Task.WhenAny(qemu.Ready, qemu.Exited, bootDeadline, cancelled).ConfigureAwait(false);
            if (first == cancelled)
            {
                qemu.Kill();
                cancellationToken.ThrowIfCancellationRequested();
            }
            if (first == bootDeadline)
            {
                qemu.Kill();
                throw new LabTimeoutException(
                    $"The {arch.Name()} lab machine did not become ready within {options.BootTimeout.TotalSeconds:0} s; QEMU was killed.{ConsoleReport(qemu)}",
                    duringBoot: true, options.BootTimeout) { ConsoleTail = qemu.ConsoleTail() };
            }
            if (!qemu.Ready.IsCompleted)
            {
                await qemu.Exited.ConfigureAwait(false);
                throw Failure(qemu, $"The {arch.Name()} lab machine stopped before it was ready");
            }
            var bootTime = clock.Elapsed;
            var location = new LabLocation(true, arch, qemu.Ready.Result);
            options.LogWriter.WriteLine(location.ToString());
            options.LogWriter.Flush();

            // Run: stream the output files until QEMU ends, the command's timeout or cancellation.
            var runClock = Stopwatch.StartNew();
            using var stdout = new FileTail(Path.Combine(runDirectory, "stdout"), options.StandardOutput ?? Console.OpenStandardOutput());
            using var stderr = new FileTail(Path.Combine(runDirectory, "stderr"), options.StandardError ?? Console.OpenStandardError());
            while (!qemu.Exited.IsCompleted)
            {
                stdout.Pump();
                stderr.Pump();
                if (cancellationToken.IsCancellationRequested)
                {
                    qemu.Kill();
                    cancellationToken.ThrowIfCancellationRequested();
                }
                if (options.CommandTimeout is { } limit && runClock.Elapsed > limit)
                {
                    qemu.Kill();
                    stdout.Pump();
                    stderr.Pump();
                    throw new LabTimeoutException(
                        $"The command did not end within {limit.TotalSeconds:0} s in the {arch.Name()} lab machine; QEMU was killed: {string.Join(' ', command)}",
                        duringBoot: false, limit) { ConsoleTail = qemu.ConsoleTail() };
                }
                await Task.WhenAny(qemu.Exited, Task.Delay(PollInterval, CancellationToken.None)).ConfigureAwait(false);
            }
            stdout.Pump();
            stderr.Pump();
            var runTime = runClock.Elapsed;

            string exitFile = Path.Combine(runDirectory, "exit");
            if (!File.Exists(exitFile) || !int.TryParse(File.ReadAllText(exitFile).Trim(), out int exitCode))
                throw Failure(qemu, "The lab machine stopped without recording the command's exit code");
            return new LabResult(exitCode, location, bootTime, runTime);
        }
        finally
        {
            qemu?.Dispose();
            input?.Dispose();
            try
            {
                Directory.Delete(runDirectory, recursive: true);
            }
            catch (IOException)
            {
                // Best effort: a leftover folder in the temporary directory harms nothing.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
    }

    private static LabException Failure(QemuProcess qemu, string what)
    {
        string reason = qemu.InitError is { } error ? $": {error}" : $" (QEMU exit code {qemu.ExitCode})";
        return new LabException($"{what}{reason}.{ConsoleReport(qemu)}") { ConsoleTail = qemu.ConsoleTail() };
    }

    private static string ConsoleReport(QemuProcess qemu)
    {
        string tail = qemu.ConsoleTail();
        return tail.Length == 0 ? " The console printed nothing." : "\nLast console lines:\n" + tail;
    }

    /// <summary>A new private folder for one run, in the host's temporary folder (which the machine sees at the same path).</summary>
    private static string CreateRunDirectory()
    {
        string path = Directory.CreateTempSubdirectory("kvmsharp-lab-").FullName;
        if (path.Any(char.IsWhiteSpace))
        {
            Directory.Delete(path);
            throw new LabException($"The lab's run folder {path} contains white space, which the kernel command line cannot carry; set TMPDIR to a folder without.");
        }
        return path;
    }
}
