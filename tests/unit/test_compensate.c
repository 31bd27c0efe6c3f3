/* Unit tests of kernels/cpu/tb_linalg and tb_compensate.
 *
 * linalg: the Woodbury inverse against a direct LAPACKE inverse, the
 * Sherman-Morrison downdate against inverting the reduced system, the damping
 * ladder on a singular and on an indefinite matrix (no NaN, ever).
 * compensate: redistribution on a hand-worked example; OBS against the
 * closed-form constrained minimiser; reconstruction against mask-only (and
 * its optimality conditions) on random data and on the real layer-0 Gram of
 * tiny-llama-6m (tests/data/gram-l0-q_proj-16win.safetensors, copied from
 * ../shared/golden/tiny-llama-6m/fisher-gram-16win.safetensors); SparseGPT's
 * masks and its diagonal-Hessian limit. Measured errors are printed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_compensate.h"
#include "tb_error.h"
#include "tb_linalg.h"
#include "tb_safetensors.h"

#define THREADS 2

static uint64_t rng = 0x2545f4914f6cdd1dull;
static double rndu(void) /* xorshift64*, uniform in [-1, 1) */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (double)((rng * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0 * 2 - 1;
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static double max_rel_diff(const double *a, const double *b, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]);
        if (!(e <= d)) d = e;
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return m > 0 ? d / m : d;
}

/* G = X X^T for X [n, t] (t samples), f64 */
static double *gram_of(const double *x, int n, int t)
{
    double *g = calloc((size_t)n * n, sizeof *g);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < t; k++) s += x[(size_t)i * t + k] * x[(size_t)j * t + k];
            g[(size_t)i * n + j] = s;
        }
    return g;
}

/* direct inverse of an SPD matrix with LAPACKE (row-major, the obvious way) */
static void direct_inverse(const double *a, int n, double *inv)
{
    memcpy(inv, a, (size_t)n * n * sizeof *inv);
    assert_int_equal(LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', n, inv, n), 0);
    assert_int_equal(LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', n, inv, n), 0);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) inv[(size_t)i * n + j] = inv[(size_t)j * n + i];
}

/* ---------------------------------------------------------------- linalg */

static void test_woodbury_vs_direct(void **state)
{
    (void)state;
    static const int shapes[][2] = {{16, 128}, {4, 32}, {32, 16}, {1, 5}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int k = shapes[c][0], n = shapes[c][1];
        double lambda = 0.05, s = 1.0 / k;
        double *g = malloc((size_t)k * n * sizeof *g), *h = calloc((size_t)n * n, sizeof *h);
        double *w1 = malloc((size_t)n * n * sizeof *w1), *w2 = malloc((size_t)n * n * sizeof *w2);
        double *work = malloc(tb_woodbury_work(k, n) * sizeof *work);
        for (int i = 0; i < k * n; i++) g[i] = rndu();
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double v = i == j ? lambda : 0;
                for (int t = 0; t < k; t++) v += s * g[t * n + i] * g[t * n + j];
                h[(size_t)i * n + j] = v;
            }
        assert_int_equal(tb_woodbury_inverse(g, k, n, lambda, s, w1, work), TB_OK);
        direct_inverse(h, n, w2);
        double e = max_rel_diff(w1, w2, (size_t)n * n);
        printf("    Woodbury k=%-2d n=%-3d vs LAPACKE inverse: max rel diff %.2e\n", k, n, e);
        assert_true(e < 1e-6);
        free(g);
        free(h);
        free(w1);
        free(w2);
        free(work);
    }
    double g1 = 1, h1, work[2];
    assert_int_equal(tb_woodbury_inverse(&g1, 1, 1, 0.0, 1.0, &h1, work), TB_EDATA);
}

static void test_sym_inverse_and_solve(void **state)
{
    (void)state;
    int n = 40;
    double *x = malloc((size_t)n * 2 * n * sizeof *x);
    for (int i = 0; i < 2 * n * n; i++) x[i] = rndu();
    double *g = gram_of(x, n, 2 * n), *inv = malloc((size_t)n * n * sizeof *inv), *ref = malloc((size_t)n * n * sizeof *ref);
    tb_solve_info info;
    assert_int_equal(tb_sym_inverse(g, n, 0.0, inv, &info), TB_OK);
    assert_int_equal(info.raises, 0);
    direct_inverse(g, n, ref);
    assert_true(max_rel_diff(inv, ref, (size_t)n * n) < 1e-9);
    /* solve with three right-hand sides = columns of the inverse */
    double *b = calloc((size_t)n * 3, sizeof *b), *work = malloc(tb_sym_solve_work(n) * sizeof *work);
    for (int j = 0; j < 3; j++) b[(size_t)(5 * j) * 3 + j] = 1; /* e_0, e_5, e_10 */
    assert_int_equal(tb_sym_solve(g, n, 0.0, b, 3, work, &info), TB_OK);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 3; j++) assert_true(fabs(b[i * 3 + j] - ref[i * n + 5 * j]) < 1e-9 * fabs(ref[0]) + 1e-12);
    free(x);
    free(g);
    free(inv);
    free(ref);
    free(b);
    free(work);
}

