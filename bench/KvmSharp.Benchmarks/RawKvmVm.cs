using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace KvmSharp.Benchmarks;

/// <summary>
/// A PIO guest driven with the benchmark's own libc imports and hand-laid-out structs: what a
/// minimal C#-without-a-library KVM user would write. Used as the "raw P/Invoke" comparison point
/// of <see cref="PioExitBenchmarks"/> and as the eager-register VMM of <see cref="RegisterSyncBenchmarks"/>.
/// </summary>
internal sealed unsafe partial class RawKvmVm : IDisposable
{
    // ioctl numbers (x86_64), as in <linux/kvm.h>.
    private const nuint KVM_GET_VCPU_MMAP_SIZE = 0xAE04;
    private const nuint KVM_CREATE_VM = 0xAE01;
    private const nuint KVM_CREATE_VCPU = 0xAE41;
    private const nuint KVM_SET_USER_MEMORY_REGION = 0x4020AE46;
    private const nuint KVM_GET_SREGS = 0x8138AE83;
    private const nuint KVM_SET_SREGS = 0x4138AE84;
    private const nuint KVM_GET_REGS = 0x8090AE81;
    private const nuint KVM_SET_REGS = 0x4090AE82;
    private const nuint KVM_RUN = 0xAE80;

    private const int KvmExitIo = 2;
    private const int SizeofKvmSregs = 312, SizeofKvmRegs = 144;
    // struct kvm_run: exit_reason at 8; the exit union at 32, where kvm_run.io is
    // { u8 direction; u8 size; u16 port; u32 count; u64 data_offset; }.
    private const int RunExitReason = 8, RunIoSize = 32 + 1, RunIoPort = 32 + 2, RunIoDataOffset = 32 + 8;
    // struct kvm_regs: rax at 0, …, rip at 128, rflags at 136.
    private const int RegsRax = 0, RegsRip = 128, RegsRflags = 136;

    private const int O_RDWR = 0x2, O_CLOEXEC = 0x80000;
    private const int PROT_READ = 0x1, PROT_WRITE = 0x2;
    private const int MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20;

    private readonly int _kvmFd = -1, _vmFd = -1, _vcpuFd = -1;
    private readonly nint _mem, _run;
    private readonly byte* _regs; // a kvm_regs buffer for the eager handler
    private readonly nuint _runSize;
    private bool _disposed;

    /// <summary>Sets up <see cref="GuestCode.Code"/> (the <see cref="PioExitBenchmarks"/> guest).</summary>
    public RawKvmVm() : this(GuestCode.Code) { }

