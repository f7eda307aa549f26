namespace KvmSharp.Guests;

/// <summary>Options for <see cref="X86LongMode.Setup"/>.</summary>
public sealed class X86LongModeOptions
{
    /// <summary>Start at CPL3 with the user segments (default false: CPL0).</summary>
    public bool UserMode { get; init; }

    /// <summary>Load the IDT (default true). Without it any fault is a triple fault: a SHUTDOWN exit.</summary>
    public bool InstallIdt { get; init; } = true;

    /// <summary>The port the fault handlers write the vector to (default 0xF4).</summary>
    public byte FaultPort { get; init; } = 0xF4;

    /// <summary>Enable AVX state: CR4.OSXSAVE and XCR0 = x87|SSE|AVX (default false).</summary>
    public bool EnableAvx { get; init; }

    /// <summary>
    /// RFLAGS.IOPL, 0–3 (default 3). Code whose CPL is at most this may use IN/OUT/INS/OUTS on every
    /// port, and CLI/STI/POPF may change IF; at a higher CPL port access is decided by the TSS I/O
    /// permission bitmap alone (which allows every port, but see <see cref="X86LongMode"/>'s remarks
    /// for CPUs that refuse it). Irrelevant at CPL0.
    /// </summary>
    public byte IoPrivilegeLevel { get; init; } = 3;
}
