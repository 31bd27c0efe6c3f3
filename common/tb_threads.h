/* tb_threads.h - parallel-for over a persistent pool of pthreads.
 *
 * Work is split into n_threads contiguous chunks of [0, n): chunk t is
 * [n*t/n_threads, n*(t+1)/n_threads) and runs with thread_id t, on whichever
 * thread claims it (the caller's or a worker's). The partition depends only
 * on n and n_threads, so results that depend on the split (per-thread partial
 * sums) are reproducible for a fixed thread count.
 *
 * The worker threads are started on first use and then persist: between
 * calls they spin briefly (a decode step issues ~10 parallel loops per layer,
 * microseconds apart) and then park on a condition variable, so an idle
 * process costs no CPU. One caller uses the pool at a time; a call made while
 * it is busy (from another thread, or nested inside a chunk) runs on threads
 * of its own: slower, never wrong. A worker that cannot be started leaves its
 * chunks to the caller.
 */
#ifndef TB_THREADS_H
#define TB_THREADS_H

#include <stddef.h>
#include <stdint.h>

typedef void (*tb_range_fn)(void *ctx, int64_t begin, int64_t end, int thread_id);

/* Default thread count: $TB_THREADS, else the number of online CPUs. */
int tb_default_threads(void);
void tb_parallel_for(int n_threads, int64_t n, tb_range_fn fn, void *ctx);

/* Work that can fail. tb_fail's message is thread-local, so a worker's error
 * is recorded in its thread's slot (code, the index it was at, the message)
 * and re-raised on the calling thread: the failure at the lowest index wins,
 * so the message does not depend on the thread count. */
#define TB_MAX_THREADS 256 /* tb_parallel_for's cap: thread_id < TB_MAX_THREADS */
typedef struct {
    int rc;        /* TB_OK: no failure */
    int64_t index; /* where (a row, a window), -1 if nowhere in particular */
    char msg[256];
} tb_par_error;
/* record the current error (tb_errmsg, tb_errcode) at index, unless one is recorded */
void tb_par_error_set(tb_par_error *e, int64_t index);
/* the lowest-index failure of n slots `stride` bytes apart, re-raised as
 * "<what> <index>: <message>" (what NULL: the message alone); TB_OK if none */
int tb_par_error_collect(const tb_par_error *first, int n, size_t stride, const char *what);

/* tb_parallel_for for a fn that returns TB_OK or an error (with tb_fail):
 * returns TB_OK or the error of the lowest failing chunk. A chunk stops at
 * its failure; the others run to their end. */
typedef int (*tb_range_try_fn)(void *ctx, int64_t begin, int64_t end, int thread_id);
int tb_parallel_try(int n_threads, int64_t n, tb_range_try_fn fn, void *ctx);

/* Stop and join the pool's workers (also run at exit). A later call starts
 * them again. Must not be called from inside a parallel chunk. */
void tb_threads_shutdown(void);

#endif
