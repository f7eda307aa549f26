using KvmSharp.Interop;
using KvmSharp.Interop.X86;

namespace KvmSharp;

// x86 in-kernel devices: the interrupt controller (PIC pair, IOAPIC, a local APIC per vCPU), the PIT,
// and IRQ lines into them. Their state: VirtualMachine.DeviceState.cs.
public sealed partial class VirtualMachine
{
    private bool _irqChip, _pit;

    /// <summary>True once <see cref="CreateIrqChip"/> has created the in-kernel interrupt controller.</summary>
    public bool HasIrqChip
    {
        get
        {
            lock (_lock) return _irqChip;
        }
    }

    /// <summary>True once <see cref="CreatePit"/> has created the in-kernel PIT.</summary>
    public bool HasPit
    {
        get
        {
            lock (_lock) return _pit;
        }
    }

    /// <summary>
    /// Creates the in-kernel interrupt controller: two cascaded 8259 PICs, an IOAPIC, and a local
    /// APIC in every vCPU created afterwards. GSIs 0–15 are routed to both the PICs and the IOAPIC,
    /// 16–23 to the IOAPIC only. With it, a HLT waits inside KVM for an interrupt instead of
    /// exiting to the caller of <see cref="Vcpu.Run()"/>. Wraps KVM_CREATE_IRQCHIP (x86); needs
    /// KVM_CAP_IRQCHIP.
    /// </summary>
    /// <remarks>KVM accepts it only before the VM's first vCPU exists (a disposed vCPU still counts:
    /// KVM keeps it until the VM is closed) and only once; both are checked here, because KVM reports
    /// them only as EINVAL and EEXIST.</remarks>
    /// <exception cref="InvalidOperationException">A vCPU has been created in this VM already, or the
    /// interrupt controller exists already.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_IRQCHIP.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void CreateIrqChip()
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(CreateIrqChip));
        lock (_lock)
        {
            if (_irqChip)
                throw new InvalidOperationException("This VM has an in-kernel interrupt controller already; KVM creates one per VM.");
            if (_vcpusCreated > 0)
                throw new InvalidOperationException(
                    $"The in-kernel interrupt controller must be created before the VM's first vCPU; {_vcpusCreated} vCPU(s) were created already " +
                    "(KVM keeps disposed vCPUs until the VM is closed). Call CreateIrqChip right after creating the VM.");
            RequireCapability(KvmCapability.IrqChip, "KVM_CAP_IRQCHIP", nameof(CreateIrqChip));
            int r = Kernel.Ioctl(Fd, KvmIoctls.KVM_CREATE_IRQCHIP, 0);
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_CREATE_IRQCHIP, r);
            _irqChip = true;
        }
    }

    /// <summary>
    /// Creates the in-kernel 8254 PIT (programmable interval timer, ports 0x40–0x43), whose channel 0
    /// drives GSI 0 (the PIC's IRQ0, the IOAPIC's pin 2). Port 0x61 (speaker) stays with the caller
    /// (flags 0, not KVM_PIT_SPEAKER_DUMMY). May be called before or after vCPUs exist. Wraps
    /// KVM_CREATE_PIT2 (x86); needs KVM_CAP_PIT2 and <see cref="CreateIrqChip"/> first.
    /// </summary>
    /// <remarks>Checked here: that the interrupt controller exists (recent kernels fail with ENOENT
    /// without it; older ones, such as 6.1, create a PIT whose ticks reach no controller) and that no PIT
    /// exists yet (KVM: EEXIST).</remarks>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel interrupt controller yet, or
    /// the PIT exists already.</exception>
    /// <exception cref="NotSupportedException">KVM lacks KVM_CAP_PIT2.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is not x86_64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void CreatePit()
    {
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(CreatePit));
        lock (_lock)
        {
            if (_pit)
                throw new InvalidOperationException("This VM has an in-kernel PIT already; KVM creates one per VM.");
            if (!_irqChip)
                throw new InvalidOperationException("The in-kernel PIT delivers its ticks to the in-kernel interrupt controller: call CreateIrqChip first.");
            RequireCapability(KvmCapability.Pit2, "KVM_CAP_PIT2", nameof(CreatePit));
            Kernel.IoctlSet(Fd, KvmIoctls.X86.KVM_CREATE_PIT2, default(kvm_pit_config), "flags 0");
            _pit = true;
        }
    }

    /// <summary>
    /// Sets the level of a GSI input of the in-kernel interrupt controller: GSIs 0–15 reach the PICs'
    /// IRQ 0–15 and the IOAPIC (whose pin 2 takes GSI 0), 16–23 the IOAPIC. <c>true</c> asserts the
    /// line, <c>false</c> deasserts it; an edge-triggered input (the PICs' default) needs both, in that
    /// order. Wraps KVM_IRQ_LINE (x86); needs KVM_CAP_IRQCHIP and <see cref="CreateIrqChip"/> first.
    /// On arm64 <paramref name="irq"/> is an SPI's INTID of the in-kernel GICv3 (see <see cref="ArmGicV3.SetSpi"/>).
    /// May be called from any thread, also while vCPUs run.
    /// </summary>
    /// <param name="irq">The GSI (x86), or the SPI's INTID (arm64).</param>
    /// <param name="level">True to assert the line, false to deassert it.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="irq"/> is negative (arm64: no SPI of the GIC).</exception>
    /// <exception cref="InvalidOperationException">The VM has no in-kernel interrupt controller (KVM would fail with ENXIO);
    /// arm64: no GICv3, or one not initialised yet.</exception>
    /// <exception cref="PlatformNotSupportedException">The VM is neither x86_64 nor arm64.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    /// <exception cref="ObjectDisposedException">The VM is disposed.</exception>
    public void SetIrqLine(int irq, bool level)
    {
        if (Architecture == KvmArchitecture.Arm64)
        {
            var gic = GicV3 ?? throw new InvalidOperationException("On arm64 KVM_IRQ_LINE drives an SPI of the in-kernel GICv3: call CreateGicV3 first (KVM answers ENXIO without it).");
            gic.SetSpi(irq, level);
            return;
        }
        Kvm.RequireArch(KvmArchitecture.X86_64, nameof(SetIrqLine));
        ArgumentOutOfRangeException.ThrowIfNegative(irq);
        if (!HasIrqChip)
            throw new InvalidOperationException("KVM_IRQ_LINE drives an input of the in-kernel interrupt controller: call CreateIrqChip first.");
        var line = new kvm_irq_level { irq = (uint)irq, level = level ? 1u : 0u };
        Kernel.IoctlSet(Fd, KvmIoctls.KVM_IRQ_LINE, line, $"GSI {irq}, level {line.level}");
    }

    internal void RequireCapability(KvmCapability capability, string name, string member)
    {
        if (CheckExtension(capability) <= 0)
            throw new NotSupportedException($"{member} needs {name}, which this KVM does not offer.");
    }
}
