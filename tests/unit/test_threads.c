/* Unit tests of the thread pool (common/tb_threads): the partition (chunk t
 * of n over T threads is [n t / T, n (t+1) / T) with thread id t, each index
 * once), reuse over many calls with changing thread counts, nested and
 * concurrent callers (which fall back to threads of their own), chunk errors
 * (the lowest failing chunk's status and message, whichever thread ran it),
 * and shutdown followed by reuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "tb_error.h"
#include "tb_threads.h"

/* ---- the thread pool ---- */

typedef struct {
    int64_t *owner; /* [n]: thread id that ran each index */
    atomic_int calls;
} cover_ctx;

static void cover(void *ctx, int64_t b, int64_t e, int tid)
{
    cover_ctx *c = ctx;
    atomic_fetch_add(&c->calls, 1);
    for (int64_t i = b; i < e; i++) c->owner[i] = tid;
}

/* every index once, chunk t = [n t / T, n (t+1) / T) on thread id t, call after call */
static void test_pool_partition(void **state)
{
    (void)state;
    int64_t owner[1000];
    for (int rep = 0; rep < 200; rep++) {
        int T = 1 + rep % 7;
        int64_t n = 1 + (rep * 37) % 1000;
        cover_ctx c = {owner, 0};
        for (int64_t i = 0; i < n; i++) owner[i] = -1;
        tb_parallel_for(T, n, cover, &c);
        int used = T < n ? T : (int)n;
        assert_int_equal(atomic_load(&c.calls), used);
        for (int t = 0; t < used; t++)
            for (int64_t i = n * t / used; i < n * (t + 1) / used; i++) assert_int_equal(owner[i], t);
    }
    tb_parallel_for(4, 0, cover, NULL); /* nothing to do: fn never called */
}

static void nested(void *ctx, int64_t b, int64_t e, int tid)
{
    int64_t *sums = ctx;
    for (int64_t i = b; i < e; i++) {
        int64_t owner[64];
        cover_ctx c = {owner, 0};
        tb_parallel_for(3, 64, cover, &c); /* the pool is busy: runs on threads of its own */
        int64_t s = 0;
        for (int k = 0; k < 64; k++) s += owner[k];
        sums[i] = s;
    }
}

static void test_pool_nested(void **state)
{
    (void)state;
    int64_t sums[8];
    tb_parallel_for(4, 8, nested, sums);
    /* chunks of 64 over 3 threads: 21 x 0 + 21 x 1 + 22 x 2 */
    for (int i = 0; i < 8; i++) assert_int_equal(sums[i], 21 + 44);
}

static void *concurrent_caller(void *arg)
{
    (void)arg;
    int64_t owner[500];
    for (int rep = 0; rep < 300; rep++) {
        cover_ctx c = {owner, 0};
        tb_parallel_for(2 + rep % 3, 500, cover, &c);
        for (int i = 0; i < 500; i++)
            if (owner[i] < 0 || owner[i] > 3) return (void *)1;
    }
    return NULL;
}

static void test_pool_concurrent(void **state)
{
    (void)state;
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, concurrent_caller, NULL), 0);
    assert_int_equal(pthread_create(&b, NULL, concurrent_caller, NULL), 0);
    void *ra, *rb;
    pthread_join(a, &ra);
    pthread_join(b, &rb);
    assert_null(ra);
    assert_null(rb);
}

static int failing(void *ctx, int64_t b, int64_t e, int tid)
{
    const int *fail_from = ctx;
    if (tid >= *fail_from) return tb_fail(tid == 2 ? TB_EDATA : TB_EIO, "chunk %d [%lld, %lld) failed", tid,
                                          (long long)b, (long long)e);
    return TB_OK;
}

static void test_pool_errors(void **state)
{
    (void)state;
    int from = 99;
    tb_err_clear();
    assert_int_equal(tb_parallel_try(4, 100, failing, &from), TB_OK);
    from = 2; /* chunks 2 and 3 fail, on workers: the lowest one's status and message win */
    assert_int_equal(tb_parallel_try(4, 100, failing, &from), TB_EDATA);
    assert_string_equal(tb_errmsg(), "chunk 2 [50, 75) failed");
    from = 0;
    assert_int_equal(tb_parallel_try(4, 100, failing, &from), TB_EIO);
    assert_string_equal(tb_errmsg(), "chunk 0 [0, 25) failed");
    /* the pool stops and starts again */
    tb_threads_shutdown();
    from = 3;
    assert_int_equal(tb_parallel_try(4, 100, failing, &from), TB_EIO);
    assert_string_equal(tb_errmsg(), "chunk 3 [75, 100) failed");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_partition),
        cmocka_unit_test(test_pool_nested),
        cmocka_unit_test(test_pool_concurrent),
        cmocka_unit_test(test_pool_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
