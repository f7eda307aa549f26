using System.Runtime.InteropServices;

namespace KvmSharp.Lab;

/// <summary>Helpers for <see cref="LabArchitecture"/>.</summary>
public static class LabArchitectures
{
    /// <summary>The architecture of this process, or null when the lab has no machine for it.</summary>
    public static LabArchitecture? Host => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => LabArchitecture.X86_64,
        Architecture.Arm64 => LabArchitecture.Arm64,
        _ => null,
    };

    /// <summary>The name the lab and the kernel use: <c>x86_64</c> or <c>arm64</c>.</summary>
    public static string Name(this LabArchitecture architecture) => architecture switch
    {
        LabArchitecture.X86_64 => "x86_64",
        LabArchitecture.Arm64 => "arm64",
        _ => throw new ArgumentOutOfRangeException(nameof(architecture), architecture, "Unknown lab architecture."),
    };

    /// <summary>Parses <c>x86_64</c>/<c>amd64</c>/<c>x64</c> or <c>arm64</c>/<c>aarch64</c>.</summary>
    /// <exception cref="ArgumentException">Any other name.</exception>
    public static LabArchitecture Parse(string name) => name.ToLowerInvariant() switch
    {
        "x86_64" or "amd64" or "x64" => LabArchitecture.X86_64,
        "arm64" or "aarch64" => LabArchitecture.Arm64,
        _ => throw new ArgumentException($"Unknown lab architecture '{name}': use x86_64 or arm64.", nameof(name)),
    };
}
