namespace KvmSharp;

/// <summary>Flags of a memory slot (<c>KVM_MEM_*</c>).</summary>
[Flags]
public enum MemorySlotFlags : uint
{
    /// <summary>Ordinary read/write guest RAM.</summary>
    None = 0,

    /// <summary>KVM_MEM_LOG_DIRTY_PAGES: track pages the guest writes (see the dirty-log APIs).</summary>
    LogDirtyPages = 1 << 0,

    /// <summary>KVM_MEM_READONLY: guest writes become MMIO exits and leave memory unchanged. Needs KVM_CAP_READONLY_MEM.</summary>
    ReadOnly = 1 << 1,
}
