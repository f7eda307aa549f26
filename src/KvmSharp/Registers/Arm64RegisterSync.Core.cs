using System.Runtime.CompilerServices;

namespace KvmSharp.Registers;

// Core registers: X0-X30, SP, PC, PSTATE, the banked EL1 registers, SPSRs, V registers, FPSR/FPCR.
public sealed partial class Arm64RegisterSync
{
#pragma warning disable CS1591 // register names document themselves
    public ulong X0 { get => GetGeneralRegister(0); set => SetGeneralRegister(0, value); }
    public ulong X1 { get => GetGeneralRegister(1); set => SetGeneralRegister(1, value); }
    public ulong X2 { get => GetGeneralRegister(2); set => SetGeneralRegister(2, value); }
    public ulong X3 { get => GetGeneralRegister(3); set => SetGeneralRegister(3, value); }
    public ulong X4 { get => GetGeneralRegister(4); set => SetGeneralRegister(4, value); }
    public ulong X5 { get => GetGeneralRegister(5); set => SetGeneralRegister(5, value); }
    public ulong X6 { get => GetGeneralRegister(6); set => SetGeneralRegister(6, value); }
    public ulong X7 { get => GetGeneralRegister(7); set => SetGeneralRegister(7, value); }
    public ulong X8 { get => GetGeneralRegister(8); set => SetGeneralRegister(8, value); }
    public ulong X9 { get => GetGeneralRegister(9); set => SetGeneralRegister(9, value); }
    public ulong X10 { get => GetGeneralRegister(10); set => SetGeneralRegister(10, value); }
    public ulong X11 { get => GetGeneralRegister(11); set => SetGeneralRegister(11, value); }
    public ulong X12 { get => GetGeneralRegister(12); set => SetGeneralRegister(12, value); }
    public ulong X13 { get => GetGeneralRegister(13); set => SetGeneralRegister(13, value); }
    public ulong X14 { get => GetGeneralRegister(14); set => SetGeneralRegister(14, value); }
    public ulong X15 { get => GetGeneralRegister(15); set => SetGeneralRegister(15, value); }
    public ulong X16 { get => GetGeneralRegister(16); set => SetGeneralRegister(16, value); }
    public ulong X17 { get => GetGeneralRegister(17); set => SetGeneralRegister(17, value); }
    public ulong X18 { get => GetGeneralRegister(18); set => SetGeneralRegister(18, value); }
    public ulong X19 { get => GetGeneralRegister(19); set => SetGeneralRegister(19, value); }
    public ulong X20 { get => GetGeneralRegister(20); set => SetGeneralRegister(20, value); }
    public ulong X21 { get => GetGeneralRegister(21); set => SetGeneralRegister(21, value); }
    public ulong X22 { get => GetGeneralRegister(22); set => SetGeneralRegister(22, value); }
    public ulong X23 { get => GetGeneralRegister(23); set => SetGeneralRegister(23, value); }
    public ulong X24 { get => GetGeneralRegister(24); set => SetGeneralRegister(24, value); }
    public ulong X25 { get => GetGeneralRegister(25); set => SetGeneralRegister(25, value); }
    public ulong X26 { get => GetGeneralRegister(26); set => SetGeneralRegister(26, value); }
    public ulong X27 { get => GetGeneralRegister(27); set => SetGeneralRegister(27, value); }
    public ulong X28 { get => GetGeneralRegister(28); set => SetGeneralRegister(28, value); }
    public ulong X29 { get => GetGeneralRegister(29); set => SetGeneralRegister(29, value); }
    public ulong X30 { get => GetGeneralRegister(30); set => SetGeneralRegister(30, value); }
#pragma warning restore CS1591

    /// <summary>SP_EL0 (<c>regs.sp</c>). Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong Sp { get => ReadCore<ulong>(SlotSp); set => WriteCore<ulong>(SlotSp) = value; }

    /// <summary>The program counter. Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong Pc { get => ReadCore<ulong>(SlotPc); set => WriteCore<ulong>(SlotPc) = value; }

    /// <summary>PSTATE (NZCV, DAIF, the exception level and SP selection in M[3:0]). Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <remarks>KVM refuses (EINVAL, at the next write-back) a mode the vCPU cannot be in, e.g. EL2 without nested virtualisation.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong Pstate { get => ReadCore<ulong>(SlotPstate); set => WriteCore<ulong>(SlotPstate) = value; }

