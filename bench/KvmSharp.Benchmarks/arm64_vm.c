/*
 * The raw C baselines of the arm64 benchmarks (Arm64Benchmarks.cs): an arm64 VM set up and driven
 * with plain ioctls, one handle per VM. The guests are the same A64 code the KvmSharp side runs
 * (passed in by the caller); every loop runs all its exits inside one call, so the baselines
 * carry no managed overhead per exit.
 *
 * It cannot be compiled by the benchmark inside the arm64 lab (whose processes are arm64, while
 * the host's gcc makes x86 code): the benchmark cross-compiles it on the host with
 * aarch64-linux-gnu-gcc before it relaunches itself in the lab (see NativeBuild.cs); on an arm64
 * host with /dev/kvm, gcc builds it at setup like the x86 baselines.
 *
 * Setup is KvmSharp's for the same guest: KVM_CREATE_VM (type 0), one slot at GPA 0,
 * KVM_CREATE_VCPU, KVM_ARM_PREFERRED_TARGET, KVM_ARM_VCPU_INIT with PSCI 0.2, PC by ONE_REG.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "raw_kvm.h"

#define PAGE RK_PAGE
#define CORE_REG(field) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(field))
#define REG_PC CORE_REG(regs.pc)
#define REG_X0 CORE_REG(regs.regs[0])

/* The eager handler's registers: X0-X30, SP, PC, PSTATE (struct user_pt_regs, in order). */
#define EAGER_REGS 34

enum { BACKEND_NONE = -1, BACKEND_GET_DIRTY_LOG = 0, BACKEND_MANUAL_PROTECT = 1 };

struct a64_vm {
    int kvm_fd, vm_fd, vcpu_fd;
    int backend;
    struct kvm_run *run;
    size_t run_size;
    uint8_t *mem, *saved;            /* guest RAM and the snapshot's copy of it */
    uint64_t mem_size;
    uint64_t mmio;                   /* every exit must be a write here */
    uint64_t next;                   /* the value last written to X0 */
    uint64_t eager_ids[EAGER_REGS];
    uint64_t *bitmap;                /* KVM_GET_DIRTY_LOG's buffer */
    /* The snapshot's registers: every ONE_REG id KvmSharp saves, with its value; MP state, events. */
    uint64_t *reg_ids;
    uint8_t (*reg_vals)[16];
    int nregs;
    struct kvm_mp_state mp_state;
    struct kvm_vcpu_events events;
};

void a64_teardown(struct a64_vm *v)
{
    if (!v) return;
    if (v->run && v->run != MAP_FAILED) munmap(v->run, v->run_size);
    if (v->vcpu_fd >= 0) close(v->vcpu_fd);
    if (v->mem && v->mem != MAP_FAILED) munmap(v->mem, v->mem_size);
    if (v->saved && v->saved != MAP_FAILED) munmap(v->saved, v->mem_size);
    if (v->vm_fd >= 0) close(v->vm_fd);
    if (v->kvm_fd >= 0) close(v->kvm_fd);
    free(v->bitmap);
    free(v->reg_ids);
    free(v->reg_vals);
    free(v);
}

static int one_reg(struct a64_vm *v, unsigned long request, uint64_t id, void *value)
{
    struct kvm_one_reg reg = { .id = id, .addr = (uint64_t)(uintptr_t)value };
    return ioctl(v->vcpu_fd, request, &reg);
}

/*
 * Creates a VM with one slot of `mem_size` bytes at GPA 0 holding `code` at `code_gpa`, dirty
 * logging with `backend` (-1 none, 0 KVM_GET_DIRTY_LOG, 1 + KVM_CLEAR_DIRTY_LOG), and one vCPU
 * initialised and about to run the code. Every exit must be an MMIO write to `mmio`.
 * Returns the VM, or NULL with *err = errno.
 */
