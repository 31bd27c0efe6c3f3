/* tb_threads.c - the persistent pool behind tb_parallel_for.
 *
 * A job is n_threads chunks, fixed by (n, n_threads) alone; chunk t always
 * runs with thread_id t, whichever OS thread claims it. The caller and the
 * workers claim chunks from one atomic counter, so the caller never waits for
 * a worker to *start*: on a loaded machine (the 2-core development box runs
 * several jobs at once) a descheduled worker simply claims nothing and the
 * caller runs the chunks itself; it waits only for chunks a worker has begun.
 *
 * The job word packs generation (32 bits), chunk count and next chunk (16
 * bits each) into one atomic. A worker claims with a compare-and-swap that
 * names the generation it saw, so it can never take a chunk of a later job;
 * and while it holds a chunk of job g, job g (on the caller's stack) cannot
 * end. Idle workers spin for SPIN_NS (decode issues a parallel loop every few
 * microseconds; a futex round trip per loop would cost more than the loop),
 * yielding the CPU between checks, then park on a condition variable.
 *
 * One caller uses the pool at a time (the `busy` flag); a call made while it
 * is busy (another thread, or nested inside a chunk) runs on threads of its
 * own. The pool grows to the largest thread count asked for and stays.
 */
#include "tb_threads.h"
#include "tb_error.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define MAX_THREADS TB_MAX_THREADS
#define SPIN_NS 200000 /* 0.2 ms: longer than a decode step's gaps, short enough not to matter idle */

int tb_default_threads(void)
{
    const char *env = getenv("TB_THREADS");
    if (env && atoi(env) > 0) return atoi(env);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ---- the job: one parallel loop ---- */

typedef struct {
    tb_range_fn fn;
    void *ctx;
    int64_t n;
    int n_threads;
} job;

static void run_chunk(job *j, int t)
{
    j->fn(j->ctx, j->n * t / j->n_threads, j->n * (t + 1) / j->n_threads, t);
}

/* ---- fallback: threads of its own (pool busy) ---- */

typedef struct {
    job *j;
    int t;
} spawn_arg;

static void *spawn_main(void *arg)
{
    spawn_arg *a = arg;
    run_chunk(a->j, a->t);
    return NULL;
}

static void run_spawned(job *j)
{
    pthread_t th[MAX_THREADS];
    spawn_arg args[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < j->n_threads; t++) {
        args[t] = (spawn_arg){j, t};
        started[t] = pthread_create(&th[t], NULL, spawn_main, &args[t]) == 0;
    }
    run_chunk(j, 0);
    for (int t = 1; t < j->n_threads; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else run_chunk(j, t); /* degraded, never wrong */
    }
}

/* ---- the pool ---- */

#define WORD(gen, chunks, next) ((uint64_t)(gen) << 32 | (uint64_t)(chunks) << 16 | (uint64_t)(next))
#define WORD_GEN(w) ((uint32_t)((w) >> 32))
#define WORD_CHUNKS(w) ((int)(((w) >> 16) & 0xffff))
#define WORD_NEXT(w) ((int)((w) & 0xffff))

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    _Atomic uint64_t word;
    atomic_int finished; /* chunks of the current job completed */
    atomic_int quit;
    atomic_int caller_parked;
    int n_workers;       /* started */
    pthread_t th[MAX_THREADS];
    job *_Atomic cur;    /* the current job; valid while one of its chunks is held */
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

static atomic_flag busy = ATOMIC_FLAG_INIT;
static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e9 * (double)ts.tv_sec + (double)ts.tv_nsec;
}

static uint64_t load_word(void) { return atomic_load_explicit(&pool.word, memory_order_acquire); }

/* a worker: is there a chunk left in a job newer than `seen`? */
static int has_work(uint64_t w, uint32_t seen_gen) { return WORD_GEN(w) != seen_gen || WORD_NEXT(w) < WORD_CHUNKS(w); }

