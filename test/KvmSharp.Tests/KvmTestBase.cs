using KvmSharp.Tests.Guests;

namespace KvmSharp.Tests;

/// <summary>
/// Base for tests that need a real KVM. They never skip: the test application runs where a KVM is
/// (natively, or in a KvmSharp.Lab machine; see Program.cs), so a missing or unusable /dev/kvm makes
/// <see cref="Kvm.Open"/> throw and the test fail, saying why.
/// </summary>
/// <remarks>
/// No test may hang the run. Waits on other threads are bounded (<see cref="Wait"/>); as a last line,
/// a watchdog kicks every vCPU of the test's <see cref="TestGuest"/>s once the test has run for
/// <see cref="Limit"/> (a <c>Run()</c> the guest never ends then returns Interrupted and the test fails
/// on it, and its teardown says why), and if the test is still running a minute later it ends the test
/// process with a message naming the test — a failed run instead of a hung one.
/// </remarks>
public abstract class KvmTestBase
{
    /// <summary>How long a test may run before the watchdog steps in (everything in the lab is emulated: generous).</summary>
    public static readonly TimeSpan Limit = TimeSpan.FromMinutes(3);

    private Timer? _kick, _end;
    private volatile bool _expired;

    protected Kvm Kvm { get; private set; } = null!;

    /// <summary>
    /// Whether the KVM is kvm-pvm, the software KVM this project's machines once had (its module shows
    /// in /sys/module): a test about a difference between it and stock KVM asserts what each does.
    /// </summary>
    protected static bool IsKvmPvm { get; } = Directory.Exists("/sys/module/kvm_pvm");

    [SetUp]
    public void OpenKvm()
    {
        string test = TestContext.CurrentContext.Test.FullName;
        _expired = false;
        _kick = new Timer(_ => OnExpired(test), null, Limit, Timeout.InfiniteTimeSpan);
        // A minute after the kicks the test is stuck where no kick reaches: end the process, saying
        // which test, rather than hang the run.
        _end = new Timer(_ => Environment.FailFast($"watchdog: {test} is stuck ({Limit.TotalMinutes:F0} min, then its vCPUs were kicked, then 1 min); ending the test run."),
            null, Limit + TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan);
        Kvm = Kvm.Open();
    }

    [TearDown]
    public void CloseKvm()
    {
        _kick?.Dispose();
        _end?.Dispose();
        Kvm?.Dispose();
        if (_expired) Assert.Fail($"The test ran longer than {Limit.TotalMinutes:F0} min: the watchdog kicked its vCPUs.");
    }

    private void OnExpired(string test)
    {
        _expired = true;
        Console.Error.WriteLine($"watchdog: {test} has run for {Limit.TotalMinutes:F0} min; kicking its vCPUs.");
        TestGuest.KickAll();
    }
}
