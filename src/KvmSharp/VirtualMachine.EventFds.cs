using KvmSharp.Interop;

namespace KvmSharp;

// Eventfds KVM signals or is signalled through without an exit to user space: ioeventfd (a guest
// write to an address signals an eventfd) and irqfd (signalling an eventfd raises a guest interrupt).
public sealed partial class VirtualMachine
{
    /// <summary>
    /// Makes a guest write to <paramref name="address"/> signal <paramref name="eventFd"/> inside
    /// KVM: the write completes without an exit to user space (the vCPU goes on at once) and the
    /// eventfd's counter grows by one per write. Wraps KVM_IOEVENTFD; needs KVM_CAP_IOEVENTFD.
    /// </summary>
    /// <param name="eventFd">The eventfd to signal.</param>
    /// <param name="address">The guest-physical MMIO address, or the I/O port with <paramref name="isPio"/>.
    /// For MMIO it should be an address no memory slot covers (a write to RAM never leaves the guest).</param>
    /// <param name="length">The access size that matches: 1, 2, 4 or 8 bytes; or 0 for an MMIO write of any size
    /// (needs KVM_CAP_IOEVENTFD_ANY_LENGTH, and no <paramref name="dataMatch"/>).</param>
    /// <param name="isPio">Whether <paramref name="address"/> is an x86 I/O port (OUT instructions).</param>
    /// <param name="dataMatch">Only writes of this value signal the eventfd; others exit to user space as usual.</param>
    /// <exception cref="ArgumentOutOfRangeException">A length other than 0, 1, 2, 4 or 8; a data match wider
    /// than the length; a range that wraps; a port above 0xFFFF.</exception>
    /// <exception cref="PlatformNotSupportedException"><paramref name="isPio"/> on a VM that is not x86_64.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_IOEVENTFD (or KVM_CAP_IOEVENTFD_ANY_LENGTH for length 0).</exception>
    /// <exception cref="KvmException">KVM refused, e.g. EEXIST: the same address, length and data match are registered already.</exception>
    /// <exception cref="ObjectDisposedException">The VM or the eventfd is disposed.</exception>
    public void AddIoEventFd(EventFd eventFd, ulong address, int length, bool isPio = false, ulong? dataMatch = null) =>
        IoEventFd(eventFd, address, length, isPio, dataMatch, assign: true);

    /// <summary>
    /// Removes a registration made by <see cref="AddIoEventFd"/> with the same arguments: writes there
    /// exit to user space again. Wraps KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN.
    /// </summary>
    /// <inheritdoc cref="AddIoEventFd" path="/param"/>
    /// <exception cref="KvmException">KVM refused, e.g. ENOENT: no such registration.</exception>
    /// <exception cref="ObjectDisposedException">The VM or the eventfd is disposed.</exception>
    public void RemoveIoEventFd(EventFd eventFd, ulong address, int length, bool isPio = false, ulong? dataMatch = null) =>
        IoEventFd(eventFd, address, length, isPio, dataMatch, assign: false);

    /// <summary>
    /// Makes signalling <paramref name="eventFd"/> raise interrupt line <paramref name="gsi"/> of the
    /// in-kernel interrupt controller — an edge: KVM asserts and deasserts the line — without a
    /// call from user space into KVM (any thread, or another process, may signal it). Wraps
    /// KVM_IRQFD; needs KVM_CAP_IRQFD and, on x86, <see cref="CreateIrqChip"/> first; on arm64, an
    /// initialised <see cref="CreateGicV3">GICv3</see>.
    /// </summary>
    /// <param name="eventFd">The eventfd whose signals become interrupts.</param>
    /// <param name="gsi">The global system interrupt (x86: 0–15 reach the PICs and the IOAPIC, 16–23 the IOAPIC;
    /// arm64: SPI INTID − 32, KVM's default routing).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="gsi"/> is negative.</exception>
    /// <exception cref="InvalidOperationException">x86: the VM has no in-kernel interrupt controller; arm64: no initialised GICv3.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_IRQFD.</exception>
    /// <exception cref="KvmException">KVM refused, e.g. EBUSY: this eventfd is registered already.</exception>
    /// <exception cref="ObjectDisposedException">The VM or the eventfd is disposed.</exception>
    public void AddIrqFd(EventFd eventFd, int gsi) => IrqFd(eventFd, gsi, assign: true);

