using System.Buffers;
using System.IO.Pipelines;

namespace KvmSharp.Devices;

/// <summary>
/// A 16550A UART on the <see cref="IoBus"/> (8 ports, e.g. COM1 at 0x3F8 with IRQ 4): transmit and
/// receive registers with a 16-byte receive FIFO, divisor latch, line and modem control and status,
/// scratch register, and interrupts — received data, transmitter empty, line status — raised on
/// an interrupt line through a callback (e.g. <see cref="VirtualMachine.SetIrqLine"/>). What the guest
/// transmits comes out of <see cref="Output"/>; what the host writes to <see cref="Input"/> arrives
/// in the receive FIFO as the guest makes room, so input back-pressures the writer instead of being lost.
/// </summary>
/// <remarks>
/// <para>Thread-safe: the guest's accesses (one vCPU thread at a time) and the input pump (a
/// background task reading <see cref="Input"/>) share one lock; the interrupt callback is called
/// under it, only when the line's level changes. Transmission is immediate: the transmitter is
/// always empty again by the next register read, so polling drivers never wait.</para>
/// <para>Like QEMU's UART, the line is not gated by the modem control register's OUT2 bit. Line
/// settings (baud divisor, word length, parity) are stored and read back but do not change the bytes.</para>
/// </remarks>
public sealed class Uart16550 : IIoDevice, IDisposable
{
    private const int FifoSize = 16;
    // Registers (offsets) and bits, as in the PC16550D data sheet.
    private const int Data = 0, InterruptEnable = 1, InterruptId = 2, LineControl = 3, ModemControl = 4,
        LineStatus = 5, ModemStatus = 6, Scratch = 7;
    private const byte IerReceived = 0x01, IerTransmitterEmpty = 0x02, IerLineStatus = 0x04;
    private const byte LcrDlab = 0x80, FcrEnable = 0x01, FcrClearReceive = 0x02, McrLoop = 0x10;
    private const byte LsrDataReady = 0x01, LsrOverrun = 0x02, LsrThre = 0x20, LsrTemt = 0x40;
    private const byte IirNone = 0x01, IirLineStatus = 0x06, IirReceived = 0x04, IirThre = 0x02, IirFifos = 0xC0;

    private readonly Lock _lock = new();
    private readonly Action<bool> _setIrq;
    private readonly Pipe _output = new(new PipeOptions(pauseWriterThreshold: 0, useSynchronizationContext: false));
    private readonly Pipe _input = new(new PipeOptions(useSynchronizationContext: false));
    private readonly Queue<byte> _receive = new(FifoSize);
    private readonly Task _pump;
    private readonly CancellationTokenSource _stop = new();
    private TaskCompletionSource _room = NewRoom();
    private byte _ier, _lcr, _mcr, _scratch, _dll = 12, _dlm, _lsrErrors;
    private bool _fifoEnabled, _thrInterrupt, _irqLevel, _disposed;

    /// <summary>Creates the UART; <paramref name="setIrq"/> drives its interrupt line (true: asserted).</summary>
    /// <param name="setIrq">Called with the line's new level whenever it changes, e.g.
    /// <c>level => vm.SetIrqLine(4, level)</c>. Called on the vCPU thread or the input pump's; must not block for long.</param>
    public Uart16550(Action<bool> setIrq)
    {
        ArgumentNullException.ThrowIfNull(setIrq);
        _setIrq = setIrq;
        _pump = Task.Run(PumpInputAsync);
    }

    /// <summary>The bytes the guest transmitted, in order. Never back-pressures the guest.</summary>
    public PipeReader Output => _output.Reader;

    /// <summary>Bytes for the guest to receive. A flush waits while the guest has not read what came before.</summary>
    public PipeWriter Input => _input.Writer;

    /// <summary>How many bytes the guest has transmitted.</summary>
    public long BytesTransmitted { get; private set; }

    /// <inheritdoc/>
    public void Read(IoContext context, ulong offset, Span<byte> data)
    {
        if (data.IsEmpty) return;
        data.Clear();
        lock (_lock) data[0] = ReadRegister((int)(offset & 7));
    }