/* inverse of h without the rows and columns in drop[] (order n - nd) */
static void reduced_inverse(const double *h, int n, const int *drop, int nd, double *out)
{
    int m = 0, keep[64];
    for (int i = 0; i < n; i++) {
        int d = 0;
        for (int t = 0; t < nd; t++) d |= drop[t] == i;
        if (!d) keep[m++] = i;
    }
    double *r = malloc((size_t)m * m * sizeof *r);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < m; j++) r[i * m + j] = h[keep[i] * n + keep[j]];
    direct_inverse(r, m, out);
    free(r);
}

static void test_sherman_morrison(void **state)
{
    (void)state;
    int n = 12;
    double x[12 * 30];
    for (int i = 0; i < 12 * 30; i++) x[i] = rndu();
    double *h = gram_of(x, n, 30), hinv[144], red[144];
    direct_inverse(h, n, hinv);
    int drop[2] = {3, 7};
    for (int step = 0; step < 2; step++) {
        assert_int_equal(tb_sm_downdate(hinv, n, drop[step]), 0);
        for (int j = 0; j < n; j++) assert_true(hinv[drop[step] * n + j] == 0 && hinv[j * n + drop[step]] == 0);
        reduced_inverse(h, n, drop, step + 1, red);
        int m = n - step - 1;
        double d = 0, mx = 0;
        for (int i = 0, ri = 0; i < n; i++) {
            if (i == drop[0] || (step && i == drop[1])) continue;
            for (int j = 0, rj = 0; j < n; j++) {
                if (j == drop[0] || (step && j == drop[1])) continue;
                d = fmax(d, fabs(hinv[i * n + j] - red[ri * m + rj]));
                mx = fmax(mx, fabs(red[ri * m + rj]));
                rj++;
            }
            ri++;
        }
        printf("    Sherman-Morrison after %d removal(s) vs reduced inverse: max rel diff %.2e\n", step + 1, d / mx);
        assert_true(d / mx < 1e-10);
    }
    double z[4] = {0, 0, 0, 1};
    assert_int_equal(tb_sm_downdate(z, 2, 0), -1); /* [H^-1]_qq = 0: refused, unchanged */
    assert_true(z[3] == 1);
    free(h);
}

static void test_solve_singular(void **state)
{
    (void)state;
    /* rank 4 Gram of 16 inputs, input 0 dead (all-zero row and column) */
    int n = 16, t = 4;
    double x[16 * 4];
    for (int i = 0; i < n * t; i++) x[i] = i < t ? 0 : rndu();
    double *g = gram_of(x, n, t), b[16], b0[16], work[256];
    for (int i = 0; i < n; i++) b0[i] = b[i] = rndu();
    tb_solve_info info;
    assert_int_equal(tb_sym_solve(g, n, 0.0, b, 1, work, &info), TB_OK);
    printf("    singular Gram, damp 0: %d raise(s), lambda %.3g, eigen %d\n", info.raises, info.lambda, info.eigen);
    assert_true(info.raises >= 1 && !info.eigen);
    /* b is not in the range of G, so x is as large as 1/lambda: judge the
     * solve by its backward error |(G + lambda I) x - b| / (|G + lambda I| |x| + |b|) */
    double res = 0, nb = 0, nx = 0, ng = 0;
    for (int i = 0; i < n; i++) {
        assert_true(isfinite(b[i]));
        double r = info.lambda * b[i] - b0[i], rs = info.lambda;
        for (int j = 0; j < n; j++) {
            r += g[i * n + j] * b[j];
            rs += fabs(g[i * n + j]);
        }
        res = fmax(res, fabs(r));
        nb = fmax(nb, fabs(b0[i]));
        nx = fmax(nx, fabs(b[i]));
        ng = fmax(ng, rs);
    }
    printf("    backward error %.2e\n", res / (ng * nx + nb));
    assert_true(res / (ng * nx + nb) < 1e-12);
    free(g);
}

