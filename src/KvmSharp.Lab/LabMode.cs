namespace KvmSharp.Lab;

/// <summary>Where a command runs.</summary>
public enum LabMode
{
    /// <summary>
    /// Natively when this process can open <c>/dev/kvm</c> and the wanted architecture is this
    /// process's own; in the lab otherwise. The default.
    /// </summary>
    Auto,

    /// <summary>Natively only: fail with <see cref="LabException"/> when <c>/dev/kvm</c> does not work here.</summary>
    Native,

    /// <summary>Always in a lab machine, even where <c>/dev/kvm</c> works (to test against a stock kernel).</summary>
    Lab,
}
