namespace KvmSharp.Benchmarks;

/// <summary>
/// The guests the PIO benchmarks run: real mode, CS base 0, an endless loop of one port write, so
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

    /// <summary><c>out 0x10, al ; jmp short $-4</c> (back to the <c>out</c>). Used by <see cref="PioExitBenchmarks"/>.</summary>
    public static ReadOnlySpan<byte> Code => [0xE6, (byte)Port, 0xEB, 0xFC];

    /// <summary>
    /// <c>out 0x10, ax ; jmp short $-4</c>: each exit reports the AX the host wrote at the previous
    /// exit, so a register write that did not reach the guest is caught. Used by
    /// <see cref="RegisterSyncBenchmarks"/>.
    /// </summary>
    public static ReadOnlySpan<byte> OutAxCode => [0xE7, (byte)Port, 0xEB, 0xFC];

    /// <summary>
    /// Checks the RIP seen at the first exit of <see cref="OutAxCode"/>, which every later exit must
    /// repeat. Where it points is the kernel's choice: hardware KVM's fast PIO path reports the
    /// <c>out</c> itself and skips it at the next KVM_RUN; the instruction emulator (kvm-pvm's real
    /// mode) has already completed the <c>out</c>, so RIP points at the <c>jmp</c>.
    /// </summary>
    public static ulong CheckOutAxExitRip(ulong rip) =>
        rip is Address or Address + 2
            ? rip
            : throw new InvalidOperationException($"RIP 0x{rip:x} at the first exit is neither the out (0x{Address:x}) nor the jmp after it.");
}
