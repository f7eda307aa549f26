using KvmSharp.Lab;
using KvmSharp.Testing;

namespace KvmSharp.Arm64.Tests;

internal static class Program
{
    public static Task<int> Main(string[] args) =>
        LabTestApplication.RunAsync(args, (builder, a) => builder.AddSelfRegisteredExtensions(a),
            new LabOptions { Architecture = LabArchitecture.Arm64 });
}
