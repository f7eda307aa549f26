using KvmSharp.Interop;
using KvmSharp.Tests.Model;

namespace KvmSharp.Tests;

public class KvmTests : KvmTestBase
{
    [Test]
    public void Open_ReportsArchitectureAndMmapSize()
    {
        Assert.That(Kvm.Architecture, Is.EqualTo(KvmArchitecture.X86_64));
        Assert.That(Kvm.VcpuMmapSize, Is.GreaterThanOrEqualTo(2352).And.Matches<int>(n => n % 4096 == 0));
    }

    [Test]
    public void Capabilities_TypedAndRaw_Agree()
    {
        Assert.That(Kvm.HasCapability(KvmCapability.UserMemory), Is.True);
        Assert.That(Kvm.CheckExtension(KvmCapability.NrMemSlots), Is.EqualTo(Kvm.CheckExtension(10)));
        Assert.That(Kvm.CheckExtension(KvmCapability.SyncRegs) & 7, Is.EqualTo(7), "kvm-pvm and x86 KVM report sync regs for REGS|SREGS|EVENTS");
        Assert.That(Kvm.CheckExtension(999_999), Is.EqualTo(0), "an unknown capability is 0, not an error");
    }

    [Test]
    public void SupportedCpuid_HasVendorLeaf()
    {
        var cpuid = Kvm.GetSupportedCpuid();
        Assert.That(cpuid, Is.Not.Empty);
        var leaf0 = cpuid.Single(e => e.Function == 0 && e.Index == 0);
        Assert.That(leaf0.Eax, Is.GreaterThanOrEqualTo(1u), "maximum basic leaf");
        Assert.That(cpuid.Any(e => e.Function == 1), Is.True);
    }

    [Test]
    public void Dispose_IsIdempotent_AndUseAfterDisposeThrows()
    {
        var kvm = Kvm.Open();
        kvm.Dispose();
        kvm.Dispose();
        Assert.Throws<ObjectDisposedException>(() => kvm.CheckExtension(KvmCapability.UserMemory));
        Assert.Throws<ObjectDisposedException>(() => kvm.CreateVirtualMachine());
    }

    [Test]
    public void VmOutlivesKvmObject()
    {
        var kvm = Kvm.Open();
        using var vm = kvm.CreateVirtualMachine();
        kvm.Dispose();
        var slot = vm.AddMemorySlot(0, 0x1000);
        using var cpu = vm.CreateVcpu();
        Assert.That(slot.Size, Is.EqualTo(0x1000));
    }
}

/// <summary>Errors reported through the kernel seam: no /dev/kvm needed for these.</summary>
public class KvmUnavailableTests
{
    [Test]
    public void MissingDevice_SaysDeviceMissing()
    {
        var ex = Assert.Throws<KvmUnavailableException>(() => Kvm.Open("/dev/kvm-does-not-exist"));
        Assert.That(ex!.Reason, Is.EqualTo(KvmUnavailableReason.DeviceMissing));
        Assert.That(ex.ErrnoName, Is.EqualTo("ENOENT"));
        Assert.That(ex.Message, Does.Contain("/dev/kvm-does-not-exist").And.Contain("does not exist"));
    }

    [Test]
    public void PermissionDenied_SaysSo()
    {
        var kernel = new RecordingKernel { OpenOverride = (_, _) => -Errno.EACCES };
        var ex = Assert.Throws<KvmUnavailableException>(() => Kvm.Open(kernel, "/dev/kvm", KvmArchitecture.X86_64));
        Assert.That(ex!.Reason, Is.EqualTo(KvmUnavailableReason.PermissionDenied));
        Assert.That(ex.Message, Does.Contain("kvm' group"));
    }

    [Test]
    public void WrongApiVersion_SaysSo_AndClosesTheFd()
    {
        int before = FdCount();
        var kernel = new RecordingKernel { IoctlHook = (req, _) => req == KvmIoctls.KVM_GET_API_VERSION ? 11 : null };
        var ex = Assert.Throws<KvmUnavailableException>(() => Kvm.Open(kernel, Kvm.DefaultDevicePath, KvmArchitecture.X86_64));
        Assert.That(ex!.Reason, Is.EqualTo(KvmUnavailableReason.UnsupportedApiVersion));
        Assert.That(ex.Message, Does.Contain("returned 11").And.Contain("12"));
        Assert.That(FdCount(), Is.EqualTo(before), "the /dev/kvm fd is closed on failure");
    }

    /// <summary>
    /// This process's fds that KVM backs: <c>/dev/kvm</c> and KVM's anonymous inodes (VMs, vCPUs).
    /// Only those: the test host opens other fds at any moment (its pipe to <c>dotnet test</c>, the
    /// socket engine's epoll fd), which would make a count of every fd flaky.
    /// </summary>
    internal static int FdCount() => Directory.GetFiles("/proc/self/fd").Count(fd =>
    {
        try
        {
            string? target = new FileInfo(fd).LinkTarget;
            return target != null && (target == Kvm.DefaultDevicePath || target.StartsWith("anon_inode:kvm", StringComparison.Ordinal));
        }
        catch (IOException)
        {
            return false; // closed meanwhile
        }
    });
}
