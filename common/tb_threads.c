#include "tb_threads.h"
#include "tb_error.h"

#include <pthread.h>
#include <stdio.h>
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