    /// <summary>Sets up a VM running <paramref name="code"/> at <see cref="GuestCode.Address"/>.</summary>
    public RawKvmVm(ReadOnlySpan<byte> code)
    {
        try
        {
            _kvmFd = Check(open("/dev/kvm", O_RDWR | O_CLOEXEC), "open /dev/kvm");
            _vmFd = Check(ioctl(_kvmFd, KVM_CREATE_VM, 0), "KVM_CREATE_VM");

            _mem = mmap(0, (nuint)GuestCode.MemorySize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (_mem == -1) throw Failed("mmap guest memory");
            code.CopyTo(new Span<byte>((byte*)_mem + GuestCode.Address, code.Length));

            // struct kvm_userspace_memory_region { u32 slot; u32 flags; u64 guest_phys_addr; u64 memory_size; u64 userspace_addr; }
            ulong* region = stackalloc ulong[4];
            region[0] = 0; // slot 0, flags 0
            region[1] = 0; // guest_phys_addr
            region[2] = GuestCode.MemorySize;
            region[3] = (ulong)_mem;
            Check(ioctl(_vmFd, KVM_SET_USER_MEMORY_REGION, (nint)region), "KVM_SET_USER_MEMORY_REGION");

            _vcpuFd = Check(ioctl(_vmFd, KVM_CREATE_VCPU, 0), "KVM_CREATE_VCPU");
            _runSize = (nuint)Check(ioctl(_kvmFd, KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
            _run = mmap(0, _runSize, PROT_READ | PROT_WRITE, MAP_SHARED, _vcpuFd, 0);
            if (_run == -1) throw Failed("mmap kvm_run");

            // Real mode, CS base 0 selector 0: CS is the first kvm_segment of kvm_sregs
            // (base u64 at 0, limit u32 at 8, selector u16 at 12).
            byte* sregs = stackalloc byte[SizeofKvmSregs];
            Check(ioctl(_vcpuFd, KVM_GET_SREGS, (nint)sregs), "KVM_GET_SREGS");
            *(ulong*)sregs = 0;
            *(ushort*)(sregs + 12) = 0;
            Check(ioctl(_vcpuFd, KVM_SET_SREGS, (nint)sregs), "KVM_SET_SREGS");

            _regs = (byte*)NativeMemory.AlignedAlloc(SizeofKvmRegs, 64);
            new Span<byte>(_regs, SizeofKvmRegs).Clear();
            *(ulong*)(_regs + RegsRip) = GuestCode.Address;
            *(ulong*)(_regs + RegsRflags) = 2; // bit 1 of RFLAGS is reserved and reads as 1
            Check(ioctl(_vcpuFd, KVM_SET_REGS, (nint)_regs), "KVM_SET_REGS");
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// One KVM_RUN: runs the guest to its next exit and checks that it is a PIO exit on
    /// <see cref="GuestCode.Port"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void RunOneExit()
    {
        if (ioctl_hot(_vcpuFd, KVM_RUN, 0) < 0) ThrowRunFailed();
        byte* run = (byte*)_run;
        if (*(uint*)(run + RunExitReason) != KvmExitIo || *(ushort*)(run + RunIoPort) != GuestCode.Port)
            ThrowUnexpectedExit(*(uint*)(run + RunExitReason), *(ushort*)(run + RunIoPort));
    }

    /// <summary>
    /// RIP now, read with KVM_GET_REGS (for setup: the eager handler below reads it itself).
    /// </summary>
    public ulong GetRip()
    {
        Check(ioctl(_vcpuFd, KVM_GET_REGS, (nint)_regs), "KVM_GET_REGS");
        return *(ulong*)(_regs + RegsRip);
    }

    /// <summary>
    /// One exit of <see cref="GuestCode.OutAxCode"/> handled the way a naive VMM does, with three
    /// ioctls: KVM_GET_REGS, check RIP, RAX = <paramref name="next"/>, KVM_SET_REGS; then KVM_RUN and
    /// check that the guest output <paramref name="next"/>'s low 16 bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void HandleExitWithRegsIoctls(ulong expectedRip, ulong next)
    {
        byte* regs = _regs;
        if (ioctl_hot(_vcpuFd, KVM_GET_REGS, (nint)regs) < 0) ThrowIoctlFailed("KVM_GET_REGS");
        ulong rip = *(ulong*)(regs + RegsRip);
        if (rip != expectedRip) ThrowWrongRip(rip, expectedRip);
        *(ulong*)(regs + RegsRax) = next;
        if (ioctl_hot(_vcpuFd, KVM_SET_REGS, (nint)regs) < 0) ThrowIoctlFailed("KVM_SET_REGS");
        RunOneExit();
        byte* run = (byte*)_run;
        ushort got = *(ushort*)(run + *(ulong*)(run + RunIoDataOffset));
        if (run[RunIoSize] != 2 || got != (ushort)next) ThrowWrongValue(run[RunIoSize], got, (ushort)next);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_regs != null) NativeMemory.AlignedFree(_regs);
        if (_run != 0 && _run != -1) munmap(_run, _runSize);
        if (_vcpuFd >= 0) close(_vcpuFd);
        if (_mem != 0 && _mem != -1) munmap(_mem, (nuint)GuestCode.MemorySize);
        if (_vmFd >= 0) close(_vmFd);
        if (_kvmFd >= 0) close(_kvmFd);
    }

    private static int Check(int r, string what) => r >= 0 ? r : throw Failed(what);

    private static InvalidOperationException Failed(string what) =>
        new($"{what} failed: errno {Marshal.GetLastPInvokeError()}");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowRunFailed() => ThrowIoctlFailed("KVM_RUN");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowIoctlFailed(string what) =>
        throw new InvalidOperationException($"{what} failed: errno {Marshal.GetLastSystemError()}");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowWrongRip(ulong rip, ulong expected) =>
        throw new InvalidOperationException($"RIP at the exit was 0x{rip:x}, not 0x{expected:x} as at the first exit.");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowWrongValue(int size, ushort got, ushort expected) =>
        throw new InvalidOperationException($"The guest output {size} bytes, value 0x{got:x}; expected AX = 0x{expected:x} (the RAX written at the previous exit).");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowUnexpectedExit(uint reason, ushort port) =>
        throw new InvalidOperationException($"Expected a PIO exit on port 0x{GuestCode.Port:x}, got exit reason {reason}, port 0x{port:x}.");

    // ---- libc ---------------------------------------------------------------------------------
    // ioctl is variadic in C; on System V x86_64 an integer/pointer variadic argument is passed
    // exactly like a fixed one, so a fixed third parameter is sound.

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int close(int fd);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int ioctl(int fd, nuint request, nint arg);

    // PERF: the hot-path import (KVM_RUN, and KVM_GET/SET_REGS in the eager handler) has
    // SetLastError = false and only blittable arguments, so the generated stub is a bare call (no
    // errno save/restore, no marshalling). The GC transition is kept: KVM_RUN blocks for
    // microseconds, so [SuppressGCTransition] would be wrong here. The error path then reads errno
    // with GetLastSystemError, which is good enough for a message.
    [LibraryImport("libc", EntryPoint = "ioctl")]
    private static partial int ioctl_hot(int fd, nuint request, nint arg);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap")]
    private static partial int munmap(nint addr, nuint length);
}
