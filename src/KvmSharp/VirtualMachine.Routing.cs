using System.Runtime.CompilerServices;
using KvmSharp.Interop;

namespace KvmSharp;

// x86 interrupt routing: MSI messages and the GSI routing table of the in-kernel irqchip.
public sealed partial class VirtualMachine
{
    /// <summary>
    /// Sends an MSI message to the local APICs, as a PCI device would by writing
    /// <paramref name="data"/> to <paramref name="address"/>. Any thread, while vCPUs run. Wraps
    /// KVM_SIGNAL_MSI (x86); needs KVM_CAP_SIGNAL_MSI and <see cref="CreateIrqChip"/>.
    /// </summary>
    /// <param name="address">The message address: 0xFEE00000 | destination APIC id &lt;&lt; 12 (physical mode).</param>
    /// <param name="data">The message data: the vector in bits 0–7 (fixed delivery mode, edge).</param>
    /// <returns>True when KVM delivered it to at least one local APIC; false when none took it
    /// (e.g. no APIC with that id, or the guest's APIC is software-disabled).</returns>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel interrupt controller.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_SIGNAL_MSI.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public bool SignalMsi(ulong address, uint data)
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SignalMsi));
        if (!HasIrqChip)
            throw new InvalidOperationException("An MSI goes to the in-kernel local APICs: call CreateIrqChip first.");
        RequireCapability(KvmCapability.SignalMsi, "KVM_CAP_SIGNAL_MSI", nameof(SignalMsi));
        var msi = new kvm_msi { address_lo = (uint)address, address_hi = (uint)(address >> 32), data = data };
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_SIGNAL_MSI, ref msi);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_SIGNAL_MSI, r, $"address 0x{address:X}, data 0x{data:X}");
        return r > 0;
    }

    /// <summary>
    /// Replaces the whole GSI routing table of the in-kernel interrupt controller: afterwards a
    /// GSI raised by <see cref="SetIrqLine"/> or an irqfd goes where <paramref name="routes"/> say
    /// (a GSI may have several routes; one not listed goes nowhere). Start from
    /// <see cref="GsiRoute.X86Defaults"/> to keep the legacy lines. Any thread. Wraps
    /// KVM_SET_GSI_ROUTING (x86); needs KVM_CAP_IRQ_ROUTING and <see cref="CreateIrqChip"/>.
    /// </summary>
    /// <exception cref="ArgumentException">A route of an unknown kind (a default <see cref="GsiRoute"/>).</exception>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel interrupt controller.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_IRQ_ROUTING.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">KVM refused the table (EINVAL: e.g. a GSI above its limit, or a PIC route above GSI 15).</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void SetGsiRouting(ReadOnlySpan<GsiRoute> routes)
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SetGsiRouting));
        if (!HasIrqChip)
            throw new InvalidOperationException("GSI routing is the in-kernel interrupt controller's: call CreateIrqChip first.");
        RequireCapability(KvmCapability.IrqRouting, "KVM_CAP_IRQ_ROUTING", nameof(SetGsiRouting));
        int header = Unsafe.SizeOf<kvm_irq_routing>(), size = Unsafe.SizeOf<kvm_irq_routing_entry>();
        using var buffer = new NativeBuffer(header + size * Math.Max(routes.Length, 1));
        var view = new StructView(buffer, 0, (int)buffer.ByteLength);
        view.At<kvm_irq_routing>(0).nr = (uint)routes.Length;
        for (int i = 0; i < routes.Length; i++)
        {
            var route = routes[i];
            ref var e = ref view.At<kvm_irq_routing_entry>(header + i * size);
            e.gsi = (uint)route.Gsi;
            switch (route.Kind)
            {
                case GsiRouteKind.IrqChip:
                    e.type = kvm_irq_routing_entry.KVM_IRQ_ROUTING_IRQCHIP;
                    e.u0 = (uint)route.IrqChip;
                    e.u1 = (uint)route.Pin;
                    break;
                case GsiRouteKind.Msi:
                    e.type = kvm_irq_routing_entry.KVM_IRQ_ROUTING_MSI;
                    e.u0 = (uint)route.MsiAddress;
                    e.u1 = (uint)(route.MsiAddress >> 32);
                    e.u2 = route.MsiData;
                    break;
                default:
                    throw new ArgumentException($"Route {i} (GSI {route.Gsi}) has no kind: make routes with GsiRoute.ToIrqChip or GsiRoute.ToMsi.", nameof(routes));
            }
        }
        int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_SET_GSI_ROUTING, view.Address);
        if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_SET_GSI_ROUTING, r, $"{routes.Length} routes");
    }
}
