/*
 * The raw C baselines of RestoreBenchmarks (restore) and --kick-latency: a VM rebuilt from a
 * KvmSharp snapshot (the guest memory image and the register sets as KVM's own structs), driven
 * with plain ioctls. Built at run time with `gcc -O2 -shared -fPIC` like pio_loop.c; each VM is a
 * handle, so one build serves any number of VMs.
 *
 * sv_restore() does the same work as KvmSharp's VirtualMachine.Restore with sync regs, in the same
 * order, with the same ioctls (checked with --count-ioctls and /work/shared/tools/ioctl-count):
 *   1. complete the pending OUT: KVM_RUN with immediate_exit set (returns EINTR, runs no guest code);
 *   2. registers at level Full: GPRs, special registers and events copied into kvm_run and flagged
 *      in kvm_dirty_regs (KVM loads them at the next KVM_RUN: no ioctl), then KVM_SET_XSAVE,
 *      KVM_SET_XCRS, KVM_SET_MSRS (runtime MSRs), KVM_SET_MSRS (reset MSRs: TSC, kvmclock…),
 *      KVM_SET_MP_STATE, KVM_SET_DEBUGREGS;
 *   3. memory: fetch the dirty pages (KVM_GET_DIRTY_LOG [+ KVM_CLEAR_DIRTY_LOG], or the dirty ring
 *      + KVM_RESET_DIRTY_RINGS) and copy each from the saved image.
 * What it leaves out is KvmSharp's own bookkeeping: argument checks, the register cache, the
 * tracker's pending bitmaps and page lists, and the sigtimedwait KvmSharp makes after every EINTR.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "raw_kvm.h"

#define PAGE RK_PAGE

/* The register sets, in the order of the blobs passed to sv_setup (KvmSharp's X86RegisterSets). */
enum { SET_REGS, SET_SREGS, SET_EVENTS, SET_XCRS, SET_MP_STATE, SET_XSAVE, SET_DEBUGREGS,
       SET_RUNTIME_MSRS, SET_RESET_MSRS, SET_COUNT };

enum { BACKEND_GET_DIRTY_LOG = 0, BACKEND_MANUAL_PROTECT = 1, BACKEND_DIRTY_RING = 2 };

struct sv_vm {
    int kvm_fd, vm_fd, vcpu_fd;
    int backend;
    struct kvm_run *run;
    size_t run_size;
    uint8_t *mem, *saved;          /* guest RAM and the snapshot's copy of it */
    uint64_t mem_size;
    uint64_t *bitmap;              /* KVM_GET_DIRTY_LOG's buffer */
    struct kvm_dirty_gfn *ring;
    uint32_t ring_entries, ring_fetch;
    void *sets[SET_COUNT];         /* the snapshot's register sets, as KVM's structs */
    int set_len[SET_COUNT];
    uint16_t port;                 /* the port of the exit every run must end with */
    int dirty_last;                /* pages copied by the last restore */
};

void sv_teardown(struct sv_vm *v)
{
    if (!v) return;
    if (v->ring && v->ring != MAP_FAILED) munmap(v->ring, (size_t)v->ring_entries * sizeof *v->ring);
    if (v->run && v->run != MAP_FAILED) munmap(v->run, v->run_size);
    if (v->vcpu_fd >= 0) close(v->vcpu_fd);
    if (v->mem && v->mem != MAP_FAILED) munmap(v->mem, v->mem_size);
    if (v->saved && v->saved != MAP_FAILED) munmap(v->saved, v->mem_size);
    if (v->vm_fd >= 0) close(v->vm_fd);
    if (v->kvm_fd >= 0) close(v->kvm_fd);
    for (int i = 0; i < SET_COUNT; i++) free(v->sets[i]);
    free(v->bitmap);
    free(v);
}

static int enable_cap(int vm_fd, uint32_t cap, uint64_t arg0)
{
    struct kvm_enable_cap c;
    memset(&c, 0, sizeof c);
    c.cap = cap;
    c.args[0] = arg0;
    return ioctl(vm_fd, KVM_ENABLE_CAP, &c);
}

static int set_cpuid(struct sv_vm *v)
{
    for (int n = 128; n <= 4096; n *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof *c + (size_t)n * sizeof c->entries[0]);
        if (!c) return -1;
        c->nent = (uint32_t)n;
        if (ioctl(v->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) < 0) {
            int e = errno;
            free(c);
            if (e == E2BIG) continue;
            errno = e;
            return -1;
        }
        int r = ioctl(v->vcpu_fd, KVM_SET_CPUID2, c);
        free(c);
        return r;
    }
    errno = E2BIG;
    return -1;
}

