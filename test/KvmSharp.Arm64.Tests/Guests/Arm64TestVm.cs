using KvmSharp.Interop;
using KvmSharp.Tests.Model;

namespace KvmSharp.Arm64.Tests.Guests;

/// <summary>
/// A VM for the arm64 tests on the real kernel: 64 KiB of RAM at 0, code at <see cref="CodeAddress"/>,
/// an initialised vCPU 0 about to run it; optionally through a <see cref="RecordingKernel"/> that
/// counts the ioctls (it passes every call to the real kernel).
/// </summary>
internal sealed class Arm64TestVm : IDisposable
{
    public const ulong CodeAddress = 0x1000;
    public const ulong RamSize = 0x10000;
    /// <summary>No slot there: every access is an MMIO exit.</summary>
    public const ulong MmioBase = 0x1000_0000;

    public Kvm Kvm { get; }
    public VirtualMachine Vm { get; }
    public MemorySlot Ram { get; }
    public Vcpu Cpu { get; }
    public RecordingKernel? Kernel { get; }
    public Registers.Arm64RegisterSync Arm => Cpu.Arm64;

    public Arm64TestVm(A64 code, bool countIoctls = false, bool powerOff = false, Action<VirtualMachine>? beforeVcpu = null)
    {
        Kernel = countIoctls ? new RecordingKernel() : null;
        Kvm = Kernel is null ? Kvm.Open() : Kvm.Open(Kernel, Kvm.DefaultDevicePath, KvmArchitecture.Arm64);
        Vm = Kvm.CreateVirtualMachine();
        Ram = Vm.AddMemorySlot(0, RamSize);
        Ram.Write(CodeAddress, code.ToArray());
        beforeVcpu?.Invoke(Vm);
        Cpu = Vm.CreateVcpu();
        Cpu.Arm64.Initialize(powerOff);
        Cpu.Arm64.Pc = CodeAddress;
    }

    /// <summary>Runs to the next exit and requires it to be an MMIO exit (a guest that never exits fails after a minute instead of hanging the suite).</summary>
    public MmioExit RunToMmio()
    {
        var exit = Cpu.Run(TimeSpan.FromMinutes(1));
        Assert.That(exit.Reason, Is.EqualTo(VcpuExitReason.Mmio), exit.ToString());
        return exit.Mmio;
    }

    /// <summary>The ioctls counted since the last reset, "NAME=count" in name order (for messages).</summary>
    public string Counts => string.Join(", ", Kernel!.Counts.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}"));

    public void Dispose()
    {
        Cpu.Dispose();
        Vm.Dispose();
        Kvm.Dispose();
        if (Kernel is not null)
            Assert.That((Kernel.LiveMappings, Kernel.LiveFds), Is.EqualTo((0, 0)), "mappings and fds left behind");
    }
}
