using System.Buffers.Binary;
using System.Security.Cryptography;
using KvmSharp.Registers;

namespace KvmSharp.Snapshots;

/// <summary>
/// A VM's complete state at one moment: every vCPU's registers (level Full, MP state and events
/// included), the contents of every memory slot, and — on x86 with an in-kernel interrupt
/// controller — the in-kernel devices (KVM clock, PICs, IOAPIC, PIT, local APICs). Created by <see cref="VirtualMachine.CreateSnapshot"/>,
/// applied by <see cref="VirtualMachine.Restore"/>; can be saved to and loaded from a stream.
/// Immutable and thread-safe.
/// </summary>
/// <remarks>
/// <para>Memory is kept in chunks of 2 MiB, and a chunk that was all zeros is not stored at all, so
/// slots of any size work (2 GiB and more) and a large slot the guest barely touched costs next to
/// nothing to capture, keep, save and load.</para>
/// <para>Stream format, version 2 (all integers little-endian):</para>
/// <code>
/// "KVMSNAP\0"  u32 version=2  u32 architecture  u32 vcpuCount  u32 slotCount
/// vcpuCount × { i32 vcpuId  u32 setCount  setCount × { u64 setKey  u32 length  byte[length] } }
/// slotCount × { i32 slot  u32 flags  u64 guestPhysicalAddress  u64 size
///               ⌈size / 2 MiB⌉ × { u8 kind: 0 = all zeros, nothing follows;
///                                  1 = stored, byte[min(2 MiB, size − chunk start)] follows } }
/// u8 devices: 0 = none; 1 = x86 in-kernel devices follow:
///   blob clock  blob? picMaster  blob? picSlave  blob? ioApic  blob? pit
///   u32 lapicCount  lapicCount × { i32 vcpuId  u64 apicBase  blob registers  u8 hasDeadline  [u64 tscDeadline] }
///   (blob = u32 length + byte[length]; blob? may have length 0xFFFFFFFF: absent; each at most 64 KiB)
/// byte[32] SHA-256 of everything above
/// </code>
/// <para>Version 1 (never released: one array per slot, so slots under 2 GiB only) is not read.
/// Version 2 gained the device section before any release, so it has no version of its own.</para>
/// <para>Register sets are stored as KVM's structs in the byte order of the machine that saved them,
/// so a snapshot is for the same architecture (and byte order) only.</para>
/// </remarks>
public sealed class VmSnapshot
{
    private static ReadOnlySpan<byte> Magic => "KVMSNAP\0"u8;

    /// <summary>The format version <see cref="Save"/> writes and <see cref="Load"/> reads.</summary>
    public const int FormatVersion = 2;

    private const byte ZeroChunk = 0, StoredChunk = 1;

    internal VmSnapshot(KvmArchitecture architecture, (int Id, RegisterState State)[] vcpus, SlotImage[] slots, X86DeviceState? devices = null)
    {
        Architecture = architecture;
        VcpuStates = vcpus;
        Slots = slots;
        Devices = devices;
    }

    /// <summary>The architecture the snapshot belongs to.</summary>
    public KvmArchitecture Architecture { get; }

    internal (int Id, RegisterState State)[] VcpuStates { get; }

    internal SlotImage[] Slots { get; }

    /// <summary>The in-kernel devices (x86 with an irqchip), or null.</summary>
    internal X86DeviceState? Devices { get; }

    /// <summary>
    /// Whether the snapshot holds in-kernel device state: the KVM clock, the PICs, the IOAPIC, the PIT
    /// and the local APICs of an x86 VM with an in-kernel interrupt controller
    /// (<see cref="VirtualMachine.CreateIrqChip"/>). It restores only into a VM with the same devices.
    /// </summary>
    public bool HasDeviceState => Devices is not null;

    /// <summary>The vCPU ids captured, in order.</summary>
    public IEnumerable<int> VcpuIds => VcpuStates.Select(v => v.Id);

    /// <summary>The register state captured for vCPU <paramref name="vcpuId"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such vCPU in the snapshot.</exception>
    public RegisterState GetRegisters(int vcpuId)
    {
        foreach (var (id, state) in VcpuStates)
            if (id == vcpuId) return state;
        throw new KeyNotFoundException($"The snapshot has no vCPU {vcpuId}.");
    }

    /// <summary>Total bytes of guest memory captured (the slots' sizes; chunks that were all zeros are not stored, so this may exceed the memory the snapshot holds).</summary>
    public long MemoryBytes => Slots.Sum(s => (long)s.Size);

