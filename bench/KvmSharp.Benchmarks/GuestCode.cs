namespace KvmSharp.Benchmarks;

/// <summary>
/// The guest every PIO benchmark runs: real mode, CS base 0, an endless loop of one port write, so
/// that each KVM_RUN is exactly one PIO exit round trip.
/// </summary>
internal static class GuestCode
{
    /// <summary>Guest-physical (and, with CS base 0, linear) address of the code; also the initial RIP.</summary>
    public const ulong Address = 0x1000;

    /// <summary>Size of the single memory slot, at guest-physical 0.</summary>
    public const ulong MemorySize = 0x10000;

    /// <summary>The port the guest writes.</summary>
    public const ushort Port = 0x10;

    /// <summary><c>out 0x10, al ; jmp short $-4</c> (back to the <c>out</c>).</summary>
    public static ReadOnlySpan<byte> Code => [0xE6, (byte)Port, 0xEB, 0xFC];
}
