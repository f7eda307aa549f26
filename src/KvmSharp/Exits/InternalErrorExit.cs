using System.Runtime.InteropServices;

namespace KvmSharp;

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
