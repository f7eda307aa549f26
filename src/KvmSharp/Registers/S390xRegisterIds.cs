using KvmSharp.Interop;

namespace KvmSharp.Registers;

/// <summary>
/// s390x KVM_GET/SET_ONE_REG register ids (<c>KVM_REG_S390 | size | index</c>), as in the s390x
/// <c>asm/kvm.h</c>. The layout tests compare each with the header macro its
/// <see cref="UapiValueAttribute"/> names.
/// </summary>
internal static class S390xRegisterIds
{
    /// <summary><c>KVM_REG_S390</c>: the architecture bits of every s390x id.</summary>
    [UapiValue("KVM_REG_S390")]
    public const ulong Arch = 0x5000_0000_0000_0000;

    /// <summary><c>KVM_REG_SIZE_U32</c>.</summary>
    [UapiValue("KVM_REG_SIZE_U32")]
    public const ulong SizeU32 = 0x0020_0000_0000_0000;

    /// <summary><c>KVM_REG_SIZE_U64</c>.</summary>
    [UapiValue("KVM_REG_SIZE_U64")]
    public const ulong SizeU64 = 0x0030_0000_0000_0000;

    /// <summary>The TOD programmable register (32 bits).</summary>
    [UapiValue("KVM_REG_S390_TODPR")]
    public const ulong Todpr = Arch | SizeU32 | 0x1;

    /// <summary>The difference between the guest's TOD clock and the host's.</summary>
    [UapiValue("KVM_REG_S390_EPOCHDIFF")]
    public const ulong EpochDifference = Arch | SizeU64 | 0x2;

    /// <summary>The CPU timer.</summary>
    [UapiValue("KVM_REG_S390_CPU_TIMER")]
    public const ulong CpuTimer = Arch | SizeU64 | 0x3;

    /// <summary>The clock comparator.</summary>
    [UapiValue("KVM_REG_S390_CLOCK_COMP")]
    public const ulong ClockComparator = Arch | SizeU64 | 0x4;

    /// <summary>The pfault token.</summary>
    [UapiValue("KVM_REG_S390_PFTOKEN")]
    public const ulong PfaultToken = Arch | SizeU64 | 0x5;

    /// <summary>The pfault compare mask.</summary>
    [UapiValue("KVM_REG_S390_PFCOMPARE")]
    public const ulong PfaultCompare = Arch | SizeU64 | 0x6;

    /// <summary>The pfault select mask.</summary>
    [UapiValue("KVM_REG_S390_PFSELECT")]
    public const ulong PfaultSelect = Arch | SizeU64 | 0x7;

    /// <summary>The program parameter.</summary>
    [UapiValue("KVM_REG_S390_PP")]
    public const ulong ProgramParameter = Arch | SizeU64 | 0x8;

    /// <summary>The guest breaking-event address.</summary>
    [UapiValue("KVM_REG_S390_GBEA")]
    public const ulong Gbea = Arch | SizeU64 | 0x9;
}
