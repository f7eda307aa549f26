namespace KvmSharp.Lab.Provisioning;

/// <summary>
/// An exclusive lock on the lab cache, held while provisioning, so that two processes (say two test
/// projects that <c>dotnet test</c> runs at once) neither download the same kernel twice nor run
/// <c>apt-get</c> against each other. On Linux a <see cref="FileShare.None"/> stream takes an
/// advisory <c>flock</c>, released when the stream closes or the process dies.
/// </summary>
internal sealed class CacheLock : IDisposable
{
    private readonly FileStream _stream;

    private CacheLock(FileStream stream) => _stream = stream;

    public static CacheLock Acquire(string cacheDirectory, TextWriter log, TimeSpan timeout)
    {
        Directory.CreateDirectory(cacheDirectory);
        string path = Path.Combine(cacheDirectory, ".lock");
        var deadline = DateTime.UtcNow + timeout;
        bool said = false;
        while (true)
        {
            try
            {
                return new CacheLock(new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None));
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                if (!said)
                {
                    log.WriteLine($"lab: waiting for another process provisioning {cacheDirectory}");
                    said = true;
                }
                Thread.Sleep(250);
            }
            catch (IOException e)
            {
                throw new LabException($"The lab cache {cacheDirectory} stayed locked by another process for {timeout.TotalMinutes:0} minutes ({e.Message}).", e);
            }
        }
    }

    public void Dispose() => _stream.Dispose();
}
