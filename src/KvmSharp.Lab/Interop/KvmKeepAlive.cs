namespace KvmSharp.Lab.Interop;

/// <summary>
/// Inside a lab machine: keeps one VM with one vCPU open for the rest of the process, so that the
/// machine's kernel never patches its own code while the program runs.
/// </summary>
/// <remarks>
/// Linux flips static keys when the first KVM VM is created and the last one destroyed
/// (<c>preempt_notifier_key</c>, in <c>__schedule</c>) and when the first vCPU without an in-kernel
/// local APIC is created and the last destroyed (<c>kvm_has_noapic_vcpu</c>), patching kernel text
/// with INT3-based text poking and IPIs. Under QEMU 7.2's multi-threaded TCG that patching, repeated
/// hundreds of times by a test suite that creates and destroys VMs, now and then froze the whole lab
/// machine: one CPU kept trapping on the INT3 of a patched site (a stale translation; memory already
/// held the final NOP) with its runqueue lock held, the other spun for that lock. Emulation only: on
/// real CPUs text poking is sound. Holding a VM and a vCPU keeps both keys on, so the program's own
/// VMs come and go without any patching. It costs three fds and a few pages of kernel memory.
/// </remarks>
internal static class KvmKeepAlive
{
    private static int _started;

    /// <summary>Opens the VM and vCPU once per process; best effort (a failure here is the program's to meet).</summary>
    public static void Start(string devicePath = "/dev/kvm")
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
            return;
        int kvm = Libc.open(devicePath, Libc.O_RDWR | Libc.O_CLOEXEC);
        if (kvm < 0)
            return;
        int vm = Libc.ioctl(kvm, Libc.KVM_CREATE_VM, 0);
        if (vm < 0)
            return;
        Libc.ioctl(vm, Libc.KVM_CREATE_VCPU, 0);
        // The fds stay open until the process ends: that is the point.
    }
}