static void test_solve_indefinite(void **state)
{
    (void)state;
    /* eigenvalues 101 and -99: no damping up to 10 x the diagonal fixes that */
    double a[4] = {1, 100, 100, 1}, b[2] = {1, 1}, work[4];
    tb_solve_info info;
    assert_int_equal(tb_sym_solve(a, 2, 0.01, b, 1, work, &info), TB_OK);
    assert_int_equal(info.eigen, 1);
    assert_true(fabs(b[0] - 1 / 101.01) < 1e-12 && fabs(b[1] - 1 / 101.01) < 1e-12);
    double c[2] = {1, -1}; /* lies in the dropped negative eigenspace */
    assert_int_equal(tb_sym_solve(a, 2, 0.01, c, 1, work, &info), TB_OK);
    assert_true(fabs(c[0]) < 1e-12 && fabs(c[1]) < 1e-12);
    double inv[4];
    assert_int_equal(tb_sym_inverse(a, 2, 0.01, inv, &info), TB_OK);
    assert_int_equal(info.eigen, 1);
    for (int i = 0; i < 4; i++) assert_true(fabs(inv[i] - 0.5 / 101.01) < 1e-12);
    double nan_a[4] = {1, NAN, NAN, 1};
    assert_int_equal(tb_sym_solve(nan_a, 2, 0.01, b, 1, work, &info), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "non-finite matrix"));
}

/* ---------------------------------------------------------------- redist */

static void mask_from(tb_mask *mk, int64_t rows, int64_t cols, const char *bits)
{
    assert_int_equal(tb_mask_alloc(mk, rows, cols), TB_OK);
    for (int64_t i = 0; i < rows * cols; i++) tb_mask_set(mk, i / cols, i % cols, bits[i] == '1');
}

static void test_redist_hand(void **state)
{
    (void)state;
    /* row 0, group 0: [1, -2, 0.5, 4] keep {1,3}: pruned sum 1.5, kept |w| sum 6
     *   proportional: -2 + 1.5*2/6 = -1.5,  4 + 1.5*4/6 = 5;   uniform: -1.25, 4.75
     * row 0, group 1: [0.5, 0.25, -1, 1.5] keep {0,3}: pruned sum -0.75, kept |w| 2
     *   proportional: 0.5 - 0.75/4 = 0.3125, 1.5 - 0.75*3/4 = 0.9375; uniform: 0.125, 1.125
     * row 1: [0, 3, 0, 1 | 2, 2, 2, 2] keep {0,2} (both 0: proportional falls back
     *   to uniform: [2, 0, 2, 0]) and {2,3}: [0, 0, 4, 4]
     * every group's sum is kept: 3.5, 1.25, 4, 8 */
    static const float w0[16] = {1, -2, 0.5f, 4, 0.5f, 0.25f, -1, 1.5f, 0, 3, 0, 1, 2, 2, 2, 2};
    static const float prop[16] = {0, -1.5f, 0, 5, 0.3125f, 0, 0, 0.9375f, 2, 0, 2, 0, 0, 0, 4, 4};
    static const float unif[16] = {0, -1.25f, 0, 4.75f, 0.125f, 0, 0, 1.125f, 2, 0, 2, 0, 0, 0, 4, 4};
    tb_mask mk;
    mask_from(&mk, 2, 8, "0101100110100011");
    float w[16];
    tb_comp_stats st = {0};
    memcpy(w, w0, sizeof w);
    assert_int_equal(tb_comp_redist(w, &mk, 4, 0, &st), TB_OK);
    assert_memory_equal(w, prop, sizeof w);
    memcpy(w, w0, sizeof w);
    assert_int_equal(tb_comp_redist(w, &mk, 4, 1, &st), TB_OK);
    assert_memory_equal(w, unif, sizeof w);
    assert_int_equal(st.empty_groups, 0);
    tb_mask_free(&mk);

    /* unstructured: the row is the group. [1, 2, 3, 4] keep {3} -> [0, 0, 0, 10];
     * [1, 1, 0, 0] keeps nothing: zeros, counted as an empty group */
    float u[8] = {1, 2, 3, 4, 1, 1, 0, 0};
    mask_from(&mk, 2, 4, "00010000");
    assert_int_equal(tb_comp_redist(u, &mk, 0, 0, &st), TB_OK);
    static const float uw[8] = {0, 0, 0, 10, 0, 0, 0, 0};
    assert_memory_equal(u, uw, sizeof u);
    assert_int_equal(st.empty_groups, 1);
    tb_mask_free(&mk);
}