    /// <summary>
    /// The captured bytes of guest memory at <paramref name="address"/>: a view into the snapshot when
    /// the range lies in one stored 2 MiB chunk, else a copy (the range crosses chunks, or lies in a
    /// chunk that was all zeros, which the snapshot does not store).
    /// </summary>
    /// <exception cref="ArgumentException">The range is not inside one captured slot.</exception>
    public ReadOnlySpan<byte> GetMemory(ulong address, int length)
    {
        foreach (var s in Slots)
            if (address >= s.GuestPhysicalAddress && (ulong)length <= s.Size && address - s.GuestPhysicalAddress <= s.Size - (ulong)length)
                return s.Get(address - s.GuestPhysicalAddress, length);
        throw new ArgumentException($"Guest range 0x{address:X}+0x{length:X} is not inside one captured slot.", nameof(address));
    }

    /// <summary>Writes the snapshot in the versioned format described on this type.</summary>
    /// <exception cref="IOException">Writing failed.</exception>
    public void Save(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var w = new HashingWriter(stream, hash);
        w.Write(Magic);
        w.U32(FormatVersion);
        w.U32((uint)Architecture);
        w.U32((uint)VcpuStates.Length);
        w.U32((uint)Slots.Length);
        foreach (var (id, state) in VcpuStates)
        {
            w.U32((uint)id);
            var keys = state.Sets.ToArray();
            w.U32((uint)keys.Length);
            foreach (var key in keys)
            {
                var bytes = state.Get(key);
                w.U64(key);
                w.U32((uint)bytes.Length);
                w.Write(bytes);
            }
        }
        foreach (var s in Slots)
        {
            w.U32((uint)s.Slot);
            w.U32((uint)s.Flags);
            w.U64(s.GuestPhysicalAddress);
            w.U64(s.Size);
            foreach (var chunk in s.Chunks)
            {
                w.Byte(chunk is null ? ZeroChunk : StoredChunk);
                if (chunk is not null) w.Write(chunk);
            }
        }
        WriteDevices(w, Devices);
        stream.Write(hash.GetHashAndReset());
    }

    /// <summary>Reads a snapshot written by <see cref="Save"/>.</summary>
    /// <remarks>Hostile input is safe to load: every length is checked before it is used, and memory is
    /// allocated only for bytes the stream really holds (checked against a seekable stream's length, or
    /// grown as data arrives), so a short stream that claims gigabytes fails without allocating them.</remarks>
    /// <exception cref="InvalidDataException">Not a snapshot, an unknown version, truncated, or corrupted (checksum mismatch); the message says which and where.</exception>
    /// <exception cref="IOException">Reading failed.</exception>
    public static VmSnapshot Load(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var r = new HashingReader(stream, hash);
        Span<byte> magic = stackalloc byte[8];
        r.Read(magic, "the header");
        if (!magic.SequenceEqual(Magic)) throw new InvalidDataException("Not a KvmSharp snapshot: the stream does not start with \"KVMSNAP\\0\".");
        uint version = r.U32("the version");
        if (version != FormatVersion) throw new InvalidDataException($"Snapshot format version {version} is not supported; this KvmSharp reads version {FormatVersion}.");
        uint arch = r.U32("the architecture");
        if (!Enum.IsDefined((KvmArchitecture)arch)) throw new InvalidDataException($"Snapshot names unknown architecture {arch}.");
        uint vcpuCount = r.U32("the vCPU count"), slotCount = r.U32("the slot count");
        if (vcpuCount > 4096 || slotCount > 65536) throw new InvalidDataException($"Snapshot header is implausible ({vcpuCount} vCPUs, {slotCount} slots): corrupted.");
        // Each vCPU record takes at least 8 bytes, each slot record 25 (a header and one chunk), and the checksum 32.
        r.Require(8L * vcpuCount + 25L * slotCount + 32, $"{vcpuCount} vCPU and {slotCount} slot records");
        var vcpus = new (int, RegisterState)[vcpuCount];
        for (int i = 0; i < vcpuCount; i++)
        {
            int id = (int)r.U32($"vCPU {i}'s id");
            uint sets = r.U32($"vCPU {id}'s set count");
            if (sets > 1 << 16) throw new InvalidDataException($"vCPU {id} claims {sets} register sets: corrupted.");
            var dict = new SortedDictionary<ulong, byte[]>();
            for (int k = 0; k < sets; k++)
            {
                ulong key = r.U64($"vCPU {id}'s set key");
                uint len = r.U32($"vCPU {id}'s set 0x{key:X} length");
                if (len > 1 << 20) throw new InvalidDataException($"vCPU {id} set 0x{key:X} claims {len} bytes: corrupted.");
                dict[key] = r.ReadArray(len, $"vCPU {id}'s set 0x{key:X}");
            }
            vcpus[i] = (id, new RegisterState((KvmArchitecture)arch, dict));
        }
        var slots = new SlotImage[slotCount];
        for (int i = 0; i < slotCount; i++)
        {
            int slot = (int)r.U32($"slot record {i}");
            var flags = (MemorySlotFlags)r.U32($"slot {slot}'s flags");
            ulong gpa = r.U64($"slot {slot}'s address"), size = r.U64($"slot {slot}'s size");
            if (size == 0 || size > SlotImage.MaxSize) throw new InvalidDataException($"Slot {slot} claims 0x{size:X} bytes: corrupted or too large.");
            if (gpa + size < gpa) throw new InvalidDataException($"Slot {slot} at 0x{gpa:X} with 0x{size:X} bytes wraps the address space: corrupted.");
            slots[i] = new SlotImage(slot, flags, gpa, size, ReadChunks(r, slot, size));
        }
        var devices = ReadDevices(r, vcpuCount);
        Span<byte> expected = stackalloc byte[32];
        hash.GetHashAndReset(expected);
        Span<byte> stored = stackalloc byte[32];
        r.ReadRaw(stored, "the checksum");
        if (!expected.SequenceEqual(stored)) throw new InvalidDataException("Snapshot checksum mismatch: the data is corrupted.");
        if (devices is not null && (KvmArchitecture)arch != KvmArchitecture.X86_64)
            throw new InvalidDataException($"Snapshot of {(KvmArchitecture)arch} holds x86 device state: corrupted.");
        return new VmSnapshot((KvmArchitecture)arch, vcpus, slots, devices);
    }

