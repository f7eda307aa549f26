namespace KvmSharp.Tests;

/// <summary>
/// Base for tests that need the real /dev/kvm. They skip (Ignore) only when the device node is
/// absent, and say so; when it exists but cannot be used, Kvm.Open throws and the test fails.
/// </summary>
public abstract class KvmTestBase
{
    protected Kvm Kvm { get; private set; } = null!;

    [SetUp]
    public void OpenKvm()
    {
        if (!File.Exists(Kvm.DefaultDevicePath))
            Assert.Ignore($"{Kvm.DefaultDevicePath} is absent on this machine: KVM tests cannot run here.");
        Kvm = Kvm.Open();
    }

    [TearDown]
    public void CloseKvm() => Kvm?.Dispose();
}
