using System.Diagnostics;

namespace KvmSharp.Benchmarks;

/// <summary>
/// <c>--ioeventfd [ROUNDS]</c>: the cost of one guest-to-host notification (an <c>OUT</c> to a
/// port), two ways, in batches of <see cref="Batch"/> alternating round by round: through an
/// ioeventfd (<see cref="VirtualMachine.AddIoEventFd"/>: KVM signals an <see cref="EventFd"/> and the
/// guest goes on, no exit to user space; the host reads the count once per batch) and as a PIO exit
/// handled in user space (<see cref="Vcpu.Run()"/> returns, the host looks at the port, runs again).
/// The guest is a real-mode loop (<c>mov cx, N; out P, al; loop; out Q, al</c>); each batch ends
/// with one exit at Q either way. Reports medians per notification and checks that the eventfd
/// counted every one.
/// </summary>
internal static class IoEventFdBenchmark
{
    private const int Batch = 1000;
    private const byte NotifyPort = 0x10, DonePort = 0x11;

    private static ReadOnlySpan<byte> Code =>
    [
        0xB9, Batch & 0xFF, Batch >> 8, // mov cx, Batch
        0xE6, NotifyPort,               // out NotifyPort, al
        0xE2, 0xFC,                     // loop back to the out
        0xE6, DonePort,                 // out DonePort, al
        0xEB, 0xFE,                     // jmp $
    ];

    public static int Run(string[] args)
    {
        int rounds = 200;
        if (args.Length > 1 || (args.Length == 1 && (!int.TryParse(args[0], out rounds) || rounds < 1)))
        {
            Console.Error.WriteLine("usage: --ioeventfd [ROUNDS (default 200)]");
            return 2;
        }
        using var viaEventFd = new KvmSharpGuest(Code);
        using var viaExit = new KvmSharpGuest(Code);
        using var eventFd = new EventFd();
        viaEventFd.Vcpu.VirtualMachine.AddIoEventFd(eventFd, NotifyPort, 1, isPio: true);

        var eventFdNs = new List<double>();
        var exitNs = new List<double>();
        for (int round = -5; round < rounds; round++) // 5 warm-up rounds
        {
            long t0 = Stopwatch.GetTimestamp();
            RunBatch(viaEventFd.Vcpu, expectNotifyExits: 0);
            if (!eventFd.TryRead(out ulong count) || count != Batch)
                throw new InvalidOperationException($"The eventfd counted {count} notifications, not {Batch}.");
            long t1 = Stopwatch.GetTimestamp();
            RunBatch(viaExit.Vcpu, expectNotifyExits: Batch);
            long t2 = Stopwatch.GetTimestamp();
            if (round < 0) continue;
            eventFdNs.Add(Stopwatch.GetElapsedTime(t0, t1).TotalNanoseconds / Batch);
            exitNs.Add(Stopwatch.GetElapsedTime(t1, t2).TotalNanoseconds / Batch);
        }
        double e = Median(eventFdNs), x = Median(exitNs);
        Console.WriteLine($"Guest notification (OUT to a port), {rounds} rounds of {Batch}, median per notification:");
        Console.WriteLine($"  ioeventfd (no exit; eventfd read once per batch): {e / 1000,8:F2} µs");
        Console.WriteLine($"  PIO exit handled in user space (Vcpu.Run loop):  {x / 1000,8:F2} µs");
        Console.WriteLine($"  ioeventfd is {x / e:F1}× cheaper");
        return 0;
    }

    /// <summary>Runs the loop from its start until the exit at <see cref="DonePort"/>, counting exits at <see cref="NotifyPort"/>.</summary>
    private static void RunBatch(Vcpu vcpu, int expectNotifyExits)
    {
        vcpu.X86.Rip = GuestCode.Address;
        int notifyExits = 0;
        while (true)
        {
            var exit = vcpu.Run();
            if (exit.Reason != VcpuExitReason.Io)
                throw new InvalidOperationException($"Unexpected exit {exit.Reason}.");
            exit.Io.Decode(out ushort port, out _, out _, out _);
            if (port == DonePort) break;
            if (port != NotifyPort) throw new InvalidOperationException($"Unexpected port 0x{port:X}.");
            notifyExits++;
        }
        if (notifyExits != expectNotifyExits)
            throw new InvalidOperationException($"{notifyExits} exits at the notify port, expected {expectNotifyExits}.");
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values.Count % 2 == 1 ? values[values.Count / 2] : (values[values.Count / 2 - 1] + values[values.Count / 2]) / 2;
    }
}
