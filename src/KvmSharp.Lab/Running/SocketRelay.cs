using System.Net.Sockets;

namespace KvmSharp.Lab.Running;

/// <summary>
/// Inside a lab machine: makes a host Unix socket that QEMU carries over a virtio serial port
/// appear as a Unix socket again. Listens at the guest path, and joins the first connection to the
/// port (<c>/dev/vportNpM</c>, found by name in <c>/sys/class/virtio-ports</c>), byte for byte in
/// both directions. One connection per port: the byte stream cannot carry two.
/// </summary>
internal static class SocketRelay
{
    /// <summary>Starts the relays the lab asked for in <see cref="KvmLab.ForwardsVariable"/>.</summary>
    /// <exception cref="LabException">A port the lab announced is not there.</exception>
    public static void StartFromEnvironment()
    {
        if (Environment.GetEnvironmentVariable(KvmLab.ForwardsVariable) is not { Length: > 0 } spec)
            return;
        // Started once per process, however often the entry point asks.
        Environment.SetEnvironmentVariable(KvmLab.ForwardsVariable, null);
        foreach (string entry in spec.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = entry.LastIndexOf('=');
            if (eq <= 0)
                throw new LabException($"Malformed {KvmLab.ForwardsVariable} entry '{entry}'.");
            Start(entry[..eq], entry[(eq + 1)..]);
        }
    }

    private static void Start(string guestPath, string portName)
    {
        string device = FindPort(portName)
            ?? throw new LabException($"The lab machine has no virtio port named {portName} (is virtio_console loaded?).");
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        File.Delete(guestPath);
        listener.Bind(new UnixDomainSocketEndPoint(guestPath));
        listener.Listen(1);
        new Thread(() => Serve(listener, device)) { IsBackground = true, Name = $"kvmsharp-lab relay {portName}" }.Start();
    }

    private static void Serve(Socket listener, string device)
    {
        using var connection = listener.Accept();
        listener.Dispose();
        using var port = new FileStream(device, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, bufferSize: 0);
        var toPort = new Thread(() =>
        {
            var buffer = new byte[64 * 1024];
            try
            {
                int n;
                while ((n = connection.Receive(buffer)) > 0)
                    port.Write(buffer, 0, n);
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                // One side went away: the other follows when the process ends.
            }
        }) { IsBackground = true, Name = "kvmsharp-lab relay to host" };
        toPort.Start();
        var fromPort = new byte[64 * 1024];
        try
        {
            int n;
            while ((n = port.Read(fromPort)) > 0)
                connection.Send(fromPort.AsSpan(0, n));
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
        }
        toPort.Join();
    }

    private static string? FindPort(string name)
    {
        const string ports = "/sys/class/virtio-ports";
        if (!Directory.Exists(ports))
            return null;
        foreach (string dir in Directory.EnumerateDirectories(ports))
        {
            string nameFile = Path.Combine(dir, "name");
            if (File.Exists(nameFile) && File.ReadAllText(nameFile).Trim() == name)
                return Path.Combine("/dev", Path.GetFileName(dir));
        }
        return null;
    }
}
