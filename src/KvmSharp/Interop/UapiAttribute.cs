namespace KvmSharp.Interop;

/// <summary>
/// Names the kernel uapi C type an interop struct mirrors, so that the layout tests can
/// generate <c>static_assert(sizeof/offsetof)</c> checks for it against the real headers.
/// </summary>
/// <param name="cStruct">The C struct tag, without <c>struct</c> (e.g. <c>kvm_regs</c>).</param>
/// <param name="member">When set, the C# type mirrors the member <c>cStruct.member</c> (an anonymous
/// struct inside a union, such as <c>kvm_run.io</c>), and field offsets are relative to it.</param>
[AttributeUsage(AttributeTargets.Struct, Inherited = false)]
internal sealed class UapiAttribute(string cStruct, string? member = null) : Attribute
{
    public string CStruct { get; } = cStruct;
    public string? Member { get; } = member;
}

/// <summary>
/// Gives the C member path of a field whose C# name differs from it (a field of a nested
/// anonymous struct, flattened: <c>exception.injected</c>). <c>null</c> marks a field the C header
/// cannot name (a bit-field byte); the layout tests then check its neighbours instead.
/// </summary>
[AttributeUsage(AttributeTargets.Field, Inherited = false)]
internal sealed class UapiFieldAttribute(string? path) : Attribute
{
    public string? Path { get; } = path;
}