struct a64_vm *a64_setup(const uint8_t *code, int code_len, uint64_t code_gpa, uint64_t mem_size, uint64_t mmio,
                         int backend, int *err)
{
    struct a64_vm *v = calloc(1, sizeof *v);
    struct kvm_vcpu_init init;

    if (!v) { *err = ENOMEM; return NULL; }
    v->kvm_fd = v->vm_fd = v->vcpu_fd = -1;
    v->backend = backend;
    v->mem_size = mem_size;
    v->mmio = mmio;
    for (int i = 0; i < 31; i++) v->eager_ids[i] = CORE_REG(regs.regs[i]);
    v->eager_ids[31] = CORE_REG(regs.sp);
    v->eager_ids[32] = CORE_REG(regs.pc);
    v->eager_ids[33] = CORE_REG(regs.pstate);
    if (!(v->bitmap = calloc((mem_size / PAGE + 63) / 64, 8))) goto fail;

    if ((v->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) goto fail;
    if ((v->vm_fd = ioctl(v->kvm_fd, KVM_CREATE_VM, 0)) < 0) goto fail;
    if (backend == BACKEND_MANUAL_PROTECT) {
        struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 };
        cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
        if (ioctl(v->vm_fd, KVM_ENABLE_CAP, &cap) < 0) goto fail;
    }

    /* The same mapping flags as KvmSharp's slots. */
    v->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    v->saved = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (v->mem == MAP_FAILED || v->saved == MAP_FAILED) goto fail;
    memcpy(v->mem + code_gpa, code, (size_t)code_len);

    if (rk_add_slot_and_vcpu(v->kvm_fd, v->vm_fd, v->mem, mem_size, backend == BACKEND_NONE ? 0 : KVM_MEM_LOG_DIRTY_PAGES,
                             &v->vcpu_fd, &v->run, &v->run_size) < 0) goto fail;

    memset(&init, 0, sizeof init);
    if (ioctl(v->vm_fd, KVM_ARM_PREFERRED_TARGET, &init) < 0) goto fail;
    init.features[0] = 1u << KVM_ARM_VCPU_PSCI_0_2;
    if (ioctl(v->vcpu_fd, KVM_ARM_VCPU_INIT, &init) < 0) goto fail;
    uint64_t pc = code_gpa;
    if (one_reg(v, KVM_SET_ONE_REG, REG_PC, &pc) < 0) goto fail;
    return v;

fail:
    *err = errno ? errno : EINVAL;
    a64_teardown(v);
    return NULL;
}

/* KvmSharp's kick signal mask (see rk_set_signal_mask). Returns 0 or -errno. */
int a64_set_signal_mask(struct a64_vm *v, int signo)
{
    return rk_set_signal_mask(v->vcpu_fd, signo);
}

/* One KVM_RUN, which must end with an MMIO write to v->mmio. Returns 0; -errno if KVM_RUN
 * failed; or (1 << 32) | exit_reason << 16 | is_write for another exit. */
static int64_t run_to_mmio(struct a64_vm *v)
{
    if (ioctl(v->vcpu_fd, KVM_RUN, 0) < 0) return -errno;
    if (v->run->exit_reason != KVM_EXIT_MMIO || !v->run->mmio.is_write || v->run->mmio.phys_addr != v->mmio)
        return (INT64_C(1) << 32) | ((int64_t)(v->run->exit_reason & 0xffff) << 16) | v->run->mmio.is_write;
    return 0;
}

/* n MMIO exit round trips. Returns 0 or the first error of run_to_mmio. */
int64_t a64_run(struct a64_vm *v, int n)
{
    for (int i = 0; i < n; i++) {
        int64_t r = run_to_mmio(v);
        if (r != 0) return r;
    }
    return 0;
}

/* The PC now (KVM_GET_ONE_REG), or -errno as a huge value: for the setup's checks. */
uint64_t a64_pc(struct a64_vm *v)
{
    uint64_t pc;
    return one_reg(v, KVM_GET_ONE_REG, REG_PC, &pc) < 0 ? (uint64_t)-errno : pc;
}

