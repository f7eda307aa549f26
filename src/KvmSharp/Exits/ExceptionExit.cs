using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>An x86 exception exit (<c>kvm_run.ex</c>).</summary>
public readonly ref struct ExceptionExit
{
    private readonly RunBytes _bytes;

    internal ExceptionExit(RunBytes e) => _bytes = e;

    /// <summary>The exception vector.</summary>
    public uint Vector => Fields.exception;

    /// <summary>The error code.</summary>
    public uint ErrorCode => Fields.error_code;

    private ref kvm_run_ex Fields => ref _bytes.As<kvm_run_ex>();
}
