using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>
/// The lower half of a vCPU, below the public <see cref="Vcpu"/> and the register strategies: its
/// fd and the kernel seam, the <c>kvm_run</c> mapping and its fixed fields, the ownership gate
/// (which thread may use the vCPU now, and the Invoke actions it serves), the one KVM_RUN entry
/// sequence and the kicks. The register strategies are given this and never the <see cref="Vcpu"/>
/// or its <see cref="VirtualMachine"/>: layers call downwards only.
/// </summary>
/// <remarks>Thread rules are <see cref="Vcpu"/>'s; the members say which thread may call them.</remarks>
internal sealed partial class VcpuCore
{
    private const string DisposedName = "KvmSharp.Vcpu"; // what ObjectDisposedException names: the public object

    private readonly KvmFdHandle _fd;
    private readonly KvmFdHandle _vmFd;
    private readonly MappedMemoryHandle _run;
    private readonly StructView _syncHeader;

    /// <summary>The address of the <c>kvm_run</c> mapping, cached: the hot path touches no other object for it. Use only while the vCPU is alive and owned.</summary>
    internal readonly nint RunAddress;

    /// <summary>The length of the <c>kvm_run</c> mapping (at least <c>sizeof(struct kvm_run)</c>, checked at creation).</summary>
    internal readonly int RunLength;

    /// <summary>The vCPU fd's number, without a disposal check (the entry sequence; callers own the vCPU).</summary>
    internal readonly int FdNumber;

    /// <summary>The kernel seam is the real one: KVM_RUN is a direct libc call.</summary>
    internal readonly bool NativeKernel;

    internal VcpuCore(int id, KvmArchitecture architecture, IKernel kernel, KvmFdHandle fd, MappedMemoryHandle run, KvmFdHandle vmFd)
    {
        Id = id;
        Architecture = architecture;
        Kernel = kernel;
        _fd = fd;
        FdNumber = fd.Fd;
        _vmFd = vmFd;
        _run = run;
        RunAddress = run.DangerousGetHandle();
        RunLength = (int)run.Length;
        if (RunLength < architecture.KvmRunSize())
            throw new InvalidOperationException($"KVM_GET_VCPU_MMAP_SIZE ({RunLength}) is smaller than struct kvm_run ({architecture.KvmRunSize()}).");
        _syncHeader = new StructView(run, architecture.SyncRegsHeaderOffset(), 16);
        NativeKernel = kernel is LinuxKernel;
    }

    /// <summary>The vCPU id (the APIC id on x86).</summary>
    internal int Id { get; }

    internal KvmArchitecture Architecture { get; }

    internal IKernel Kernel { get; }

    /// <summary>The vCPU fd, for ioctls; throws once disposed.</summary>
    internal int Fd
    {
        get
        {
            if (_disposed) ThrowDisposed();
            return FdNumber;
        }
    }

    /// <summary>The vCPU fd's handle (the public escape hatch, <see cref="Vcpu.SafeHandle"/>).</summary>
    internal KvmFdHandle FdHandle => _fd;

    /// <summary>The VM's fd (KVM_CHECK_EXTENSION, VM-wide queries a strategy needs); throws once the VM is closed.</summary>
    internal int VmFd
    {
        get
        {
            if (_vmFd.IsClosed) ThrowHelper.ThrowObjectDisposed(_vmFd);
            return _vmFd.Fd;
        }
    }

    /// <summary>KVM_CHECK_EXTENSION on the VM fd.</summary>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    internal int CheckVmExtension(KvmCapability capability)
    {
        int r = Kernel.Ioctl(VmFd, KvmIoctls.KVM_CHECK_EXTENSION, (int)capability);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CHECK_EXTENSION, r, $"VM capability {capability}");
        return r;
    }

    /// <summary>True once the resources are released (<see cref="ReleaseResources"/>).</summary>
    internal bool IsDisposed => _disposed;

    /// <summary>The <c>kvm_run</c> mapping, for the strategies' views (which they use only while the vCPU is alive and owned).</summary>
    internal MappedMemoryHandle RunMapping => _run;

    /// <summary>The <c>kvm_run</c> page, without a disposal check (callers own the vCPU or check).</summary>
    internal Span<byte> RunPage => MappedMemoryHandle.SpanAt(RunAddress, RunLength);

    /// <summary>The <c>kvm_run</c> page; throws once disposed.</summary>
    internal Span<byte> RunSpan()
    {
        if (_disposed) ThrowDisposed();
        return RunPage;
    }

    internal ref ulong RunValidRegs => ref _syncHeader.At<ulong>(0);

    internal ref ulong RunDirtyRegs => ref _syncHeader.At<ulong>(8);

    /// <summary>The raw <c>kvm_run.exit_reason</c> of the last run (stale after an EINTR).</summary>
    internal uint LastExitReason => MemoryMarshal.Read<uint>(RunPage.Slice(KvmRunPage.ExitReason, 4));

    /// <summary>Throws <see cref="ObjectDisposedException"/> once disposed (views into <c>kvm_run</c> check this).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void ThrowIfDisposed()
    {
        if (_disposed) ThrowDisposed();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static void ThrowDisposed() => throw new ObjectDisposedException(DisposedName);

    /// <summary>
    /// Unmaps <c>kvm_run</c>, closes the fd, and marks the core disposed for good (the caller holds the
    /// vCPU, and every kicker has finished: see <see cref="BeginDispose"/>).
    /// </summary>
    internal void ReleaseResources()
    {
        _run.Dispose();
        _fd.Dispose();
        Volatile.Write(ref _disposed, true);
        // Terminal: never 0 again, whoever owned it (a run of this thread that disposed the vCPU from
        // an Invoke action releases with a CAS that now fails).
        Volatile.Write(ref State, DisposedState);
    }
}