/* Restores the register sets the way KvmSharp's RestoreState does with sync regs (see the top). */
static int restore_registers(struct sv_vm *v)
{
    struct kvm_run *run = v->run;
    memcpy(&run->s.regs.regs, v->sets[SET_REGS], sizeof run->s.regs.regs);
    memcpy(&run->s.regs.sregs, v->sets[SET_SREGS], sizeof run->s.regs.sregs);
    memcpy(&run->s.regs.events, v->sets[SET_EVENTS], sizeof run->s.regs.events);
    run->kvm_dirty_regs |= KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
    if (ioctl(v->vcpu_fd, KVM_SET_XSAVE, v->sets[SET_XSAVE]) < 0) return -1;
    if (ioctl(v->vcpu_fd, KVM_SET_XCRS, v->sets[SET_XCRS]) < 0) return -1;
    /* KVM_SET_MSRS returns the number of MSRs set; all of them must be. */
    struct kvm_msrs *m = v->sets[SET_RUNTIME_MSRS];
    if (ioctl(v->vcpu_fd, KVM_SET_MSRS, m) != (int)m->nmsrs) return -1;
    m = v->sets[SET_RESET_MSRS];
    if (ioctl(v->vcpu_fd, KVM_SET_MSRS, m) != (int)m->nmsrs) return -1;
    if (ioctl(v->vcpu_fd, KVM_SET_MP_STATE, v->sets[SET_MP_STATE]) < 0) return -1;
    if (ioctl(v->vcpu_fd, KVM_SET_DEBUGREGS, v->sets[SET_DEBUGREGS]) < 0) return -1;
    return 0;
}

/*
 * Creates a VM with one slot of `mem_size` bytes at GPA 0 holding `image`, dirty logging with
 * `backend` (0 GET_DIRTY_LOG, 1 manual protect, 2 dirty ring of `ring_entries`), one vCPU with
 * KVM's supported CPUID, and the register sets `sets[i]` (`lens[i]` bytes, in the enum order
 * above). The image and the sets are also kept as the snapshot sv_restore returns to. Every run
 * must end with a PIO exit on `port`. Returns the VM, or NULL with *err = errno.
 */