static void chunk_done(void)
{
    /* the job's last chunk wakes the caller if it parked */
    job *j = atomic_load_explicit(&pool.cur, memory_order_relaxed);
    int total = j->n_threads;
    /* seq_cst here and in the caller's parking (flag, then count): one of
     * the two sees the other, so no wakeup is lost */
    if (atomic_fetch_add(&pool.finished, 1) + 1 == total && atomic_load(&pool.caller_parked)) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.done);
        pthread_mutex_unlock(&pool.mu);
    }
}

/* claim and run chunks of the job of generation gen until none is left */
static void work_on(uint32_t gen)
{
    uint64_t w = load_word();
    for (;;) {
        if (WORD_GEN(w) != gen || WORD_NEXT(w) >= WORD_CHUNKS(w)) return;
        if (!atomic_compare_exchange_weak_explicit(&pool.word, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* w reloaded */
        /* we hold chunk WORD_NEXT(w) of job gen: the job lives until it is done */
        run_chunk(atomic_load_explicit(&pool.cur, memory_order_acquire), WORD_NEXT(w));
        chunk_done();
        w = load_word();
    }
}

static void *worker_main(void *arg)
{
    (void)arg;
    uint32_t seen = WORD_GEN(load_word()) - 1; /* the job that started us may have chunks left */
    for (;;) {
        uint64_t w = load_word();
        if (!has_work(w, seen)) {
            double t0 = now_ns();
            int spins = 0;
            while (!has_work(w = load_word(), seen) && !atomic_load_explicit(&pool.quit, memory_order_relaxed)) {
                cpu_relax();
                /* share the CPU: on a loaded machine the caller may be waiting for it */
                if (++spins % 64 == 0) {
                    if (now_ns() - t0 > SPIN_NS) break;
                    sched_yield();
                }
            }
            if (!has_work(w, seen)) {
                pthread_mutex_lock(&pool.mu);
                while (!has_work(w = load_word(), seen) && !atomic_load(&pool.quit))
                    pthread_cond_wait(&pool.wake, &pool.mu);
                pthread_mutex_unlock(&pool.mu);
            }
        }
        if (atomic_load(&pool.quit)) return NULL;
        seen = WORD_GEN(w);
        work_on(seen);
    }
}

/* after fork() the child has only the forking thread: forget the workers */
static void after_fork_child(void)
{
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.n_workers = 0;
    atomic_store(&pool.quit, 0);
    atomic_store(&pool.caller_parked, 0);
    atomic_flag_clear(&busy);
}

static void at_exit(void) { tb_threads_shutdown(); }

static void install_hooks(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
    atexit(at_exit);
}

static void grow(int want)
{
    pthread_once(&hooks_once, install_hooks);
    while (pool.n_workers < want) {
        if (pthread_create(&pool.th[pool.n_workers], NULL, worker_main, NULL) != 0) break;
        pool.n_workers++;
    }
}

static void run_pooled(job *j)
{
    /* workers missing (pthread_create failed) only mean the caller claims more */
    grow(j->n_threads - 1);
    atomic_store_explicit(&pool.cur, j, memory_order_relaxed);
    atomic_store_explicit(&pool.finished, 0, memory_order_relaxed);
    pthread_mutex_lock(&pool.mu);
    uint32_t gen = WORD_GEN(load_word()) + 1;
    atomic_store_explicit(&pool.word, WORD(gen, j->n_threads, 0), memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);

    /* the caller claims like a worker (nobody else can bump this job's word
     * past its end, so a plain fetch_add suffices) */
    for (;;) {
        int c = WORD_NEXT(atomic_fetch_add_explicit(&pool.word, 1, memory_order_acq_rel));
        if (c >= j->n_threads) break;
        run_chunk(j, c);
        atomic_fetch_add_explicit(&pool.finished, 1, memory_order_acq_rel);
    }
    /* wait for the chunks workers hold */
    if (atomic_load_explicit(&pool.finished, memory_order_acquire) < j->n_threads) {
        double t0 = now_ns();
        int spins = 0;
        while (atomic_load_explicit(&pool.finished, memory_order_acquire) < j->n_threads) {
            cpu_relax();
            if (++spins % 64 == 0) {
                if (now_ns() - t0 > SPIN_NS) break;
                sched_yield();
            }
        }
        if (atomic_load_explicit(&pool.finished, memory_order_acquire) < j->n_threads) {
            pthread_mutex_lock(&pool.mu);
            atomic_store(&pool.caller_parked, 1);
            while (atomic_load(&pool.finished) < j->n_threads) pthread_cond_wait(&pool.done, &pool.mu);
            atomic_store(&pool.caller_parked, 0);
            pthread_mutex_unlock(&pool.mu);
        }
    }
}

void tb_parallel_for(int n_threads, int64_t n, tb_range_fn fn, void *ctx)
{
    if (n <= 0) return;
    job j = {fn, ctx, n, n_threads < 1 ? 1 : n_threads};
    if (j.n_threads > MAX_THREADS) j.n_threads = MAX_THREADS;
    if (j.n_threads > n) j.n_threads = (int)n;
    if (j.n_threads == 1) {
        run_chunk(&j, 0);
    } else if (!atomic_flag_test_and_set_explicit(&busy, memory_order_acquire)) {
        run_pooled(&j);
        atomic_flag_clear_explicit(&busy, memory_order_release);
    } else {
        run_spawned(&j);
    }
}

void tb_threads_shutdown(void)
{
    /* a call in flight (exit() from inside a chunk) keeps its workers */
    if (atomic_flag_test_and_set_explicit(&busy, memory_order_acquire)) return;
    pthread_mutex_lock(&pool.mu);
    atomic_store(&pool.quit, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < pool.n_workers; i++) pthread_join(pool.th[i], NULL);
    pool.n_workers = 0;
    atomic_store(&pool.quit, 0);
    atomic_flag_clear_explicit(&busy, memory_order_release);
}

/* ---- work that can fail ---- */

void tb_par_error_set(tb_par_error *e, int64_t index)
{
    if (e->rc) return;
    e->rc = tb_errcode() ? tb_errcode() : TB_EIO;
    e->index = index;
    snprintf(e->msg, sizeof e->msg, "%s", tb_errmsg());
}

int tb_par_error_collect(const tb_par_error *first, int n, size_t stride, const char *what)
{
    const tb_par_error *best = NULL;
    for (int t = 0; t < n; t++) {
        const tb_par_error *e = (const tb_par_error *)((const char *)first + (size_t)t * stride);
        if (e->rc && (!best || e->index < best->index)) best = e;
    }
    if (!best) return TB_OK;
    if (what && best->index >= 0) return tb_fail(best->rc, "%s %lld: %s", what, (long long)best->index, best->msg);
    return tb_fail(best->rc, "%s", best->msg);
}

typedef struct {
    tb_range_try_fn fn;
    void *ctx;
    tb_par_error err[TB_MAX_THREADS];
} try_job;

static void try_chunk(void *ctx, int64_t begin, int64_t end, int tid)
{
    try_job *j = ctx;
    if (j->fn(j->ctx, begin, end, tid)) tb_par_error_set(&j->err[tid], begin);
}

int tb_parallel_try(int n_threads, int64_t n, tb_range_try_fn fn, void *ctx)
{
    try_job *j = tb_calloc(1, sizeof *j);
    if (!j) return TB_EIO;
    j->fn = fn;
    j->ctx = ctx;
    tb_parallel_for(n_threads, n, try_chunk, j);
    int rc = tb_par_error_collect(j->err, TB_MAX_THREADS, sizeof j->err[0], NULL);
    free(j);
    return rc;
}
