using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp;

/// <summary>A port I/O exit (<c>kvm_run.io</c>). For string I/O (<c>rep outs/ins</c>), <see cref="Count"/> items of <see cref="Size"/> bytes.</summary>
public readonly ref struct IoExit
{
    private readonly RunBytes _run; // the whole kvm_run page: the data lies outside the union
    private readonly int _u;

    internal IoExit(RunBytes run, int unionOffset)
    {
        _run = run;
        _u = unionOffset;
    }

    /// <summary>In or out.</summary>
    public IoDirection Direction => (IoDirection)Fields.direction;

    /// <summary>True for an OUT (guest write).</summary>
    public bool IsOut => Fields.direction == kvm_run_io.KVM_EXIT_IO_OUT;

    /// <summary>Bytes per item: 1, 2 or 4.</summary>
    public int Size => Fields.size;

    /// <summary>The port.</summary>
    public ushort Port => Fields.port;

    /// <summary>The number of items (1 unless string I/O).</summary>
    public int Count => (int)Fields.count;

    /// <summary>
    /// The data: <see cref="Size"/> × <see cref="Count"/> bytes inside the <c>kvm_run</c> mapping, in
    /// the guest's byte order. For an IN, write the values the guest should read here before the next
    /// run and before writing any register: the first register write completes the IN with what is
    /// here (see <see cref="VcpuExit.Io"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">The kernel reported a data range outside the mapping.</exception>
    public Span<byte> Data
    {
        get
        {
            var run = _run.Span;
            return DataIn(run, ref IoIn(run));
        }
    }

    /// <summary><c>kvm_run.io</c> inside <paramref name="run"/> (the whole page, checked by the caller).</summary>
    private ref kvm_run_io IoIn(Span<byte> run) => ref MemoryMarshal.AsRef<kvm_run_io>(run.Slice(_u, Unsafe.SizeOf<kvm_run_io>()));

    /// <summary>The data <paramref name="io"/> points at inside <paramref name="run"/>, refused if KVM reported a range outside it.</summary>
    private static Span<byte> DataIn(Span<byte> run, ref kvm_run_io io)
    {
        ulong offset = io.data_offset;
        ulong length = (ulong)io.size * io.count;
        if (offset > (ulong)run.Length || length > (ulong)run.Length - offset)
            throw new InvalidOperationException($"KVM reported I/O data at offset {offset} length {length}, outside the {run.Length}-byte kvm_run mapping.");
        return run.Slice((int)offset, (int)length);
    }

    /// <summary>The first item as a little-endian number (x86 port I/O is little-endian).</summary>
    public uint Value
    {
        get
        {
            var d = Data;
            return Size switch
            {
                1 => d[0],
                2 => BinaryPrimitives.ReadUInt16LittleEndian(d),
                _ => BinaryPrimitives.ReadUInt32LittleEndian(d),
            };
        }
    }

    /// <summary>Stores <paramref name="value"/> as the first item, little-endian, for an IN to read.</summary>
    public void SetValue(uint value)
    {
        var d = Data;
        switch (Size)
        {
            case 1: d[0] = (byte)value; break;
            case 2: BinaryPrimitives.WriteUInt16LittleEndian(d, (ushort)value); break;
            default: BinaryPrimitives.WriteUInt32LittleEndian(d, value); break;
        }
    }

    /// <summary>
    /// The whole <c>kvm_run.io</c> and its data in one disposal check (for <see cref="VcpuRunner"/>'s
    /// dispatch, which needs every field of every I/O exit).
    /// </summary>
    internal Span<byte> Decode(out ushort port, out int size, out int count, out bool isOut)
    {
        var run = _run.Span; // the one disposal check
        ref var io = ref IoIn(run);
        port = io.port;
        size = io.size;
        count = (int)io.count;
        isOut = io.direction == kvm_run_io.KVM_EXIT_IO_OUT;
        return DataIn(run, ref io);
    }

    private ref kvm_run_io Fields => ref IoIn(_run.Span);
}