    private const uint AbsentBlob = uint.MaxValue;
    private const int MaxDeviceBlob = 1 << 16; // every KVM device struct is far smaller (a local APIC page is 1 KiB)

    /// <summary>The device section: u8 present, then the blobs of <see cref="X86DeviceState"/> (see the class remarks).</summary>
    private static void WriteDevices(HashingWriter w, X86DeviceState? devices)
    {
        w.Byte(devices is null ? (byte)0 : (byte)1);
        if (devices is null) return;
        Blob(w, devices.Clock);
        Blob(w, devices.PicMaster);
        Blob(w, devices.PicSlave);
        Blob(w, devices.IoApic);
        Blob(w, devices.Pit);
        w.U32((uint)devices.Lapics.Count);
        foreach (var lapic in devices.Lapics)
        {
            w.U32((uint)lapic.VcpuId);
            w.U64(lapic.ApicBase);
            Blob(w, lapic.Registers);
            w.Byte(lapic.TscDeadline is null ? (byte)0 : (byte)1);
            if (lapic.TscDeadline is { } deadline) w.U64(deadline);
        }

        static void Blob(HashingWriter w, byte[]? bytes)
        {
            w.U32(bytes is null ? AbsentBlob : (uint)bytes.Length);
            if (bytes is not null) w.Write(bytes);
        }
    }

    private static X86DeviceState? ReadDevices(HashingReader r, uint vcpuCount)
    {
        byte present = r.Byte("the device section");
        if (present == 0) return null;
        if (present != 1) throw new InvalidDataException($"Snapshot device section has unknown kind {present}: corrupted.");
        var clock = Blob(r, "the KVM clock") ?? throw new InvalidDataException("Snapshot device section lacks the KVM clock: corrupted.");
        var master = Blob(r, "the master PIC");
        var slave = Blob(r, "the slave PIC");
        var ioApic = Blob(r, "the IOAPIC");
        var pit = Blob(r, "the PIT");
        uint count = r.U32("the local APIC count");
        if (count > vcpuCount) throw new InvalidDataException($"Snapshot holds {count} local APICs for {vcpuCount} vCPUs: corrupted.");
        var lapics = new List<X86DeviceState.Lapic>((int)count);
        for (int i = 0; i < count; i++)
        {
            int id = (int)r.U32($"local APIC {i}'s vCPU id");
            ulong apicBase = r.U64($"vCPU {id}'s APIC base");
            var registers = Blob(r, $"vCPU {id}'s local APIC") ?? throw new InvalidDataException($"Snapshot lacks vCPU {id}'s local APIC page: corrupted.");
            byte hasDeadline = r.Byte($"vCPU {id}'s TSC deadline flag");
            ulong? deadline = hasDeadline switch
            {
                0 => null,
                1 => r.U64($"vCPU {id}'s TSC deadline"),
                _ => throw new InvalidDataException($"Snapshot vCPU {id}'s TSC deadline flag is {hasDeadline}: corrupted."),
            };
            lapics.Add(new X86DeviceState.Lapic(id, apicBase, registers, deadline));
        }
        return new X86DeviceState(clock, master, slave, ioApic, pit, lapics);

        static byte[]? Blob(HashingReader r, string what)
        {
            uint length = r.U32($"{what}'s length");
            if (length == AbsentBlob) return null;
            if (length > MaxDeviceBlob) throw new InvalidDataException($"Snapshot {what} claims {length} bytes: corrupted.");
            return r.ReadArray(length, what);
        }
    }

