namespace KvmSharp.Registers;

/// <summary>
/// s390x KVM_GET/SET_ONE_REG register ids (<c>KVM_REG_S390 | size | index</c>), as in the s390x
/// <c>asm/kvm.h</c>.
/// </summary>
internal static class S390xRegisterIds
{
    /// <summary><c>KVM_REG_S390</c>: the architecture bits of every s390x id.</summary>
    public const ulong Arch = 0x5000_0000_0000_0000;

    /// <summary><c>KVM_REG_SIZE_U32</c>.</summary>
    public const ulong SizeU32 = 0x0020_0000_0000_0000;

    /// <summary><c>KVM_REG_SIZE_U64</c>.</summary>
    public const ulong SizeU64 = 0x0030_0000_0000_0000;

    /// <summary>The TOD programmable register (32 bits).</summary>
    public const ulong Todpr = Arch | SizeU32 | 0x1;

    /// <summary>The difference between the guest's TOD clock and the host's.</summary>
    public const ulong EpochDifference = Arch | SizeU64 | 0x2;

    /// <summary>The CPU timer.</summary>
    public const ulong CpuTimer = Arch | SizeU64 | 0x3;

    /// <summary>The clock comparator.</summary>
    public const ulong ClockComparator = Arch | SizeU64 | 0x4;

    /// <summary>The pfault token.</summary>
    public const ulong PfaultToken = Arch | SizeU64 | 0x5;

    /// <summary>The pfault compare mask.</summary>
    public const ulong PfaultCompare = Arch | SizeU64 | 0x6;

    /// <summary>The pfault select mask.</summary>
    public const ulong PfaultSelect = Arch | SizeU64 | 0x7;

    /// <summary>The program parameter.</summary>
    public const ulong ProgramParameter = Arch | SizeU64 | 0x8;

    /// <summary>The guest breaking-event address.</summary>
    public const ulong Gbea = Arch | SizeU64 | 0x9;
}
