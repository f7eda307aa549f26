namespace KvmSharp.Guests;

/// <summary>Where <see cref="X86LinuxBoot.Load"/> put each piece of a Linux boot in guest-physical memory.</summary>
/// <param name="KernelAddress">The protected-mode kernel's load address.</param>
/// <param name="EntryPoint">The 64-bit entry point (load address + 0x200) the vCPU starts at.</param>
/// <param name="ZeroPage">The boot parameters (<c>struct boot_params</c>, "zero page"); RSI points at it.</param>
/// <param name="CommandLineAddress">The NUL-terminated command line.</param>
/// <param name="InitrdAddress">The initial RAM disk, or 0 without one.</param>
/// <param name="InitrdSize">Its size in bytes (0 without one).</param>
/// <param name="MemoryMap">The e820 map given to the kernel, in address order.</param>
public sealed record LinuxBootLayout(
    ulong KernelAddress,
    ulong EntryPoint,
    ulong ZeroPage,
    ulong CommandLineAddress,
    ulong InitrdAddress,
    ulong InitrdSize,
    IReadOnlyList<E820Entry> MemoryMap);
