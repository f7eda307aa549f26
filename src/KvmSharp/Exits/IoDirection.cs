namespace KvmSharp;

/// <summary>The direction of a port I/O exit.</summary>
public enum IoDirection : byte
{
    /// <summary>KVM_EXIT_IO_IN: the guest reads; the handler fills <see cref="IoExit.Data"/>.</summary>
    In = 0,
    /// <summary>KVM_EXIT_IO_OUT: the guest writes; <see cref="IoExit.Data"/> holds what it wrote.</summary>
    Out = 1,
}
