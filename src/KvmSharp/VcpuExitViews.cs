using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>The direction of a port I/O exit.</summary>
public enum IoDirection : byte
{
    /// <summary>KVM_EXIT_IO_IN: the guest reads; the handler fills <see cref="IoExit.Data"/>.</summary>
    In = 0,
    /// <summary>KVM_EXIT_IO_OUT: the guest writes; <see cref="IoExit.Data"/> holds what it wrote.</summary>
    Out = 1,
}

/// <summary>A port I/O exit (<c>kvm_run.io</c>). For string I/O (<c>rep outs/ins</c>), <see cref="Count"/> items of <see cref="Size"/> bytes.</summary>
public readonly ref struct IoExit
{
    private readonly RunBytes _bytes;
    private readonly int _u;

    internal IoExit(RunBytes run, int unionOffset)
    {
        _bytes = run;
        _u = unionOffset;
    }

    /// <summary>In or out.</summary>
    public IoDirection Direction => (IoDirection)Bytes[_u];

    /// <summary>True for an OUT (guest write).</summary>
    public bool IsOut => Bytes[_u] == 1;

    /// <summary>Bytes per item: 1, 2 or 4.</summary>
    public int Size => Bytes[_u + 1];

    /// <summary>The port.</summary>
    public ushort Port => MemoryMarshal.Read<ushort>(Bytes.Slice(_u + 2));

    /// <summary>The number of items (1 unless string I/O).</summary>
    public int Count => (int)MemoryMarshal.Read<uint>(Bytes.Slice(_u + 4));

    /// <summary>
    /// The data: <see cref="Size"/> × <see cref="Count"/> bytes inside the <c>kvm_run</c> mapping, in
    /// the guest's byte order. For an IN, write the values the guest should read here before the next
    /// run and before writing any register: the first register write completes the IN with what is
    /// here (see <see cref="VcpuExit.Io"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">The kernel reported a data range outside the mapping.</exception>
    public Span<byte> Data
    {
        get
        {
            var run = Bytes;
            ulong offset = MemoryMarshal.Read<ulong>(run.Slice(_u + 8));
            ulong length = (ulong)run[_u + 1] * MemoryMarshal.Read<uint>(run.Slice(_u + 4));
            if (offset > (ulong)run.Length || length > (ulong)run.Length - offset)
                throw new InvalidOperationException($"KVM reported I/O data at offset {offset} length {length}, outside the {run.Length}-byte kvm_run mapping.");
            return run.Slice((int)offset, (int)length);
        }
    }

    /// <summary>The first item as a little-endian number (x86 port I/O is little-endian).</summary>
    public uint Value
    {
        get
        {
            var d = Data;
            return Size switch
            {
                1 => d[0],
                2 => BinaryPrimitives.ReadUInt16LittleEndian(d),
                _ => BinaryPrimitives.ReadUInt32LittleEndian(d),
            };
        }
    }

    /// <summary>Stores <paramref name="value"/> as the first item, little-endian, for an IN to read.</summary>
    public void SetValue(uint value)
    {
        var d = Data;
        switch (Size)
        {
            case 1: d[0] = (byte)value; break;
            case 2: BinaryPrimitives.WriteUInt16LittleEndian(d, (ushort)value); break;
            default: BinaryPrimitives.WriteUInt32LittleEndian(d, value); break;
        }
    }

    private Span<byte> Bytes => _bytes.Span;
}

/// <summary>An MMIO exit (<c>kvm_run.mmio</c>): an access to guest-physical memory that no writable slot backs.</summary>
public readonly ref struct MmioExit
{
    private readonly RunBytes _bytes;

    internal MmioExit(RunBytes mmio) => _bytes = mmio;

    /// <summary>The guest-physical address.</summary>
    public ulong Address => MemoryMarshal.Read<ulong>(Bytes);

    /// <summary>The access width in bytes (1–8).</summary>
    public int Length => (int)Math.Min(MemoryMarshal.Read<uint>(Bytes.Slice(16)), 8u);

    /// <summary>True for a guest write.</summary>
    public bool IsWrite => Bytes[20] != 0;

    /// <summary>The data (<see cref="Length"/> bytes, guest byte order): what the guest wrote, or for a read what it will get.</summary>
    public Span<byte> Data => Bytes.Slice(8, Length);

    private Span<byte> Bytes => _bytes.Span;
}

