namespace KvmSharp.Registers;

/// <summary>
/// arm64 pending events (<c>struct kvm_vcpu_events</c>, KVM_GET/SET_VCPU_EVENTS; needs KVM_CAP_VCPU_EVENTS).
/// </summary>
/// <remarks>
/// On arm64 setting events is an action: <see cref="SErrorPending"/> makes an SError pending (with
/// <see cref="SErrorEsr"/> as its syndrome when <see cref="SErrorHasEsr"/> is set, which needs
/// KVM_CAP_ARM_INJECT_SERROR_ESR) and <see cref="ExtDabtPending"/> injects an external data abort
/// at once (KVM_CAP_ARM_INJECT_EXT_DABT). KVM never reports an external data abort as pending, and
/// reports <see cref="SErrorHasEsr"/> whenever the host has RAS, so writing back what was read
/// changes nothing.
/// </remarks>
/// <param name="SErrorPending">An SError is pending (<c>exception.serror_pending</c>).</param>
/// <param name="SErrorHasEsr"><see cref="SErrorEsr"/> is meaningful (<c>exception.serror_has_esr</c>).</param>
/// <param name="ExtDabtPending">Inject an external data abort (<c>exception.ext_dabt_pending</c>).</param>
/// <param name="SErrorEsr">The SError syndrome, ISS bits only (<c>exception.serror_esr</c>).</param>
public readonly record struct Arm64VcpuEvents(bool SErrorPending, bool SErrorHasEsr, bool ExtDabtPending, ulong SErrorEsr);
