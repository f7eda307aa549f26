using System.Diagnostics;
using KvmSharp.Arm64.Tests.Guests;
using KvmSharp.Registers;
using KvmSharp.Tests;

namespace KvmSharp.Arm64.Tests;

// Threads: two vCPUs brought up through PSCI CPU_ON and counting together, and a spinning guest
// ended by RequestExit, Run(TimeSpan) and visited by Invoke from other threads.
public partial class Arm64ExecutionTests
{
    private const uint PsciCpuOn = 0xC400_0003; // PSCI 0.2 CPU_ON, SMC64 calling convention
    private const ulong CpuOnContext = 0xC0FF_EE00_0000_0001;

    // The SMP guest's identity map: one level-1 table (4 KiB granule, 39-bit VAs) with two 1 GiB
    // blocks, RAM as Normal write-back memory and the MMIO GiB as Device-nGnRnE.
    private const ulong PageTable = 0x8000, Counter = 0x9000, Ready = 0x9040;
    private const ulong Mair = 0xFF;                       // Attr0 Normal WB read/write-allocate, Attr1 Device-nGnRnE
    private const ulong Tcr = 25 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 23; // T0SZ 25, walks WB cacheable inner shareable, TG0 4 KiB, EPD1
    private const ulong RamBlock = 1 << 10 | 3 << 8 | 1;                   // AF, inner shareable, Attr0, block
    private const ulong DeviceBlock = MmioBase | 1 << 10 | 1 << 2 | 1;         // AF, Attr1, block
    private const ulong SctlrM = 1 << 0, SctlrC = 1 << 2, SctlrI = 1 << 12;

    [Test]
    public void PsciCpuOn_StartsAVcpuCreatedPoweredOff_AndBothCountWithExclusives()
    {
        // kvm_psci_vcpu_on: the target is the vCPU whose MPIDR is x1 (KVM gives vCPU n Aff0 = n);
        // it must be stopped, KVM resets it with PC = x2 and x0 = x3, makes it runnable and wakes it
        // (its KVM_RUN sleeps while it is stopped), and returns PSCI_RET_SUCCESS (0) in the caller's x0.
        // Both vCPUs turn their MMU on first: with it off every data access is Device-nGnRnE, where
        // exclusives are IMPLEMENTATION DEFINED (kvm-unit-tests' spinlocks avoid them then too).
        const int N = 10_000;
        using var vm = _kvm.CreateVirtualMachine();
        var ram = vm.AddMemorySlot(0, RamSize);
        using var boot = vm.CreateVcpu();
        boot.Arm64.Initialize();
        using var second = vm.CreateVcpu();
        second.Arm64.Initialize(powerOff: true);
        Assert.That(second.Arm64.MpState, Is.EqualTo(MpState.Stopped), "KVM_ARM_VCPU_POWER_OFF");
        ulong sctlr = boot.Arm64.GetSystemRegister(A64.SctlrEl1) | SctlrM | SctlrC | SctlrI;

        // The second vCPU's entry comes first, so that the CPU_ON call can name it.
        var code = EnableIdentityMmu(new A64(), sctlr)
            .Mov(8, MmioBase)
            .Store(8, 0, 8, 0x18)                      // report x0: the context id
            .Mov(7, Ready).Mov(5, 1).Store(8, 5, 7);   // tell the boot vCPU to start counting
        CountWithExclusives(code, N).Mov(6, 1).Store(8, 6, 8).BranchToSelf(); // done: vCPU 1
        ulong bootEntry = CodeAddress + (ulong)code.Position;
        EnableIdentityMmu(code, sctlr)
            .Mov(0, PsciCpuOn).Mov(1, 1).Mov(2, CodeAddress).Mov(3, CpuOnContext)
            .HypervisorCall()
            .Mov(8, MmioBase)
            .Store(8, 0, 8, 0x10)                      // report x0: CPU_ON's result
            .Mov(7, Ready);
        int wait = code.Position;
        code.Load(8, 5, 7).BranchIfZero(8, 5, wait);   // until the second vCPU counts too
        CountWithExclusives(code, N).Mov(6, 0).Store(8, 6, 8).BranchToSelf(); // done: vCPU 0
        ram.Write(CodeAddress, code.ToArray());
        ram.Write(PageTable, RamBlock);
        ram.Write(PageTable + 8, DeviceBlock);
        boot.Arm64.Pc = bootEntry;

        using var deadline = new CancellationTokenSource(Wait.Bound);
        var secondRun = RunUntilDone(second, deadline.Token); // KVM_RUN sleeps until CPU_ON
        var bootRun = RunUntilDone(boot, deadline.Token);
        Assert.That(Task.WaitAll([bootRun, secondRun], Wait.Bound + TimeSpan.FromSeconds(10)), Is.True, "both vCPU threads ended");

        Assert.That(bootRun.Result[MmioBase + 0x10], Is.Zero, "CPU_ON returned PSCI_RET_SUCCESS");
        Assert.That(secondRun.Result[MmioBase + 0x18], Is.EqualTo(CpuOnContext), "the second vCPU started with x0 = CPU_ON's context id");
        Assert.That((bootRun.Result[MmioBase], secondRun.Result[MmioBase]), Is.EqualTo((0UL, 1UL)), "each vCPU reported done");
        Assert.That(ram.Read<ulong>(Counter), Is.EqualTo(2UL * N), "no increment was lost");
        Assert.That(second.Arm64.MpState, Is.EqualTo(MpState.Runnable));
    }

