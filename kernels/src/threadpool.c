/* Small persistent thread pool: workers spin on a generation counter for a while after each job
 * (so back-to-back decode kernels start without a wake-up), then sleep on a condition variable. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "edgerun_kernels.h"

#define ER_MAX_THREADS 64
_Static_assert(4 * ER_MAX_THREADS < 0xffff, "a job's chunk count must fit the claim word's 16 bits");

static struct {
    int nthreads; /* including the caller */
    int started;
    pthread_t th[ER_MAX_THREADS];
    atomic_uint gen;
    atomic_int sleeping;
    atomic_int stop;
    /* the job: chunks claimed through `claim` = (job id << 32) | (chunk count << 16) | next chunk, so a worker
     * that wakes up late can neither take a chunk of a later job nor hold the caller up: whoever is running
     * claims. The count lives in the word the claim swaps: a worker still looking at a used-up earlier job
     * must not compare its index with the next job's count (it could then swap the old word, in the moment
     * before the new one is stored, and run a chunk of the new job twice, counting it done once too often) */
    _Atomic uint64_t claim;
    atomic_long done; /* chunks finished */
    er_task_fn fn;
    void *ctx;
    int64_t n, chunk, nchunks;
    int64_t spin_ns;
    unsigned start_gen; /* generation current when the workers were created */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} P = {.nthreads = 0, .spin_ns = 2000000, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static _Thread_local int in_task = 0;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* claim and run chunks of job `job` until none is left */
static void run_chunks(uint32_t job, int tid) {
    for (;;) {
        uint64_t v = atomic_load_explicit(&P.claim, memory_order_acquire);
        const int64_t next = (int64_t)(v & 0xffff), count = (int64_t)((v >> 16) & 0xffff);
        if ((uint32_t)(v >> 32) != job || next >= count) return;
        if (!atomic_compare_exchange_weak_explicit(&P.claim, &v, v + 1, memory_order_acq_rel, memory_order_relaxed))
            continue;
        /* the swap saw this job with a chunk left: the caller is still in it, its fields are this job's */
        int64_t s = next * P.chunk, e = s + P.chunk;
        if (e > P.n) e = P.n;
        in_task = 1;
        P.fn(P.ctx, s, e, tid);
        in_task = 0;
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
    }
}

static void *worker(void *arg) {
    int tid = (int)(intptr_t)arg;
    unsigned seen = P.start_gen; /* not P.gen: a job may already have been posted */
    for (;;) {
        unsigned g;
        int64_t t0 = 0;
        int it = 0;
        while ((g = atomic_load_explicit(&P.gen, memory_order_acquire)) == seen) {
            cpu_relax();
            if ((++it & 255) == 0) {
                if ((it & 8191) == 0) sched_yield();
                int64_t t = now_ns();
                if (!t0) t0 = t;
                else if (t - t0 > P.spin_ns) {
                    pthread_mutex_lock(&P.mu);
                    atomic_fetch_add(&P.sleeping, 1);
                    while (atomic_load(&P.gen) == seen) pthread_cond_wait(&P.cv, &P.mu);
                    atomic_fetch_sub(&P.sleeping, 1);
                    pthread_mutex_unlock(&P.mu);
                    t0 = 0;
                }
            }
        }
        seen = g;
        if (atomic_load(&P.stop)) return NULL;
        run_chunks(g, tid);
    }
}

static void wake_all(void) {
    if (atomic_load(&P.sleeping) > 0) {
        pthread_mutex_lock(&P.mu);
        pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
    }
}

static void stop_workers(void) {
    if (!P.started) return;
    atomic_store(&P.stop, 1);
    atomic_fetch_add(&P.gen, 1);
    pthread_mutex_lock(&P.mu);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    for (int i = 1; i < P.nthreads; i++) pthread_join(P.th[i], NULL);
    atomic_store(&P.stop, 0);
    P.started = 0;
}

static void start_workers(void) {
    P.start_gen = atomic_load(&P.gen);
    for (int i = 1; i < P.nthreads; i++) pthread_create(&P.th[i], NULL, worker, (void *)(intptr_t)i);
    P.started = 1;
}

int er_set_num_threads(int n) {
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    if (n > ER_MAX_THREADS) n = ER_MAX_THREADS;
    pthread_mutex_lock(&call_mu);
    if (n != P.nthreads || !P.started) {
        stop_workers();
        P.nthreads = n;
        start_workers();
    }
    pthread_mutex_unlock(&call_mu);
    return n;
}

int er_get_num_threads(void) {
    if (P.nthreads == 0) er_set_num_threads(0);
    return P.nthreads;
}

void er_set_spin_us(int64_t us) { P.spin_ns = us < 0 ? 0 : us * 1000; }

void er_parallel_for(int64_t n, int64_t grain, er_task_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int nt = er_get_num_threads();
    if (in_task || nt == 1 || n <= grain) {
        fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&call_mu);
    /* about 4 chunks per thread (whole grains): a thread that runs late or slow leaves its share to the
     * others instead of holding the call up (2 cores shared with other work, causal attention) */
    int64_t grains = (n + grain - 1) / grain, nch = 4 * (int64_t)nt;
    if (nch > grains) nch = grains;
    int64_t per = (grains + nch - 1) / nch * grain;
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.chunk = per;
    P.nchunks = (n + per - 1) / per;
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    uint32_t job = atomic_load(&P.gen) + 1;
    atomic_store_explicit(&P.claim, (uint64_t)job << 32 | (uint64_t)P.nchunks << 16, memory_order_release);
    atomic_store_explicit(&P.gen, job, memory_order_seq_cst);
    wake_all();
    run_chunks(job, 0);
    /* wait for chunks other threads still run; yield now and then so an oversubscribed CPU can run them */
    for (int64_t it = 1; atomic_load_explicit(&P.done, memory_order_acquire) < P.nchunks; it++) {
        cpu_relax();
        if ((it & 4095) == 0) sched_yield();
    }
    pthread_mutex_unlock(&call_mu);
}