/// <summary>Kinds of <see cref="VcpuExitReason.SystemEvent"/> (<c>KVM_SYSTEM_EVENT_*</c>).</summary>
public enum SystemEventType : uint
{
    /// <summary>KVM_SYSTEM_EVENT_SHUTDOWN.</summary>
    Shutdown = 1,
    /// <summary>KVM_SYSTEM_EVENT_RESET.</summary>
    Reset = 2,
    /// <summary>KVM_SYSTEM_EVENT_CRASH.</summary>
    Crash = 3,
    /// <summary>KVM_SYSTEM_EVENT_WAKEUP.</summary>
    Wakeup = 4,
    /// <summary>KVM_SYSTEM_EVENT_SUSPEND.</summary>
    Suspend = 5,
    /// <summary>KVM_SYSTEM_EVENT_SEV_TERM.</summary>
    SevTerm = 6,
}

/// <summary>A system event exit (<c>kvm_run.system_event</c>).</summary>
public readonly ref struct SystemEventExit
{
    private readonly RunBytes _bytes;

    internal SystemEventExit(RunBytes e) => _bytes = e;

    /// <summary>The event type.</summary>
    public SystemEventType Type => (SystemEventType)MemoryMarshal.Read<uint>(Bytes);

    /// <summary>The event's data words (<c>ndata</c> of them, at most 16; the first is the legacy <c>flags</c>).</summary>
    public ReadOnlySpan<ulong> Data =>
        MemoryMarshal.Cast<byte, ulong>(Bytes.Slice(8, 128)).Slice(0, (int)Math.Min(MemoryMarshal.Read<uint>(Bytes.Slice(4)), 16u));

    /// <summary>The legacy <c>flags</c> word (aliases <c>data[0]</c>).</summary>
    public ulong Flags => MemoryMarshal.Read<ulong>(Bytes.Slice(8));

    private Span<byte> Bytes => _bytes.Span;
}

/// <summary><c>KVM_INTERNAL_ERROR_*</c> suberrors.</summary>
public enum InternalErrorSuberror : uint
{
    /// <summary>KVM_INTERNAL_ERROR_EMULATION: the instruction emulator failed.</summary>
    Emulation = 1,
    /// <summary>KVM_INTERNAL_ERROR_SIMUL_EX: an exception while delivering another.</summary>
    SimultaneousException = 2,
    /// <summary>KVM_INTERNAL_ERROR_DELIVERY_EV: an event delivery failed.</summary>
    DeliveryEvent = 3,
    /// <summary>KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON.</summary>
    UnexpectedExitReason = 4,
}

/// <summary>An internal-error exit (<c>kvm_run.internal</c> / <c>emulation_failure</c>).</summary>
public readonly ref struct InternalErrorExit
{
    private const ulong InstructionBytesFlag = 1; // KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
    private readonly RunBytes _bytes;

    internal InternalErrorExit(RunBytes e) => _bytes = e;

    /// <summary>The suberror.</summary>
    public InternalErrorSuberror Suberror => (InternalErrorSuberror)MemoryMarshal.Read<uint>(Bytes);

    /// <summary>The data words (<c>ndata</c> of them, at most 16); their meaning depends on the suberror and the kernel.</summary>
    public ReadOnlySpan<ulong> Data =>
        MemoryMarshal.Cast<byte, ulong>(Bytes.Slice(8, 128)).Slice(0, (int)Math.Min(MemoryMarshal.Read<uint>(Bytes.Slice(4)), 16u));

    /// <summary>
    /// For an emulation failure whose flags carry the instruction bytes (KVM_CAP_EXIT_ON_EMULATION_FAILURE):
    /// the bytes of the failing instruction; otherwise empty.
    /// </summary>
    public ReadOnlySpan<byte> InstructionBytes
    {
        get
        {
            if (Suberror != InternalErrorSuberror.Emulation || MemoryMarshal.Read<uint>(Bytes.Slice(4)) < 2) return default;
            if ((MemoryMarshal.Read<ulong>(Bytes.Slice(8)) & InstructionBytesFlag) == 0) return default;
            return Bytes.Slice(17, Math.Min((int)Bytes[16], 15));
        }
    }

    private Span<byte> Bytes => _bytes.Span;
}