    [Test]
    public void RequestExit_FromAnotherThread_EndsASpinningGuestsRun()
    {
        using var vm = _kvm.CreateVirtualMachine();
        using var vcpu = Arm64TestVm.Boot(vm, Spinner(out ulong spinAt));
        var kicker = KickWhenRunning(vcpu, TimeSpan.FromMilliseconds(50));
        var reason = vcpu.Run().Reason;
        Wait.Join(kicker, "the kicking thread");

        Assert.That(reason, Is.EqualTo(VcpuExitReason.Interrupted));
        Assert.That(vcpu.IsExitRequested, Is.False, "the run consumed the request");
        Assert.That((vcpu.Arm64.Pc, vcpu.Arm64.X5), Is.EqualTo((spinAt, SpinnerMark)), "the guest was spinning");
    }

    [Test]
    public void RunWithTimeout_EndsASpinningGuestsRun_AfterTheTimeout()
    {
        var timeout = TimeSpan.FromMilliseconds(100);
        using var vm = _kvm.CreateVirtualMachine();
        using var vcpu = Arm64TestVm.Boot(vm, Spinner(out ulong spinAt));
        for (int i = 0; i < 2; i++) // each run has its own deadline
        {
            var clock = Stopwatch.StartNew();
            var reason = vcpu.Run(timeout).Reason;
            Assert.That(reason, Is.EqualTo(VcpuExitReason.Interrupted));
            Assert.That(clock.Elapsed, Is.GreaterThanOrEqualTo(timeout), "not before the timeout");
            Assert.That(vcpu.Arm64.Pc, Is.EqualTo(spinAt));
        }
    }

