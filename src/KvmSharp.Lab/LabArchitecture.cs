namespace KvmSharp.Lab;

/// <summary>The CPU architecture of a lab machine (and of the KVM it offers).</summary>
public enum LabArchitecture
{
    /// <summary>x86_64: QEMU's <c>q35</c> machine with <c>-cpu max,vgif=off</c>, whose emulated AMD SVM gives a stock <c>kvm_amd</c> (without virtual GIF, whose emulation loses nested guests now and then).</summary>
    X86_64,

    /// <summary>arm64: QEMU's <c>virt</c> machine with <c>virtualization=on</c> (emulated EL2) and a GICv3; KVM is built into Debian's arm64 kernel.</summary>
    Arm64,
}
