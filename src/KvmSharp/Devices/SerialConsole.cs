using System.IO.Pipelines;

namespace KvmSharp.Devices;

/// <summary>
/// A minimal 16550-style serial port for guest output: bytes the guest writes to the transmit
/// register (offset 0) come out of <see cref="Output"/>, a <see cref="PipeReader"/>; the line status
/// register (offset 5) always reports the transmitter empty, so polling drivers never wait. Input
/// is not supported (reads of other registers return 0). Map it with
/// <c>bus.MapPorts(0x3F8, 8, console)</c> (COM1) or at any port range.
/// </summary>
/// <remarks>
/// Thread-safe for one writer at a time per console (one vCPU thread, as a real UART has one
/// transmitter); <see cref="Output"/> may be read from any one thread. The pipe never pushes back
/// on the guest: unread output accumulates.
/// </remarks>
public sealed class SerialConsole : IIoDevice, IDisposable
{
    private const int Transmit = 0, LineStatus = 5;
    private const byte TransmitterEmpty = 0x60; // THRE | TEMT
    private readonly Pipe _pipe = new(new PipeOptions(pauseWriterThreshold: 0, useSynchronizationContext: false));
    private readonly Lock _lock = new();

    /// <summary>The guest's output, in order.</summary>
    public PipeReader Output => _pipe.Reader;

    /// <summary>How many bytes the guest has written so far.</summary>
    public long BytesWritten { get; private set; }

    /// <inheritdoc/>
    public void Read(IoContext context, ulong offset, Span<byte> data)
    {
        data.Clear();
        if (offset == LineStatus && data.Length > 0) data[0] = TransmitterEmpty;
    }

    /// <inheritdoc/>
    public void Write(IoContext context, ulong offset, ReadOnlySpan<byte> data)
    {
        if (offset != Transmit || data.IsEmpty) return;
        lock (_lock)
        {
            // A UART transmits one byte per write; wider accesses carry it in the low byte.
            var span = _pipe.Writer.GetSpan(1);
            span[0] = data[0];
            _pipe.Writer.Advance(1);
            BytesWritten++;
            // Never blocks: pauseWriterThreshold 0 disables back-pressure.
            _ = _pipe.Writer.FlushAsync();
        }
    }

    /// <summary>Ends <see cref="Output"/> (readers see completion).</summary>
    public void Dispose()
    {
        lock (_lock) _pipe.Writer.Complete();
    }
}
