using System.Runtime.InteropServices;

namespace KvmSharp;

/// <summary>An s390x user-controlled VM translation fault (<c>kvm_run.s390_ucontrol</c>).</summary>
public readonly ref struct S390UcontrolExit
{
    private readonly RunBytes _bytes;

    internal S390UcontrolExit(RunBytes e) => _bytes = e;

    /// <summary>The translation-exception code.</summary>
    public ulong TranslationExceptionCode => MemoryMarshal.Read<ulong>(Bytes);

    /// <summary>The program-interruption code.</summary>
    public uint ProgramCode => MemoryMarshal.Read<uint>(Bytes.Slice(8));

    private Span<byte> Bytes => _bytes.Span;
}
