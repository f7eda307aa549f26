global using NUnit.Framework;

// The lab, KVM and /proc are Linux things.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
