namespace KvmSharp.Lab;

/// <summary>Whether this process can use KVM right here, and why (not).</summary>
/// <param name="IsUsable">True when the device opened read/write and speaks KVM API version 12.</param>
/// <param name="Reason">What was found, e.g. <c>/dev/kvm does not exist (ENOENT)</c>.</param>
public sealed record NativeKvmStatus(bool IsUsable, string Reason);
