using KvmSharp.Testing;

namespace KvmSharp.Tests;

internal static class Program
{
    public static Task<int> Main(string[] args) =>
        LabTestApplication.RunAsync(args, (builder, a) => builder.AddSelfRegisteredExtensions(a));
}
