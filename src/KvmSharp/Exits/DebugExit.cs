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
    public uint X86Exception => As<Interop.X86.kvm_debug_exit_arch>(KvmArchitecture.X86_64).exception;

    /// <summary>x86: the guest RIP.</summary>
    public ulong X86Pc => As<Interop.X86.kvm_debug_exit_arch>(KvmArchitecture.X86_64).pc;

    /// <summary>x86: DR6.</summary>
    public ulong X86Dr6 => As<Interop.X86.kvm_debug_exit_arch>(KvmArchitecture.X86_64).dr6;

    /// <summary>x86: DR7.</summary>
    public ulong X86Dr7 => As<Interop.X86.kvm_debug_exit_arch>(KvmArchitecture.X86_64).dr7;

    /// <summary>arm64: ESR_EL2 bits 31:0.</summary>
    public uint ArmHsr => As<Interop.Arm64.kvm_debug_exit_arch>(KvmArchitecture.Arm64).hsr;

    /// <summary>arm64: ESR_EL2 bits 61:32.</summary>
    public uint ArmHsrHigh => As<Interop.Arm64.kvm_debug_exit_arch>(KvmArchitecture.Arm64).hsr_high;

    /// <summary>arm64: the faulting address of a watchpoint.</summary>
    public ulong ArmFar => As<Interop.Arm64.kvm_debug_exit_arch>(KvmArchitecture.Arm64).far;

    /// <summary>s390x: the address.</summary>
    public ulong S390Address => As<Interop.S390x.kvm_debug_exit_arch>(KvmArchitecture.S390x).addr;

    /// <summary>s390x: the event type.</summary>
    public byte S390Type => As<Interop.S390x.kvm_debug_exit_arch>(KvmArchitecture.S390x).type;

    /// <summary>The union as <paramref name="arch"/>'s <c>struct kvm_debug_exit_arch</c> (<typeparamref name="T"/>).</summary>
    private ref T As<T>(KvmArchitecture arch) where T : unmanaged
    {
        if (_arch != arch) throw new PlatformNotSupportedException($"This is a {_arch} debug exit, not {arch}.");
        return ref _bytes.As<T>();
    }

    private Span<byte> Bytes => _bytes.Span;
}