/* ------------------------------------------------------------------- obs */

/* OBS with greedy removals and exact downdates reaches the constrained
 * optimum min (w - w0)^T H (w - w0) s.t. w_P = 0:  w_S = w0_S + H_SS^-1 H_SP w0_P */
static void test_obs_exact(void **state)
{
    (void)state;
    enum { R = 3, C = 16, K = 4 };
    float w[R * C], w0[R * C], wp[R * C];
    float grad[K * R * C];
    for (int i = 0; i < R * C; i++) w0[i] = (float)rndu();
    for (int i = 0; i < K * R * C; i++) grad[i] = (float)rndu();
    tb_mask mk;
    assert_int_equal(tb_mask_alloc(&mk, R, C), TB_OK);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) tb_mask_set(&mk, r, c, (c * 7 + r) % 4 < 2);
    double damp = 0.1, s = 0;
    for (int i = 0; i < K * R * C; i++) s += (double)grad[i] * grad[i];
    double lambda = damp * s / (K * R * C);
    memcpy(w, w0, sizeof w);
    tb_comp_stats st = {0};
    assert_int_equal(tb_comp_obs(w, &mk, grad, TB_F32, K, NULL, C, damp, THREADS, &st), TB_OK);
    assert_true(fabs(st.lambda - lambda) < 1e-12 * lambda);
    double maxd = 0;
    for (int r = 0; r < R; r++) {
        double h[C * C];
        for (int i = 0; i < C; i++)
            for (int j = 0; j < C; j++) {
                double v = i == j ? lambda : 0;
                for (int k = 0; k < K; k++) v += (double)grad[(k * R + r) * C + i] * grad[(k * R + r) * C + j] / K;
                h[i * C + j] = v;
            }
        int S[C], P[C], ns = 0, np = 0;
        for (int c = 0; c < C; c++) {
            if (tb_mask_get(&mk, r, c)) S[ns++] = c;
            else P[np++] = c;
        }
        double a[C * C], b[C];
        for (int i = 0; i < ns; i++) {
            b[i] = 0;
            for (int p = 0; p < np; p++) b[i] += h[S[i] * C + P[p]] * w0[r * C + P[p]];
            for (int j = 0; j < ns; j++) a[i * ns + j] = h[S[i] * C + S[j]];
        }
        assert_int_equal(LAPACKE_dposv(LAPACK_ROW_MAJOR, 'L', ns, 1, a, ns, b, 1), 0);
        for (int i = 0; i < ns; i++) maxd = fmax(maxd, fabs(w[r * C + S[i]] - (w0[r * C + S[i]] + b[i])));
        for (int p = 0; p < np; p++) assert_true(w[r * C + P[p]] == 0.0f);
    }
    printf("    OBS (one block) vs closed-form optimum: max abs diff %.2e\n", maxd);
    assert_true(maxd < 1e-5);

    /* a permutation of the columns: the mask's column j is gradient column perm[j] */
    int32_t perm[C];
    for (int j = 0; j < C; j++) perm[j] = (j * 5 + 3) % C;
    float gp[K * R * C]; /* gradients in model order, such that gathering via perm gives `grad` */
    for (int k = 0; k < K; k++)
        for (int r = 0; r < R; r++)
            for (int j = 0; j < C; j++) gp[(k * R + r) * C + perm[j]] = grad[(k * R + r) * C + j];
    memcpy(wp, w0, sizeof wp);
    assert_int_equal(tb_comp_obs(wp, &mk, gp, TB_F32, K, perm, C, damp, THREADS, NULL), TB_OK);
    assert_memory_equal(wp, w, sizeof w);

    /* blocks of 8: the Fisher-quadratic error stays below masking's */
    memcpy(wp, w0, sizeof wp);
    assert_int_equal(tb_comp_obs(wp, &mk, grad, TB_F32, K, NULL, 8, damp, THREADS, NULL), TB_OK);
    double e_obs = 0, e_mask = 0;
    for (int r = 0; r < R; r++)
        for (int k = 0; k < K; k++) {
            double a = 0, b = 0;
            for (int c = 0; c < C; c++) {
                double g = grad[(k * R + r) * C + c];
                a += g * (w0[r * C + c] - wp[r * C + c]);
                b += g * (tb_mask_get(&mk, r, c) ? 0 : w0[r * C + c]);
            }
            e_obs += a * a;
            e_mask += b * b;
        }
    printf("    OBS blocks of 8: sum_k (g_k . dW)^2 %.4f vs mask only %.4f\n", e_obs, e_mask);
    assert_true(e_obs < e_mask);
    assert_int_equal(tb_comp_obs(wp, &mk, grad, TB_F32, K, NULL, 8, 0.0, THREADS, NULL), TB_EUSAGE);
    tb_mask_free(&mk);
}