/// <summary>A failed VM entry (<c>kvm_run.fail_entry</c>).</summary>
public readonly ref struct FailEntryExit
{
    private readonly RunBytes _bytes;

    internal FailEntryExit(RunBytes e) => _bytes = e;

    /// <summary>The hardware's entry failure reason (VMX exit qualification / SVM code).</summary>
    public ulong HardwareEntryFailureReason => MemoryMarshal.Read<ulong>(Bytes);

    /// <summary>The host CPU the entry failed on.</summary>
    public uint Cpu => MemoryMarshal.Read<uint>(Bytes.Slice(8));

    private Span<byte> Bytes => _bytes.Span;
}

/// <summary>An x86 exception exit (<c>kvm_run.ex</c>).</summary>
public readonly ref struct ExceptionExit
{
    private readonly RunBytes _bytes;

    internal ExceptionExit(RunBytes e) => _bytes = e;

    /// <summary>The exception vector.</summary>
    public uint Vector => MemoryMarshal.Read<uint>(Bytes);

    /// <summary>The error code.</summary>
    public uint ErrorCode => MemoryMarshal.Read<uint>(Bytes.Slice(4));

    private Span<byte> Bytes => _bytes.Span;
}

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

/// <summary>An s390x SIE intercept (<c>kvm_run.s390_sieic</c>).</summary>
public readonly ref struct S390SieicExit
{
    private readonly RunBytes _bytes;

    internal S390SieicExit(RunBytes e) => _bytes = e;

    /// <summary>The intercept code.</summary>
    public byte InterceptCode => Bytes[0];

    /// <summary>The first halfword of the intercepted instruction (IPA).</summary>
    public ushort Ipa => MemoryMarshal.Read<ushort>(Bytes.Slice(2));

    /// <summary>The remaining instruction bytes (IPB).</summary>
    public uint Ipb => MemoryMarshal.Read<uint>(Bytes.Slice(4));

    private Span<byte> Bytes => _bytes.Span;
}

/// <summary>An s390x user-controlled VM translation fault (<c>kvm_run.s390_ucontrol</c>).</summary>
public readonly ref struct S390UcontrolExit
{
    private readonly RunBytes _bytes;

    internal S390UcontrolExit(RunBytes e) => _bytes = e;

    /// <summary>The translation-exception code.</summary>
    public ulong TranslationExceptionCode => MemoryMarshal.Read<ulong>(Bytes);

    /// <summary>The program-interruption code.</summary>
    public uint ProgramCode => MemoryMarshal.Read<uint>(Bytes.Slice(8));

    private Span<byte> Bytes => _bytes.Span;
}

/// <summary>An arm64 data abort without a valid instruction syndrome (<c>kvm_run.arm_nisv</c>).</summary>
public readonly ref struct ArmNisvExit
{
    private readonly RunBytes _bytes;

    internal ArmNisvExit(RunBytes e) => _bytes = e;

    /// <summary>ESR_EL2 with the ISS bits the kernel may expose.</summary>
    public ulong EsrIss => MemoryMarshal.Read<ulong>(Bytes);

    /// <summary>The faulting intermediate physical address.</summary>
    public ulong FaultIpa => MemoryMarshal.Read<ulong>(Bytes.Slice(8));

    private Span<byte> Bytes => _bytes.Span;
}

/// <summary>
/// Bytes of a vCPU's <c>kvm_run</c> that a view reads: refused with <see cref="ObjectDisposedException"/>
/// once the vCPU is disposed (its mapping is gone).
/// </summary>
internal readonly ref struct RunBytes
{
    private readonly Span<byte> _bytes;
    private readonly Vcpu _vcpu;

    public RunBytes(Vcpu vcpu, Span<byte> bytes)
    {
        _vcpu = vcpu;
        _bytes = bytes;
    }

    public Span<byte> Span
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
        get
        {
            _vcpu.ThrowIfDisposed();
            return _bytes;
        }
    }

    public RunBytes Slice(int start, int length) => new(_vcpu, _bytes.Slice(start, length));
}
