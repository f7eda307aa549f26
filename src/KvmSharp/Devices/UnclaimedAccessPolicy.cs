namespace KvmSharp.Devices;

/// <summary>What a <see cref="VcpuRunner"/> does with an access no device claims.</summary>
public enum UnclaimedAccessPolicy
{
    /// <summary>Writes are dropped; reads return zeros.</summary>
    Ignore,

    /// <summary>Writes are dropped; reads return all ones (0xFF bytes), as an empty ISA bus does.</summary>
    ReadAllOnes,

    /// <summary>The run loop stops with <see cref="RunStopReason.UnclaimedAccess"/>; the access stays pending.</summary>
    Stop,
}