/* ----------------------------------------------------------------- recon */

/* magnitude N:M mask of w [rows, cols] */
static void magnitude_mask(tb_mask *mk, const float *w, int64_t rows, int64_t cols, int n, int m)
{
    assert_int_equal(tb_mask_alloc(mk, rows, cols), TB_OK);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += m)
            for (int k = 0; k < n; k++) {
                int64_t best = -1;
                for (int64_t c = c0; c < c0 + m; c++)
                    if (!tb_mask_get(mk, r, c) && (best < 0 || fabsf(w[r * cols + c]) > fabsf(w[r * cols + best]))) best = c;
                tb_mask_set(mk, r, best, 1);
            }
}

typedef struct {
    double none, redist, recon, sgpt_fixed, sgpt;
} errors;

/* relative output errors ||(W - W_hat) X|| / ||W X|| of every solver */
static errors all_solvers(const char *label, const float *w0, int64_t rows, int64_t cols, const double *g, int n, int m,
                          double damp)
{
    errors e;
    size_t sz = (size_t)(rows * cols) * sizeof(float);
    float *w = malloc(sz);
    tb_mask mk, mk2;
    magnitude_mask(&mk, w0, rows, cols, n, m);
    double base = tb_comp_output_error(w0, NULL, rows, cols, g, THREADS);
    tb_comp_stats st = {0};

    memcpy(w, w0, sz);
    tb_comp_mask(w, &mk);
    e.none = sqrt(tb_comp_output_error(w0, w, rows, cols, g, THREADS) / base);
    memcpy(w, w0, sz);
    assert_int_equal(tb_comp_redist(w, &mk, m, 0, &st), TB_OK);
    e.redist = sqrt(tb_comp_output_error(w0, w, rows, cols, g, THREADS) / base);
    memcpy(w, w0, sz);
    assert_int_equal(tb_comp_recon(w, &mk, g, damp, THREADS, &st), TB_OK);
    e.recon = sqrt(tb_comp_output_error(w0, w, rows, cols, g, THREADS) / base);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            if (!tb_mask_get(&mk, r, c)) assert_true(w[r * cols + c] == 0.0f);
    memcpy(w, w0, sz);
    assert_int_equal(tb_comp_sparsegpt(w, &mk, n, m, g, damp, 128 / m * m, 0, THREADS, &st), TB_OK);
    e.sgpt_fixed = sqrt(tb_comp_output_error(w0, w, rows, cols, g, THREADS) / base);
    memcpy(w, w0, sz);
    magnitude_mask(&mk2, w0, rows, cols, n, m);
    assert_int_equal(tb_comp_sparsegpt(w, &mk2, n, m, g, damp, 128 / m * m, 1, THREADS, &st), TB_OK);
    e.sgpt = sqrt(tb_comp_output_error(w0, w, rows, cols, g, THREADS) / base);
    /* the re-chosen mask is N:M, and W is 0 exactly where it prunes */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += m) {
            int kept = 0;
            for (int64_t c = c0; c < c0 + m; c++) {
                kept += tb_mask_get(&mk2, r, c);
                if (!tb_mask_get(&mk2, r, c)) assert_true(w[r * cols + c] == 0.0f);
            }
            assert_int_equal(kept, n);
        }
    printf("    %-28s ||dW X||/||W X||: mask %.4f  redist %.4f  recon %.4f  sparsegpt(fixed mask) %.4f  sparsegpt %.4f\n",
           label, e.none, e.redist, e.recon, e.sgpt_fixed, e.sgpt);
    free(w);
    tb_mask_free(&mk);
    tb_mask_free(&mk2);
    return e;
}

