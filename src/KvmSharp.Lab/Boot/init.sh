#!/bin/busybox sh
# KvmSharp.Lab's /init: load the modules KVM and 9p need, mount the host's whole tree over 9p,
# run the command the host prepared (kvmsharp.run=DIR on the kernel command line: DIR/run.sh) in a
# chroot of that tree with its output in DIR/stdout and DIR/stderr, write its exit code to DIR/exit,
# power off. Every failure is one "kvmsharp-lab: error: ..." line on the console, then power off.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "kvmsharp-lab: error: $*"
    poweroff -f
    sleep 1000
}

run=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        kvmsharp.run=*) run="${arg#kvmsharp.run=}" ;;
    esac
done
[ -n "$run" ] || fail "no kvmsharp.run= on the kernel command line"

while read -r module; do
    [ -z "$module" ] && continue
    insmod "/lib/modules/$module.ko" || fail "insmod $module failed"
done < /lib/modules/order
[ -c /dev/kvm ] || fail "/dev/kvm did not appear: this machine's kernel offers no KVM ($(dmesg | grep -i -E 'kvm|svm' | tail -n 3 | tr '\n' ' '))"

root=/mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap hostroot "$root" \
    || fail "mounting the host's files over 9p failed"
mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && mount -t devtmpfs devtmpfs "$root/dev" \
    || fail "mounting proc, sysfs and devtmpfs in the host's tree failed"
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts devpts "$root/dev/pts"
mount -t tmpfs tmpfs "$root/dev/shm"
# The command's own temporary folder: the host's /tmp stays visible (a project may live there),
# but sockets and per-process files of the guest must not land in the host's folders.
mount -t tmpfs tmpfs "$root$run/tmp" || fail "mounting a tmpfs on $run/tmp failed"
ifconfig lo 127.0.0.1 up || fail "bringing up the loopback interface failed"

echo "kvmsharp-lab: ready $(uname -r)"
# env -i: the command's environment is exactly what run.sh exports, nothing of this init's.
chroot "$root" "$run/busybox" env -i "$run/busybox" sh "$run/run.sh" > "$root$run/stdout" 2> "$root$run/stderr" < /dev/null
echo "$?" > "$root$run/exit.tmp" && mv "$root$run/exit.tmp" "$root$run/exit"
sync
poweroff -f
sleep 1000