struct sv_vm *sv_setup(const uint8_t *image, uint64_t mem_size, int backend, int ring_entries,
                       const void *const *sets, const int *lens, int port, int *err)
{
    struct sv_vm *v = calloc(1, sizeof *v);

    if (!v) { *err = ENOMEM; return NULL; }
    v->kvm_fd = v->vm_fd = v->vcpu_fd = -1;
    v->backend = backend;
    v->mem_size = mem_size;
    v->port = (uint16_t)port;
    for (int i = 0; i < SET_COUNT; i++) {
        if (!(v->sets[i] = malloc((size_t)lens[i]))) goto fail;
        memcpy(v->sets[i], sets[i], (size_t)lens[i]);
        v->set_len[i] = lens[i];
    }
    if (!(v->bitmap = calloc((mem_size / PAGE + 63) / 64, 8))) goto fail;

    if ((v->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) goto fail;
    if ((v->vm_fd = ioctl(v->kvm_fd, KVM_CREATE_VM, 0)) < 0) goto fail;
    if (backend == BACKEND_MANUAL_PROTECT
        && enable_cap(v->vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) < 0) goto fail;
    if (backend == BACKEND_DIRTY_RING) {
        v->ring_entries = (uint32_t)ring_entries;
        uint32_t bytes = v->ring_entries * (uint32_t)sizeof(struct kvm_dirty_gfn);
        if (enable_cap(v->vm_fd, KVM_CAP_DIRTY_LOG_RING_ACQ_REL, bytes) < 0
            && enable_cap(v->vm_fd, KVM_CAP_DIRTY_LOG_RING, bytes) < 0) goto fail;
    }

    /* The same mapping flags as KvmSharp's slots. */
    v->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    v->saved = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (v->mem == MAP_FAILED || v->saved == MAP_FAILED) goto fail;
    memcpy(v->mem, image, mem_size);
    memcpy(v->saved, image, mem_size);

    if (rk_add_slot_and_vcpu(v->kvm_fd, v->vm_fd, v->mem, mem_size, KVM_MEM_LOG_DIRTY_PAGES,
                             &v->vcpu_fd, &v->run, &v->run_size) < 0) goto fail;
    if (backend == BACKEND_DIRTY_RING) {
        v->ring = mmap(NULL, (size_t)v->ring_entries * sizeof *v->ring, PROT_READ | PROT_WRITE, MAP_SHARED,
                       v->vcpu_fd, (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * PAGE);
        if (v->ring == MAP_FAILED) goto fail;
    }
    if (set_cpuid(v) < 0) goto fail;

    /* KvmSharp's default: KVM stores the GPRs into kvm_run at every exit. */
    v->run->kvm_valid_regs = KVM_SYNC_X86_REGS;
    if (restore_registers(v) < 0) goto fail;
    return v;

fail:
    *err = errno ? errno : EINVAL;
    sv_teardown(v);
    return NULL;
}

/* One KVM_RUN to the next exit. Returns 0; -errno if KVM_RUN failed; or
 * (1 << 32) | exit_reason << 16 | port if it was not a PIO exit on the expected port. */
int64_t sv_run(struct sv_vm *v)
{
    if (ioctl(v->vcpu_fd, KVM_RUN, 0) < 0) return -errno;
    if (v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != v->port)
        return (INT64_C(1) << 32) | ((int64_t)(v->run->exit_reason & 0xffff) << 16) | v->run->io.port;
    return 0;
}

static void copy_page(struct sv_vm *v, uint64_t page)
{
    memcpy(v->mem + page * PAGE, v->saved + page * PAGE, PAGE);
}

/* Fetches the pages written since the last call and copies each back from the saved image.
 * Returns the number of pages, or -1 with errno. */
static int restore_dirty_pages(struct sv_vm *v)
{
    int n = 0;
    if (v->backend == BACKEND_DIRTY_RING) {
        for (;;) {
            struct kvm_dirty_gfn *e = &v->ring[v->ring_fetch & (v->ring_entries - 1)];
            if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY)) break;
            if ((e->slot & 0xffff) == 0 && e->offset < v->mem_size / PAGE) {
                copy_page(v, e->offset);
                n++;
            }
            __atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
            v->ring_fetch++;
        }
        if (n > 0 && ioctl(v->vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0) return -1;
        return n;
    }

    return rk_restore_dirty_log(v->vm_fd, v->bitmap, v->mem, v->saved, v->mem_size, v->backend == BACKEND_MANUAL_PROTECT);
}

/* Puts the VM back into the snapshot's state (see the top). Returns the number of pages copied,
 * or -errno. Must be called at an exit. */
int sv_restore(struct sv_vm *v)
{
    /* 1. Complete the pending OUT without running guest code. */
    v->run->immediate_exit = 1;
    int r = ioctl(v->vcpu_fd, KVM_RUN, 0);
    v->run->immediate_exit = 0;
    if (r >= 0) return -EPROTO;  /* completing it produced another exit */
    if (errno != EINTR) return -errno;
    /* 2. Registers, 3. memory. */
    if (restore_registers(v) < 0) return -errno;
    if ((r = restore_dirty_pages(v)) < 0) return -errno;
    v->dirty_last = r;
    return r;
}

/* Puts the whole saved image back (for checks). */
void sv_copy_all(struct sv_vm *v)
{
    memcpy(v->mem, v->saved, v->mem_size);
}

/* Guest RAM, for checks. */
uint8_t *sv_memory(struct sv_vm *v)
{
    return v->mem;
}

/* ---- kick latency ----------------------------------------------------------------------- */

/* The vCPU thread of sv_kick_latency: KVM_RUN in a loop with the kick signal unblocked only inside
 * KVM_RUN (KVM_SET_SIGNAL_MASK), with KvmSharp's protocol: a kick sets `requested`, then
 * immediate_exit, then sends the signal if the thread is in KVM_RUN; after an EINTR the thread
 * waits for kickers still inside tgkill (else their signal would land after the drain and cut the
 * next run short), consumes the signal with sigtimedwait, and returns only if a kick was requested
 * (a stray EINTR re-enters). */
struct kick_state {
    struct sv_vm *v;
    int sig;
    volatile int tid;
    volatile int running;          /* 1 while inside (or about to enter) KVM_RUN */
    volatile int requested;        /* an exit was requested and not yet delivered */
    volatile int kickers;          /* kicks in progress (between reading `running` and tgkill returning) */
    volatile int done;
    volatile int interrupts;       /* requested exits delivered so far */
    volatile int64_t error;
    int64_t *returned_ns;          /* when the run loop saw each requested exit */
    int capacity;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *kick_vcpu_thread(void *arg)
{
    struct kick_state *k = arg;
    struct sv_vm *v = k->v;
    sigset_t block, current;
    siginfo_t info;
    struct timespec zero = { 0, 0 };

    sigemptyset(&block);
    sigaddset(&block, k->sig);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    pthread_sigmask(SIG_BLOCK, NULL, &current);
    sigdelset(&current, k->sig);
    /* struct kvm_signal_mask with the kernel's 8-byte sigset. */
    struct { struct kvm_signal_mask m; uint64_t set; } mask;
    mask.m.len = 8;
    memcpy(&mask.set, &current, 8);
    if (ioctl(v->vcpu_fd, KVM_SET_SIGNAL_MASK, &mask) < 0) { k->error = -errno; k->done = 1; return NULL; }
    k->tid = (int)syscall(SYS_gettid);

    for (;;) {
        __atomic_store_n(&k->running, 1, __ATOMIC_SEQ_CST);
        v->run->immediate_exit = __atomic_load_n(&k->requested, __ATOMIC_SEQ_CST) ? 1 : 0;
        int r = ioctl(v->vcpu_fd, KVM_RUN, 0);
        __atomic_store_n(&k->running, 0, __ATOMIC_SEQ_CST);
        if (r >= 0) { k->error = (INT64_C(1) << 32) | v->run->exit_reason; break; }
        if (errno != EINTR) { k->error = -errno; break; }
        while (__atomic_load_n(&k->kickers, __ATOMIC_SEQ_CST) != 0) { }
        while (sigtimedwait(&block, &info, &zero) > 0) { }
        if (!__atomic_exchange_n(&k->requested, 0, __ATOMIC_SEQ_CST)) continue;
        v->run->immediate_exit = 0;
        if (k->done) break;
        /* The point where KvmSharp's Run() returns Interrupted. */
        int64_t t = now_ns();
        int i = k->interrupts;
        if (i < k->capacity) k->returned_ns[i] = t;
        __atomic_store_n(&k->interrupts, i + 1, __ATOMIC_SEQ_CST);
    }
    k->done = 1;
    return NULL;
}

/* KvmSharp's RequestExit: request, immediate_exit, then the signal if the thread is in KVM_RUN. */
static void kick(struct kick_state *k, pid_t pid)
{
    __atomic_add_fetch(&k->kickers, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&k->requested, 1, __ATOMIC_SEQ_CST);
    k->v->run->immediate_exit = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&k->running, __ATOMIC_SEQ_CST) && k->tid != 0)
        syscall(SYS_tgkill, pid, k->tid, k->sig);
    __atomic_sub_fetch(&k->kickers, 1, __ATOMIC_SEQ_CST);
}

