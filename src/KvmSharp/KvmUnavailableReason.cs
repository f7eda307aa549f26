namespace KvmSharp;

/// <summary>Why KVM cannot be used on this machine.</summary>
public enum KvmUnavailableReason
{
    /// <summary>The device node (normally <c>/dev/kvm</c>) does not exist: the kernel has no KVM module loaded.</summary>
    DeviceMissing,

    /// <summary>The device exists but this process may not open it (add the user to the <c>kvm</c> group).</summary>
    PermissionDenied,

    /// <summary><c>KVM_GET_API_VERSION</c> did not return 12, the only stable KVM API.</summary>
    UnsupportedApiVersion,

    /// <summary>Opening the device failed for another reason; see <see cref="KvmException.Errno"/>.</summary>
    OpenFailed,
}