/* Checks the exit KVM_RUN just returned: the guest stored X0 (8 bytes), which must be `expected`.
 * Returns 0 or (2 << 32) | (stored value's low 32 bits). */
static int64_t check_stored(struct a64_vm *v, uint64_t expected)
{
    uint64_t got;
    if (v->run->mmio.len != 8) return (INT64_C(2) << 32) | 0xffffffff;
    memcpy(&got, v->run->mmio.data, sizeof got);
    return got == expected ? 0 : (INT64_C(2) << 32) | (got & 0xffffffff);
}

/*
 * n exits of the guest `str x0, [x1]; b back`, each handled with the fewest ioctls: read the PC
 * (KVM_GET_ONE_REG; it must be expected_pc, the store), write X0 = the next value
 * (KVM_SET_ONE_REG: the store is still pending, but KVM completes a write without touching any
 * register, so no completion is needed first), KVM_RUN, and check the guest stored that value.
 * 3 ioctls per exit. Returns 0; -errno; an error of run_to_mmio or check_stored; or
 * (3 << 32) | (pc & 0xffffffff) for a wrong PC.
 */
int64_t a64_run_regs(struct a64_vm *v, int n, uint64_t expected_pc)
{
    uint64_t next = v->next;
    for (int i = 0; i < n; i++) {
        uint64_t pc;
        if (one_reg(v, KVM_GET_ONE_REG, REG_PC, &pc) < 0) return -errno;
        if (pc != expected_pc) return (INT64_C(3) << 32) | (pc & 0xffffffff);
        ++next;
        if (one_reg(v, KVM_SET_ONE_REG, REG_X0, &next) < 0) return -errno;
        int64_t r = run_to_mmio(v);
        if (r == 0) r = check_stored(v, next);
        if (r != 0) return r;
    }
    v->next = next;
    return 0;
}

/*
 * The same handler done eagerly, as QEMU does: all of X0-X30, SP, PC, PSTATE fetched with
 * KVM_GET_ONE_REG before it, all written back with KVM_SET_ONE_REG after it, then KVM_RUN:
 * 69 ioctls per exit. Returns as a64_run_regs.
 */
int64_t a64_run_eager(struct a64_vm *v, int n, uint64_t expected_pc)
{
    uint64_t regs[EAGER_REGS];
    uint64_t next = v->next;
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < EAGER_REGS; k++)
            if (one_reg(v, KVM_GET_ONE_REG, v->eager_ids[k], &regs[k]) < 0) return -errno;
        if (regs[32] != expected_pc) return (INT64_C(3) << 32) | (regs[32] & 0xffffffff);
        regs[0] = ++next;
        for (int k = 0; k < EAGER_REGS; k++)
            if (one_reg(v, KVM_SET_ONE_REG, v->eager_ids[k], &regs[k]) < 0) return -errno;
        int64_t r = run_to_mmio(v);
        if (r == 0) r = check_stored(v, next);
        if (r != 0) return r;
    }
    v->next = next;
    return 0;
}

/* ---- snapshot and restore --------------------------------------------------------------- */

/* The dirty pages since the last call, copied back from `saved` unless it is NULL (rk_restore_dirty_log). */
static int restore_dirty_pages(struct a64_vm *v, const uint8_t *saved)
{
    return rk_restore_dirty_log(v->vm_fd, v->bitmap, v->mem, saved, v->mem_size, v->backend == BACKEND_MANUAL_PROTECT);
}

/* Completes the pending MMIO access without running guest code: KVM_RUN with immediate_exit. */
static int complete_pending(struct a64_vm *v)
{
    v->run->immediate_exit = 1;
    int r = ioctl(v->vcpu_fd, KVM_RUN, 0);
    v->run->immediate_exit = 0;
    if (r >= 0) { errno = EPROTO; return -1; }  /* completing it produced another exit */
    return errno == EINTR ? 0 : -1;
}

