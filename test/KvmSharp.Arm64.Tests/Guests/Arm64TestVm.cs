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
        Ram = AddRam(Vm, code);
        beforeVcpu?.Invoke(Vm);
        Cpu = StartVcpu(Vm, powerOff);
    }

    /// <summary>In <paramref name="vm"/>: <see cref="RamSize"/> bytes of RAM at 0 holding <paramref name="code"/> at <see cref="CodeAddress"/>, and an initialised vCPU about to run it.</summary>
    public static Vcpu Boot(VirtualMachine vm, A64 code)
    {
        AddRam(vm, code);
        return StartVcpu(vm, powerOff: false);
    }

    private static MemorySlot AddRam(VirtualMachine vm, A64 code)
    {
        var ram = vm.AddMemorySlot(0, RamSize);
        ram.Write(CodeAddress, code.ToArray());
        return ram;
    }

    private static Vcpu StartVcpu(VirtualMachine vm, bool powerOff)
    {
        var vcpu = vm.CreateVcpu();
        vcpu.Arm64.Initialize(powerOff);
        vcpu.Arm64.Pc = CodeAddress;
        return vcpu;
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
