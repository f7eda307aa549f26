using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace FuzzHarness;

/// <summary>
/// The fuzz target: a tiny "parser" running at CPL3 in long mode. It checks its input byte by byte
/// for the magic "KVM!" and, at each level it gets past, sets a byte in a coverage map the host
/// reads. The planted bug: on "KVM!" followed by 0xCC it writes through an unmapped pointer (a page
/// fault); on "KVM!" followed by 0x0F it executes ud2 (an invalid opcode). Without the bugs
/// (<c>plantBugs: false</c>, used by the benchmark's throughput mode) those two branches only set
/// coverage bytes 4 and 5.
/// </summary>
internal static class Target
{
    public const ulong Code = 0x10000, Input = 0x100000, Coverage = 0x101000, StackTop = 0x180000;
    public const int MaxInput = 64, CoverageBytes = 8;
    public const ushort DonePort = 0x80;
    public const byte FaultPort = 0xF4;

    public static byte[] Assemble(bool plantBugs = true)
    {
        var a = new Assembler(64);
        var done = a.CreateLabel();
        var afterCrash = a.CreateLabel();
        // rdi = input, rsi = length (set by the host before each run)
        a.mov(rbx, Coverage);
        byte[] magic = "KVM!"u8.ToArray();
        for (int i = 0; i < magic.Length; i++)
        {
            a.cmp(rsi, i + 1);
            a.jb(done);
            a.cmp(__byte_ptr[rdi + i], magic[i]);
            a.jne(done);
            a.mov(__byte_ptr[rbx + i], 1);             // coverage: got past byte i
        }
        a.cmp(rsi, 5);
        a.jb(done);
        a.mov(al, __byte_ptr[rdi + 4]);
        a.cmp(al, 0xCC);
        a.jne(afterCrash);
        if (plantBugs)
        {
            a.mov(rcx, 0xDEAD_0000_0000UL);            // bug 1: a wild pointer (unmapped)
            a.mov(__qword_ptr[rcx], rdi);
        }
        else
        {
            a.mov(__byte_ptr[rbx + 4], 1);
        }
        a.Label(ref afterCrash);
        a.cmp(al, 0x0F);
        a.jne(done);
        if (plantBugs) a.ud2();                       // bug 2: an invalid opcode
        else a.mov(__byte_ptr[rbx + 5], 1);
        a.Label(ref done);
        a.mov(dx, DonePort);
        a.@out(dx, al);
        a.jmp(done);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), Code);
        return ms.ToArray();
    }
}
