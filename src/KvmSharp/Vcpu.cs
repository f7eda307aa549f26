using System.Runtime.CompilerServices;
using KvmSharp.Interop;
using KvmSharp.Interop.X86;
using KvmSharp.Registers;

namespace KvmSharp;

/// <summary>
/// A virtual CPU: its file descriptor, its shared <c>kvm_run</c> page, and its register cache.
/// Created by <see cref="VirtualMachine.CreateVcpu"/>.
/// </summary>
/// <remarks>
/// Thread safety: a vCPU belongs to one thread at a time. <see cref="Run"/>, the exit view it
/// returns, and register access must not be used concurrently from several threads.
/// </remarks>
public sealed class Vcpu : IDisposable
{
    private readonly VirtualMachine _vm;
    private readonly KvmFdHandle _fd;
    private readonly MappedMemoryHandle _run;
    private readonly int _runLength;
    private readonly int _fdNumber;
    private readonly StructView _syncHeader;
    private readonly IRegisterSync _registers;
    private readonly IRunHooks _hooks;
    private bool _disposed;

    internal Vcpu(VirtualMachine vm, int id, KvmFdHandle fd, MappedMemoryHandle run)
    {
        _vm = vm;
        Id = id;
        _fd = fd;
        _fdNumber = fd.Fd;
        _run = run;
        _runLength = (int)run.Length;
        Kernel = vm.Kernel;
        Architecture = vm.Architecture;
        if (_runLength < Architecture.KvmRunSize())
            throw new InvalidOperationException($"KVM_GET_VCPU_MMAP_SIZE ({_runLength}) is smaller than struct kvm_run ({Architecture.KvmRunSize()}).");
        _syncHeader = new StructView(run, Architecture.SyncRegsHeaderOffset(), 16);
        (_registers, _hooks) = Architecture switch
        {
            KvmArchitecture.X86_64 => Pair(new X86RegisterSync(this, run, vm.CheckExtension(KvmCapability.SyncRegs))),
            KvmArchitecture.Arm64 => Pair(new Arm64RegisterSync(this)),
            _ => Pair(new S390xRegisterSync(this, run)),
        };
    }

    private static (IRegisterSync, IRunHooks) Pair<T>(T strategy) where T : IRegisterSync, IRunHooks => (strategy, strategy);

    internal IKernel Kernel { get; }

    internal int Fd
    {
        get
        {
            if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
            return _fdNumber;
        }
    }

    /// <summary>The vCPU id given at creation (the APIC id on x86).</summary>
    public int Id { get; }

    /// <summary>The architecture of this vCPU.</summary>
    public KvmArchitecture Architecture { get; }

    /// <summary>The VM this vCPU belongs to.</summary>
    public VirtualMachine VirtualMachine => _vm;

    /// <summary>True once disposed.</summary>
    public bool IsDisposed => _disposed;

    /// <summary>The register cache, whatever the architecture (see <see cref="IRegisterSync"/>).</summary>
    public IRegisterSync Registers => _registers;

    /// <summary>The x86 register cache.</summary>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not x86_64.</exception>
    public X86RegisterSync X86 => _registers as X86RegisterSync ?? throw NotArch(KvmArchitecture.X86_64);

    /// <summary>The arm64 register cache.</summary>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not arm64.</exception>
    public Arm64RegisterSync Arm64 => _registers as Arm64RegisterSync ?? throw NotArch(KvmArchitecture.Arm64);

    /// <summary>The s390x register cache.</summary>
    /// <exception cref="PlatformNotSupportedException">The vCPU is not s390x.</exception>
    public S390xRegisterSync S390x => _registers as S390xRegisterSync ?? throw NotArch(KvmArchitecture.S390x);

    private PlatformNotSupportedException NotArch(KvmArchitecture wanted) =>
        new($"{wanted} registers requested on a {Architecture} vCPU.");

    internal ref ulong RunValidRegs => ref _syncHeader.At<ulong>(0);

    internal ref ulong RunDirtyRegs => ref _syncHeader.At<ulong>(8);

    /// <summary>
    /// Whether the next <see cref="Run"/> returns at once with <see cref="VcpuExitReason.Interrupted"/>
    /// (<c>kvm_run.immediate_exit</c>; needs KVM_CAP_IMMEDIATE_EXIT). Used to complete a pending I/O or
    /// MMIO exit without running guest code.
    /// </summary>
    public bool ImmediateExit
    {
        get => RunSpan()[1] != 0;
        set => RunSpan()[1] = value ? (byte)1 : (byte)0;
    }

    /// <summary>
    /// Whether KVM should exit as soon as the guest can take an interrupt (<c>kvm_run.request_interrupt_window</c>).
    /// </summary>
    public bool RequestInterruptWindow
    {
        get => RunSpan()[0] != 0;
        set => RunSpan()[0] = value ? (byte)1 : (byte)0;
    }

