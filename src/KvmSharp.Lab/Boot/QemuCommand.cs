using KvmSharp.Lab.Provisioning;

namespace KvmSharp.Lab.Boot;

/// <summary>A host Unix socket carried into the lab machine over a virtio serial port.</summary>
/// <param name="HostPath">The socket on the host; QEMU connects to it when it starts.</param>
/// <param name="PortName">The virtio port's name inside the machine (<c>/sys/class/virtio-ports/*/name</c>).</param>
/// <param name="GuestPath">Where the program in the machine finds it as a Unix socket (a relay listens there).</param>
internal sealed record SocketForward(string HostPath, string PortName, string GuestPath);

/// <summary>QEMU's command line for a lab machine.</summary>
internal static class QemuCommand
{
    public static IReadOnlyList<string> Arguments(LabArchitecture arch, LabOptions options, LabAssets assets, string initrd,
        string runDirectory, IReadOnlyList<SocketForward> forwards, string? inputSocket = null)
    {
        var args = new List<string> { "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none" };
        string console;
        if (arch == LabArchitecture.X86_64)
        {
            // -cpu max under TCG emulates AMD SVM with nested paging: kvm_amd loads and KVM works.
            // vgif=off: with QEMU 7.2's emulated virtual GIF, which kvm_amd uses when offered, about one
            // Linux guest boot in ten was lost (the guest crashed or stalled, or this machine's own
            // kernel panicked taking an interrupt inside __svm_vcpu_run after VMRUN); without it, 43 of
            // 43 booted (README, "The lab's emulated CPU").
            args.AddRange(["-M", "q35", "-cpu", "max,vgif=off"]);
            console = "ttyS0";
        }
        else
        {
            // virtualization=on emulates EL2, which KVM on arm64 needs; a GICv3 for its vGIC.
            args.AddRange(["-M", "virt,virtualization=on,gic-version=3", "-cpu", "max,pauth-impdef=on"]);
            console = "ttyAMA0";
        }
        args.AddRange(["-accel", "tcg,thread=multi", "-smp", options.Cpus.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "-m", options.MemoryMiB.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        // cryptomgr.notests: the crypto self-tests, slow under emulation, once held a CPU long enough
        // for a soft lockup that outlasted the boot timeout; a lab machine needs none of them.
        args.AddRange(["-kernel", assets.KernelImage, "-initrd", initrd,
            "-append", $"console={console} quiet panic=-1 cryptomgr.notests kvmsharp.run={runDirectory}"]);
        // The console (kernel messages and the init's status lines) is QEMU's standard output.
        args.AddRange(["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"]);
        // The host's whole tree, so that the command, its files and its tools are the host's own.
        args.AddRange(["-fsdev", "local,id=hostroot,path=/,security_model=passthrough,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"]);
        if (forwards.Count > 0 || inputSocket is not null)
        {
            args.AddRange(["-device", "virtio-serial-pci,id=labserial"]);
            for (int i = 0; i < forwards.Count; i++)
                args.AddRange(["-chardev", $"socket,id=forward{i},path={forwards[i].HostPath.Replace(",", ",,", StringComparison.Ordinal)}",
                    "-device", $"virtserialport,bus=labserial.0,chardev=forward{i},name={forwards[i].PortName}"]);
            // The command's standard input (Running.InputRelay): the run script reads it from this port.
            if (inputSocket is not null)
                args.AddRange(["-chardev", $"socket,id=stdin,path={inputSocket.Replace(",", ",,", StringComparison.Ordinal)}",
                    "-device", $"virtserialport,bus=labserial.0,chardev=stdin,name={Running.InputRelay.PortName}"]);
        }
        return args;
    }
}
