using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp.Registers;

// System registers: the ids KVM_GET_REG_LIST reports beyond the core ones, and the timer counter.
public sealed partial class Arm64RegisterSync
{
    /// <summary>
    /// The system, timer and firmware registers of this vCPU: KVM_GET_REG_LIST minus core and SVE
    /// ids, 32- and 64-bit ones only (what QEMU keeps in its cpreg list). Fetched once, on first
    /// need. Wraps KVM_GET_REG_LIST.
    /// </summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public IReadOnlyList<ulong> SystemRegisterIds
    {
        get
        {
            RequireReady();
            EnsureRegisterList();
            return _sysIdsView!;
        }
    }

    /// <summary>A register of <see cref="SystemRegisterIds"/> (a 32-bit one zero-extended). Wraps KVM_GET_ONE_REG.</summary>
    /// <exception cref="ArgumentException"><paramref name="id"/> is not in <see cref="SystemRegisterIds"/>.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong GetSystemRegister(ulong id)
    {
        int slot = SystemSlot(id);
        if (_sysEpoch[slot] != _epoch && !_sysDirty[slot]) Fetch(CoreSlots + slot);
        return _sys.At<ulong>(8 * slot);
    }

    /// <summary>Writes a register of <see cref="SystemRegisterIds"/>; it reaches KVM before the next run, whatever its level. Wraps KVM_SET_ONE_REG.</summary>
    /// <exception cref="ArgumentException"><paramref name="id"/> is not in <see cref="SystemRegisterIds"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The register is 32 bits wide and <paramref name="value"/> is not.</exception>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">Completing a pending MMIO access failed.</exception>
    public void SetSystemRegister(ulong id, ulong value)
    {
        int slot = SystemSlot(id);
        if (Arm64RegisterIds.SizeOf(id) == 4)
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, uint.MaxValue, nameof(value));
        BeginWrite();
        _sys.At<ulong>(8 * slot) = value;
        _sysEpoch[slot] = _epoch;
        if (!_sysDirty[slot])
        {
            _sysDirty[slot] = true;
            AddDirty(CoreSlots + slot);
        }
    }

    /// <summary>
    /// The virtual counter CNTVCT_EL0 (<see cref="Arm64RegisterIds.TimerCnt"/>, level Full: a push
    /// below Full never writes it back unless it was set here). Wraps KVM_GET/SET_ONE_REG.
    /// </summary>
    /// <exception cref="InvalidOperationException">The vCPU is not initialized.</exception>
    /// <exception cref="KvmException">The ioctl failed.</exception>
    public ulong TimerCounter
    {
        get => GetSystemRegister(Arm64RegisterIds.TimerCnt);
        set => SetSystemRegister(Arm64RegisterIds.TimerCnt, value);
    }

    private int SystemSlot(ulong id)
    {
        RequireReady();
        EnsureRegisterList();
        if (!_sysIndex!.TryGetValue(id, out int slot))
        {
            string why = Arm64RegisterIds.IsCore(id)
                ? "it is a core register: use the typed accessors (X0–X30, Pc, GetV, …)"
                : "KVM_GET_REG_LIST does not list it for this vCPU";
            throw new ArgumentException($"Register {Arm64RegisterIds.Name(id)} (0x{id:X16}) is not a system register of this vCPU: {why}.", nameof(id));
        }
        return slot;
    }

    private void EnsureRegisterList()
    {
        if (_sysIds is not null) return;
        RequireReady();
        var ids = FetchRegisterList().Where(IsCachedSystemRegister).ToArray();
        _sysBuffer = new NativeBuffer(Math.Max(8, 8 * ids.Length));
        _sys = new StructView(_sysBuffer, 0, 8 * ids.Length);
        _sysEpoch = new long[ids.Length];
        _sysDirty = new bool[ids.Length];
        Array.Resize(ref _dirtyEntries, CoreSlots + ids.Length);
        _sysIndex = new Dictionary<ulong, int>(ids.Length);
        for (int i = 0; i < ids.Length; i++) _sysIndex[ids[i]] = i;
        _sysIdsView = Array.AsReadOnly(ids);
        _sysIds = ids;
    }

    private static bool IsCachedSystemRegister(ulong id)
    {
        if ((id & Arm64RegisterIds.ArchMask) != Arm64RegisterIds.Arch) return false;
        ulong group = Arm64RegisterIds.GroupOf(id);
        if (group == Arm64RegisterIds.Core || group == Arm64RegisterIds.Sve) return false;
        ulong size = id & Arm64RegisterIds.SizeMask;
        return size == Arm64RegisterIds.SizeU32 || size == Arm64RegisterIds.SizeU64;
    }

    /// <summary>KVM_GET_REG_LIST: a first call with n = 0 fails with E2BIG and writes the count; then the real call.</summary>
    private ulong[] FetchRegisterList()
    {
        int n = 0;
        for (int attempt = 0; ; attempt++)
        {
            int bytes = 8 + 8 * n;
            using var buffer = new NativeBuffer(bytes);
            var view = new StructView(buffer, 0, bytes);
            view.At<kvm_reg_list>(0).n = (ulong)n;
            int r = _kernel.Ioctl(_vcpu.Fd, KvmIoctls.KVM_GET_REG_LIST, view.Address);
            ulong count = view.At<kvm_reg_list>(0).n;
            if (r == -Errno.E2BIG && attempt < 3 && count > (ulong)n && count <= 1 << 20)
            {
                n = (int)count; // the list's length, written by KVM even when it refuses
                continue;
            }
            if (r < 0) ThrowHelper.ThrowKvm(KvmIoctls.KVM_GET_REG_LIST, r, $"vcpu {_vcpu.Id}, n {n}");
            int got = (int)Math.Min(count, (ulong)n);
            return MemoryMarshal.Cast<byte, ulong>(view.Span.Slice(8, 8 * got)).ToArray();
        }
    }
}