static void test_recon_random(void **state)
{
    (void)state;
    int rows = 32, cols = 64, t = 512;
    /* correlated inputs x = A z, as real activations are */
    double *a = malloc((size_t)cols * cols * sizeof *a), *z = malloc((size_t)cols * t * sizeof *z);
    double *x = calloc((size_t)cols * t, sizeof *x);
    for (int i = 0; i < cols * cols; i++) a[i] = rndu() + (i % (cols + 1) == 0 ? 2 : 0);
    for (int i = 0; i < cols * t; i++) z[i] = rndu();
    for (int i = 0; i < cols; i++)
        for (int k = 0; k < cols; k++)
            for (int s = 0; s < t; s++) x[i * t + s] += a[i * cols + k] * z[k * t + s];
    double *g = gram_of(x, cols, t);
    float *w0 = malloc((size_t)rows * cols * sizeof *w0);
    for (int i = 0; i < rows * cols; i++) w0[i] = (float)rndu();
    errors e = all_solvers("random 32x64, 2:4", w0, rows, cols, g, 2, 4, 0.01);
    assert_true(e.recon < 0.8 * e.none);
    assert_true(e.recon <= e.sgpt_fixed * 1.0001); /* recon is the optimum for the mask */
    assert_true(e.sgpt < e.none);

    /* unstructured (the larger half of each row kept): SparseGPT re-chooses
     * per row and block as many as the given mask keeps there */
    tb_mask mu;
    assert_int_equal(tb_mask_alloc(&mu, rows, cols), TB_OK);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) tb_mask_set(&mu, r, c, (r * 13 + c * 7) % 5 < 3); /* 60% kept, uneven */
    float *wu = malloc((size_t)rows * cols * sizeof *wu), *wm = malloc((size_t)rows * cols * sizeof *wm);
    memcpy(wu, w0, (size_t)rows * cols * sizeof *wu);
    memcpy(wm, w0, (size_t)rows * cols * sizeof *wm);
    tb_comp_mask(wm, &mu);
    int64_t kept_before[32][2] = {{0}};
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) kept_before[r][c / 32] += tb_mask_get(&mu, r, c);
    assert_int_equal(tb_comp_sparsegpt(wu, &mu, 0, 0, g, 0.01, 32, 1, THREADS, NULL), TB_OK);
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < 2; b++) {
            int64_t k = 0;
            for (int c = b * 32; c < b * 32 + 32; c++) {
                k += tb_mask_get(&mu, r, c);
                if (!tb_mask_get(&mu, r, c)) assert_true(wu[r * cols + c] == 0.0f);
            }
            assert_int_equal(k, kept_before[r][b]);
        }
    double eu = tb_comp_output_error(w0, wu, rows, cols, g, THREADS), em = tb_comp_output_error(w0, wm, rows, cols, g, THREADS);
    printf("    unstructured 60%%, sparsegpt: ||dW X||^2 %.3f vs mask only %.3f\n", eu, em);
    assert_true(eu < em);
    tb_mask_free(&mu);
    free(wu);
    free(wm);

    /* optimality: with (almost) no damping, G e vanishes on the kept set */
    tb_mask mk;
    magnitude_mask(&mk, w0, rows, cols, 2, 4);
    float *w = malloc((size_t)rows * cols * sizeof *w);
    memcpy(w, w0, (size_t)rows * cols * sizeof *w);
    assert_int_equal(tb_comp_recon(w, &mk, g, 1e-12, THREADS, NULL), TB_OK);
    double worst = 0, scale = 0;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < cols; i++) {
            double ge = 0, gp = 0;
            for (int j = 0; j < cols; j++) {
                ge += g[i * cols + j] * ((double)w0[r * cols + j] - w[r * cols + j]);
                gp += fabs(g[i * cols + j] * w0[r * cols + j]);
            }
            scale = fmax(scale, gp);
            if (tb_mask_get(&mk, r, i)) worst = fmax(worst, fabs(ge));
        }
    printf("    recon optimality: max |(G e)_S| / scale = %.2e\n", worst / scale);
    assert_true(worst < 1e-5 * scale);
    tb_mask_free(&mk);
    free(w);
    free(a);
    free(z);
    free(x);
    free(g);
    free(w0);
}

