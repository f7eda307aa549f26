/*
 * What the raw C baselines (pio_loop.c, snapshot_vm.c, arm64_vm.c) do alike, with plain ioctls:
 * a slot and a vCPU with its kvm_run, KvmSharp's kick signal mask, and a restore's dirty pages
 * from KVM_GET_DIRTY_LOG. Header-only (static functions): NativeBuild puts it beside each source.
 */
#ifndef RAW_KVM_H
#define RAW_KVM_H

#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#define RK_PAGE 4096

/* Slot 0 at GPA 0 over `mem` (`size` bytes, `flags` e.g. KVM_MEM_LOG_DIRTY_PAGES), then vCPU 0 and
 * its kvm_run mapping. Returns 0, or -1 with errno (what was made is in the out parameters). */
static inline int rk_add_slot_and_vcpu(int kvm_fd, int vm_fd, void *mem, uint64_t size, uint32_t flags,
                                       int *vcpu_fd, struct kvm_run **run, size_t *run_size)
{
    struct kvm_userspace_memory_region region;
    memset(&region, 0, sizeof region);
    region.flags = flags;
    region.memory_size = size;
    region.userspace_addr = (uint64_t)(uintptr_t)mem;
    if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) return -1;
    if ((*vcpu_fd = ioctl(vm_fd, KVM_CREATE_VCPU, 0)) < 0) return -1;
    int r = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (r < 0) return -1;
    *run_size = (size_t)r;
    *run = mmap(NULL, *run_size, PROT_READ | PROT_WRITE, MAP_SHARED, *vcpu_fd, 0);
    return *run == MAP_FAILED ? -1 : 0;
}

/* Has KVM apply the calling thread's signal mask minus `signo` inside KVM_RUN
 * (KVM_SET_SIGNAL_MASK), as KvmSharp does for its kick signal: the kernel then swaps the thread's
 * signal mask on every entry and exit. Returns 0 or -errno. */
static inline int rk_set_signal_mask(int vcpu_fd, int signo)
{
    sigset_t current;
    struct { struct kvm_signal_mask head; uint64_t bits; } mask;
    if (pthread_sigmask(SIG_BLOCK, NULL, &current) != 0) return -EINVAL;
    memcpy(&mask.bits, &current, sizeof mask.bits);
    mask.bits &= ~(UINT64_C(1) << (signo - 1));
    mask.head.len = sizeof mask.bits;
    return ioctl(vcpu_fd, KVM_SET_SIGNAL_MASK, &mask) < 0 ? -errno : 0;
}

/* The pages of slot 0 (`size` bytes at `mem`) written since the last call: KVM_GET_DIRTY_LOG into
 * `bitmap`, each page copied back from `saved` (unless it is NULL), and with `manual_protect`
 * KVM_CLEAR_DIRTY_LOG re-arming write protection for exactly those pages. Returns their number,
 * or -1 with errno. */
static inline int rk_restore_dirty_log(int vm_fd, uint64_t *bitmap, uint8_t *mem, const uint8_t *saved,
                                       uint64_t size, int manual_protect)
{
    struct kvm_dirty_log log;
    size_t words = (size / RK_PAGE + 63) / 64;
    int n = 0;
    memset(&log, 0, sizeof log);
    log.slot = 0;
    log.dirty_bitmap = bitmap;
    if (ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) return -1;
    for (size_t w = 0; w < words; w++) {
        for (uint64_t bits = bitmap[w]; bits; bits &= bits - 1, n++) {
            uint64_t page = w * 64 + (uint64_t)__builtin_ctzll(bits);
            if (saved) memcpy(mem + page * RK_PAGE, saved + page * RK_PAGE, RK_PAGE);
        }
    }
    if (manual_protect && n > 0) {
        struct kvm_clear_dirty_log clear;
        memset(&clear, 0, sizeof clear);
        clear.slot = 0;
        clear.first_page = 0;
        clear.num_pages = (uint32_t)(size / RK_PAGE);
        clear.dirty_bitmap = bitmap;
        if (ioctl(vm_fd, KVM_CLEAR_DIRTY_LOG, &clear) < 0) return -1;
    }
    return n;
}

#endif
