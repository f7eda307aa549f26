namespace KvmSharp.Devices;

/// <summary>
/// The two ways a PC guest without ACPI resets itself, as one device that ends
/// <see cref="VcpuRunner.Run"/> with <see cref="RunStopReason.GuestReset"/>: the reset control
/// register at port 0xCF9 (a write with bit 2, e.g. Linux's <c>reboot=pci</c> writes 0x02 then
/// 0x06) and the keyboard controller's reset pulse (command 0xFE to port 0x64, Linux's
/// <c>reboot=k</c>; Firecracker treats it as the guest's end). Map it on both:
/// <c>bus.MapPorts(0xCF9, 1, reset); bus.MapPorts(0x64, 1, reset);</c>.
/// </summary>
/// <remarks>
/// Port 0x64 is only the reset command here: reads return 0 (input buffer empty, so a guest
/// waiting to send the command goes on) and other commands are ignored — do not combine it with a
/// full 8042 keyboard controller. Thread-safe.
/// </remarks>
public sealed class ResetDevice : IIoDevice
{
    /// <summary>The reset control register's port.</summary>
    public const ushort ResetControlPort = 0xCF9;

    /// <summary>The keyboard controller's command/status port.</summary>
    public const ushort KeyboardControllerPort = 0x64;

    private const byte ResetCpu = 0x04, PulseResetLine = 0xFE;
    private int _resetControl;
    private int _resets;

    /// <summary>How many resets the guest has asked for.</summary>
    public int ResetCount => Volatile.Read(ref _resets);

    /// <inheritdoc/>
    public void Read(IoContext context, ulong offset, Span<byte> data)
    {
        data.Clear();
        if (!data.IsEmpty && context.Address == ResetControlPort) data[0] = (byte)Volatile.Read(ref _resetControl);
    }

    /// <inheritdoc/>
    public void Write(IoContext context, ulong offset, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty) return;
        bool reset;
        if (context.Address == ResetControlPort)
        {
            Volatile.Write(ref _resetControl, data[0]);
            reset = (data[0] & ResetCpu) != 0;
        }
        else
        {
            reset = context.Address == KeyboardControllerPort && data[0] == PulseResetLine;
        }
        if (!reset) return;
        Interlocked.Increment(ref _resets);
        context.RequestReset();
    }
}