    [Test]
    public void Invoke_FromAnotherThread_RunsOnTheRunLoopThread_WithRegisterAccess()
    {
        using var vm = _kvm.CreateVirtualMachine();
        using var vcpu = Arm64TestVm.Boot(vm, Spinner(out ulong spinAt));
        int actionThread = 0;
        ulong pc = 0, x5 = 0;
        bool invoked = false;
        Exception? error = null;
        var helper = new Thread(() =>
        {
            try
            {
                SpinWait.SpinUntil(() => vcpu.IsRunning, Wait.Bound); // running: the action goes to the run loop
                vcpu.Invoke(v =>
                {
                    actionThread = Environment.CurrentManagedThreadId;
                    pc = v.Arm64.Pc;       // KVM_GET_ONE_REG between two KVM_RUNs
                    x5 = v.Arm64.X5;
                    v.Arm64.X6 = 0x600D;   // written back before the guest resumes
                });
                Volatile.Write(ref invoked, true);
            }
            catch (Exception e)
            {
                error = e;
            }
            finally
            {
                vcpu.RequestExit();
            }
        }) { IsBackground = true, Name = "invoker" };
        helper.Start();

        var reason = vcpu.Run().Reason;
        Wait.Join(helper, "the invoking thread");
        Assert.That(error, Is.Null);
        Assert.That(reason, Is.EqualTo(VcpuExitReason.Interrupted));
        Assert.That(Volatile.Read(ref invoked), Is.True, "the Invoke kick did not end the run; the request after it did");
        Assert.That(actionThread, Is.EqualTo(Environment.CurrentManagedThreadId), "the action ran on the thread inside Run");
        Assert.That((pc, x5), Is.EqualTo((spinAt, SpinnerMark)), "the action read the spinning guest's registers");
        vcpu.Arm64.Invalidate();
        Assert.That(vcpu.Arm64.X6, Is.EqualTo(0x600DUL), "KVM holds the action's write");
    }

    private const ulong SpinnerMark = 0x5EED;

    /// <summary>x5 = <see cref="SpinnerMark"/>, then <c>b .</c> at <paramref name="spinAt"/>.</summary>
    private static A64 Spinner(out ulong spinAt)
    {
        var code = new A64().Mov(5, SpinnerMark);
        spinAt = CodeAddress + (ulong)code.Position;
        return code.BranchToSelf();
    }

    /// <summary>Turns the MMU on with the identity map at <see cref="PageTable"/> (x9 is scratch).</summary>
    private static A64 EnableIdentityMmu(A64 code, ulong sctlr) =>
        code.Mov(9, Mair).WriteSystemRegister(A64.MairEl1, 9)
            .Mov(9, Tcr).WriteSystemRegister(A64.TcrEl1, 9)
            .Mov(9, PageTable).WriteSystemRegister(A64.Ttbr0El1, 9)
            .InstructionBarrier()
            .Mov(9, sctlr).WriteSystemRegister(A64.SctlrEl1, 9)
            .InstructionBarrier();

    /// <summary>Adds 1 to the word at <see cref="Counter"/> <paramref name="n"/> times with LDXR/STXR (x1–x4).</summary>
    private static A64 CountWithExclusives(A64 code, int n)
    {
        code.Mov(1, Counter).Mov(2, (ulong)n);
        int loop = code.Position;
        return code.LoadExclusive(3, 1).Add(3, 3, 1).StoreExclusive(4, 3, 1)
            .BranchIfNonZero(4, 4, loop)               // lost the reservation: again
            .SubtractSettingFlags(2, 2, 1).BranchIf(A64.Condition.Ne, loop);
    }

    /// <summary>
    /// Runs <paramref name="vcpu"/> on its own thread until its MMIO write to <see cref="MmioBase"/>
    /// ("done"); returns every MMIO write by address. Any other exit, or the deadline, fails the task.
    /// </summary>
    private static Task<Dictionary<ulong, ulong>> RunUntilDone(Vcpu vcpu, CancellationToken deadline) =>
        Task.Factory.StartNew(() =>
        {
            try
            {
                var writes = new Dictionary<ulong, ulong>();
                while (true)
                {
                    var exit = vcpu.Run(deadline);
                    if (exit.Reason != VcpuExitReason.Mmio || !exit.Mmio.IsWrite)
                        throw new InvalidOperationException($"vCPU {vcpu.Id}: unexpected exit {exit.ToString()} at PC 0x{vcpu.Arm64.Pc:X}");
                    writes[exit.Mmio.Address] = BitConverter.ToUInt64(exit.Mmio.Data);
                    if (exit.Mmio.Address == MmioBase) return writes;
                }
            }
            finally
            {
                vcpu.ReleaseOwnership(); // the test's thread reads its registers afterwards
            }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
}
