using KvmSharp.Tests.Guests;
using static KvmSharp.Tests.Guests.InterruptGuest;

namespace KvmSharp.Tests;

/// <summary>
/// MSI messages (KVM_SIGNAL_MSI) and the GSI routing table (KVM_SET_GSI_ROUTING) on stock KVM: a
/// CPL0 guest with its local APIC in x2APIC mode counts the interrupts of two vectors.
/// </summary>
public class MsiRoutingTests : KvmTestBase
{
    private const byte VectorA = ApicVectorA, VectorB = ApicVectorB, PortA = ApicPortA, PortB = ApicPortB;
    private const ulong ApicZero = 0xFEE0_0000; // MSI address: physical destination APIC id 0

    private TestGuest ApicGuest() => X2ApicGuest(Kvm);

    [Test]
    public void AnMsi_ReachesTheGuestsVector_AndOneToNoApicIsNotDelivered()
    {
        using var g = ApicGuest();
        Assert.That(g.Vm.SignalMsi(ApicZero, VectorA), Is.True, "KVM delivered it to APIC 0");
        Assert.That(NextOut(g), Is.EqualTo((PortA, 1u)));
        Assert.That(g.Vm.SignalMsi(ApicZero, VectorB), Is.True);
        Assert.That(NextOut(g), Is.EqualTo((PortB, 1u)));

        Assert.That(g.Vm.SignalMsi(ApicZero | 5 << 12, VectorA), Is.False, "no local APIC has id 5");
        AssertQuiet(g, 0, "an undelivered MSI raises nothing", TimeSpan.FromMilliseconds(500));
    }

    [Test]
    public void AnMsiRoute_TurnsAGsi_RaisedByAnIrqFd_IntoTheMessage()
    {
        using var g = ApicGuest();
        var routes = GsiRoute.X86Defaults.Append(GsiRoute.ToMsi(24, ApicZero, VectorB)).ToArray();
        g.Vm.SetGsiRouting(routes);
        using var irq = new EventFd();
        g.Vm.AddIrqFd(irq, 24);
        irq.Signal();
        Assert.That(NextOut(g), Is.EqualTo((PortB, 1u)), "GSI 24 → MSI → vector 0x41");

        // The table is replaced as a whole: route GSI 24 to vector A instead.
        g.Vm.SetGsiRouting([.. GsiRoute.X86Defaults, GsiRoute.ToMsi(24, ApicZero, VectorA)]);
        irq.Signal();
        Assert.That(NextOut(g), Is.EqualTo((PortA, 1u)));
    }

    [Test]
    public void X86Defaults_AreKvmsOwnTable()
    {
        var d = GsiRoute.X86Defaults;
        Assert.That(d, Has.Count.EqualTo(16 * 2 + 8));
        Assert.That(d.Where(r => r.Gsi == 3).Select(r => (r.IrqChip, r.Pin)), Is.EquivalentTo(new[] { (0, 3), (2, 3) }));
        Assert.That(d.Where(r => r.Gsi == 10).Select(r => (r.IrqChip, r.Pin)), Is.EquivalentTo(new[] { (1, 2), (2, 10) }));
        Assert.That(d.Where(r => r.Gsi == 20).Select(r => (r.IrqChip, r.Pin)), Is.EquivalentTo(new[] { (2, 20) }));
        var msi = GsiRoute.ToMsi(30, 0x1_FEE0_1000, 0x4041);
        Assert.That((msi.Kind, msi.MsiAddress, msi.MsiData, msi.IrqChip, msi.Pin), Is.EqualTo((GsiRouteKind.Msi, 0x1_FEE0_1000UL, 0x4041u, -1, -1)));
    }

    [Test]
    public void BadInput_IsRefusedWithItsReason()
    {
        using (var bare = Kvm.CreateVirtualMachine())
        {
            Assert.That(Assert.Throws<InvalidOperationException>(() => bare.SignalMsi(ApicZero, VectorA))!.Message, Does.Contain("CreateIrqChip"));
            Assert.Throws<InvalidOperationException>(() => bare.SetGsiRouting(GsiRoute.X86Defaults.ToArray()));
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => GsiRoute.ToIrqChip(0, 3, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => GsiRoute.ToIrqChip(0, 0, 8), "a PIC has 8 pins");
        Assert.Throws<ArgumentOutOfRangeException>(() => GsiRoute.ToIrqChip(-1, 2, 0));

        using var vm = Kvm.CreateVirtualMachine();
        vm.CreateIrqChip();
        Assert.Throws<ArgumentException>(() => vm.SetGsiRouting([default]));
        var tooHigh = Assert.Throws<KvmException>(() => vm.SetGsiRouting([GsiRoute.ToIrqChip(5000, 2, 0)]));
        Assert.That((tooHigh!.Operation, tooHigh.ErrnoName), Is.EqualTo(("KVM_SET_GSI_ROUTING", "EINVAL")), "GSI 5000 is past KVM's 4096 routes");
        vm.SetGsiRouting(GsiRoute.X86Defaults.ToArray());
    }
}
