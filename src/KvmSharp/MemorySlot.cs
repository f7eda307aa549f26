using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>
/// A range of guest-physical memory backed by an anonymous host mapping and registered with KVM
/// as one memory slot. Created by <see cref="VirtualMachine.AddMemorySlot"/>.
/// </summary>
/// <remarks>
/// The host mapping is private anonymous memory advised <c>MADV_DONTFORK</c>, so a child process
/// created by <c>fork</c> never shares guest RAM. Reads and writes through this object are plain
/// memory accesses and may race with a running guest exactly as the guest's own vCPUs may race with
/// each other; this type adds no locking. Thread safety: all members may be called from any thread;
/// <see cref="Dispose"/> must not race with other calls.
/// </remarks>
public sealed class MemorySlot : IDisposable
{
    private readonly VirtualMachine _vm;
    private readonly MappedMemoryHandle _mapping;
    private int _disposed;

    internal MemorySlot(VirtualMachine vm, int slot, ulong guestPhysicalAddress, MappedMemoryHandle mapping, MemorySlotFlags flags)
    {
        _vm = vm;
        Slot = slot;
        GuestPhysicalAddress = guestPhysicalAddress;
        _mapping = mapping;
        Flags = flags;
    }

    /// <summary>The KVM slot number.</summary>
    public int Slot { get; }

    /// <summary>The guest-physical address of the first byte.</summary>
    public ulong GuestPhysicalAddress { get; internal set; }

    /// <summary>The size in bytes (a multiple of the host page size).</summary>
    public ulong Size => _mapping.Length;

    /// <summary>The guest-physical address one past the last byte.</summary>
    public ulong EndAddress => GuestPhysicalAddress + Size;

    /// <summary>The slot's flags.</summary>
    public MemorySlotFlags Flags { get; internal set; }

    /// <summary>True when the guest cannot write this slot (its writes become MMIO exits).</summary>
    public bool IsReadOnly => (Flags & MemorySlotFlags.ReadOnly) != 0;

    /// <summary>
    /// Moves the slot to another guest-physical address; its memory and size stay. Wraps
    /// KVM_SET_USER_MEMORY_REGION. Safe while vCPUs run (KVM makes them see the change atomically).
    /// </summary>
    /// <exception cref="ArgumentException">Unaligned, wrapping, or overlapping another slot (named).</exception>
    /// <exception cref="KvmException">KVM refused; the slot stays where it was.</exception>
    /// <exception cref="ObjectDisposedException">The slot or its VM is disposed.</exception>
    public void Move(ulong newGuestPhysicalAddress)
    {
        ThrowIfDisposed();
        _vm.MoveSlot(this, newGuestPhysicalAddress);
    }

    /// <summary>
    /// Changes the slot's flags: dirty logging may be turned on or off; read-only cannot change.
    /// Wraps KVM_SET_USER_MEMORY_REGION.
    /// </summary>
    /// <exception cref="ArgumentException">Unknown flags, or a change of <see cref="MemorySlotFlags.ReadOnly"/>.</exception>
    /// <exception cref="KvmException">KVM refused; the flags stay.</exception>
    /// <exception cref="ObjectDisposedException">The slot or its VM is disposed.</exception>
    public void SetFlags(MemorySlotFlags flags)
    {
        ThrowIfDisposed();
        _vm.SetSlotFlags(this, flags);
    }

    /// <summary>True once the slot has been removed from its VM.</summary>
    public bool IsDisposed => _disposed != 0;

    /// <summary>The host address of the mapping, for interop with native code. Valid until disposal.</summary>
    public nint HostAddress
    {
        get
        {
            ThrowIfDisposed();
            return _mapping.DangerousGetHandle();
        }
    }

    internal MappedMemoryHandle Mapping => _mapping;

    /// <summary>The whole slot as a span. The host's writes are immediately visible to the guest.</summary>
    /// <exception cref="InvalidOperationException">The slot is larger than 2 GiB - 1; use <see cref="GetSpan"/>.</exception>
    /// <exception cref="ObjectDisposedException">The slot was removed.</exception>
    public Span<byte> Span
    {
        get
        {
            ThrowIfDisposed();
            if (Size > int.MaxValue)
                throw new InvalidOperationException($"Memory slot {Slot} is {Size:N0} bytes, more than a span can hold; use GetSpan(offset, length).");
            return _mapping.Slice(0, (int)Size);
        }
    }

    /// <summary>The whole slot as <see cref="Memory{T}"/> (for async APIs and pipelines). Valid until disposal.</summary>
    /// <exception cref="InvalidOperationException">The slot is larger than 2 GiB - 1.</exception>
    public Memory<byte> Memory
    {
        get
        {
            _ = Span; // validates
            return new GuestMemoryManager(_mapping, 0, (int)Size).Memory;
        }
    }