/*
 * n kicks of a vCPU spinning in guest code: each waits a random 0–max_wait_us µs (rand_r with
 * `seed`), waits until the vCPU thread is in KVM_RUN, notes the time and kicks (kick(): `sig` with
 * tgkill); the vCPU thread notes when it has seen the requested exit (EINTR, signal consumed).
 * latency_ns[i] = that difference. Returns 0 or a negative error.
 */
int64_t sv_kick_latency(struct sv_vm *v, int n, int sig, int max_wait_us, unsigned seed, int64_t *latency_ns)
{
    struct kick_state k;
    pthread_t thread;
    int64_t *kicked = calloc((size_t)n, sizeof *kicked);
    memset(&k, 0, sizeof k);
    k.v = v;
    k.sig = sig;
    k.capacity = n;
    k.returned_ns = calloc((size_t)n, sizeof *k.returned_ns);
    if (!kicked || !k.returned_ns) { free(kicked); free(k.returned_ns); return -ENOMEM; }
    if (pthread_create(&thread, NULL, kick_vcpu_thread, &k) != 0) { free(kicked); free(k.returned_ns); return -EAGAIN; }
    pid_t pid = getpid();

    for (int i = 0; i < n && !k.done; i++) {
        usleep((useconds_t)(rand_r(&seed) % (unsigned)(max_wait_us + 1)));
        /* Yield while waiting, like the C# side (see KickLatency.cs). */
        while (!k.done && (k.tid == 0 || !__atomic_load_n(&k.running, __ATOMIC_SEQ_CST))) sched_yield();
        kicked[i] = now_ns();
        kick(&k, pid);
        while (!k.done && __atomic_load_n(&k.interrupts, __ATOMIC_SEQ_CST) <= i) sched_yield();
    }
    int failed = k.done;
    k.done = 1;
    while (k.tid == 0 && !failed) sched_yield();
    kick(&k, pid);
    pthread_join(thread, NULL);

    int64_t err = k.error;
    if (err == 0)
        for (int i = 0; i < n; i++) latency_ns[i] = k.returned_ns[i] - kicked[i];
    free(kicked);
    free(k.returned_ns);
    return err;
}
