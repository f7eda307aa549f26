using KvmSharp.Lab.Interop;

namespace KvmSharp.Lab;

/// <summary>Where a command ran, or where this process is running KVM.</summary>
/// <param name="IsLab">True in a lab machine under QEMU, false on the host's own KVM.</param>
/// <param name="Architecture">The machine's architecture.</param>
/// <param name="KernelRelease">The release of the kernel that provides KVM, e.g. <c>6.1.0-57-amd64</c>.</param>
public sealed record LabLocation(bool IsLab, LabArchitecture Architecture, string KernelRelease)
{
    /// <summary>
    /// One line that says where KVM runs, e.g. <c>KVM: native, Linux 6.12.1</c> or
    /// <c>KVM: lab x86_64, Linux 6.1.0-57-amd64 under QEMU TCG (nested SVM)</c>.
    /// </summary>
    public override string ToString() => IsLab
        ? $"KVM: lab {Architecture.Name()}, Linux {KernelRelease} under QEMU TCG ({Emulation(Architecture)})"
        : $"KVM: native, Linux {KernelRelease}";

    internal static string Emulation(LabArchitecture architecture) =>
        architecture == LabArchitecture.X86_64 ? "nested SVM" : "emulated EL2";

    /// <summary>
    /// Where this process itself uses KVM: inside a lab machine (the lab sets
    /// <c>KVMSHARP_LAB_ARCH</c> in the environment of what it runs), else natively. Says nothing
    /// about whether <c>/dev/kvm</c> works; see <see cref="KvmLab.ProbeNative"/>.
    /// </summary>
    public static LabLocation Current
    {
        get
        {
            string release = NativeKvm.KernelRelease();
            if (Environment.GetEnvironmentVariable(KvmLab.InsideVariable) is { Length: > 0 } arch)
                return new LabLocation(true, LabArchitectures.Parse(arch), release);
            return new LabLocation(false, LabArchitectures.Host ?? LabArchitecture.X86_64, release);
        }
    }
}
