namespace KvmSharp;

/// <summary>One x86 CPUID leaf (<c>struct kvm_cpuid_entry2</c>).</summary>
/// <param name="Function">EAX input (the leaf).</param>
/// <param name="Index">ECX input (the sub-leaf), significant when <see cref="Flags"/> has bit 0 (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).</param>
/// <param name="Flags">KVM_CPUID_FLAG_* bits.</param>
/// <param name="Eax">EAX output.</param>
/// <param name="Ebx">EBX output.</param>
/// <param name="Ecx">ECX output.</param>
/// <param name="Edx">EDX output.</param>
public readonly record struct CpuidEntry(uint Function, uint Index, uint Flags, uint Eax, uint Ebx, uint Ecx, uint Edx);
