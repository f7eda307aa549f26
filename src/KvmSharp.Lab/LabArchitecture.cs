using System.Runtime.InteropServices;

namespace KvmSharp.Lab;

/// <summary>The CPU architecture of a lab machine (and of the KVM it offers).</summary>
public enum LabArchitecture
{
    /// <summary>x86_64: QEMU's <c>q35</c> machine with <c>-cpu max</c>, whose emulated AMD SVM gives a stock <c>kvm_amd</c>.</summary>
    X86_64,

    /// <summary>arm64: QEMU's <c>virt</c> machine with <c>virtualization=on</c> (emulated EL2) and a GICv3; KVM is built into Debian's arm64 kernel.</summary>
    Arm64,
}

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
