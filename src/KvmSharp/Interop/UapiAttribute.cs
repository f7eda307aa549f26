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

/// <summary>
/// Names the C expression from the uapi headers whose value a constant, a static field or an id
/// factory (a static method of <c>int</c> parameters returning <c>ulong</c>) must have, so that the
/// layout tests can compare them: <c>KVM_REG_S390_TODPR</c>, <c>ARM64_SYS_REG({0}, {1}, {2}, {3}, {4})</c>.
/// A factory's expression is a composite format string: <c>{i}</c> is its i-th argument, and the
/// layout tests sweep every argument over all the values the factory accepts.
/// </summary>
[AttributeUsage(AttributeTargets.Field | AttributeTargets.Property | AttributeTargets.Method, Inherited = false)]
internal sealed class UapiValueAttribute(string expression) : Attribute
{
    public string Expression { get; } = expression;
}
