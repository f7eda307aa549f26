using KvmSharp.Interop;
using KvmSharp.Interop.S390x;

namespace KvmSharp.Registers;

// Saving and restoring the whole register state.
public sealed partial class S390xRegisterSync
{
    private static readonly S390xRegisterSets[] StateOrder =
    [
        S390xRegisterSets.Psw, S390xRegisterSets.Prefix, S390xRegisterSets.Gprs, S390xRegisterSets.Acrs, S390xRegisterSets.Crs,
        S390xRegisterSets.Arch0, S390xRegisterSets.Pfault, S390xRegisterSets.Vrs, S390xRegisterSets.Fprs, S390xRegisterSets.Riccb,
        S390xRegisterSets.Gscb, S390xRegisterSets.Bpbc, S390xRegisterSets.Etoken, S390xRegisterSets.Diag318,
        S390xRegisterSets.EpochDifference, S390xRegisterSets.MpState,
    ];

    // Where a set's bytes are: (view, offset, length) pieces; a VRS/FPRS set carries its FPC after the registers.
    private (StructView View, int Offset, int Length, int Offset2, int Length2) Layout(S390xRegisterSets set) => set switch
    {
        S390xRegisterSets.Psw => (Psw, 0, 16, 0, 0),
        S390xRegisterSets.Prefix => (Storage(set), PrefixOff, 8, 0, 0),
        S390xRegisterSets.Gprs => (Storage(set), GprsOff, 128, 0, 0),
        S390xRegisterSets.Acrs => (Storage(set), AcrsOff, 64, 0, 0),
        S390xRegisterSets.Crs => (Storage(set), CrsOff, 128, 0, 0),
        S390xRegisterSets.Arch0 => (Storage(set), Arch0Off, 40, 0, 0),
        S390xRegisterSets.Pfault => (Storage(set), PfaultOff, 24, 0, 0),
        S390xRegisterSets.Vrs => (Storage(set), VrsOff, 512, FpcOff, 4),
        S390xRegisterSets.Fprs => (Storage(set), VrsOff, 128, FpcOff, 4),
        S390xRegisterSets.Riccb => (Storage(set), RiccbOff, 64, 0, 0),
        S390xRegisterSets.Gscb => (Storage(set), GscbOff, 32, 0, 0),
        S390xRegisterSets.Bpbc => (Storage(set), kvm_sync_regs.BpbcByteOffset, 1, 0, 0),
        S390xRegisterSets.Etoken => (Storage(set), EtokenOff, 16, 0, 0),
        S390xRegisterSets.Diag318 => (Storage(set), Diag318Off, 8, 0, 0),
        S390xRegisterSets.EpochDifference => (_epoch, 0, 8, 0, 0),
        S390xRegisterSets.MpState => (_mpState, 0, 4, 0, 0),
        _ => throw new ArgumentOutOfRangeException(nameof(set), set, "not a single register set"),
    };

    private byte[] CopyOut(S390xRegisterSets set)
    {
        var (view, off, len, off2, len2) = Layout(set);
        var bytes = new byte[len + len2];
        view.Span.Slice(off, len).CopyTo(bytes);
        if (len2 != 0) view.Span.Slice(off2, len2).CopyTo(bytes.AsSpan(len));
        if (set == S390xRegisterSets.Bpbc) bytes[0] = (bytes[0] & kvm_sync_regs.BpbcBit) != 0 ? (byte)1 : (byte)0;
        return bytes;
    }

    private void CopyIn(S390xRegisterSets set, byte[] bytes)
    {
        var (view, off, len, off2, len2) = Layout(set);
        if (set == S390xRegisterSets.Bpbc)
        {
            ref byte b = ref view.At<byte>(off);
            b = bytes[0] != 0 ? (byte)(b | kvm_sync_regs.BpbcBit) : (byte)(b & ~kvm_sync_regs.BpbcBit);
            return;
        }
        bytes.AsSpan(0, len).CopyTo(view.Span.Slice(off, len));
        if (len2 != 0) bytes.AsSpan(len, len2).CopyTo(view.Span.Slice(off2, len2));
    }

    private int SizeOf(S390xRegisterSets set)
    {
        var (_, _, len, _, len2) = Layout(set);
        return len + len2;
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The keys are <see cref="S390xRegisterSets"/> values: every sync block KVM offers, the sets that
    /// move with ioctls, the PSW, the epoch difference and the MP state. VRS and FPRS carry the FPC after
    /// the registers; BPBC is one byte, 0 or 1.
    /// </remarks>
    public RegisterState SaveState()
    {
        ThrowIfReleased();
        Synchronize();
        var sets = new SortedDictionary<ulong, byte[]>();
        foreach (var set in StateOrder)
            if ((_supported & set) != 0) sets[(ulong)set] = CopyOut(set);
        return new RegisterState(KvmArchitecture.S390x, sets);
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The sync blocks are flagged in <c>kvm_dirty_regs</c> and cost no ioctl; KVM loads them at the next
    /// entry. The ONE_REG registers, FPU fallback, epoch difference and MP state are written now. The
    /// state must have exactly the sets this vCPU has (<see cref="SupportedSets"/>).
    /// </remarks>
    public void RestoreState(RegisterState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        ThrowIfReleased();
        if (state.Architecture != KvmArchitecture.S390x)
            throw new ArgumentException($"Cannot restore {state.Architecture} registers into an s390x vCPU.", nameof(state));
        foreach (ulong key in state.Sets)
        {
            if ((_supported & (S390xRegisterSets)key) == 0 || (key & (key - 1)) != 0)
                throw new ArgumentException($"The state holds register set {(S390xRegisterSets)key}, which this vCPU cannot load (it has {_supported}).", nameof(state));
        }
        foreach (var set in StateOrder)
        {
            if ((_supported & set) == 0) continue;
            if (!state.TryGet((ulong)set, out var bytes) || bytes.Length != SizeOf(set))
                throw new ArgumentException($"The state lacks register set {set} or it has another size.", nameof(state));
        }
        foreach (var set in StateOrder)
        {
            if ((_supported & set) == 0) continue;
            _ = state.TryGet((ulong)set, out var bytes);
            CopyIn(set, bytes);
        }
        _valid = _supported;
        _regValid = Arch0Regs | PfaultRegs | EpochRegs;
        MarkValidDirty(_supported);
        WriteDirtyWithIoctls();
    }
}
