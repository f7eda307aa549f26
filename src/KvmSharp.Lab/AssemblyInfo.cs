using System.Runtime.Versioning;

// KVM, QEMU's lab machines and Debian's packages are Linux things.
[assembly: SupportedOSPlatform("linux")]