static void test_recon_golden(void **state)
{
    (void)state;
    char gpath[512], mpath[512];
    const char *data = env_or("TB_TEST_DATA", "tests/data");
    snprintf(gpath, sizeof gpath, "%s/gram-l0-q_proj-16win.safetensors", data);
    snprintf(mpath, sizeof mpath, "%s/tiny-llama-6m", data);
    st_file gf;
    tb_ckpt ck;
    if (st_open(&gf, gpath)) { printf("    skipped: %s\n", tb_errmsg()); return; }
    assert_int_equal(tb_ckpt_open(&ck, mpath), TB_OK);
    const st_tensor *gt = st_find(&gf, "gram.model.layers.0.self_attn.q_proj.input");
    assert_non_null(gt);
    int cols = 256;
    double *g = malloc((size_t)cols * cols * sizeof *g);
    tb_to_f64(gt->dtype, gt->data, 0, (size_t)cols * cols, g);
    static const char *names[] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; i++) {
        char name[128], label[64];
        snprintf(name, sizeof name, "model.layers.0.self_attn.%s.weight", names[i]);
        const st_tensor *t = tb_ckpt_find(&ck, name);
        assert_non_null(t);
        float *w0 = st_tensor_f32(t);
        snprintf(label, sizeof label, "layer 0 %s, 2:4", names[i]);
        errors e = all_solvers(label, w0, t->shape[0], t->shape[1], g, 2, 4, 0.01);
        assert_true(e.recon < 0.9 * e.none);
        assert_true(e.recon <= e.sgpt_fixed * 1.0001);
        assert_true(e.sgpt < e.none);
        if (i == 0) {
            snprintf(label, sizeof label, "layer 0 %s, 4:8", names[i]);
            all_solvers(label, w0, t->shape[0], t->shape[1], g, 4, 8, 0.01);
        }
        free(w0);
    }
    free(g);
    st_close(&gf);
    tb_ckpt_close(&ck);
}

/* a singular Gram (dead inputs, rank < cols) with damp 0 takes the damping
 * ladder; an indefinite one the eigen path; a NaN one is refused. No NaN in W. */
static void test_recon_singular(void **state)
{
    (void)state;
    int rows = 8, cols = 32, t = 8;
    double *x = malloc((size_t)cols * t * sizeof *x);
    for (int i = 0; i < cols * t; i++) x[i] = i / t % 5 == 0 ? 0 : rndu(); /* inputs 0, 5, 10.. dead */
    double *g = gram_of(x, cols, t);
    float w0[8 * 32], w[8 * 32];
    for (int i = 0; i < rows * cols; i++) w0[i] = (float)rndu();
    tb_mask mk;
    magnitude_mask(&mk, w0, rows, cols, 2, 4);
    memcpy(w, w0, sizeof w);
    tb_comp_stats st = {0};
    assert_int_equal(tb_comp_recon(w, &mk, g, 0.0, THREADS, &st), TB_OK);
    printf("    singular Gram, damp 0: %lld of %d rows raised damping, %lld eigen\n", (long long)st.raised, rows,
           (long long)st.eigen);
    assert_true(st.raised > 0);
    for (int i = 0; i < rows * cols; i++) assert_true(isfinite(w[i]));
    float wm[8 * 32];
    memcpy(wm, w0, sizeof wm);
    tb_comp_mask(wm, &mk);
    assert_true(tb_comp_output_error(w0, w, rows, cols, g, 1) <= tb_comp_output_error(w0, wm, rows, cols, g, 1) * 1.0001);
    /* SparseGPT on the same singular Gram: dead inputs, damped inverse */
    memcpy(w, w0, sizeof w);
    assert_int_equal(tb_comp_sparsegpt(w, &mk, 2, 4, g, 0.01, 16, 1, THREADS, NULL), TB_OK);
    for (int i = 0; i < rows * cols; i++) assert_true(isfinite(w[i]));

    /* indefinite: +-100 off the diagonal */
    for (int i = 0; i < cols * cols; i++) g[i] = (i % (cols + 1) == 0) ? 1 : ((i / cols) ^ (i % cols)) == 1 ? 100 : 0;
    memcpy(w, w0, sizeof w);
    memset(&st, 0, sizeof st);
    assert_int_equal(tb_comp_recon(w, &mk, g, 0.01, THREADS, &st), TB_OK);
    printf("    indefinite Gram: %lld of %d rows solved by the eigen fallback\n", (long long)st.eigen, rows);
    assert_true(st.eigen > 0);
    for (int i = 0; i < rows * cols; i++) assert_true(isfinite(w[i]));

    g[3 * cols + 5] = NAN;
    assert_int_equal(tb_comp_recon(w, &mk, g, 0.01, THREADS, NULL), TB_EDATA);
    assert_string_equal(tb_errmsg(), "Gram matrix: non-finite value at (3, 5)");
    assert_int_equal(tb_comp_sparsegpt(w, &mk, 2, 4, g, 0.01, 16, 1, THREADS, NULL), TB_EDATA);
    tb_mask_free(&mk);
    free(x);
    free(g);
}

