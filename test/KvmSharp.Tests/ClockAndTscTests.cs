using KvmSharp.Interop;

namespace KvmSharp.Tests;

/// <summary>
/// The KVM clock (<see cref="VirtualMachine.GetClock"/>, <see cref="VirtualMachine.SetClock"/>) and the
/// TSC frequency (<see cref="Vcpu.GetTscKhz"/>, <see cref="Vcpu.SetTscKhz"/>, <see cref="VirtualMachine.SetTscKhz"/>)
/// on stock KVM. Whether the CPU can scale a guest's TSC differs between hosts (the x86 lab's emulated
/// AMD CPU has no TscRateMsr): the TSC tests ask KVM and assert what it does either way.
/// </summary>
public class ClockAndTscTests : KvmTestBase
{
    private const ulong Second = 1_000_000_000, Bound = 60 * Second;

    [Test]
    public void Clock_AfterASet_ReadsAtLeastTheValueSet_ForwardAndBack_AndItsFlagsSayWhatIsThere()
    {
        using var vm = Kvm.CreateVirtualMachine();
        var first = vm.GetClock();
        var second = vm.GetClock();
        Assert.That(second.Nanoseconds, Is.GreaterThanOrEqualTo(first.Nanoseconds), "the clock does not go back by itself");

        ulong ahead = first.Nanoseconds + 3600 * Second;
        vm.SetClock(ahead);
        var read = vm.GetClock();
        Assert.That(read.Nanoseconds, Is.InRange(ahead, ahead + Bound), "an hour ahead");
        AssertConsistent(read);

        vm.SetClock(Second);
        read = vm.GetClock();
        Assert.That(read.Nanoseconds, Is.InRange(Second, Second + Bound), "back to one second");
        AssertConsistent(read);
    }

    private static void AssertConsistent(KvmClock clock)
    {
        Assert.That(clock.Flags & ~(KvmClockFlags.TscStable | KvmClockFlags.Realtime | KvmClockFlags.HostTsc), Is.EqualTo(KvmClockFlags.None), "only the flags api.rst defines");
        Assert.That(clock.RealtimeNanoseconds.HasValue, Is.EqualTo(clock.Flags.HasFlag(KvmClockFlags.Realtime)), $"realtime present exactly with its flag ({clock})");
        Assert.That(clock.HostTsc.HasValue, Is.EqualTo(clock.Flags.HasFlag(KvmClockFlags.HostTsc)), $"host TSC present exactly with its flag ({clock})");
        if (clock.RealtimeNanoseconds is ulong realtime)
        {
            ulong now = (ulong)(DateTimeOffset.UtcNow - DateTimeOffset.UnixEpoch).Ticks * 100;
            Assert.That(realtime, Is.InRange(now - Bound, now + Bound), "KVM's realtime is the host's wall clock");
        }
        if (clock.HostTsc is ulong tsc) Assert.That(tsc, Is.GreaterThan(0UL));
    }

    [Test]
    public void TscFrequency_TheVcpusRateIsAlwaysAccepted_AnotherOneOnlyWithTscScaling()
    {
        using var vm = Kvm.CreateVirtualMachine();
        using var cpu = vm.CreateVcpu();
        uint host = cpu.GetTscKhz();
        Assert.That(host, Is.GreaterThan(100_000u), "a TSC of more than 100 MHz");
        cpu.SetTscKhz(host);
        Assert.That(cpu.GetTscKhz(), Is.EqualTo(host));

        if (vm.CheckExtension(KvmCapability.TscControl) > 0)
        {
            cpu.SetTscKhz(host / 2);
            Assert.That(cpu.GetTscKhz(), Is.EqualTo(host / 2), "scaled to half the host's rate");
            cpu.SetTscKhz(host);
            Assert.That(cpu.GetTscKhz(), Is.EqualTo(host));
            return;
        }

        // No TSC scaling (the lab: QEMU's emulated AMD CPU lacks TscRateMsr). KvmSharp refuses before KVM …
        var ex = Assert.Throws<NotSupportedException>(() => cpu.SetTscKhz(host / 2));
        Assert.That(ex!.Message, Does.Contain("KVM_CAP_TSC_CONTROL").And.Contain($"{host} kHz"));
        Assert.Throws<NotSupportedException>(() => cpu.SetTscKhz(host * 2));
        Assert.That(cpu.GetTscKhz(), Is.EqualTo(host), "nothing reached KVM");

        // … because of what KVM itself does then: a lower rate fails, yet KVM_GET_TSC_KHZ reports it …
        var kvmError = Assert.Throws<KvmException>(() => cpu.TscKhzIoctl(KvmIoctls.X86.KVM_SET_TSC_KHZ, host / 2));
        Assert.That((kvmError!.Operation, kvmError.ErrnoName), Is.EqualTo(("KVM_SET_TSC_KHZ", "EINVAL")));
        Assert.That(cpu.GetTscKhz(), Is.EqualTo(host / 2), "KVM keeps the rate it refused as the vCPU's");
        // … and a higher rate is taken, to be approximated by stepping the TSC at each entry (catch-up).
        Assert.That(cpu.TscKhzIoctl(KvmIoctls.X86.KVM_SET_TSC_KHZ, host * 2), Is.Zero);
        Assert.That(cpu.GetTscKhz(), Is.EqualTo(host * 2));
    }

    [Test]
    public void VmTscFrequency_IsTheDefaultOfLaterVcpus_WhereKvmCanScale()
    {
        uint host;
        using (var probe = Kvm.CreateVirtualMachine())
        using (var first = probe.CreateVcpu())
            host = first.GetTscKhz();

        using var vm = Kvm.CreateVirtualMachine();
        bool scaling = vm.CheckExtension(KvmCapability.VmTscControl) > 0;
        if (scaling)
        {
            vm.SetTscKhz(host / 2);
        }
        else
        {
            var ex = Assert.Throws<NotSupportedException>(() => vm.SetTscKhz(host / 2));
            Assert.That(ex!.Message, Does.Contain("KVM_CAP_VM_TSC_CONTROL"));
        }
        using var cpu = vm.CreateVcpu();
        Assert.That(cpu.GetTscKhz(), Is.EqualTo(scaling ? host / 2 : host), scaling ? "the new vCPU starts at the VM's rate" : "the refused rate reached nothing");
        var late = Assert.Throws<InvalidOperationException>(() => vm.SetTscKhz(host));
        Assert.That(late!.Message, Does.Contain("1 vCPU(s) were created already"));
        Assert.Throws<ArgumentOutOfRangeException>(() => cpu.SetTscKhz(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.SetTscKhz(0));
    }
}