    /// <summary>
    /// Reads a slot's chunk records. The chunk list grows only as records arrive (each takes at least
    /// one byte of the stream), and a seekable stream too short for them all is refused up front.
    /// </summary>
    private static byte[]?[] ReadChunks(HashingReader r, int slot, ulong size)
    {
        int count = SlotImage.ChunkCount(size);
        r.Require(count + 32L, $"slot {slot}'s {count} chunk records and the checksum");
        var chunks = new List<byte[]?>(Math.Min(count, 1024));
        for (int c = 0; c < count; c++)
        {
            string what = $"slot {slot}'s chunk {c}";
            byte kind = r.Byte(what);
            chunks.Add(kind switch
            {
                ZeroChunk => null,
                StoredChunk => r.ReadArray(SlotImage.ChunkLength(size, c), what),
                _ => throw new InvalidDataException($"Snapshot {what} has unknown kind {kind}: corrupted."),
            });
        }
        return [.. chunks];
    }

    private readonly struct HashingWriter(Stream stream, IncrementalHash hash)
    {
        public void Write(ReadOnlySpan<byte> bytes)
        {
            hash.AppendData(bytes);
            stream.Write(bytes);
        }

        public void Byte(byte v) => Write([v]);

        public void U32(uint v)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, v);
            Write(b);
        }

        public void U64(ulong v)
        {
            Span<byte> b = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(b, v);
            Write(b);
        }
    }

    private sealed class HashingReader(Stream stream, IncrementalHash hash)
    {
        private long _offset;

        public void ReadRaw(Span<byte> into, string what)
        {
            int got = stream.ReadAtLeast(into, into.Length, throwOnEndOfStream: false);
            if (got < into.Length)
                throw new InvalidDataException($"Snapshot truncated: {what} needs {into.Length} bytes at offset {_offset}, but the stream ends after {got}.");
            _offset += got;
        }

        public void Read(Span<byte> into, string what)
        {
            ReadRaw(into, what);
            hash.AppendData(into);
        }

        /// <summary>Refuses a stream known to hold fewer than <paramref name="bytes"/> more bytes (a seekable one).</summary>
        public void Require(long bytes, string what)
        {
            if (stream.CanSeek && bytes > stream.Length - stream.Position)
                throw new InvalidDataException($"Snapshot truncated: {what} need at least {bytes} bytes at offset {_offset}, but the stream holds only {stream.Length - stream.Position} more.");
        }

        /// <summary>
        /// Reads <paramref name="length"/> bytes into a new array, allocating no more than the stream
        /// really holds: a hostile length is refused against a seekable stream's remaining bytes before
        /// anything is allocated, and from any other stream the array grows only as data arrives.
        /// </summary>
        public byte[] ReadArray(long length, string what)
        {
            if (stream.CanSeek)
            {
                long remaining = stream.Length - stream.Position;
                if (length > remaining)
                    throw new InvalidDataException($"Snapshot truncated: {what} claims {length} bytes at offset {_offset}, but the stream holds only {remaining} more.");
                var all = GC.AllocateUninitializedArray<byte>((int)length);
                Read(all, what);
                return all;
            }
            const int FirstChunk = 1 << 20;
            var buffer = GC.AllocateUninitializedArray<byte>((int)Math.Min(length, FirstChunk));
            int filled = 0;
            while (filled < length)
            {
                if (filled == buffer.Length)
                    Array.Resize(ref buffer, (int)Math.Min(length, 2L * buffer.Length)); // at most twice what arrived
                int got = stream.Read(buffer, filled, buffer.Length - filled);
                if (got == 0)
                    throw new InvalidDataException($"Snapshot truncated: {what} needs {length} bytes at offset {_offset}, but the stream ends after {filled}.");
                filled += got;
            }
            hash.AppendData(buffer);
            _offset += length;
            return buffer;
        }

        public byte Byte(string what)
        {
            Span<byte> b = stackalloc byte[1];
            Read(b, what);
            return b[0];
        }

        public uint U32(string what)
        {
            Span<byte> b = stackalloc byte[4];
            Read(b, what);
            return BinaryPrimitives.ReadUInt32LittleEndian(b);
        }

        public ulong U64(string what)
        {
            Span<byte> b = stackalloc byte[8];
            Read(b, what);
            return BinaryPrimitives.ReadUInt64LittleEndian(b);
        }
    }
}