    /// <inheritdoc/>
    public void Write(IoContext context, ulong offset, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty) return;
        lock (_lock) WriteRegister((int)(offset & 7), data[0]);
    }

    private byte ReadRegister(int register)
    {
        bool dlab = (_lcr & LcrDlab) != 0;
        switch (register)
        {
            case Data when dlab:
                return _dll;
            case Data:
            {
                if (!_receive.TryDequeue(out byte b)) return 0;
                if (_receive.Count < FifoSize) _room.TrySetResult();
                UpdateIrq();
                return b;
            }
            case InterruptEnable:
                return dlab ? _dlm : _ier;
            case InterruptId:
            {
                byte id = PendingInterrupt();
                if (id == IirThre) _thrInterrupt = false; // reading IIR clears a THRE interrupt (data sheet, table 4)
                UpdateIrq();
                return (byte)(id | (_fifoEnabled ? IirFifos : 0));
            }
            case LineControl:
                return _lcr;
            case ModemControl:
                return _mcr;
            case LineStatus:
            {
                byte lsr = (byte)(LsrThre | LsrTemt | _lsrErrors | (_receive.Count > 0 ? LsrDataReady : 0));
                _lsrErrors = 0; // reading LSR clears the error bits and their interrupt
                UpdateIrq();
                return lsr;
            }
            case ModemStatus:
                // CTS, DSR and DCD asserted (a connected line), or in loopback the MCR's outputs.
                // Loopback: DTR → DSR, RTS → CTS, OUT1 → RI, OUT2 → DCD.
                return (_mcr & McrLoop) != 0
                    ? (byte)(((_mcr & 0x01) << 5) | ((_mcr & 0x02) << 3) | ((_mcr & 0x0C) << 4))
                    : (byte)0xB0;
            default:
                return _scratch;
        }
    }

    private void WriteRegister(int register, byte value)
    {
        bool dlab = (_lcr & LcrDlab) != 0;
        switch (register)
        {
            case Data when dlab:
                _dll = value;
                break;
            case Data:
                if ((_mcr & McrLoop) != 0)
                {
                    Receive(value); // loopback: the byte comes straight back
                }
                else
                {
                    var span = _output.Writer.GetSpan(1);
                    span[0] = value;
                    _output.Writer.Advance(1);
                    _ = _output.Writer.FlushAsync(); // never blocks: no back-pressure threshold
                    BytesTransmitted++;
                }
                _thrInterrupt = true; // sent at once: the holding register is empty again
                break;
            case InterruptEnable when dlab:
                _dlm = value;
                break;
            case InterruptEnable:
                // Enabling the THRE interrupt while the register is empty raises it at once.
                if ((value & IerTransmitterEmpty) != 0 && (_ier & IerTransmitterEmpty) == 0) _thrInterrupt = true;
                _ier = (byte)(value & 0x0F);
                break;
            case InterruptId: // FCR
                _fifoEnabled = (value & FcrEnable) != 0;
                if ((value & FcrClearReceive) != 0 || !_fifoEnabled)
                {
                    _receive.Clear();
                    _room.TrySetResult();
                }
                break;
            case LineControl:
                _lcr = value;
                break;
            case ModemControl:
                _mcr = (byte)(value & 0x1F);
                break;
            case Scratch:
                _scratch = value;
                break;
        }
        UpdateIrq();
    }

    /// <summary>The highest-priority pending interrupt's IIR id, or <see cref="IirNone"/>.</summary>
    private byte PendingInterrupt()
    {
        if ((_ier & IerLineStatus) != 0 && _lsrErrors != 0) return IirLineStatus;
        if ((_ier & IerReceived) != 0 && _receive.Count > 0) return IirReceived;
        if ((_ier & IerTransmitterEmpty) != 0 && _thrInterrupt) return IirThre;
        return IirNone;
    }

    private void UpdateIrq()
    {
        bool level = PendingInterrupt() != IirNone;
        if (level == _irqLevel || _disposed) return;
        _irqLevel = level;
        _setIrq(level);
    }

    private void Receive(byte b)
    {
        if (_receive.Count >= FifoSize)
        {
            _lsrErrors |= LsrOverrun;
            return;
        }
        _receive.Enqueue(b);
        UpdateIrq();
    }

    private const byte StateVersion = 1;
    private const int StateHeaderSize = 11;

    /// <summary>
    /// The UART's state as bytes: its registers (interrupt enable, line and modem control, divisor
    /// latch, scratch), its pending line-status errors and transmitter interrupt, and the bytes in its
    /// receive FIFO that the guest has not read. Take it with the guest stopped, beside a
    /// <see cref="VirtualMachine.CreateSnapshot"/> (which holds KVM's state only, not that of devices in
    /// this process), and give it to <see cref="RestoreState"/> after <see cref="VirtualMachine.Restore"/>.
    /// </summary>
    /// <remarks>Neither <see cref="Input"/> nor <see cref="Output"/> is part of it: bytes still waiting
    /// in <see cref="Input"/> stay there, and what the guest transmitted stays transmitted.</remarks>
    /// <exception cref="ObjectDisposedException">The UART is disposed.</exception>
    public byte[] CaptureState()
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var state = new byte[StateHeaderSize + _receive.Count];
            state[0] = StateVersion;
            state[1] = _ier;
            state[2] = _lcr;
            state[3] = _mcr;
            state[4] = _scratch;
            state[5] = _dll;
            state[6] = _dlm;
            state[7] = _lsrErrors;
            state[8] = (byte)((_fifoEnabled ? 1 : 0) | (_thrInterrupt ? 2 : 0));
            state[9] = 0;
            state[10] = (byte)_receive.Count;
            _receive.CopyTo(state, StateHeaderSize);
            return state;
        }
    }

    /// <summary>
    /// Puts the UART back into a state from <see cref="CaptureState"/>: its registers and its receive
    /// FIFO are replaced, then its interrupt line is driven to the level that state implies — lowered,
    /// and raised again if an enabled interrupt is pending, so that an edge-triggered input (the ISA
    /// IRQs of the PIC and IOAPIC) sees a fresh edge. Call it after <see cref="VirtualMachine.Restore"/>,
    /// so the line reaches the restored interrupt controller: a guest's driver restored to a moment
    /// when it had enabled receive interrupts then gets them, whatever the UART did since.
    /// </summary>
    /// <param name="state">Bytes from <see cref="CaptureState"/>.</param>
    /// <exception cref="ArgumentException"><paramref name="state"/> is not a UART state of this version
    /// (wrong version byte or length); the UART is unchanged.</exception>
    /// <exception cref="ObjectDisposedException">The UART is disposed.</exception>
    public void RestoreState(ReadOnlySpan<byte> state)
    {
        if (state.Length < StateHeaderSize || state[0] != StateVersion || state[10] > FifoSize || state.Length != StateHeaderSize + state[10])
            throw new ArgumentException($"Not a Uart16550 state of version {StateVersion}: {state.Length} bytes" + (state.Length > 0 ? $", version byte {state[0]}." : "."), nameof(state));
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _ier = state[1];
            _lcr = state[2];
            _mcr = state[3];
            _scratch = state[4];
            _dll = state[5];
            _dlm = state[6];
            _lsrErrors = state[7];
            _fifoEnabled = (state[8] & 1) != 0;
            _thrInterrupt = (state[8] & 2) != 0;
            _receive.Clear();
            foreach (byte b in state[StateHeaderSize..]) _receive.Enqueue(b);
            if (_receive.Count < FifoSize) _room.TrySetResult();
            _irqLevel = false;
            _setIrq(false);
            UpdateIrq();
        }
    }

    /// <summary>Moves <see cref="Input"/> into the receive FIFO as it has room.</summary>
    private async Task PumpInputAsync()
    {
        var reader = _input.Reader;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(_stop.Token).ConfigureAwait(false);
                var buffer = result.Buffer;
                while (!buffer.IsEmpty)
                {
                    Task room;
                    lock (_lock)
                    {
                        if (_disposed) return;
                        int n = 0;
                        foreach (var segment in buffer)
                        {
                            foreach (byte b in segment.Span)
                            {
                                if (_receive.Count >= FifoSize) break;
                                _receive.Enqueue(b);
                                n++;
                            }
                            if (_receive.Count >= FifoSize) break;
                        }
                        buffer = buffer.Slice(n);
                        UpdateIrq();
                        if (_receive.Count < FifoSize) continue;
                        _room = NewRoom();
                        room = _room.Task;
                    }
                    await room.WaitAsync(_stop.Token).ConfigureAwait(false); // the guest reads, or the FIFO is cleared
                }
                reader.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCompleted) return;
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
        finally
        {
            await reader.CompleteAsync().ConfigureAwait(false);
        }
    }

    private static TaskCompletionSource NewRoom() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Stops the input pump, ends <see cref="Output"/> and lowers the line no more (idempotent).</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            _output.Writer.Complete();
        }
        _stop.Cancel();
        try
        {
            _pump.Wait(TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
        }
        _stop.Dispose();
    }
}