    /// <summary>True when <c>[address, address + length)</c> lies inside this slot.</summary>
    public bool Contains(ulong address, ulong length = 1) =>
        address >= GuestPhysicalAddress && length <= Size && address - GuestPhysicalAddress <= Size - length;

    /// <summary>
    /// A span over <paramref name="length"/> bytes at byte <paramref name="offset"/> of the slot — an
    /// offset from the slot's start, not a guest-physical address (that is <see cref="GetGuestSpan"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside the slot.</exception>
    /// <exception cref="ObjectDisposedException">The slot was removed.</exception>
    public Span<byte> GetSpan(ulong offset, int length)
    {
        ThrowIfDisposed();
        if (length < 0 || offset > Size || (ulong)length > Size - offset)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"Range at offset 0x{offset:X} length 0x{length:X} is outside memory slot {Slot} (size 0x{Size:X}).");
        return _mapping.Slice(offset, length);
    }

    /// <summary>
    /// A span over <paramref name="length"/> bytes at guest-physical <paramref name="address"/> (the
    /// coordinates of <see cref="Read{T}"/>, <see cref="Write{T}"/> and
    /// <see cref="VirtualMachine.GetGuestSpan"/>; a slot-relative offset is <see cref="GetSpan"/>'s).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside the slot.</exception>
    public Span<byte> GetGuestSpan(ulong address, int length)
    {
        ThrowIfDisposed();
        if (length < 0 || !Contains(address, (ulong)length))
            throw OutOfRange(address, (ulong)Math.Max(length, 0));
        return _mapping.Slice(address - GuestPhysicalAddress, length);
    }

    /// <summary>Reads a value of type <typeparamref name="T"/> at a guest-physical address, in host byte order.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is not entirely inside the slot.</exception>
    public T Read<T>(ulong address) where T : unmanaged =>
        MemoryMarshal.Read<T>(GetGuestSpan(address, Unsafe.SizeOf<T>()));

    /// <summary>
    /// Writes a value of type <typeparamref name="T"/> at a guest-physical address, in host byte order.
    /// With dirty tracking on, the page is reported by the next harvest (raw span writes are not: see
    /// <see cref="DirtyPageTracker.MarkHostWrite"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is not entirely inside the slot.</exception>
    public void Write<T>(ulong address, T value) where T : unmanaged
    {
        MemoryMarshal.Write(GetGuestSpan(address, Unsafe.SizeOf<T>()), in value);
        _vm.DirtyTracker?.MarkSlotWrite(this, address - GuestPhysicalAddress, (ulong)Unsafe.SizeOf<T>());
    }

    /// <summary>Copies guest memory at <paramref name="address"/> into <paramref name="destination"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside the slot.</exception>
    public void Read(ulong address, Span<byte> destination) =>
        GetGuestSpan(address, destination.Length).CopyTo(destination);

    /// <summary>Copies <paramref name="source"/> into guest memory at <paramref name="address"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside the slot.</exception>
    public void Write(ulong address, ReadOnlySpan<byte> source)
    {
        source.CopyTo(GetGuestSpan(address, source.Length));
        _vm.DirtyTracker?.MarkSlotWrite(this, address - GuestPhysicalAddress, (ulong)source.Length);
    }

    private ArgumentOutOfRangeException OutOfRange(ulong address, ulong length) =>
        new(nameof(address), $"Guest-physical range 0x{address:X}..0x{address + length:X} is outside memory slot {Slot} (0x{GuestPhysicalAddress:X}..0x{EndAddress:X}).");

    private void ThrowIfDisposed()
    {
        if (_disposed != 0) ThrowHelper.ThrowObjectDisposed(this);
    }

    /// <summary>
    /// Removes the slot from the VM (KVM_SET_USER_MEMORY_REGION with size 0) and unmaps its memory.
    /// Idempotent. Spans obtained earlier must not be used afterwards.
    /// </summary>
    /// <exception cref="KvmException">KVM refused to delete the slot; the slot then stays registered and usable, so the guest never sees freed memory.</exception>
    public void Dispose()
    {
        if (_disposed != 0) return;
        _vm.RemoveSlot(this); // throws, leaving the slot intact, if KVM refuses
        _disposed = 1;
        _mapping.Dispose();
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"slot {Slot}: 0x{GuestPhysicalAddress:X}..0x{EndAddress:X}{(IsReadOnly ? " (read-only)" : "")}";
}
