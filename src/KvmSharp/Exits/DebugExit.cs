using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>A debug exit (<c>kvm_run.debug.arch</c>); which properties apply depends on the architecture.</summary>
public readonly ref struct DebugExit
{
    private readonly RunBytes _bytes;
    private readonly KvmArchitecture _arch;

    internal DebugExit(RunBytes e, KvmArchitecture arch)
    {
        _bytes = e;
        _arch = arch;
    }

    /// <summary>The raw <c>struct kvm_debug_exit_arch</c> bytes.</summary>
    public ReadOnlySpan<byte> Raw => Bytes;

    /// <summary>x86: the exception vector (1 for #DB, 3 for #BP).</summary>
    public uint X86Exception => Get<uint>(KvmArchitecture.X86_64, 0);

    /// <summary>x86: the guest RIP.</summary>
    public ulong X86Pc => Get<ulong>(KvmArchitecture.X86_64, 8);

    /// <summary>x86: DR6.</summary>
    public ulong X86Dr6 => Get<ulong>(KvmArchitecture.X86_64, 16);

    /// <summary>x86: DR7.</summary>
    public ulong X86Dr7 => Get<ulong>(KvmArchitecture.X86_64, 24);

    /// <summary>arm64: ESR_EL2 bits 31:0.</summary>
    public uint ArmHsr => Get<uint>(KvmArchitecture.Arm64, 0);

    /// <summary>arm64: ESR_EL2 bits 61:32.</summary>
    public uint ArmHsrHigh => Get<uint>(KvmArchitecture.Arm64, 4);

    /// <summary>arm64: the faulting address of a watchpoint.</summary>
    public ulong ArmFar => Get<ulong>(KvmArchitecture.Arm64, 8);

    /// <summary>s390x: the address.</summary>
    public ulong S390Address => Get<ulong>(KvmArchitecture.S390x, 0);

    /// <summary>s390x: the event type.</summary>
    public byte S390Type => Get<byte>(KvmArchitecture.S390x, 8);

    private T Get<T>(KvmArchitecture arch, int offset) where T : unmanaged
    {
        if (_arch != arch) throw new PlatformNotSupportedException($"This is a {_arch} debug exit, not {arch}.");
        return MemoryMarshal.Read<T>(Bytes.Slice(offset));
    }

    private Span<byte> Bytes => _bytes.Span;
}
