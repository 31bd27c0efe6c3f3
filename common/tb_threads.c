#include "tb_threads.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

int tb_default_threads(void)
{
    const char *env = getenv("TB_THREADS");
    if (env && atoi(env) > 0) return atoi(env);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

typedef struct {
    tb_range_fn fn;
    void *ctx;
    int64_t begin, end;
    int tid;
} chunk;

static void *run_chunk(void *arg)
{
    chunk *c = arg;
    c->fn(c->ctx, c->begin, c->end, c->tid);
    return NULL;
}

void tb_parallel_for(int n_threads, int64_t n, tb_range_fn fn, void *ctx)
{
    if (n <= 0) return;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > n) n_threads = (int)n;
    if (n_threads == 1) { fn(ctx, 0, n, 0); return; }
    chunk chunks[256];
    pthread_t th[256];
    if (n_threads > 256) n_threads = 256;
    int started[256] = {0};
    for (int t = 0; t < n_threads; t++) {
        chunks[t] = (chunk){fn, ctx, n * t / n_threads, n * (t + 1) / n_threads, t};
        if (t > 0) started[t] = pthread_create(&th[t], NULL, run_chunk, &chunks[t]) == 0;
    }
    /* a chunk whose thread could not start runs here: degraded, never wrong */
    run_chunk(&chunks[0]);
    for (int t = 1; t < n_threads; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else run_chunk(&chunks[t]);
    }
}
