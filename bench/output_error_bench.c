/* output_error_bench - tb-pack's output-error report (tb_comp_output_error,
 * sum over rows of e G e^T) against the per-row DSYMV it replaced, on one
 * weight shape with a random Gram of 64 samples.
 *
 *   output_error_bench ROWS COLS THREADS [REF_ROWS]
 *
 * Prints seconds and GFLOP/s (2 rows cols^2 flops) of one call, and of the
 * per-row DSYMV reference on the first REF_ROWS rows (default 32; its cost is
 * linear in the rows: each row streams the whole Gram), scaled to ROWS, and
 * the two sums' relative difference on those rows. Built and run by
 * bench/output_error_bench.sh (a measurement, not part of the toolkit).
 */
#include "tb_compensate.h"
#include "tb_threads.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* the replaced method: one DSYMV per row, rows split over threads as before */
typedef struct {
    const float *w0, *w;
    int64_t cols;
    const double *g;
    double sum[TB_MAX_THREADS];
} ref_job;

static void ref_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    ref_job *j = ctx;
    double *e = malloc((size_t)j->cols * sizeof *e), *y = malloc((size_t)j->cols * sizeof *y), s = 0;
    for (int64_t r = begin; r < end; r++) {
        for (int64_t c = 0; c < j->cols; c++) e[c] = (double)j->w0[r * j->cols + c] - j->w[r * j->cols + c];
        cblas_dsymv(CblasRowMajor, CblasUpper, (int)j->cols, 1.0, j->g, (int)j->cols, e, 1, 0.0, y, 1);
        s += cblas_ddot((int)j->cols, e, 1, y, 1);
    }
    j->sum[tid] = s;
    free(e);
    free(y);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: output_error_bench ROWS COLS THREADS [REF_ROWS]\n");
        return 1;
    }
    const int64_t rows = atoll(argv[1]), cols = atoll(argv[2]), ref_rows_n = argc > 4 ? atoll(argv[4]) : 32;
    const int threads = atoi(argv[3]), T = 64;
    float *w0 = malloc((size_t)(rows * cols) * sizeof *w0), *w = malloc((size_t)(rows * cols) * sizeof *w);
    double *x = malloc((size_t)(T * cols) * sizeof *x), *g = calloc((size_t)(cols * cols), sizeof *g);
    if (!w0 || !w || !x || !g) return 3;
    uint64_t s = 88172645463325252ull;
    for (int64_t i = 0; i < T * cols; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (double)(s >> 11) / 9007199254740992.0 - 0.5;
    }
    for (int64_t i = 0; i < rows * cols; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        w0[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
        w[i] = i % 2 ? w0[i] : 0.0f; /* half pruned */
    }
    /* G = X^T X, upper triangle (what both methods read) */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)cols, T, 1.0, x, (int)cols, 0.0, g, (int)cols);
    const double flops = 2.0 * (double)rows * (double)cols * (double)cols;

    double t0 = now(), e = tb_comp_output_error(w0, w, rows, cols, g, threads), t1 = now() - t0;
    double e_sub = tb_comp_output_error(w0, w, ref_rows_n, cols, g, threads);
    ref_job j = {w0, w, cols, g, {0}};
    t0 = now();
    tb_parallel_for(threads, ref_rows_n, ref_rows, &j);
    double t2 = now() - t0, ref = 0;
    for (int i = 0; i < TB_MAX_THREADS; i++) ref += j.sum[i];
    double scaled = t2 * (double)rows / (double)ref_rows_n;
    printf("%lld x %lld, %d threads: DSYMM blocks %.2f s (%.1f GFLOP/s); per-row DSYMV %.2f s for %lld rows -> "
           "%.0f s for %lld (%.2f GFLOP/s), %.0fx; sum %.6g, rel. diff on %lld rows %.2g\n",
           (long long)rows, (long long)cols, threads, t1, flops / t1 * 1e-9, t2, (long long)ref_rows_n, scaled,
           (long long)rows, flops / scaled * 1e-9, scaled / t1, e, (long long)ref_rows_n, (e_sub - ref) / ref);
    return 0;
}
