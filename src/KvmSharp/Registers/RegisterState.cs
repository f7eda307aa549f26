namespace KvmSharp.Registers;

/// <summary>
/// A vCPU's complete register state, as captured by <see cref="IRegisterSync.SaveState"/>: the raw
/// bytes of every register set, keyed by set. Immutable; restore it with <see cref="IRegisterSync.RestoreState"/>
/// on a vCPU of the same architecture.
/// </summary>
public sealed class RegisterState
{
    private readonly SortedDictionary<ulong, byte[]> _sets;

    internal RegisterState(KvmArchitecture architecture, SortedDictionary<ulong, byte[]> sets)
    {
        Architecture = architecture;
        _sets = sets;
    }

    /// <summary>The architecture the state belongs to.</summary>
    public KvmArchitecture Architecture { get; }

    /// <summary>The set keys (a strategy-defined id per set: a set bit on x86 and s390x, the ONE_REG id on arm64).</summary>
    public IEnumerable<ulong> Sets => _sets.Keys;

    /// <summary>The bytes of one set.</summary>
    /// <exception cref="KeyNotFoundException">The state has no such set.</exception>
    public ReadOnlySpan<byte> Get(ulong set) => _sets[set];

    internal bool TryGet(ulong set, out byte[] bytes) => _sets.TryGetValue(set, out bytes!);

    /// <summary>True when both states hold the same sets with the same bytes.</summary>
    public bool ContentEquals(RegisterState other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (other.Architecture != Architecture || other._sets.Count != _sets.Count) return false;
        foreach (var (k, v) in _sets)
            if (!other._sets.TryGetValue(k, out var o) || !v.AsSpan().SequenceEqual(o)) return false;
        return true;
    }
}