/* The registers KvmSharp saves: KVM_GET_REG_LIST without the SVE ids, and of the non-core ids only
 * the 32- and 64-bit ones. Returns 0 or -1 with errno. */
static int list_registers(struct a64_vm *v)
{
    struct kvm_reg_list probe = { .n = 0 };
    if (ioctl(v->vcpu_fd, KVM_GET_REG_LIST, &probe) == 0 || errno != E2BIG) return -1;
    struct kvm_reg_list *list = calloc(1, sizeof *list + probe.n * sizeof list->reg[0]);
    if (!list) return -1;
    list->n = probe.n;
    if (ioctl(v->vcpu_fd, KVM_GET_REG_LIST, list) < 0) { free(list); return -1; }
    v->reg_ids = calloc(list->n, sizeof *v->reg_ids);
    v->reg_vals = calloc(list->n, sizeof *v->reg_vals);
    if (!v->reg_ids || !v->reg_vals) { free(list); errno = ENOMEM; return -1; }
    for (uint64_t i = 0; i < list->n; i++) {
        uint64_t id = list->reg[i];
        uint64_t coproc = id & KVM_REG_ARM_COPROC_MASK, size = id & KVM_REG_SIZE_MASK;
        if (coproc == KVM_REG_ARM64_SVE) continue;
        if (coproc != KVM_REG_ARM_CORE && size != KVM_REG_SIZE_U32 && size != KVM_REG_SIZE_U64) continue;
        v->reg_ids[v->nregs++] = id;
    }
    free(list);
    return 0;
}

/* Takes the snapshot a64_restore returns to, at an exit: completes the pending access, saves every
 * register, MP state and events, re-arms dirty logging and copies guest RAM. Returns 0 or -errno. */
int a64_snapshot(struct a64_vm *v)
{
    if (complete_pending(v) < 0) return -errno;
    if (!v->reg_ids && list_registers(v) < 0) return -errno;
    for (int i = 0; i < v->nregs; i++)
        if (one_reg(v, KVM_GET_ONE_REG, v->reg_ids[i], v->reg_vals[i]) < 0) return -errno;
    if (ioctl(v->vcpu_fd, KVM_GET_MP_STATE, &v->mp_state) < 0) return -errno;
    if (ioctl(v->vcpu_fd, KVM_GET_VCPU_EVENTS, &v->events) < 0) return -errno;
    if (restore_dirty_pages(v, NULL) < 0) return -errno;  /* memory == snapshot from here */
    memcpy(v->saved, v->mem, v->mem_size);
    return 0;
}

/*
 * Puts the VM back into the snapshot, with the ioctls KvmSharp's VirtualMachine.Restore makes, in
 * its order: the pending MMIO completed (KVM_RUN with immediate_exit), every register with
 * KVM_SET_ONE_REG, KVM_SET_VCPU_EVENTS, KVM_SET_MP_STATE, then the dirty pages fetched and copied
 * back. Returns the number of pages copied, or -errno. Must be called at an exit.
 */
int a64_restore(struct a64_vm *v)
{
    if (complete_pending(v) < 0) return -errno;
    for (int i = 0; i < v->nregs; i++)
        if (one_reg(v, KVM_SET_ONE_REG, v->reg_ids[i], v->reg_vals[i]) < 0) return -errno;
    if (ioctl(v->vcpu_fd, KVM_SET_VCPU_EVENTS, &v->events) < 0) return -errno;
    if (ioctl(v->vcpu_fd, KVM_SET_MP_STATE, &v->mp_state) < 0) return -errno;
    int n = restore_dirty_pages(v, v->saved);
    return n < 0 ? -errno : n;
}

/* The number of registers a64_snapshot saved (for the harness to compare with KvmSharp's). */
int a64_register_count(struct a64_vm *v)
{
    return v->nregs;
}

/* Guest RAM, for checks. */
uint8_t *a64_memory(struct a64_vm *v)
{
    return v->mem;
}
