namespace KvmSharp.Tests;

/// <summary>
/// Keeps one VM with one vCPU open while the tests run, so that the number of KVM VMs and vCPUs in
/// the system never drops to zero between tests.
/// </summary>
/// <remarks>
/// Linux flips static keys when the first KVM VM is created and the last destroyed
/// (<c>preempt_notifier_key</c>, patched into <c>__schedule</c>) and when the first vCPU without an
/// in-kernel local APIC is created and the last destroyed (<c>kvm_has_noapic_vcpu</c>), and it patches
/// kernel code to do so (INT3-based text poking, with IPIs to every CPU). In the KvmSharp.Lab machine —
/// a stock kernel on QEMU 7.2's multi-threaded TCG — that patching, done hundreds of times while the
/// other CPU schedules, now and then froze the whole machine. QEMU's monitor showed, twice alike: one
/// CPU trapping again and again on the INT3 of a static-branch site in <c>__schedule</c> (memory already
/// held the final 5-byte NOP there: the CPU ran a stale translation), interrupts off and its runqueue
/// lock held; the other spinning for that lock in <c>try_to_wake_up</c> under KVM_CREATE_VM. Holding
/// one VM and vCPU keeps both keys on, so the tests never make the kernel patch itself (threading
/// fixtures, 8 runs each: a freeze in run 2 without it, none in 10 with it). It changes nothing the
/// tests observe: each test has VMs of its own.
/// </remarks>
[SetUpFixture]
public sealed class KvmSessionFixture
{
    private Kvm? _kvm;
    private VirtualMachine? _vm;

    [OneTimeSetUp]
    public void Open()
    {
        try
        {
            _kvm = Kvm.Open();
            _vm = _kvm.CreateVirtualMachine();
            _vm.CreateVcpu();
        }
        catch (KvmUnavailableException)
        {
            // No KVM here: every test that needs one fails on its own, saying why.
            Close();
        }
    }

    [OneTimeTearDown]
    public void Close()
    {
        _vm?.Dispose();
        _kvm?.Dispose();
        _vm = null;
        _kvm = null;
    }
}
