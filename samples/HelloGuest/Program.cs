// HelloGuest: runs a tiny guest that prints a greeting, on /dev/kvm, and prints what the guest wrote
// and a table of the exits it took. The guest is of the process's architecture: on x86_64 a 64-bit
// guest (assembled with Iced) that writes to an I/O port; on arm64 an A64 guest that stores to an
// MMIO address and ends with a PSCI call. `--arch arm64` runs it in an arm64 KVM from any host.
using System.Text;
using Iced.Intel;
using KvmSharp;
using KvmSharp.Guests;
using KvmSharp.Lab;
using static Iced.Intel.AssemblerRegisters;

// Run where a real KVM is: here if /dev/kvm works, else this same program in a KvmSharp.Lab machine
// (a stock Linux KVM under QEMU). Either way one line says where. `--arch x86_64|arm64` asks for a
// KVM of that architecture (default: this process's); another one than this process's is always a
// lab machine, which runs this program's build for it (see HelloGuest.csproj).
var lab = new LabOptions { Log = Console.Out };
int archOption = Array.IndexOf(args, "--arch");
if (archOption >= 0)
{
    string name = args.ElementAtOrDefault(archOption + 1) ?? "";
    if (name is not ("x86_64" or "arm64"))
    {
        Console.Error.WriteLine($"--arch '{name}': use x86_64 or arm64.");
        return 2;
    }
    lab = new LabOptions { Log = Console.Out, Architecture = LabArchitectures.Parse(name) };
}
if (KvmLab.RelaunchIfNeeded(args, lab) is int labExitCode)
    return labExitCode;

const ulong CodeAddress = 0x10000, MessageAddress = 0x11000, StackTop = 0x80000;
const ushort ConsolePort = 0xE9;              // x86: the Bochs/QEMU debug console port
const ulong ConsoleAddress = 0x1000_0000;     // arm64: no memory there, so every store is an MMIO exit
byte[] message = "Hello from the guest\n"u8.ToArray();

try
{
    using var kvm = Kvm.Open();
    if (kvm.Architecture is not (KvmArchitecture.X86_64 or KvmArchitecture.Arm64))
    {
        Console.Error.WriteLine($"HelloGuest has no guest for {kvm.Architecture}.");
        return 2;
    }
    bool arm64 = kvm.Architecture == KvmArchitecture.Arm64;
    using var vm = kvm.CreateVirtualMachine();
    var ram = vm.AddMemorySlot(0, 0x200000);
    ram.Write(CodeAddress, arm64 ? Arm64Guest() : X86Guest());
    ram.Write(MessageAddress, [.. message, 0]);   // NUL-terminated for the arm64 guest; the x86 one counts
    using var vcpu = vm.CreateVcpu();
    if (arm64)
    {
        vcpu.Arm64.Initialize();                  // KVM_ARM_VCPU_INIT: EL1, MMU off, PSCI handled by KVM
        vcpu.Arm64.Pc = CodeAddress;
    }
    else
    {
        X86LongMode.Setup(vcpu, ram, CodeAddress, StackTop);
    }

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
        if (exit.Reason == VcpuExitReason.Mmio && exit.Mmio.Address == ConsoleAddress && exit.Mmio.IsWrite)
        {
            output.Append(Encoding.ASCII.GetString(exit.Mmio.Data));
            continue;
        }
        bool end = arm64
            ? exit.Reason == VcpuExitReason.SystemEvent && exit.SystemEvent.Type == SystemEventType.Shutdown
            : exit.Reason == VcpuExitReason.Hlt;
        if (!end)
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

// x86_64: print the message one byte at a time (a loop of `out`), then halt.
byte[] X86Guest()
{
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
    return code.ToArray();
}

// arm64: store the message one byte at a time to the console address (a loop of `strb`, each an
// MMIO exit) until its NUL, then PSCI SYSTEM_OFF, which KVM turns into a SystemEvent (Shutdown)
// exit. Each word is what GNU as (aarch64-linux-gnu-as 2.40) assembles for the instruction beside
// it; the first three load ConsoleAddress and MessageAddress.
static byte[] Arm64Guest()
{
    uint[] words =
    [
        0xD2A20001, //        movz x1, #0x1000, lsl #16   x1 = 0x1000_0000, the console
        0xD2820002, //        movz x2, #0x1000            x2 = 0x11000, the message
        0xF2A00022, //        movk x2, #0x1, lsl #16
        0x38401440, // loop:  ldrb w0, [x2], #1           the next byte; x2 moves on
        0x34000060, //        cbz  w0, done               the NUL ends the message
        0x39000020, //        strb w0, [x1]               an MMIO exit: the host prints the byte
        0x17FFFFFD, //        b    loop
        0xD2800100, // done:  movz x0, #0x8               x0 = 0x8400_0008, PSCI SYSTEM_OFF
        0xF2B08000, //        movk x0, #0x8400, lsl #16
        0xD4000002, //        hvc  #0                     a call to KVM's PSCI
        0x14000000, //        b    .
    ];
    var code = new byte[words.Length * 4];
    for (int i = 0; i < words.Length; i++)
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(code.AsSpan(i * 4), words[i]);
    return code;
}
