namespace KvmSharp.Interop;

/// <summary>
/// An in-kernel device made with KVM_CREATE_DEVICE (api.rst 4.80; needs KVM_CAP_DEVICE_CTRL): its fd,
/// and the device-control ioctls on it (KVM_SET/GET/HAS_DEVICE_ATTR, api.rst 4.81–4.82), whose
/// <c>kvm_device_attr.addr</c> points at the attribute's value. Which groups and attributes exist is
/// the device type's own document (<c>Documentation/virt/kvm/devices/</c>). Closing the fd does not
/// remove the device: KVM keeps a device until its VM is closed.
/// </summary>
internal sealed class KvmDevice : IDisposable
{
    private readonly IKernel _kernel;
    private readonly KvmFdHandle _fd;

    private KvmDevice(IKernel kernel, KvmFdHandle fd, string name)
    {
        _kernel = kernel;
        _fd = fd;
        Name = name;
    }

    /// <summary>The device type's C name (<c>KVM_DEV_TYPE_ARM_VGIC_V3</c>), for messages.</summary>
    public string Name { get; }

    /// <summary>The device fd (the escape hatch's handle).</summary>
    public KvmFdHandle Handle => _fd;

    /// <summary>
    /// Whether KVM can create a device of <paramref name="type"/> in the VM <paramref name="vmFd"/>,
    /// asked with KVM_CREATE_DEVICE_TEST (nothing is created): ENODEV means this KVM has no such device.
    /// </summary>
    /// <exception cref="KvmException">KVM failed otherwise.</exception>
    public static bool IsSupported(IKernel kernel, int vmFd, uint type, string name)
    {
        var create = new kvm_create_device { type = type, flags = kvm_create_device.KVM_CREATE_DEVICE_TEST };
        int r = kernel.Ioctl(vmFd, KvmIoctls.KVM_CREATE_DEVICE, ref create);
        if (r == -Errno.ENODEV) return false;
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CREATE_DEVICE, r, $"{name}, KVM_CREATE_DEVICE_TEST");
        return true;
    }

    /// <summary>Creates a device of <paramref name="type"/> in the VM <paramref name="vmFd"/> and takes its fd.</summary>
    /// <exception cref="KvmException">KVM refused (e.g. EEXIST: the VM has one already, for a device KVM allows once).</exception>
    public static KvmDevice Create(IKernel kernel, int vmFd, uint type, string name)
    {
        var create = new kvm_create_device { type = type };
        int r = kernel.Ioctl(vmFd, KvmIoctls.KVM_CREATE_DEVICE, ref create);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CREATE_DEVICE, r, name);
        return new KvmDevice(kernel, new KvmFdHandle(kernel, (int)create.fd), name);
    }

    /// <summary>Whether the device has attribute <paramref name="attr"/> of <paramref name="group"/> (KVM_HAS_DEVICE_ATTR: 0 yes, ENXIO no).</summary>
    /// <exception cref="KvmException">KVM failed otherwise.</exception>
    public bool Has(ulong group, ulong attr)
    {
        var a = new kvm_device_attr { group = (uint)group, attr = attr };
        int r = Call(KvmIoctls.KVM_HAS_DEVICE_ATTR, ref a);
        if (r == -Errno.ENXIO) return false;
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_HAS_DEVICE_ATTR, r, Describe(group, attr, null));
        return true;
    }

    /// <summary>Sets an attribute that takes no value (a command, such as the vGIC's CTRL_INIT): <c>addr</c> 0.</summary>
    /// <exception cref="KvmException">KVM refused; the message names the group and the attribute.</exception>
    public void Set(ulong group, ulong attr, string what)
    {
        var a = new kvm_device_attr { group = (uint)group, attr = attr };
        Check(KvmIoctls.KVM_SET_DEVICE_ATTR, Call(KvmIoctls.KVM_SET_DEVICE_ATTR, ref a), group, attr, what);
    }

    /// <summary>Sets an attribute to <paramref name="value"/> (KVM reads <c>sizeof(T)</c> bytes at <c>addr</c>).</summary>
    /// <exception cref="KvmException">KVM refused; the message names the group, the attribute and <paramref name="what"/>.</exception>
    public unsafe void Set<T>(ulong group, ulong attr, T value, string what) where T : unmanaged
    {
        // SAFETY: `value` is a local of this frame, alive for the whole synchronous ioctl; KVM reads sizeof(T) bytes of it.
        var a = new kvm_device_attr { group = (uint)group, attr = attr, addr = (ulong)&value };
        Check(KvmIoctls.KVM_SET_DEVICE_ATTR, Call(KvmIoctls.KVM_SET_DEVICE_ATTR, ref a), group, attr, what);
    }

    /// <summary>Reads an attribute (KVM writes <c>sizeof(T)</c> bytes at <c>addr</c>).</summary>
    /// <exception cref="KvmException">KVM refused; the message names the group, the attribute and <paramref name="what"/>.</exception>
    public unsafe T Get<T>(ulong group, ulong attr, string what) where T : unmanaged
    {
        T value = default;
        // SAFETY: `value` is a local of this frame, alive for the whole synchronous ioctl; KVM writes sizeof(T) bytes of it.
        var a = new kvm_device_attr { group = (uint)group, attr = attr, addr = (ulong)&value };
        Check(KvmIoctls.KVM_GET_DEVICE_ATTR, Call(KvmIoctls.KVM_GET_DEVICE_ATTR, ref a), group, attr, what);
        return value;
    }

    /// <summary>Closes the device fd (the device stays in its VM). Idempotent.</summary>
    public void Dispose() => _fd.Dispose();

    private int Call(KvmIoctl request, ref kvm_device_attr attr)
    {
        bool added = false;
        try
        {
            // Holds the fd against a concurrent Dispose for the call; a closed device throws here.
            _fd.DangerousAddRef(ref added);
            return _kernel.Ioctl(_fd.Fd, request, ref attr);
        }
        finally
        {
            if (added) _fd.DangerousRelease();
        }
    }

    private void Check(KvmIoctl request, int r, ulong group, ulong attr, string what)
    {
        if (r < 0) ThrowHelper.ThrowKvm(request, r, Describe(group, attr, what));
    }

    private string Describe(ulong group, ulong attr, string? what) =>
        $"{Name}, group {group}, attribute {attr}" + (what is null ? "" : $" ({what})");
}
