/* test_sparsegpt_cuda.c - SparseGPT on the GPU against the CPU reference
 * (tb_comp_sparsegpt) on random weights and random Gram matrices X^T X with
 * fewer tokens than inputs (singular, as calibration Grams often are) and a
 * dead input, for fixed masks and N:M / unstructured reselection.
 *
 * Measures: relative norm error of the compensated weights (f64 arithmetic on
 * both sides, different summation order: <= 1e-9), the fraction of keep bits
 * that differ (ties decided by rounding: <= 1e-4), pruned weights exact zeros.
 * Skips (exit 0) without a CUDA build or GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_backend.h"
#include "tb_compensate.h"
#include "tb_error.h"
#include "tb_linear.h"
#include "tb_solve.h"
#ifdef TB_HAVE_CUDA
#include "tb_cuda.h"
#endif

static int failures;
static uint64_t rng = 0x243F6A8885A308D3ull;

static double uniform(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1.0p-53;
}
static double normal(void) { return sqrt(-2 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform()); }

static void check(const char *what, double value, double limit)
{
    int ok = value <= limit;
    printf("  %-66s %.3e (limit %.0e) %s\n", what, value, limit, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

/* resident: G kept on the GPU across the solve and the reports (tb_solve_gram_begin), else moved per call;
 * the GPU is given G with a NaN lower triangle, so a read of it would show (the CPU gets G whole) */
static void one_case(tb_backend *gpu, int rows, int cols, int tokens, int n, int m, int reselect, int block, int resident)
{
    float *w0 = malloc(sizeof(float) * rows * cols), *wc = malloc(sizeof(float) * rows * cols),
          *wg = malloc(sizeof(float) * rows * cols);
    double *x = malloc(sizeof(double) * tokens * cols), *g = calloc((size_t)cols * cols, sizeof(double));
    for (int i = 0; i < rows * cols; i++) w0[i] = (float)normal();
    for (int i = 0; i < tokens * cols; i++) x[i] = normal() * (1 + (i % cols) % 7);
    for (int t = 0; t < tokens; t++) x[t * cols + 3] = 0; /* a dead input */
    for (int t = 0; t < tokens; t++)
        for (int i = 0; i < cols; i++)
            for (int j = 0; j < cols; j++) g[(size_t)i * cols + j] += x[t * cols + i] * x[t * cols + j];
    tb_mask mc, mg;
    tb_mask_alloc(&mc, rows, cols);
    tb_mask_alloc(&mg, rows, cols);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            int keep = m ? (c % m) < n : uniform() < 0.5; /* a fixed valid mask */
            tb_mask_set(&mc, r, c, keep);
            tb_mask_set(&mg, r, c, keep);
        }
    double *gu = malloc(sizeof(double) * cols * cols); /* the upper triangle only */
    for (int i = 0; i < cols; i++)
        for (int j = 0; j < cols; j++) gu[(size_t)i * cols + j] = j >= i ? g[(size_t)i * cols + j] : NAN;
    memcpy(wc, w0, sizeof(float) * rows * cols);
    memcpy(wg, w0, sizeof(float) * rows * cols);
    tb_comp_stats sc = {0}, sg = {0};
    int rc1 = tb_comp_sparsegpt(wc, &mc, n, m, g, 0.01, block, reselect, 4, &sc);
    int rc0 = resident ? tb_solve_gram_begin(gpu, gu, cols) : 0;
    int rc2 = rc0 ? rc0 : tb_solve_sparsegpt(gpu, wg, &mg, n, m, gu, 0.01, block, reselect, 4, &sg);
    char what[200];
    snprintf(what, sizeof what, "%dx%d, %d tokens, %s%s, block %d%s: weights rel. norm error", rows, cols, tokens,
             m ? "N:M " : "unstructured", reselect ? " reselect" : " fixed mask", block,
             resident ? ", G resident" : "");
    if (rc1 || rc2) {
        printf("  FAIL %s: %s\n", what, tb_errmsg());
        failures++;
    } else {
        double d = 0, s = 0;
        int64_t diff = 0, nonzero_pruned = 0;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                size_t i = (size_t)r * cols + c;
                d += ((double)wc[i] - wg[i]) * ((double)wc[i] - wg[i]);
                s += (double)wc[i] * wc[i];
                diff += tb_mask_get(&mc, r, c) != tb_mask_get(&mg, r, c);
                nonzero_pruned += !tb_mask_get(&mg, r, c) && wg[i] != 0.0f;
            }
        check(what, sqrt(d / s), 1e-9 + (diff ? 1e-2 : 0));
        check("  keep bits that differ (fraction)", (double)diff / ((double)rows * cols), 1e-4);
        check("  pruned weights not exactly zero (count)", (double)nonzero_pruned, 0);
        printf("  lambda cpu %.6g gpu %.6g\n", sc.lambda, sg.lambda);
        check("  lambda rel. error", fabs(sg.lambda - sc.lambda) / sc.lambda, 1e-12);
        /* the output-error reports (the same G, resident or moved) against the CPU's */
        double ec = tb_comp_output_error(w0, wc, rows, cols, g, 4), eg = tb_solve_output_error(gpu, w0, wg, rows, cols, gu, 4);
        double bc = tb_comp_output_error(w0, NULL, rows, cols, g, 4), bg = tb_solve_output_error(gpu, w0, NULL, rows, cols, gu, 4);
        check("  ||dW X||^2 rel. error", fabs(eg - ec) / ec, 1e-9 + (diff ? 1e-2 : 0));
        check("  ||W X||^2 rel. error", fabs(bg - bc) / bc, 1e-12);
    }
    tb_solve_gram_end(gpu);
    tb_mask_free(&mc);
    tb_mask_free(&mg);
    free(w0);
    free(wc);
    free(wg);
    free(x);
    free(g);
    free(gu);
}

int main(void)
{
#ifndef TB_HAVE_CUDA
    printf("test_sparsegpt_cuda: skipped: this build has no CUDA (make CUDA=1)\n");
    return 0;
#else
    if (tb_cuda_device_count() < 1) {
        printf("test_sparsegpt_cuda: skipped: no CUDA GPU is visible\n");
        return 0;
    }
#endif
    tb_backend gpu = {0}; /* tb_solve needs only the device choice */
    gpu.o.device = TB_DEVICE_CUDA;
    gpu.o.gpu = 0;
    tb_blas_single_thread();
    printf("SparseGPT, CUDA vs CPU\n");
    one_case(&gpu, 96, 256, 200, 2, 4, 0, 128, 0);
    one_case(&gpu, 96, 256, 200, 2, 4, 1, 128, 0);
    one_case(&gpu, 96, 256, 200, 2, 4, 1, 128, 1);
    one_case(&gpu, 64, 384, 500, 4, 8, 1, 64, 1);
    one_case(&gpu, 64, 256, 300, 0, 0, 1, 128, 0);
    one_case(&gpu, 40, 200, 100, 0, 0, 0, 128, 1); /* a partial last block */
    printf("test_sparsegpt_cuda: %s (%d failure%s)\n", failures ? "FAILED" : "passed", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
