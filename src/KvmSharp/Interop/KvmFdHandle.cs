using System.Runtime.InteropServices;

namespace KvmSharp.Interop;

/// <summary>Owns one file descriptor (/dev/kvm, a VM or a vCPU); closes it through the kernel seam on release.</summary>
internal sealed class KvmFdHandle : SafeHandle
{
    private readonly IKernel _kernel;

    public KvmFdHandle(IKernel kernel, int fd)
        : base(invalidHandleValue: -1, ownsHandle: true)
    {
        _kernel = kernel;
        SetHandle(fd);
    }

    public override bool IsInvalid => (int)handle < 0;

    /// <summary>The raw descriptor. Only valid while the owner is not disposed.</summary>
    public int Fd => (int)handle;

    protected override bool ReleaseHandle() => _kernel.Close((int)handle) == 0;
}
