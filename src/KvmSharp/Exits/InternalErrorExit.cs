using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>An internal-error exit (<c>kvm_run.internal</c> / <c>emulation_failure</c>).</summary>
public readonly ref struct InternalErrorExit
{
    private const ulong InstructionBytesFlag = 1; // KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
    private static readonly int DataOffset = (int)Marshal.OffsetOf<kvm_run_internal>(nameof(kvm_run_internal.data));
    private static readonly int InstructionOffset = (int)Marshal.OffsetOf<kvm_run_emulation_failure>(nameof(kvm_run_emulation_failure.insn_bytes));
    private const int MaxInstructionBytes = 15; // insn_bytes[15]
    private readonly RunBytes _bytes; // kvm_run.internal, which emulation_failure overlays

    internal InternalErrorExit(RunBytes e) => _bytes = e;

    /// <summary>The suberror.</summary>
    public InternalErrorSuberror Suberror => (InternalErrorSuberror)Fields.suberror;

    /// <summary>The data words (<c>ndata</c> of them, at most 16); their meaning depends on the suberror and the kernel.</summary>
    public ReadOnlySpan<ulong> Data =>
        MemoryMarshal.Cast<byte, ulong>(_bytes.Span.Slice(DataOffset, kvm_run_internal.MaxData * sizeof(ulong)))
            .Slice(0, (int)Math.Min(Fields.ndata, (uint)kvm_run_internal.MaxData));

    /// <summary>
    /// For an emulation failure whose flags carry the instruction bytes (KVM_CAP_EXIT_ON_EMULATION_FAILURE):
    /// the bytes of the failing instruction; otherwise empty.
    /// </summary>
    public ReadOnlySpan<byte> InstructionBytes
    {
        get
        {
            ref var failure = ref _bytes.As<kvm_run_emulation_failure>();
            if (Suberror != InternalErrorSuberror.Emulation || failure.ndata < 2) return default;
            if ((failure.flags & InstructionBytesFlag) == 0) return default;
            return _bytes.Span.Slice(InstructionOffset, Math.Min((int)failure.insn_size, MaxInstructionBytes));
        }
    }

    private ref kvm_run_internal Fields => ref _bytes.As<kvm_run_internal>();
}
