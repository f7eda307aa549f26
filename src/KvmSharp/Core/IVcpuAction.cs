namespace KvmSharp;

/// <summary>An Invoke action queued on a <see cref="VcpuCore"/>: run on the owning thread, or failed at disposal.</summary>
internal interface IVcpuAction
{
    /// <summary>Runs the action, capturing its outcome (never throws).</summary>
    void Execute();

    /// <summary>Completes the action without running it.</summary>
    void Fail(Exception error);
}
