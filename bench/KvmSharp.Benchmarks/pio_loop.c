/*
 * The raw C baselines of PioExitBenchmarks and RegisterSyncBenchmarks: the same real-mode PIO
 * guests as the managed variants, set up and run with plain ioctls. Built at benchmark setup with
 * `gcc -O2 -shared -fPIC`, loaded with NativeLibrary.Load; pio_run() and pio_run_sync_regs()
 * perform all n exits in one call, so the baselines carry no managed overhead per exit.
 */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "raw_kvm.h"

static int kvm_fd = -1, vm_fd = -1, vcpu_fd = -1;
static struct kvm_run *run = MAP_FAILED;
static size_t run_size;
static uint8_t *mem = MAP_FAILED;
static size_t mem_size;
static uint16_t expected_port;
static uint64_t sync_next; /* the value pio_run_sync_regs last wrote to RAX */

void pio_teardown(void)
{
    if (run != MAP_FAILED) munmap(run, run_size);
    if (vcpu_fd >= 0) close(vcpu_fd);
    if (mem != MAP_FAILED) munmap(mem, mem_size);
    if (vm_fd >= 0) close(vm_fd);
    if (kvm_fd >= 0) close(kvm_fd);
    run = MAP_FAILED;
    mem = MAP_FAILED;
    kvm_fd = vm_fd = vcpu_fd = -1;
}

/* Creates the VM (one slot of `memory_size` bytes at GPA 0 holding `code` at `code_gpa`) and one
 * vCPU in real mode with CS base 0 and RIP = code_gpa. Returns 0, or -errno (all torn down). */
int pio_setup(const uint8_t *code, int code_len, uint64_t code_gpa, uint64_t memory_size, int port)
{
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    int r;

    pio_teardown();
    expected_port = (uint16_t)port;
    sync_next = 0;
    mem_size = memory_size;

    if ((kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) goto fail;
    if ((vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0)) < 0) goto fail;
    mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) goto fail;
    memcpy(mem + code_gpa, code, (size_t)code_len);

    if (rk_add_slot_and_vcpu(kvm_fd, vm_fd, mem, mem_size, 0, &vcpu_fd, &run, &run_size) < 0) goto fail;

    if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0) goto fail;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0) goto fail;

    memset(&regs, 0, sizeof regs);
    regs.rip = code_gpa;
    regs.rflags = 2;
    if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0) goto fail;
    return 0;

fail:
    r = -errno;
    pio_teardown();
    return r;
}

/* Runs n KVM_RUNs, checking each is a PIO exit on the expected port. Returns 0; -errno if
 * KVM_RUN failed; or (1 << 32) | exit_reason << 16 | port for the first unexpected exit. */
int64_t pio_run(int n)
{
    for (int i = 0; i < n; i++) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) return -errno;
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != expected_port)
            return (INT64_C(1) << 32) | ((int64_t)(run->exit_reason & 0xffff) << 16) | run->io.port;
    }
    return 0;
}

/* From the next exit on, KVM stores the GPRs into run->s.regs at every exit (KVM_CAP_SYNC_REGS). */
void pio_use_sync_regs(void)
{
    run->kvm_valid_regs = KVM_SYNC_X86_REGS;
}

/* KvmSharp's kick signal mask (see rk_set_signal_mask). Returns 0 or -errno. */
int pio_set_signal_mask(int signo)
{
    return rk_set_signal_mask(vcpu_fd, signo);
}

/* RIP as KVM stored it into run->s.regs at the last exit (after pio_use_sync_regs). */
uint64_t pio_sync_rip(void)
{
    return run->s.regs.regs.rip;
}

/* n exits of a guest that does `out port, ax` in a loop, each handled through sync regs with no
 * register ioctl: read RIP from kvm_run (it must be expected_rip), write RAX = the next value and
 * flag the GPRs dirty, KVM_RUN, and check that the guest output that value's low 16 bits.
 * Returns 0; -errno if KVM_RUN failed; or, for the first wrong exit, (1 << 32) | exit_reason << 16
 * | port (not a 16-bit PIO exit on the port), (2 << 32) | got << 16 | expected (wrong AX), or
 * (3 << 32) | (rip & 0xffffffff) (wrong RIP). */
int64_t pio_run_sync_regs(int n, uint64_t expected_rip)
{
    struct kvm_regs *regs = &run->s.regs.regs;
    uint64_t next = sync_next;

    for (int i = 0; i < n; i++) {
        if (regs->rip != expected_rip)
            return (INT64_C(3) << 32) | (regs->rip & 0xffffffff);
        regs->rax = ++next;
        run->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) return -errno;
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != expected_port || run->io.size != 2)
            return (INT64_C(1) << 32) | ((int64_t)(run->exit_reason & 0xffff) << 16) | run->io.port;
        uint16_t got;
        memcpy(&got, (const uint8_t *)run + run->io.data_offset, sizeof got);
        if (got != (uint16_t)next)
            return (INT64_C(2) << 32) | ((int64_t)got << 16) | (uint16_t)next;
    }
    sync_next = next;
    return 0;
}
