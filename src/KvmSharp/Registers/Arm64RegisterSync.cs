namespace KvmSharp.Registers;

/// <summary>Placeholder while the Arm64 strategy is written (being replaced in this change).</summary>
public sealed class Arm64RegisterSync : IRegisterSync, IRunHooks
{
    internal Arm64RegisterSync(Vcpu vcpu, Interop.MappedMemoryHandle? run = null) { _ = vcpu; _ = run; }
    /// <inheritdoc/>
    public KvmArchitecture Architecture => KvmArchitecture.Arm64;
    /// <inheritdoc/>
    public ulong ProgramCounter { get => throw new PlatformNotSupportedException(); set => throw new PlatformNotSupportedException(); }
    /// <inheritdoc/>
    public ulong GetGeneralRegister(int index) => throw new PlatformNotSupportedException();
    /// <inheritdoc/>
    public void SetGeneralRegister(int index, ulong value) => throw new PlatformNotSupportedException();
    /// <inheritdoc/>
    public MpState MpState { get => throw new PlatformNotSupportedException(); set => throw new PlatformNotSupportedException(); }
    /// <inheritdoc/>
    public void Synchronize() => throw new PlatformNotSupportedException();
    /// <inheritdoc/>
    public void Push(SyncLevel level) => throw new PlatformNotSupportedException();
    /// <inheritdoc/>
    public void Invalidate() => throw new PlatformNotSupportedException();
    /// <inheritdoc/>
    public RegisterState SaveState() => throw new PlatformNotSupportedException();
    /// <inheritdoc/>
    public void RestoreState(RegisterState state) => throw new PlatformNotSupportedException();
    void IRunHooks.BeforeRun() { }
    void IRunHooks.AfterRun(int result) { }
    void IRunHooks.Release() { }
}
