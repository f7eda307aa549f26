// HelloGuest: assembles a tiny 64-bit guest that prints a greeting through port I/O, runs it on
// /dev/kvm, prints what the guest wrote and a table of the exits it took.
using System.Text;
using Iced.Intel;
using KvmSharp;
using KvmSharp.Guests;
using KvmSharp.Lab;
using static Iced.Intel.AssemblerRegisters;

// Run where a real KVM is: here if /dev/kvm works, else this same program in a KvmSharp.Lab machine
// (a stock Linux KVM under QEMU). Either way one line says where.
if (KvmLab.RelaunchIfNeeded(args, new LabOptions { Log = Console.Out }) is int labExitCode)
    return labExitCode;

const ulong CodeAddress = 0x10000, MessageAddress = 0x11000, StackTop = 0x80000;
const ushort ConsolePort = 0xE9; // the Bochs/QEMU debug console port
byte[] message = "Hello from the guest\n"u8.ToArray();

// The guest: print the message one byte at a time (a loop of `out`), then halt.
var asm = new Assembler(64);
var loop = asm.CreateLabel();
asm.mov(rsi, MessageAddress);
asm.mov(ecx, message.Length);
asm.mov(dx, ConsolePort);
asm.Label(ref loop);
asm.mov(al, __byte_ptr[rsi]);
asm.@out(dx, al);
asm.inc(rsi);
asm.dec(ecx);
asm.jnz(loop);
asm.hlt();
using var code = new MemoryStream();
asm.Assemble(new StreamCodeWriter(code), CodeAddress);

try
{
    using var kvm = Kvm.Open();
    using var vm = kvm.CreateVirtualMachine();
    var ram = vm.AddMemorySlot(0, 0x200000);
    ram.Write(CodeAddress, code.ToArray());
    ram.Write(MessageAddress, message);
    using var vcpu = vm.CreateVcpu();
    X86LongMode.Setup(vcpu, ram, CodeAddress, StackTop);

    var output = new StringBuilder();
    var exits = new SortedDictionary<string, int>();
    while (true)
    {
        var exit = vcpu.Run();
        string reason = exit.ToString();
        exits[reason] = exits.GetValueOrDefault(reason) + 1;
        if (exit.Reason == VcpuExitReason.Io && exit.Io.Port == ConsolePort && exit.Io.IsOut)
        {
            output.Append(Encoding.ASCII.GetString(exit.Io.Data));
            continue;
        }
        if (exit.Reason != VcpuExitReason.Hlt)
            Console.Error.WriteLine($"unexpected exit: {reason}");
        break;
    }

    Console.Write($"guest: {output}");
    Console.WriteLine();
    Console.WriteLine("exits by reason:");
    foreach (var (reason, count) in exits)
        Console.WriteLine($"  {reason,-12} {count,6}");
    return output.ToString() == Encoding.ASCII.GetString(message) ? 0 : 1;
}
catch (KvmUnavailableException e)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}
