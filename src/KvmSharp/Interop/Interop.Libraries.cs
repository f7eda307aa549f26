namespace KvmSharp.Interop;

internal static partial class Libc
{
    /// <summary>The C library every import binds to. glibc and musl both resolve "libc".</summary>
    internal const string Name = "libc";
}
