/* tb_threads.h - a minimal fork-join parallel-for over pthreads.
 *
 * Work is split into n_threads contiguous chunks of [0, n); fn runs each chunk
 * on its own thread (chunk 0 on the caller's). Deterministic partitioning, so
 * results that depend on the split (per-thread partial sums) are reproducible
 * for a fixed thread count.
 */
#ifndef TB_THREADS_H
#define TB_THREADS_H

#include <stdint.h>

typedef void (*tb_range_fn)(void *ctx, int64_t begin, int64_t end, int thread_id);

/* Default thread count: $TB_THREADS, else the number of online CPUs. */
int tb_default_threads(void);
void tb_parallel_for(int n_threads, int64_t n, tb_range_fn fn, void *ctx);

#endif
