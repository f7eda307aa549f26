using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>The KVM architectures KvmSharp knows the uapi of.</summary>
public enum KvmArchitecture
{
    /// <summary>x86_64 (Intel VMX, AMD SVM, or a software KVM such as kvm-pvm).</summary>
    X86_64,

    /// <summary>arm64 (AArch64).</summary>
    Arm64,

    /// <summary>s390x (IBM Z), big-endian.</summary>
    S390x,
}

internal static class KvmArchitectures
{
    /// <summary>The architecture of the running process, or null when KVM has no uapi KvmSharp knows for it.</summary>
    public static KvmArchitecture? Current => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => KvmArchitecture.X86_64,
        Architecture.Arm64 => KvmArchitecture.Arm64,
        Architecture.S390x => KvmArchitecture.S390x,
        _ => null,
    };

    /// <summary>Offset of the exit union inside <c>kvm_run</c> (s390x has the PSW before it).</summary>
    public static int ExitUnionOffset(this KvmArchitecture arch) =>
        arch == KvmArchitecture.S390x ? Interop.S390x.kvm_run.ExitUnionOffset : Interop.X86.kvm_run.ExitUnionOffset;

    /// <summary>Offset of <c>kvm_valid_regs</c>; <c>kvm_dirty_regs</c> follows at +8 and <c>s</c> at +16.</summary>
    public static int SyncRegsHeaderOffset(this KvmArchitecture arch) => arch.ExitUnionOffset() + Interop.KvmRunPage.ExitUnionSize;

    /// <summary><c>sizeof(struct kvm_run)</c>.</summary>
    public static int KvmRunSize(this KvmArchitecture arch) =>
        arch == KvmArchitecture.S390x ? Unsafe.SizeOf<Interop.S390x.kvm_run>() : Unsafe.SizeOf<Interop.X86.kvm_run>();
}
