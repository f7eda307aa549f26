namespace KvmSharp.Guests;

/// <summary>One entry of an x86 e820 memory map (<c>struct boot_e820_entry</c>).</summary>
/// <param name="Address">The first byte.</param>
/// <param name="Size">Bytes in the range.</param>
/// <param name="Type">1 = usable RAM (<see cref="Ram"/>), 2 = reserved (<see cref="Reserved"/>).</param>
public readonly record struct E820Entry(ulong Address, ulong Size, uint Type)
{
    /// <summary>E820_TYPE_RAM: memory the kernel may use.</summary>
    public const uint Ram = 1;

    /// <summary>E820_TYPE_RESERVED: memory the kernel must leave alone (here: read-only slots, which hold ROM).</summary>
    public const uint Reserved = 2;

    /// <summary>One past the last byte.</summary>
    public ulong End => Address + Size;
}
