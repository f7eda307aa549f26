using System.Runtime.CompilerServices;

namespace KvmSharp.Interop;

/// <summary>
/// Fixed-offset reads and writes of a vCPU's <c>kvm_run</c> page by its cached address: the
/// memory-view layer for the per-exit hot path (<see cref="Vcpu.Run()"/> and the x86 run hooks),
/// where each accessor must be one tiny inlinee — that path is inlined into callers' exit loops,
/// which share one JIT inlining budget with the caller's own code.
/// </summary>
/// <remarks>
/// Callers pass the address of a live <c>kvm_run</c> mapping they own and constant offsets of
/// fields of <c>struct kvm_run</c>; the vCPU checks at creation that the mapping is at least
/// <c>sizeof(struct kvm_run)</c> long.
/// </remarks>
internal static unsafe class KvmRunPage
{
    /// <summary><c>kvm_run.immediate_exit</c>, the same on every architecture (a test checks all three layouts).</summary>
    public const int ImmediateExit = 1;

    /// <summary><c>kvm_run.exit_reason</c>, the same on every architecture (a test checks all three layouts).</summary>
    public const int ExitReason = 8;

    /// <summary><c>kvm_run.ready_for_interrupt_injection</c>, the same on every architecture (a test checks all three layouts).</summary>
    public const int ReadyForInterruptInjection = 12;

    /// <summary><c>kvm_run.if_flag</c>, the same on every architecture (a test checks all three layouts).</summary>
    public const int IfFlag = 13;

    /// <summary>The size of <c>kvm_run</c>'s exit union (its <c>padding[256]</c> member; a test checks all three layouts).</summary>
    public const int ExitUnionSize = 256;

    // SAFETY (all members): run + offset .. + size lies inside the kvm_run mapping (see the remarks),
    // which the caller keeps mapped; kvm_run fields are naturally aligned.

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte ReadByte(nint run, int offset) => *(byte*)(run + offset);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void WriteByte(nint run, int offset, byte value) => *(byte*)(run + offset) = value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint ReadUInt32(nint run, int offset) => *(uint*)(run + offset);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long ReadInt64(nint run, int offset) => *(long*)(run + offset);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void OrInt64(nint run, int offset, long value) => *(long*)(run + offset) |= value;
}