    private Span<byte> RunSpan()
    {
        if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
        return _run.Slice(0, _runLength);
    }

    /// <summary>
    /// Writes back dirty registers, runs guest code until the next exit, and returns a view of the
    /// exit. Wraps KVM_RUN. Allocates nothing.
    /// </summary>
    /// <returns>A view into <c>kvm_run</c>, valid until the next call to <see cref="Run"/> or disposal.</returns>
    /// <remarks>
    /// A signal or <see cref="ImmediateExit"/> makes KVM_RUN fail with EINTR; that is reported as
    /// <see cref="VcpuExitReason.Interrupted"/>, not thrown. Whatever the guest does is an exit,
    /// never an exception.
    /// </remarks>
    /// <exception cref="KvmException">KVM_RUN failed for another reason (e.g. EFAULT for a slot whose
    /// memory vanished, EINVAL for invalid register state, ENOEXEC for an uninitialised arm64 vCPU).</exception>
    /// <exception cref="ObjectDisposedException">The vCPU is disposed.</exception>
    public VcpuExit Run()
    {
        if (_disposed) ThrowHelper.ThrowObjectDisposed(this);
        _hooks.BeforeRun();
        int r = Kernel.Ioctl(_fdNumber, KvmIoctls.KVM_RUN, 0);
        _hooks.AfterRun(r);
        var run = _run.Slice(0, _runLength);
        if (r < 0)
        {
            if (r != -Errno.EINTR) ThrowRunFailed(r);
            // KVM leaves exit_reason stale on EINTR; report the interruption itself.
            System.Runtime.InteropServices.MemoryMarshal.Write(run.Slice(8, 4), (uint)VcpuExitReason.Interrupted);
        }
        return new VcpuExit(run, Architecture);
    }

    /// <summary>
    /// Enters KVM_RUN with <c>immediate_exit</c> set, so that KVM completes a pending I/O or MMIO
    /// access (and advances the PC past it) without running guest code. Used by the register
    /// strategies before they write registers the completion would clobber. Bypasses the cache hooks.
    /// </summary>
    internal void CompletePendingAccess()
    {
        var run = RunSpan();
        byte saved = run[1];
        run[1] = 1;
        int r = Kernel.Ioctl(_fdNumber, KvmIoctls.KVM_RUN, 0);
        run[1] = saved;
        if (r < 0 && r != -Errno.EINTR) ThrowRunFailed(r);
    }

    /// <summary>The raw <c>kvm_run.exit_reason</c> of the last run (stale after an EINTR).</summary>
    internal uint LastExitReason => System.Runtime.InteropServices.MemoryMarshal.Read<uint>(_run.Slice(8, 4));

    /// <summary>The vCPU's <c>kvm_run</c> mapping, for the register strategies' views.</summary>
    internal MappedMemoryHandle RunMapping => _run;

    private void ThrowRunFailed(int r) =>
        ThrowHelper.ThrowKvm(KvmIoctls.KVM_RUN, r, $"vcpu {Id}");

    /// <summary>
    /// Sets the CPUID leaves the guest sees (x86). Wraps KVM_SET_CPUID2. Call before the first run;
    /// <see cref="Kvm.GetSupportedCpuid"/> gives what KVM allows.
    /// </summary>
    /// <exception cref="KvmException">The ioctl failed (e.g. E2BIG for too many leaves).</exception>
    public unsafe void SetCpuid(ReadOnlySpan<CpuidEntry> entries)
    {
        _vm.Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SetCpuid));
        int bytes = sizeof(kvm_cpuid2) + entries.Length * sizeof(kvm_cpuid_entry2);
        using var buf = new NativeBuffer(bytes);
        var view = new StructView(buf, 0, bytes);
        view.At<kvm_cpuid2>(0).nent = (uint)entries.Length;
        for (int i = 0; i < entries.Length; i++)
        {
            var e = entries[i];
            view.At<kvm_cpuid_entry2>(sizeof(kvm_cpuid2) + i * sizeof(kvm_cpuid_entry2)) = new kvm_cpuid_entry2
            {
                function = e.Function, index = e.Index, flags = e.Flags,
                eax = e.Eax, ebx = e.Ebx, ecx = e.Ecx, edx = e.Edx,
            };
        }
        int r = Kernel.Ioctl(Fd, KvmIoctls.X86.KVM_SET_CPUID2, view.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.X86.KVM_SET_CPUID2, r, $"vcpu {Id}, {entries.Length} entries");
    }

    /// <summary>Unmaps <c>kvm_run</c>, closes the vCPU fd and removes it from its VM. Idempotent.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _hooks.Release();
        _run.Dispose();
        _fd.Dispose();
        _vm.OnVcpuDisposed(this);
    }
}
