using System.Buffers.Binary;
using System.Runtime.InteropServices;
using KvmSharp.Arm64.Tests.Guests;
using KvmSharp.Interop;
using KvmSharp.Registers;
using KvmSharp.Testing;
using static KvmSharp.Arm64.Tests.Guests.Arm64TestVm;

namespace KvmSharp.Arm64.Tests;

/// <summary>
/// The register-sync behavioural suite (<see cref="RegisterSyncSuite"/>) on the real arm64 KVM: the
/// same tests the arm64 kernel model passes in the x86 suite, with the guest behaviours written as
/// A64 code and the ioctls counted on the real kernel.
/// </summary>
internal sealed class Arm64RealKernelSuite : RegisterSyncSuite
{
    // Each behaviour's code at its own address (replacing code a vCPU has run needs cache maintenance).
    private const ulong ReportCode = 0x4000, WriteCode = 0x5000, HotExitCode = 0x6000, StepCode = 0x7000, ReportArea = 0x9000;
    private const int Scratch = 9, Scratch2 = 10, MmioRegister = 11; // never a register the suite uses (0–5)

    private Arm64TestVm _t = null!;
    private readonly Dictionary<SyncLevel, int> _levelWrites = [];
    private ulong _writeExitPc;

    protected override Vcpu Cpu => _t.Cpu;
    protected override MpState RunningMpState => MpState.Runnable;
    protected override int ExpectedHotExitIoctls => 3; // GET_ONE_REG (PC), SET_ONE_REG (X0), KVM_RUN (which completes the MMIO write)
    protected override int ExpectedPcReadIoctls => 1;
    protected override bool HasResetLevelState => false;

    [SetUp]
    public void Boot()
    {
        _t = new Arm64TestVm(new A64().BranchToSelf(), countIoctls: true);
        _t.Kernel!.IoctlHook = (ioctl, arg) =>
        {
            // QEMU's levels (kvm_arm_cpreg_level): the counters are Full, everything else Runtime.
            if (ioctl.Name == KvmIoctls.KVM_SET_ONE_REG.Name)
                Count((ulong)Marshal.ReadInt64(arg) is var id && (id == Arm64RegisterIds.TimerCnt || id == Arm64RegisterIds.PtimerCnt) ? SyncLevel.Full : SyncLevel.Runtime);
            else if (ioctl.Name == KvmIoctls.KVM_SET_MP_STATE.Name || ioctl.Name == KvmIoctls.Arm64.KVM_SET_VCPU_EVENTS.Name)
                Count(SyncLevel.Runtime);
            return null; // the real kernel does the call
        };
    }

    private void Count(SyncLevel level) => _levelWrites[level] = _levelWrites.GetValueOrDefault(level) + 1;

    [TearDown]
    public void Close() => _t?.Dispose();

    protected override MpState KernelMpState()
    {
        Regs.Invalidate(); // the next read asks KVM (KVM_GET_MP_STATE)
        return Regs.MpState;
    }

    protected override void ResetCounts()
    {
        _t.Kernel!.ResetCounts();
        _levelWrites.Clear();
    }

    protected override int TotalIoctls => _t.Kernel!.TotalIoctls;
    protected override string CountsText => _t.Counts;
    protected override int LevelWrites(SyncLevel level) => _levelWrites.GetValueOrDefault(level);

    protected override ulong GuestReports(int gpr)
    {
        // adr x9, . ; x10 = report area ; [x10] = x9 ; [x10+8] = x<gpr> ; hot exit ; again
        var code = new A64().Adr(Scratch).Mov(Scratch2, ReportArea).Store(8, Scratch, Scratch2).Store(8, gpr, Scratch2, 8);
        return Install(ReportCode, HotExitThenRestart(code));
    }

    protected override (ulong Pc, ulong Gpr) Reported
    {
        get
        {
            Span<byte> b = stackalloc byte[16];
            _t.Ram.Read(ReportArea, b);
            return (BinaryPrimitives.ReadUInt64LittleEndian(b), BinaryPrimitives.ReadUInt64LittleEndian(b[8..]));
        }
    }

    protected override ulong GuestWrites(int gpr, ulong value)
    {
        var code = new A64().Mov(gpr, value).Mov(MmioRegister, MmioBase);
        _writeExitPc = WriteCode + (ulong)code.Position;
        code.Store(4, 0, MmioRegister).BranchToSelf();
        return Install(WriteCode, code);
    }

    protected override ulong WriteExitPc => _writeExitPc;

    protected override ulong GuestHotExits() =>
        Install(HotExitCode, new A64().Mov(MmioRegister, MmioBase).Store(4, 0, MmioRegister).Instruction(A64.B(-4)));

    protected override ulong GuestSteps()
    {
        var step = new A64.Register(1);
        var code = new A64().Add(Scratch, 1, step).Add(1, Scratch, step).Add(1, 1, 1); // x1 = x1 * 3 + 1
        return Install(StepCode, HotExitThenRestart(code));
    }

    /// <summary>Appends the hot exit (an MMIO write of W0) and a branch back to the start.</summary>
    private static A64 HotExitThenRestart(A64 code)
    {
        code.Mov(MmioRegister, MmioBase).Store(4, 0, MmioRegister);
        return code.Instruction(A64.B(-code.Position));
    }

    private ulong Install(ulong address, A64 code)
    {
        _t.Ram.Write(address, code.ToArray());
        return address;
    }
}
