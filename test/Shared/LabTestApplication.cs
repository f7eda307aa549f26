using KvmSharp.Lab;
using Microsoft.Testing.Platform.Builder;
using Microsoft.Testing.Platform.Configurations;
using Microsoft.Testing.Platform.Extensions.Messages;
using Microsoft.Testing.Platform.Extensions.TestHost;
using Microsoft.Testing.Platform.Messages;
using Microsoft.Testing.Platform.Services;

namespace KvmSharp.Testing;

/// <summary>
/// The entry point of a KvmSharp test application (Microsoft.Testing.Platform with NUnit): runs
/// the tests where a real KVM is, natively where /dev/kvm works and in a KvmSharp.Lab machine
/// otherwise, so that no KVM test ever skips. Under <c>dotnet test</c> the lab carries the test
/// application's pipe into the machine, so filters, results and the summary work as natively.
/// </summary>
internal static class LabTestApplication
{
    /// <summary>Options that only list or describe tests, which need no KVM and run right here.</summary>
    private static readonly string[] NoKvmNeeded = ["--help", "-h", "-?", "--info", "--list-tests"];

    public static async Task<int> RunAsync(string[] args, Action<ITestApplicationBuilder, string[]> addFramework, LabOptions? lab = null)
    {
        if (!args.Any(a => NoKvmNeeded.Contains(a)) && KvmLab.RelaunchIfNeeded(args, lab) is int exitCode)
            return exitCode;
        var builder = await TestApplication.CreateBuilderAsync(args);
        addFramework(builder, args);
        builder.TestHost.AddTestSessionLifetimeHandler(services =>
            new WhereKvmRuns(services.GetMessageBus(), services.GetConfiguration()));
        using var app = await builder.BuildAsync();
        return await app.RunAsync();
    }

    /// <summary>
    /// Says where the tests met KVM. <c>dotnet test</c> shows a passing test application's own
    /// output only when it fails, but it lists every file artifact: so the line is also a file in the
    /// results folder, named after it (e.g. <c>KVM-lab-x86_64-Linux-6.1.0-57-amd64.txt</c>).
    /// </summary>
    private sealed class WhereKvmRuns(IMessageBus bus, IConfiguration configuration) : ITestSessionLifetimeHandler, IDataProducer
    {
        public string Uid => nameof(WhereKvmRuns);
        public string Version => "1.0";
        public string DisplayName => "Where KVM runs";
        public string Description => "Records whether the tests ran on native KVM or in a KvmSharp.Lab machine.";
        public Type[] DataTypesProduced => [typeof(SessionFileArtifact)];
        public Task<bool> IsEnabledAsync() => Task.FromResult(true);

        public async Task OnTestSessionStartingAsync(ITestSessionContext context)
        {
            // The line itself was printed by KvmLab.RelaunchIfNeeded (natively) or by the lab (relaunched).
            var where = LabLocation.Current;
            string line = where.ToString();
            string directory = configuration["platformOptions:resultDirectory"] ?? Path.Combine(AppContext.BaseDirectory, "TestResults");
            Directory.CreateDirectory(directory);
            string name = (where.IsLab ? $"KVM-lab-{where.Architecture.Name()}" : "KVM-native") + $"-Linux-{where.KernelRelease}.txt";
            string path = Path.Combine(directory, string.Concat(name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_' ? c : '_')));
            await File.WriteAllTextAsync(path, line + Environment.NewLine, context.CancellationToken);
            await bus.PublishAsync(this, new SessionFileArtifact(context.SessionUid, new FileInfo(path), line, "Where the tests met KVM"));
        }

        public Task OnTestSessionFinishingAsync(ITestSessionContext context) => Task.CompletedTask;
    }
}
