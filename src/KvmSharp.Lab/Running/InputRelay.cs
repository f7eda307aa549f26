using System.Net.Sockets;

namespace KvmSharp.Lab.Running;

/// <summary>
/// The command's standard input for a lab machine: a Unix socket in the run folder that QEMU
/// connects to (a virtio serial port named <see cref="PortName"/> inside, which the run script
/// makes the command's standard input), fed from a stream by a thread of its own. The end of the
/// stream half-closes the connection: the machine's reads of the port then return what was buffered,
/// then end of file.
/// </summary>
internal sealed class InputRelay : IDisposable
{
    public const string PortName = "kvmsharp.stdin";

    private readonly Socket _listener;
    private readonly Stream _input;
    private Socket? _connection;
    private int _disposed;

    private InputRelay(Socket listener, Stream input, string socketPath)
    {
        _listener = listener;
        _input = input;
        SocketPath = socketPath;
    }

    /// <summary>The host socket QEMU connects to.</summary>
    public string SocketPath { get; }

    /// <summary>
    /// The relay for <paramref name="options"/>' input, or null when the command gets none: the
    /// input is <see cref="Stream.Null"/>, or it is this process's and that is <c>/dev/null</c> or closed.
    /// </summary>
    public static InputRelay? Create(LabOptions options, string runDirectory)
    {
        Stream? input = options.StandardInput;
        if (input == Stream.Null)
            return null;
        if (input is null)
        {
            if (!HasStandardInput())
                return null;
            input = OpenStandardInput();
        }
        string path = Path.Combine(runDirectory, "stdin.sock");
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            listener.Bind(new UnixDomainSocketEndPoint(path));
            listener.Listen(1);
        }
        catch
        {
            listener.Dispose();
            throw;
        }
        var relay = new InputRelay(listener, input, path);
        new Thread(relay.Pump) { IsBackground = true, Name = "kvmsharp-lab stdin" }.Start();
        return relay;
    }

    /// <summary>
    /// This process's file descriptor 0 as a plain unbuffered stream. Not <see cref="Console.OpenStandardInput()"/>:
    /// on a terminal .NET reads that a line at a time through its own line editor, so a key without
    /// Enter (Ctrl+] for a VMM, each key of a raw-mode program) would never arrive.
    /// </summary>
    internal static Stream OpenStandardInput() =>
        new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(0, ownsHandle: false), FileAccess.Read, bufferSize: 0);

    /// <summary>Whether this process has a standard input worth carrying: open, and not <c>/dev/null</c>.</summary>
    internal static bool HasStandardInput()
    {
        try
        {
            var target = new FileInfo("/proc/self/fd/0").LinkTarget;
            return target is not null && target != "/dev/null";
        }
        catch (IOException)
        {
            return false; // fd 0 is closed
        }
    }

    private void Pump()
    {
        try
        {
            using var connection = _listener.Accept(); // QEMU connects as it starts
            // Published before the check: a Dispose that ran in between sees it, or this sees Dispose.
            Interlocked.Exchange(ref _connection, connection); // a full fence: no store-load reordering with the check below
            if (Volatile.Read(ref _disposed) != 0)
                return;
            var buffer = new byte[16 * 1024];
            int n;
            while ((n = _input.Read(buffer)) > 0)
                connection.Send(buffer.AsSpan(0, n));
            // End of input. Half-close only: QEMU reads what is buffered as the machine takes it, then
            // end of file, which the port passes on. Closing the socket would hang it up at once, and
            // QEMU drops a hung-up connection with its unread data. So wait for QEMU to close.
            connection.Shutdown(SocketShutdown.Send);
            while (connection.Receive(buffer) > 0)
            {
                // Nothing is expected this way; whatever comes is dropped.
            }
        }
        catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException)
        {
            // The machine went away (or the relay was disposed): nobody reads the input any more.
        }
    }

    /// <summary>Stops relaying: the listener and the connection close (a read of the input in progress stays blocked until it returns).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _listener.Dispose();
        Volatile.Read(ref _connection)?.Dispose();
        try
        {
            File.Delete(SocketPath);
        }
        catch (IOException)
        {
        }
    }
}