    /// <summary>SP_EL1. Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong SpEl1 { get => ReadCore<ulong>(SlotSpEl1); set => WriteCore<ulong>(SlotSpEl1) = value; }

    /// <summary>ELR_EL1. Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong ElrEl1 { get => ReadCore<ulong>(SlotElrEl1); set => WriteCore<ulong>(SlotElrEl1) = value; }

    /// <summary>FPSR (32 bits). Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public uint Fpsr { get => ReadCore<uint>(SlotFpsr); set => WriteCore<uint>(SlotFpsr) = value; }

    /// <summary>FPCR (32 bits). Wraps KVM_GET/SET_ONE_REG.</summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public uint Fpcr { get => ReadCore<uint>(SlotFpcr); set => WriteCore<uint>(SlotFpcr) = value; }

    /// <summary>Banked SPSR <paramref name="index"/> (0 EL1, 1 ABT, 2 UND, 3 IRQ, 4 FIQ). Wraps KVM_GET_ONE_REG.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not in 0–4.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong GetSpsr(int index) => ReadCore<ulong>(SpsrSlot(index));

    /// <summary>Writes banked SPSR <paramref name="index"/> (0–4); it reaches KVM before the next run. Wraps KVM_SET_ONE_REG.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not in 0–4.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">Completing a pending MMIO access failed.</exception>
    public void SetSpsr(int index, ulong value) => WriteCore<ulong>(SpsrSlot(index)) = value;

    private static int SpsrSlot(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 4u, nameof(index));
        return SlotSpsr + index;
    }

    /// <summary>SIMD/FP register V<paramref name="index"/> (0–31), 128 bits. Wraps KVM_GET_ONE_REG.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not in 0–31.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed (EINVAL when the vCPU has SVE, whose Z registers replace the V ids).</exception>
    public UInt128 GetV(int index) => ReadCore<UInt128>(VSlot(index));

    /// <summary>Writes SIMD/FP register V<paramref name="index"/> (0–31); it reaches KVM before the next run. Wraps KVM_SET_ONE_REG.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is not in 0–31.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">Completing a pending MMIO access failed.</exception>
    public void SetV(int index, UInt128 value) => WriteCore<UInt128>(VSlot(index)) = value;

    private static int VSlot(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 31u, nameof(index));
        return SlotV + index;
    }

    /// <inheritdoc/>
    /// <remarks>PC. Wraps KVM_GET/SET_ONE_REG.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    public ulong ProgramCounter { get => Pc; set => Pc = value; }

    /// <inheritdoc/>
    /// <remarks>X0–X30 (0–30). Wraps KVM_GET_ONE_REG.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] // PERF: X0 = … in a hot handler is then a few loads and stores
    public ulong GetGeneralRegister(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 30u, nameof(index));
        return ReadCore<ulong>(index);
    }

    /// <inheritdoc/>
    /// <remarks>X0–X30 (0–30); the value reaches KVM before the next run. Wraps KVM_SET_ONE_REG.</remarks>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] // PERF: X0 = … in a hot handler is then a few loads and stores
    public void SetGeneralRegister(int index, ulong value)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)index, 30u, nameof(index));
        WriteCore<ulong>(index) = value;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private T ReadCore<T>(int slot) where T : unmanaged
    {
        RequireReady();
        if (_coreEpoch[slot] != _epoch && !_coreDirty[slot]) Fetch(slot);
        return _core.At<T>(slot * SlotSize);
    }

    /// <summary>Marks a core register valid and dirty and returns its cache slot (no fetch: ONE_REG writes whole registers).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref T WriteCore<T>(int slot) where T : unmanaged
    {
        RequireReady();
        // A pending MMIO write's completion only advances the PC (and clears PSTATE's BTYPE and SS
        // bits): any other core register may be written before it, and the next KVM_RUN completes
        // the access — one entry, not two. A pending read also loads its target register, which
        // the MMIO exit does not name: complete it before any write.
        if (_pendingAccess && (!_pendingIsWrite || slot is SlotPc or SlotPstate)) CompletePendingAccessCore();
        _coreEpoch[slot] = _epoch;
        if (!_coreDirty[slot])
        {
            _coreDirty[slot] = true;
            _dirtyEntries[_dirtyCount++] = slot;
        }
        return ref _core.At<T>(slot * SlotSize);
    }
}