/* With a diagonal H, SparseGPT propagates nothing (H^-1 is diagonal) and
 * keeps, per group, the largest w^2 / [U]_cc^2 = w^2 (h_c + lambda). */
static void test_sparsegpt_diagonal(void **state)
{
    (void)state;
    float w[8] = {1, 2, 3, 4, 4, 3, 2, 1};
    double h[64] = {0};
    static const double hd[8] = {100, 1, 1, 1, 1, 1, 1, 100};
    for (int i = 0; i < 8; i++) h[i * 9] = hd[i];
    tb_mask mk;
    assert_int_equal(tb_mask_alloc(&mk, 1, 8), TB_OK);
    assert_int_equal(tb_comp_sparsegpt(w, &mk, 2, 4, h, 0.0, 8, 1, 1, NULL), TB_OK);
    /* scores: 100, 4, 9, 16 | 16, 9, 4, 100 -> keep {0,3}, {4,7} */
    static const float want[8] = {1, 0, 0, 4, 4, 0, 0, 1};
    assert_memory_equal(w, want, sizeof w);
    assert_int_equal(mk.bits[0], 0x99);
    /* the given mask, kept as is */
    float w2[8] = {1, 2, 3, 4, 4, 3, 2, 1};
    mk.bits[0] = 0x66;
    assert_int_equal(tb_comp_sparsegpt(w2, &mk, 2, 4, h, 0.0, 8, 0, 1, NULL), TB_OK);
    static const float want2[8] = {0, 2, 3, 0, 0, 3, 2, 0};
    assert_memory_equal(w2, want2, sizeof w2);
    assert_int_equal(mk.bits[0], 0x66);
    assert_int_equal(tb_comp_sparsegpt(w2, &mk, 2, 4, h, 0.0, 6, 0, 1, NULL), TB_EUSAGE); /* block % M */
    tb_mask_free(&mk);
}

/* The output error against its definition, sum over samples x of
 * ||(W0 - W) x||^2, computed through the samples themselves: rows that are
 * not a multiple of the row block, 1 and 3 threads, and a Gram whose lower
 * triangle is NaN (only the upper one is defined, tb_backend.h). */
static void test_output_error_definition(void **state)
{
    (void)state;
    enum { ROWS = 150, COLS = 37, T = 50 };
    double *x = malloc(sizeof(double) * COLS * T); /* [COLS, T]: sample k is column k */
    for (int i = 0; i < COLS * T; i++) x[i] = rndu();
    double *g = gram_of(x, COLS, T);
    for (int i = 0; i < COLS; i++)
        for (int j = 0; j < i; j++) g[i * COLS + j] = NAN;
    float *w0 = malloc(sizeof(float) * ROWS * COLS), *w = malloc(sizeof(float) * ROWS * COLS);
    for (int i = 0; i < ROWS * COLS; i++) {
        w0[i] = (float)rndu();
        w[i] = i % 3 ? w0[i] + 0.25f * (float)rndu() : 0.0f;
    }
    for (int with_w = 0; with_w < 2; with_w++) {
        double want = 0;
        for (int k = 0; k < T; k++)
            for (int r = 0; r < ROWS; r++) {
                double y = 0;
                for (int c = 0; c < COLS; c++)
                    y += ((double)w0[r * COLS + c] - (with_w ? w[r * COLS + c] : 0.0f)) * x[c * T + k];
                want += y * y;
            }
        for (int threads = 1; threads <= 3; threads += 2) {
            double got = tb_comp_output_error(w0, with_w ? w : NULL, ROWS, COLS, g, threads);
            assert_true(isfinite(got));
            assert_true(fabs(got - want) <= 1e-12 * want);
        }
    }
    free(x), free(g), free(w0), free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_woodbury_vs_direct), cmocka_unit_test(test_sym_inverse_and_solve),
        cmocka_unit_test(test_sherman_morrison),   cmocka_unit_test(test_solve_singular),
        cmocka_unit_test(test_solve_indefinite),   cmocka_unit_test(test_redist_hand),
        cmocka_unit_test(test_obs_exact),          cmocka_unit_test(test_recon_random),
        cmocka_unit_test(test_recon_golden),       cmocka_unit_test(test_recon_singular),
        cmocka_unit_test(test_sparsegpt_diagonal), cmocka_unit_test(test_output_error_definition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
