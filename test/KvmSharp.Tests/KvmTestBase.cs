namespace KvmSharp.Tests;

/// <summary>
/// Base for tests that need a real KVM. They never skip: the test application runs where a KVM is
/// (natively, or in a KvmSharp.Lab machine; see Program.cs), so a missing or unusable /dev/kvm makes
/// <see cref="Kvm.Open"/> throw and the test fail, saying why.
/// </summary>
public abstract class KvmTestBase
{
    protected Kvm Kvm { get; private set; } = null!;

    /// <summary>
    /// Whether the KVM is kvm-pvm, the software KVM this project's machines once had (its module shows
    /// in /sys/module): a test about a difference between it and stock KVM asserts what each does.
    /// </summary>
    protected static bool IsKvmPvm { get; } = Directory.Exists("/sys/module/kvm_pvm");

    [SetUp]
    public void OpenKvm() => Kvm = Kvm.Open();

    [TearDown]
    public void CloseKvm() => Kvm?.Dispose();
}
