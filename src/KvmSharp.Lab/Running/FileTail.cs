namespace KvmSharp.Lab.Running;

/// <summary>
/// Follows a file another machine appends to (the command's output, written by the lab machine
/// through 9p, which writes through to the host at once) and copies each new byte to a sink.
/// </summary>
internal sealed class FileTail(string path, Stream sink) : IDisposable
{
    private readonly byte[] _buffer = new byte[64 * 1024];
    private FileStream? _file;

    /// <summary>Copies everything appended since the last call; returns whether anything was.</summary>
    public bool Pump()
    {
        if (_file is null)
        {
            if (!File.Exists(path))
                return false;
            try
            {
                _file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1, FileOptions.None);
            }
            catch (FileNotFoundException)
            {
                return false;
            }
        }
        bool any = false;
        int n;
        while ((n = _file.Read(_buffer)) > 0)
        {
            sink.Write(_buffer, 0, n);
            any = true;
        }
        if (any)
            sink.Flush();
        return any;
    }

    public void Dispose() => _file?.Dispose();
}