    /// <summary>Removes a registration made by <see cref="AddIrqFd"/>. Wraps KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN.</summary>
    /// <inheritdoc cref="AddIrqFd" path="/param"/>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="gsi"/> is negative.</exception>
    /// <exception cref="KvmException">KVM refused.</exception>
    /// <exception cref="ObjectDisposedException">The VM or the eventfd is disposed.</exception>
    public void RemoveIrqFd(EventFd eventFd, int gsi) => IrqFd(eventFd, gsi, assign: false);

    private void IoEventFd(EventFd eventFd, ulong address, int length, bool isPio, ulong? dataMatch, bool assign)
    {
        ArgumentNullException.ThrowIfNull(eventFd);
        if (length is not (0 or 1 or 2 or 4 or 8))
            throw new ArgumentOutOfRangeException(nameof(length), length, "An ioeventfd matches writes of 1, 2, 4 or 8 bytes, or of any size (0, MMIO only).");
        if (isPio) RequirePorts(address, (ulong)length, nameof(AddIoEventFd));
        if (address + (ulong)length < address)
            throw new ArgumentOutOfRangeException(nameof(address), $"0x{address:X} + {length} bytes wraps around.");
        if (dataMatch is ulong match && (length == 0 || (length < 8 && match >> (8 * length) != 0)))
            throw new ArgumentOutOfRangeException(nameof(dataMatch), $"Data match 0x{match:X} does not fit a {length}-byte write: it would never match.");
        if (assign)
        {
            RequireCapability(KvmCapability.IoEventFd, "KVM_CAP_IOEVENTFD", nameof(AddIoEventFd));
            if (length == 0) RequireCapability(KvmCapability.IoEventFdAnyLength, "KVM_CAP_IOEVENTFD_ANY_LENGTH", nameof(AddIoEventFd) + " with length 0");
        }

        using var fd = eventFd.Use();
        var args = new kvm_ioeventfd
        {
            addr = address,
            len = (uint)length,
            fd = fd.Number,
            datamatch = dataMatch ?? 0,
            flags = (isPio ? kvm_ioeventfd.KVM_IOEVENTFD_FLAG_PIO : 0)
                | (dataMatch is null ? 0 : kvm_ioeventfd.KVM_IOEVENTFD_FLAG_DATAMATCH)
                | (assign ? 0 : kvm_ioeventfd.KVM_IOEVENTFD_FLAG_DEASSIGN),
        };
        string what = $"{(assign ? "adding" : "removing")} {(isPio ? "port" : "MMIO")} 0x{address:X}, length {length}"
            + (dataMatch is ulong m ? $", data match 0x{m:X}" : ", any data");
        Kernel.IoctlSet(Fd, KvmIoctls.KVM_IOEVENTFD, args, what);
    }

    /// <summary>
    /// For a port-I/O registration: the VM is x86 and <paramref name="length"/> (at least 1) ports from
    /// <paramref name="first"/> lie inside 0–0xFFFF.
    /// </summary>
    private void RequirePorts(ulong first, ulong length, string member)
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, member + " with isPio");
        if (length == 0 || first > 0xFFFF || length > 0x10000 - first)
            throw new ArgumentOutOfRangeException("address", $"{member} with isPio needs 1 or more ports inside 0–0xFFFF (port 0x{first:X}, length {length}).");
    }

    private void IrqFd(EventFd eventFd, int gsi, bool assign)
    {
        ArgumentNullException.ThrowIfNull(eventFd);
        ArgumentOutOfRangeException.ThrowIfNegative(gsi);
        if (assign)
        {
            RequireCapability(KvmCapability.IrqFd, "KVM_CAP_IRQFD", nameof(AddIrqFd));
            if (Architecture == KvmArchitecture.X86_64 && !HasIrqChip)
                throw new InvalidOperationException("An irqfd raises a line of the in-kernel interrupt controller: call CreateIrqChip first (KVM answers EINVAL without it).");
            if (Architecture == KvmArchitecture.Arm64 && GicV3 is not { IsInitialized: true })
                throw new InvalidOperationException("On arm64 an irqfd raises an SPI of the in-kernel GICv3: call CreateGicV3, create the vCPUs, then Initialize (KVM sets up the GSI-to-SPI routes there).");
        }
        using var fd = eventFd.Use();
        var args = new kvm_irqfd { fd = (uint)fd.Number, gsi = (uint)gsi, flags = assign ? 0 : kvm_irqfd.KVM_IRQFD_FLAG_DEASSIGN };
        Kernel.IoctlSet(Fd, KvmIoctls.KVM_IRQFD, args, $"{(assign ? "adding" : "removing")} an irqfd for GSI {gsi}");
    }
}
