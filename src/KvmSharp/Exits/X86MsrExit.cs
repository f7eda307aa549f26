using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>An x86 user-space MSR exit (<c>kvm_run.msr</c>, KVM_CAP_X86_USER_SPACE_MSR).</summary>
public readonly ref struct X86MsrExit
{
    private readonly RunBytes _bytes;

    internal X86MsrExit(RunBytes e) => _bytes = e;

    /// <summary>The MSR index.</summary>
    public uint Index => MemoryMarshal.Read<uint>(Bytes.Slice(12));

    /// <summary>Why the access exited (KVM_MSR_EXIT_REASON_* bits: 1 invalid, 2 unknown, 4 filter).</summary>
    public uint ExitReasonFlags => MemoryMarshal.Read<uint>(Bytes.Slice(8));

    /// <summary>For WRMSR the value written; for RDMSR set the value the guest reads.</summary>
    public ref ulong Data => ref MemoryMarshal.AsRef<ulong>(Bytes.Slice(16, 8));

    /// <summary>Set to 1 to make the guest's access raise #GP.</summary>
    public ref byte Error => ref Bytes[0];

    private Span<byte> Bytes => _bytes.Span;
}
