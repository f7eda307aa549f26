using System.Runtime.InteropServices;
using KvmSharp.Tests.Guests;
using static Iced.Intel.AssemblerRegisters;

namespace KvmSharp.Tests;

/// <summary>
/// The public escape hatches: vCPU capabilities (KVM_ENABLE_CAP on the vCPU fd) and the file
/// descriptors (<c>SafeHandle</c>) for ioctls KvmSharp lacks, used the way README tells users to.
/// </summary>
public partial class RawIoctlTests : KvmTestBase
{
    private const ulong KVM_GET_API_VERSION = 0xAE00;
    private const ulong KVM_CHECK_EXTENSION = 0xAE03;
    private const ulong KVM_GET_REGS = 0x8090AE81; // _IOR(KVMIO, 0x81, struct kvm_regs), 144 bytes
    private const int KvmCapUserMemory = 3;
    private const int RipOffset = 128; // kvm_regs.rip

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(int fd, ulong request, nint arg);

    /// <summary>An ioctl on <paramref name="handle"/>, held the way the docs ask.</summary>
    private static int RawIoctl(SafeHandle handle, ulong request, nint arg)
    {
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            return Ioctl((int)handle.DangerousGetHandle(), request, arg);
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }

    [Test]
    public void TheFileDescriptors_ServeRawIoctls_AndCloseWithTheirObjects()
    {
        Assert.That(RawIoctl(Kvm.SafeHandle, KVM_GET_API_VERSION, 0), Is.EqualTo(Kvm.SupportedApiVersion));
        using var g = TestGuest.LongMode(Kvm, a => { a.mov(eax, 0x1234); a.hlt(); });
        Assert.That(RawIoctl(g.Vm.SafeHandle, KVM_CHECK_EXTENSION, KvmCapUserMemory), Is.EqualTo(g.Vm.CheckExtension(KvmCapability.UserMemory)).And.Positive);

        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt));
        var regs = Marshal.AllocHGlobal(144);
        try
        {
            g.Cpu.X86.Rip += 0; // touch the cache: the raw read must see KVM's state, not the cache's
            g.Cpu.Registers.Invalidate();
            Assert.That(RawIoctl(g.Cpu.SafeHandle, KVM_GET_REGS, regs), Is.Zero, () => $"KVM_GET_REGS: errno {Marshal.GetLastPInvokeError()}");
            Assert.That((ulong)Marshal.ReadInt64(regs, RipOffset), Is.EqualTo(g.Cpu.X86.Rip), "the raw RIP is the cache's");
            Assert.That((ulong)Marshal.ReadInt64(regs, 0) & 0xFFFF_FFFF, Is.EqualTo(0x1234UL), "kvm_regs.rax");
        }
        finally
        {
            Marshal.FreeHGlobal(regs);
        }

        var cpuHandle = g.Cpu.SafeHandle;
        var vmHandle = g.Vm.SafeHandle;
        g.Vm.Dispose();
        Assert.That((cpuHandle.IsClosed, vmHandle.IsClosed), Is.EqualTo((true, true)), "no fd outlives its object");
    }

    [Test]
    public void Vcpu_EnableCapability_ReachesTheVcpuFd_AndARefusalNamesTheCapability()
    {
        using var g = TestGuest.LongMode(Kvm, a => a.hlt());
        g.Cpu.EnableCapability(KvmCapability.HypervEnforceCpuid, 1); // a vCPU capability on x86 since Linux 5.14
        var refused = Assert.Throws<KvmException>(() => g.Cpu.EnableCapability(KvmCapability.X86UserSpaceMsr, 1));
        Assert.That(refused!.Message, Does.Contain("KVM_ENABLE_CAP").And.Contain("EINVAL").And.Contain("X86UserSpaceMsr").And.Contain("vcpu 0"),
            "a VM capability is not a vCPU one");
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt), "the vCPU still works");
    }

    [Test]
    public void RequestInterruptWindow_IsTheOwnersToSet()
    {
        using var g = TestGuest.LongMode(Kvm, a => a.hlt());
        g.Cpu.RequestInterruptWindow = true;
        Assert.That(g.Cpu.RequestInterruptWindow, Is.True);
        g.Cpu.RequestInterruptWindow = false;
        Assert.That(g.Cpu.Run().Reason, Is.EqualTo(VcpuExitReason.Hlt)); // this thread owns it now
        Exception? failure = null;
        var other = new Thread(() =>
        {
            try
            {
                g.Cpu.RequestInterruptWindow = true;
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        other.Start();
        Wait.Join(other, "the other thread");
        Assert.That(failure, Is.TypeOf<InvalidOperationException>());
        Assert.That(g.Cpu.RequestInterruptWindow, Is.False, "the refused write changed nothing");
    }
}
