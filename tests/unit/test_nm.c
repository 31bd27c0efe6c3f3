/* Unit tests of kernels/cpu/tb_nm and formats/tb_mask: the solvers on known
 * groups, optimal = topn on separable scores, iterative never worse than topn
 * on its joint objective (random trials), exact unstructured counts (per
 * unit, pooled over tensors of mixed dtypes, with ties), the mask file round
 * trip and its malformed cases, and channel permutations (apply/invert is
 * the identity, W x is unchanged, the search never loses to the identity). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tb_dtype.h"
#include "tb_error.h"
#include "tb_mask.h"
#include "tb_nm.h"
#include "tb_safetensors.h"

/* deterministic test randomness */
static uint64_t rng_state = 0x1234567;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}
static float rndf(void) { return (float)(rnd() % 1000000) / 1000000.0f; }
static float rnd_normal(void)
{
    float u = (rndf() + 1e-6f), v = rndf();
    return sqrtf(-2 * logf(u)) * cosf(6.2831853f * v);
}

static int popcount(uint32_t x) { return __builtin_popcount(x); }

/* every group of m along k_dim holds exactly n kept bits */
static void assert_nm(const tb_mask *mk, int n, int m, int k_dim)
{
    int64_t units = k_dim ? mk->rows : mk->cols, K = k_dim ? mk->cols : mk->rows;
    for (int64_t u = 0; u < units; u++)
        for (int64_t b = 0; b < K; b += m) {
            int kept = 0;
            for (int t = 0; t < m; t++) kept += k_dim ? tb_mask_get(mk, u, b + t) : tb_mask_get(mk, b + t, u);
            if (kept != n) fail_msg("unit %lld group %lld keeps %d, not %d", (long long)u, (long long)b / m, kept, n);
        }
}

static void test_topn_known(void **state)
{
    (void)state;
    const float v[4] = {5, 1, 4, 2};
    assert_int_equal(tb_nm_topn_group(v, 4, 2), 0x5); /* 0b0101: indices 0 and 2 */
    assert_int_equal(tb_nm_optimal_group(v, 4, 2, NULL, NULL), 0x5);
    /* ties keep the lower index */
    const float t[4] = {1, 1, 1, 1};
    assert_int_equal(tb_nm_topn_group(t, 4, 2), 0x3);
    assert_int_equal(tb_nm_optimal_group(t, 4, 2, NULL, NULL), 0x3);
    const float t2[8] = {0, 3, 3, 1, 3, 0, 2, 3};
    assert_int_equal(tb_nm_topn_group(t2, 8, 2), 0x6);
    assert_int_equal(tb_nm_optimal_group(t2, 8, 2, NULL, NULL), 0x6);
    /* the same through a [1, 4] matrix: mask byte 0b0101 */
    tb_mask mk;
    tb_nm_opts o = {2, 4, 1, TB_NM_TOPN, 1, 0, NULL, NULL};
    assert_int_equal(tb_mask_alloc(&mk, 1, 4), TB_OK);
    assert_int_equal(tb_nm_solve(&o, v, 1, 4, &mk, NULL), TB_OK);
    assert_int_equal(mk.bits[0], 0x5);
    tb_mask_free(&mk);
    /* stored transposed [4, 1], k_dim 0: the same keep set down the column */
    assert_int_equal(tb_mask_alloc(&mk, 4, 1), TB_OK);
    o.k_dim = 0;
    assert_int_equal(tb_nm_solve(&o, v, 4, 1, &mk, NULL), TB_OK);
    assert_int_equal(mk.bits[0] | mk.bits[1] << 1 | mk.bits[2] << 2 | mk.bits[3] << 3, 0x5);
    tb_mask_free(&mk);
    /* a row of 12 (1.5 mask bytes): groups 0x5, 0xC, 0xC, the padding bits 0 */
    const float r12[12] = {5, 1, 4, 2, 0, 0, 9, 8, 1, 2, 3, 4};
    assert_int_equal(tb_mask_alloc(&mk, 1, 12), TB_OK);
    o.k_dim = 1;
    assert_int_equal(tb_nm_solve(&o, r12, 1, 12, &mk, NULL), TB_OK);
    assert_int_equal(mk.bits[0], 0xC5);
    assert_int_equal(mk.bits[1], 0x0C);
    tb_mask_free(&mk);
    /* a NaN (refused by the tools, but the function has an answer): nothing
     * compares above it, so it is kept first, then the largest of the rest */
    const float nan4[4] = {NAN, 1, 2, 3}, nan4b[4] = {1, NAN, 3, 2};
    assert_int_equal(tb_nm_topn_group(nan4, 4, 2), 0x9);
    assert_int_equal(tb_nm_topn_group(nan4b, 4, 2), 0xC);
}

/* the kept sum of a keep set */
static double kept_sum(const float *v, int m, uint32_t keep)
{
    double s = 0;
    for (int t = 0; t < m; t++)
        if (keep >> t & 1) s += v[t];
    return s;
}

/* a pluggable objective: counts calls, and is the separable one */
typedef struct { int calls; } count_ctx;
static double counting_sum(void *ctx, const float *vals, uint32_t keep)
{
    ((count_ctx *)ctx)->calls++;
    return kept_sum(vals, 16, keep);
}

static void test_optimal_equals_topn(void **state)
{
    (void)state;
    static const int pats[][2] = {{1, 2}, {2, 4}, {1, 4}, {3, 4}, {2, 8}, {4, 8}, {3, 7}, {8, 16}, {5, 16}, {15, 16}};
    float v[16];
    for (size_t p = 0; p < sizeof pats / sizeof pats[0]; p++) {
        int n = pats[p][0], m = pats[p][1];
        for (int trial = 0; trial < 300; trial++) {
            /* half the trials on a coarse grid, so ties are common */
            for (int t = 0; t < m; t++) v[t] = trial % 2 ? rndf() : (float)(rnd() % 4);
            uint32_t a = tb_nm_topn_group(v, m, n), b = tb_nm_optimal_group(v, m, n, NULL, NULL);
            assert_int_equal(popcount(a), n);
            if (a != b) fail_msg("%d:%d trial %d: topn %#x, optimal %#x", n, m, trial, a, b);
        }
    }
    /* the pluggable objective sees all C(16, 8) = 12870 sets, and agrees */
    for (int t = 0; t < 16; t++) v[t] = rndf();
    count_ctx c = {0};
    uint32_t k = tb_nm_optimal_group(v, 16, 8, counting_sum, &c);
    assert_int_equal(c.calls, 12870);
    assert_int_equal(k, tb_nm_topn_group(v, 16, 8));
    /* and whole matrices: identical masks */
    int64_t rows = 24, cols = 64;
    float *s = malloc((size_t)(rows * cols) * sizeof *s);
    for (int64_t i = 0; i < rows * cols; i++) s[i] = (float)(rnd() % 8);
    tb_mask m1, m2;
    tb_nm_opts o = {4, 8, 1, TB_NM_TOPN, 3, 0, NULL, NULL};
    tb_mask_alloc(&m1, rows, cols);
    tb_mask_alloc(&m2, rows, cols);
    tb_nm_stats st1, st2;
    assert_int_equal(tb_nm_solve(&o, s, rows, cols, &m1, &st1), TB_OK);
    o.solver = TB_NM_OPTIMAL;
    assert_int_equal(tb_nm_solve(&o, s, rows, cols, &m2, &st2), TB_OK);
    assert_memory_equal(m1.bits, m2.bits, (size_t)(rows * m1.row_bytes));
    assert_true(st1.kept == st2.kept);
    assert_nm(&m1, 4, 8, 1);
    free(s);
    tb_mask_free(&m1);
    tb_mask_free(&m2);
}

/* random calibration: G = X X^T of K channels over T tokens, with
 * correlated channels (a shared component), so the joint objective is not
 * diagonal */
static double *random_gram(int64_t K, int64_t T)
{
    float *x = malloc((size_t)(K * T) * sizeof *x);
    for (int64_t t = 0; t < T; t++) {
        float common = rnd_normal();
        for (int64_t k = 0; k < K; k++) x[k * T + t] = rnd_normal() + (k % 3 == 0 ? 1.5f * common : 0.0f);
    }
    double *g = calloc((size_t)(K * K), sizeof *g);
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++) {
            double s = 0;
            for (int64_t t = 0; t < T; t++) s += (double)x[i * T + t] * x[j * T + t];
            g[i * K + j] = s;
        }
    free(x);
    return g;
}

static void test_iterative_never_worse(void **state)
{
    (void)state;
    static const int pats[][2] = {{2, 4}, {1, 4}, {4, 8}, {2, 8}};
    int strictly_better = 0, trials = 0;
    for (size_t p = 0; p < sizeof pats / sizeof pats[0]; p++)
        for (int trial = 0; trial < 6; trial++) {
            int n = pats[p][0], m = pats[p][1];
            int k_dim = trial % 2;
            int64_t units = 8 + trial, K = 32, rows = k_dim ? units : K, cols = k_dim ? K : units;
            double *g = random_gram(K, 64);
            float *w = malloc((size_t)(rows * cols) * sizeof *w), *s = malloc((size_t)(rows * cols) * sizeof *s);
            for (int64_t i = 0; i < rows * cols; i++) w[i] = rnd_normal();
            /* wanda-like scores: the diagonal part of the joint objective */
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++) {
                    int64_t k = k_dim ? c : r;
                    s[r * cols + c] = fabsf(w[r * cols + c]) * (float)sqrt(g[k * K + k]);
                }
            tb_mask mt, mi;
            tb_mask_alloc(&mt, rows, cols);
            tb_mask_alloc(&mi, rows, cols);
            tb_nm_opts o = {n, m, k_dim, TB_NM_TOPN, 2, 0, w, g};
            tb_nm_stats st;
            assert_int_equal(tb_nm_solve(&o, s, rows, cols, &mt, NULL), TB_OK);
            o.solver = TB_NM_ITERATIVE;
            assert_int_equal(tb_nm_solve(&o, s, rows, cols, &mi, &st), TB_OK);
            assert_nm(&mi, n, m, k_dim);
            double et = tb_nm_joint_error(w, g, rows, cols, k_dim, &mt);
            double ei = tb_nm_joint_error(w, g, rows, cols, k_dim, &mi);
            /* the solver's own bookkeeping agrees with the direct evaluation */
            if (fabs(st.err_start - et) > 1e-9 * et) fail_msg("err_start %.12g vs topn %.12g", st.err_start, et);
            if (fabs(st.err - ei) > 1e-9 * et) fail_msg("err %.12g vs direct %.12g", st.err, ei);
            if (ei > et * (1 + 1e-12)) fail_msg("%d:%d trial %d: iterative %.9g > topn %.9g", n, m, trial, ei, et);
            strictly_better += ei < et * (1 - 1e-6);
            trials++;
            tb_mask_free(&mt);
            tb_mask_free(&mi);
            free(w);
            free(s);
            free(g);
        }
    printf("    iterative strictly below topn's joint error in %d of %d trials\n", strictly_better, trials);
    assert_true(strictly_better > trials / 2);
    /* needs its data */
    tb_nm_opts bad = {2, 4, 1, TB_NM_ITERATIVE, 1, 0, NULL, NULL};
    tb_mask mk;
    float s4[4] = {1, 2, 3, 4};
    tb_mask_alloc(&mk, 1, 4);
    assert_int_equal(tb_nm_solve(&bad, s4, 1, 4, &mk, NULL), TB_EUSAGE);
    tb_mask_free(&mk);
}

static void test_nm_patterns_and_errors(void **state)
{
    (void)state;
    static const int pats[][2] = {{2, 4}, {1, 4}, {4, 8}, {2, 8}, {8, 16}, {1, 2}};
    int64_t rows = 10, cols = 48;
    float *s = malloc((size_t)(rows * cols) * sizeof *s);
    for (int64_t i = 0; i < rows * cols; i++) s[i] = rndf();
    for (size_t p = 0; p < sizeof pats / sizeof pats[0]; p++)
        for (int k_dim = 0; k_dim <= 1; k_dim++) {
            int64_t r = k_dim ? rows : cols, c = k_dim ? cols : rows;
            tb_mask mk;
            tb_mask_alloc(&mk, r, c);
            tb_nm_opts o = {pats[p][0], pats[p][1], k_dim, TB_NM_TOPN, 2, 0, NULL, NULL};
            tb_nm_stats st;
            assert_int_equal(tb_nm_solve(&o, s, r, c, &mk, &st), TB_OK);
            assert_nm(&mk, pats[p][0], pats[p][1], k_dim);
            assert_int_equal(tb_mask_count_kept(&mk), rows * cols / pats[p][1] * pats[p][0]);
            double total, kept = tb_nm_kept(s, &mk, &total);
            assert_true(fabs(kept - st.kept) <= 1e-9 * total && fabs(total - st.total) <= 1e-9 * total);
            tb_mask_free(&mk);
        }
    free(s);
    /* a reduction dim not divisible by M, and bad N:M */
    float z[250 * 2] = {0};
    tb_mask mk;
    tb_mask_alloc(&mk, 2, 250);
    tb_nm_opts o = {2, 4, 1, TB_NM_TOPN, 1, 0, NULL, NULL};
    tb_err_clear();
    assert_int_equal(tb_nm_solve(&o, z, 2, 250, &mk, NULL), TB_EDATA);
    assert_string_equal(tb_errmsg(), "dim 1 (250) not divisible by M=4");
    o.n = 4;
    assert_int_equal(tb_nm_solve(&o, z, 2, 250, &mk, NULL), TB_EUSAGE);
    o.n = 2;
    o.m = 17;
    assert_int_equal(tb_nm_solve(&o, z, 2, 250, &mk, NULL), TB_EUSAGE);
    tb_mask_free(&mk);
}

/* ---- unstructured ---- */

static void test_unstructured_units(void **state)
{
    (void)state;
    int64_t rows = 13, cols = 37;
    float *s = malloc((size_t)(rows * cols) * sizeof *s);
    for (int64_t i = 0; i < rows * cols; i++) s[i] = (float)(rnd() % 5) - 1.0f; /* ties and negatives */
    static const double fr[] = {0.0, 0.3, 0.5, 0.77, 1.0};
    for (size_t f = 0; f < sizeof fr / sizeof fr[0]; f++)
        for (int k_dim = 0; k_dim <= 1; k_dim++) {
            int64_t units = k_dim ? rows : cols, K = k_dim ? cols : rows;
            int64_t want = llround(fr[f] * (double)K);
            tb_mask mk;
            tb_mask_alloc(&mk, rows, cols);
            assert_int_equal(tb_unstructured_units(s, rows, cols, k_dim, fr[f], 3, &mk), TB_OK);
            for (int64_t u = 0; u < units; u++) {
                int64_t pruned = 0;
                float max_pruned = -INFINITY, min_kept = INFINITY;
                for (int64_t k = 0; k < K; k++) {
                    int64_t i = k_dim ? u * cols + k : k * cols + u;
                    int kp = k_dim ? tb_mask_get(&mk, u, k) : tb_mask_get(&mk, k, u);
                    if (!kp) { pruned++; max_pruned = fmaxf(max_pruned, s[i]); }
                    else min_kept = fminf(min_kept, s[i]);
                }
                if (pruned != want) fail_msg("sparsity %g k_dim %d unit %lld: pruned %lld, want %lld", fr[f], k_dim, (long long)u, (long long)pruned, (long long)want);
                assert_true(max_pruned <= min_kept);
                /* among ties at the threshold the lower index is kept */
                if (max_pruned == min_kept) {
                    int64_t last_kept = -1, first_pruned = K;
                    for (int64_t k = 0; k < K; k++) {
                        int64_t i = k_dim ? u * cols + k : k * cols + u;
                        if (s[i] != max_pruned) continue;
                        int kp = k_dim ? tb_mask_get(&mk, u, k) : tb_mask_get(&mk, k, u);
                        if (kp) last_kept = k;
                        else if (first_pruned == K) first_pruned = k;
                    }
                    assert_true(last_kept < first_pruned);
                }
            }
            tb_mask_free(&mk);
        }
    free(s);
}

static void test_unstructured_pool(void **state)
{
    (void)state;
    /* a "layer" of three tensors in F32, BF16 and F16, with heavy ties */
    int64_t shapes[3][2] = {{7, 16}, {5, 24}, {16, 9}};
    tb_dtype dts[3] = {TB_F32, TB_BF16, TB_F16};
    void *data[3];
    float *vals[3];
    tb_array t[3];
    int64_t total = 0;
    for (int i = 0; i < 3; i++) {
        int64_t n = shapes[i][0] * shapes[i][1];
        vals[i] = malloc((size_t)n * sizeof(float));
        data[i] = malloc((size_t)n * tb_dtype_size(dts[i]));
        for (int64_t j = 0; j < n; j++) {
            float v = (float)(rnd() % 9) * 0.25f; /* exact in every dtype */
            vals[i][j] = v;
            if (dts[i] == TB_F32) ((float *)data[i])[j] = v;
            else if (dts[i] == TB_BF16) ((uint16_t *)data[i])[j] = tb_f32_to_bf16(v);
            else ((uint16_t *)data[i])[j] = tb_f32_to_f16(v);
        }
        memset(&t[i], 0, sizeof t[i]);
        t[i].name = "t";
        t[i].dtype = dts[i];
        t[i].ndim = 2;
        t[i].shape[0] = shapes[i][0];
        t[i].shape[1] = shapes[i][1];
        t[i].numel = n;
        t[i].data = data[i];
        total += n;
    }
    static const double fr[] = {0.0, 0.1, 0.5, 0.613, 1.0};
    for (size_t f = 0; f < sizeof fr / sizeof fr[0]; f++) {
        int64_t want = llround(fr[f] * (double)total), ties_before[3], pruned = 0;
        tb_pool_threshold thr;
        assert_int_equal(tb_pool_select(t, 3, want, &thr, ties_before), TB_OK);
        float max_pruned = -INFINITY, min_kept = INFINITY;
        for (int i = 0; i < 3; i++) {
            tb_mask mk;
            tb_mask_alloc(&mk, shapes[i][0], shapes[i][1]);
            assert_int_equal(tb_pool_mask(&t[i], &thr, ties_before[i], &mk), TB_OK);
            for (int64_t j = 0; j < t[i].numel; j++) {
                int kp = tb_mask_get(&mk, j / shapes[i][1], j % shapes[i][1]);
                if (!kp) { pruned++; max_pruned = fmaxf(max_pruned, vals[i][j]); }
                else min_kept = fminf(min_kept, vals[i][j]);
            }
            tb_mask_free(&mk);
        }
        if (pruned != want) fail_msg("sparsity %g: pruned %lld of %lld, want %lld", fr[f], (long long)pruned, (long long)total, (long long)want);
        assert_true(max_pruned <= min_kept);
    }
    /* a single tensor is a pool of one: per-tensor exact count */
    int64_t tb1[1];
    tb_pool_threshold thr;
    assert_int_equal(tb_pool_select(t, 1, 50, &thr, tb1), TB_OK);
    tb_mask mk;
    tb_mask_alloc(&mk, shapes[0][0], shapes[0][1]);
    assert_int_equal(tb_pool_mask(&t[0], &thr, tb1[0], &mk), TB_OK);
    assert_int_equal(tb_mask_count_kept(&mk), t[0].numel - 50);
    tb_mask_free(&mk);
    for (int i = 0; i < 3; i++) { free(data[i]); free(vals[i]); }
}

/* ---- mask file ---- */

static void test_mask_roundtrip(void **state)
{
    (void)state;
    char path[] = "/tmp/tb_test_mask_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    /* 13 columns: the last byte of each row is partly padding */
    tb_mask a, b;
    assert_int_equal(tb_mask_alloc(&a, 5, 13), TB_OK);
    for (int64_t r = 0; r < 5; r++)
        for (int64_t c = 0; c < 13; c++) tb_mask_set(&a, r, c, rnd() & 1);
    a.perm = malloc(13 * sizeof(int32_t));
    for (int j = 0; j < 13; j++) a.perm[j] = (j * 5) % 13; /* 5 is coprime to 13 */
    assert_int_equal(tb_mask_alloc(&b, 4, 8), TB_OK);
    memset(b.bits, 0xa5, 4);
    st_writer *w = st_writer_new();
    assert_int_equal(st_writer_meta(w, "tensorbit.kind", "mask"), TB_OK);
    assert_int_equal(st_writer_meta(w, "k_dim", "1"), TB_OK);
    assert_int_equal(tb_mask_declare(w, "a.weight", 5, 13, 13), TB_OK);
    assert_int_equal(tb_mask_declare(w, "b.weight", 4, 8, 0), TB_OK);
    FILE *fp = fopen(path, "wb");
    assert_int_equal(st_writer_begin(w, fp, path), TB_OK);
    assert_int_equal(tb_mask_write(w, &a, 13), TB_OK);
    assert_int_equal(tb_mask_write(w, &b, 0), TB_OK);
    assert_int_equal(st_writer_finish(w), TB_OK);
    st_writer_free(w);
    fclose(fp);

    st_file f;
    assert_int_equal(st_open(&f, path), TB_OK);
    const st_tensor *t = st_find(&f, "a.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, TB_U8);
    assert_int_equal(t->shape[0], 5);
    assert_int_equal(t->shape[1], 2);
    tb_mask ra, rb;
    assert_int_equal(tb_mask_read(&f, "a.weight", 5, 13, &ra), TB_OK);
    for (int64_t r = 0; r < 5; r++)
        for (int64_t c = 0; c < 13; c++) assert_int_equal(tb_mask_get(&ra, r, c), tb_mask_get(&a, r, c));
    assert_non_null(ra.perm);
    assert_memory_equal(ra.perm, a.perm, 13 * sizeof(int32_t));
    assert_int_equal(tb_mask_count_kept(&ra), tb_mask_count_kept(&a));
    assert_int_equal(tb_mask_read(&f, "b.weight", 4, 8, &rb), TB_OK);
    assert_null(rb.perm);
    assert_int_equal(rb.bits[2], 0xa5);
    /* shape mismatch and absence are named */
    tb_mask bad;
    tb_err_clear();
    assert_int_equal(tb_mask_read(&f, "a.weight", 5, 17, &bad), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "mask for 'a.weight' is U8 [5, 2], weight [5, 17] needs U8 [5, 3]"));
    assert_int_equal(tb_mask_read(&f, "c.weight", 1, 1, &bad), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "no mask for 'c.weight'"));
    st_close(&f);
    tb_mask_free(&ra);
    tb_mask_free(&rb);

    /* padding bits set, and a perm that is not a permutation, are refused */
    uint8_t pad[2] = {0xff, 0xff};
    int32_t notperm[4] = {0, 1, 1, 3};
    uint8_t m4[1] = {0x0f};
    st_entry e1[1] = {{"p.weight", TB_U8, 2, {1, 2}, pad}};
    assert_int_equal(st_save(path, e1, 1, NULL, 0), TB_OK);
    assert_int_equal(st_open(&f, path), TB_OK);
    tb_err_clear();
    assert_int_equal(tb_mask_read(&f, "p.weight", 1, 13, &bad), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "row 0 has padding bits set"));
    st_close(&f);
    st_entry e2[2] = {{"q.weight", TB_U8, 2, {1, 1}, m4}, {"q.weight.perm", TB_I32, 1, {4}, notperm}};
    assert_int_equal(st_save(path, e2, 2, NULL, 0), TB_OK);
    assert_int_equal(st_open(&f, path), TB_OK);
    tb_err_clear();
    assert_int_equal(tb_mask_read(&f, "q.weight", 1, 4, &bad), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "tensor 'q.weight.perm': index 2: 1 is repeated"));
    st_close(&f);
    unlink(path);
    tb_mask_free(&a);
    tb_mask_free(&b);
}

/* ---- permutation ---- */

static void random_perm(int32_t *p, int64_t k)
{
    for (int64_t i = 0; i < k; i++) p[i] = (int32_t)i;
    for (int64_t i = k - 1; i > 0; i--) {
        int64_t j = rnd() % (uint64_t)(i + 1);
        int32_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

static void test_permute_identity(void **state)
{
    (void)state;
    int64_t rows = 6, cols = 20;
    float *w = malloc((size_t)(rows * cols) * sizeof *w), *wp = malloc((size_t)(rows * cols) * sizeof *w),
          *back = malloc((size_t)(rows * cols) * sizeof *w);
    for (int64_t i = 0; i < rows * cols; i++) w[i] = rnd_normal();
    for (int k_dim = 0; k_dim <= 1; k_dim++) {
        int64_t K = k_dim ? cols : rows;
        int32_t p[20], inv[20];
        random_perm(p, K);
        assert_int_equal(tb_permute_check(p, K), TB_OK);
        tb_permute_invert(p, inv, K);
        for (int64_t j = 0; j < K; j++) assert_int_equal(inv[p[j]], j);
        tb_permute_apply(w, wp, sizeof *w, rows, cols, k_dim, p);
        tb_permute_apply(wp, back, sizeof *w, rows, cols, k_dim, inv);
        assert_memory_equal(w, back, (size_t)(rows * cols) * sizeof *w);
        /* bf16-sized elements too (what tb-pack permutes) */
        uint16_t hb[120], hp[120], hr[120];
        for (int i = 0; i < 120; i++) hb[i] = (uint16_t)rnd();
        tb_permute_apply(hb, hp, 2, rows, cols, k_dim, p);
        tb_permute_apply(hp, hr, 2, rows, cols, k_dim, inv);
        assert_memory_equal(hb, hr, sizeof hb);
    }
    /* W x unchanged when W's input channels and x are permuted together:
     * y_o = sum_j W[o, p[j]] x[p[j]], the same terms in another order */
    float x[20], xp[20];
    int32_t p[20];
    for (int i = 0; i < 20; i++) x[i] = rnd_normal();
    random_perm(p, 20);
    tb_permute_apply(w, wp, sizeof *w, rows, cols, 1, p);
    tb_permute_apply(x, xp, sizeof *x, 1, 20, 1, p);
    for (int64_t o = 0; o < rows; o++) {
        double y = 0, yp = 0;
        for (int64_t j = 0; j < cols; j++) {
            y += (double)w[o * cols + j] * x[j];
            yp += (double)wp[o * cols + j] * xp[j];
        }
        assert_true(fabs(y - yp) <= 1e-12 * (fabs(y) + 1));
    }
    /* the stages' contract: prune the permuted weight, undo the permutation
     * (apply the inverse), and the result on x equals the pruned permuted
     * weight on the permuted x */
    int32_t inv[20];
    tb_permute_invert(p, inv, 20);
    for (int64_t i = 0; i < rows * cols; i++)
        if (rnd() & 1) wp[i] = 0;
    tb_permute_apply(wp, back, sizeof *w, rows, cols, 1, inv);
    for (int64_t o = 0; o < rows; o++) {
        double y = 0, yp = 0;
        for (int64_t j = 0; j < cols; j++) {
            y += (double)back[o * cols + j] * x[j];
            yp += (double)wp[o * cols + j] * xp[j];
        }
        assert_true(fabs(y - yp) <= 1e-12 * (fabs(y) + 1));
    }
    int32_t bad[4] = {0, 4, 1, 2};
    tb_err_clear();
    assert_int_equal(tb_permute_check(bad, 4), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "index 1: 4 is out of range"));
    free(w);
    free(wp);
    free(back);
}

static void test_permute_search(void **state)
{
    (void)state;
    /* one row, 2:4, channels [9 9 9 9 | 1 1 1 1]: the identity keeps 9+9+1+1,
     * grouping two 9s with two 1s keeps 9+9+9+9 */
    const float s1[8] = {9, 9, 9, 9, 1, 1, 1, 1};
    int32_t p[8];
    tb_perm_opts po = {10, 0, 1};
    tb_perm_stats st;
    assert_int_equal(tb_permute_search(s1, 1, 8, 1, 2, 4, &po, p, &st), TB_OK);
    assert_true(st.kept_identity == 20);
    assert_true(st.kept == 36);
    assert_int_equal(tb_permute_check(p, 8), TB_OK);
    assert_true(tb_nm_kept_topn(s1, 1, 8, 1, 2, 4, p) == 36);

    /* random scores: valid, never below the identity, reported kept is the
     * real kept, deterministic across thread counts; k_dim 0 too */
    for (int trial = 0; trial < 6; trial++) {
        int k_dim = trial % 2, n = trial < 4 ? 2 : 4, m = trial < 4 ? 4 : 8;
        int64_t units = 24, K = 64, rows = k_dim ? units : K, cols = k_dim ? K : units;
        float *s = malloc((size_t)(rows * cols) * sizeof *s);
        /* heavy-tailed scores with per-channel scale, as real ones */
        float scale[64];
        for (int64_t k = 0; k < K; k++) scale[k] = expf(rnd_normal());
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) s[r * cols + c] = fabsf(rnd_normal()) * scale[k_dim ? c : r];
        int32_t pa[64], pb[64];
        tb_perm_opts o1 = {50, 7, 1}, o3 = {50, 7, 3};
        tb_perm_stats sa, sb;
        assert_int_equal(tb_permute_search(s, rows, cols, k_dim, n, m, &o1, pa, &sa), TB_OK);
        assert_int_equal(tb_permute_search(s, rows, cols, k_dim, n, m, &o3, pb, &sb), TB_OK);
        assert_memory_equal(pa, pb, sizeof(int32_t) * (size_t)K);
        assert_int_equal(tb_permute_check(pa, K), TB_OK);
        assert_true(sa.kept >= sa.kept_identity);
        double direct = tb_nm_kept_topn(s, rows, cols, k_dim, n, m, pa);
        assert_true(fabs(direct - sa.kept) <= 1e-12 * direct);
        /* solving the permuted scores keeps exactly that much */
        float *sp = malloc((size_t)(rows * cols) * sizeof *sp);
        tb_permute_apply(s, sp, sizeof *s, rows, cols, k_dim, pa);
        tb_mask mk;
        tb_mask_alloc(&mk, rows, cols);
        tb_nm_opts no = {n, m, k_dim, TB_NM_TOPN, 2, 0, NULL, NULL};
        tb_nm_stats ns;
        assert_int_equal(tb_nm_solve(&no, sp, rows, cols, &mk, &ns), TB_OK);
        assert_true(fabs(ns.kept - sa.kept) <= 1e-9 * sa.kept);
        printf("    %d:%d k_dim %d: kept %.4f -> %.4f (%+.2f%%, %d swaps, %d rounds)\n", n, m, k_dim, sa.kept_identity, sa.kept,
               100 * (sa.kept / sa.kept_identity - 1), sa.swaps, sa.rounds);
        assert_true(sa.kept > sa.kept_identity); /* with per-channel scales there is always something to gain */
        tb_mask_free(&mk);
        free(sp);
        free(s);
    }
    /* M not dividing K */
    float z[6] = {0};
    assert_int_equal(tb_permute_search(z, 1, 6, 1, 2, 4, &po, p, &st), TB_EDATA);
}

/* perm moves channels only within heads, alike for the heads of a KV group */
static void assert_per_head(const int32_t *perm, int n_heads, int n_kv, int hd)
{
    int per = n_heads / n_kv;
    for (int h = 0; h < n_heads; h++)
        for (int j = 0; j < hd; j++) {
            int d = perm[h * hd + j] - h * hd, d0 = perm[(h / per * per) * hd + j] - (h / per * per) * hd;
            assert_true(d >= 0 && d < hd);
            assert_int_equal(d, d0);
        }
}

static void test_permute_search_heads(void **state)
{
    (void)state;
    /* known: 4 heads over 2 KV heads, head_dim 8, 2:4; every head's row is
     * [9 9 9 9 1 1 1 1] (group 1: [1 1 1 1 9 9 9 9]): the identity keeps
     * 9+9+1+1 per head row, two 9s with two 1s in each group 9+9+9+9 */
    enum { H = 4, KV = 2, HD = 8, ROWS = 3 };
    float s[ROWS * H * HD];
    for (int r = 0; r < ROWS; r++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < HD; j++) s[(r * H + h) * HD + j] = (j < 4) == (h < 2) ? 9 : 1;
    int32_t p[H * HD];
    tb_perm_opts po = {10, 0, 1};
    tb_perm_stats st;
    assert_int_equal(tb_permute_search_heads(s, ROWS, H * HD, H, KV, HD, 2, 4, &po, p, &st), TB_OK);
    assert_int_equal(tb_permute_check(p, H * HD), TB_OK);
    assert_per_head(p, H, KV, HD);
    assert_true(st.kept_identity == ROWS * H * 20);
    assert_true(st.kept == ROWS * H * 36);
    assert_true(tb_nm_kept_topn(s, ROWS, H * HD, 1, 2, 4, p) == st.kept);

    /* random heavy-tailed scores, GQA 8 heads over 2: the constraint holds,
     * the reported kept is the real one, never below the identity nor above
     * the unconstrained search's */
    enum { H2 = 8, KV2 = 2, HD2 = 16, R2 = 12, C2 = H2 * HD2 };
    float *s2 = malloc(sizeof(float) * R2 * C2);
    float scale[C2];
    for (int c = 0; c < C2; c++) scale[c] = expf(rnd_normal());
    for (int r = 0; r < R2; r++)
        for (int c = 0; c < C2; c++) s2[r * C2 + c] = fabsf(rnd_normal()) * scale[c];
    int32_t ph[C2], pf[C2];
    tb_perm_opts o2 = {50, 3, 2};
    tb_perm_stats sh, sf;
    assert_int_equal(tb_permute_search_heads(s2, R2, C2, H2, KV2, HD2, 2, 4, &o2, ph, &sh), TB_OK);
    assert_int_equal(tb_permute_check(ph, C2), TB_OK);
    assert_per_head(ph, H2, KV2, HD2);
    double direct = tb_nm_kept_topn(s2, R2, C2, 1, 2, 4, ph);
    assert_true(fabs(direct - sh.kept) <= 1e-9 * direct);
    assert_true(fabs(sh.kept_identity - tb_nm_kept_topn(s2, R2, C2, 1, 2, 4, NULL)) <= 1e-9 * direct);
    assert_true(sh.kept > sh.kept_identity);
    assert_int_equal(tb_permute_search(s2, R2, C2, 1, 2, 4, &o2, pf, &sf), TB_OK);
    printf("    per head (GQA 8/2): kept %+.2f%%; unconstrained %+.2f%%\n", 100 * (sh.kept / sh.kept_identity - 1),
           100 * (sf.kept / sf.kept_identity - 1));
    assert_true(sf.kept >= sh.kept * (1 - 1e-3));
    free(s2);

    /* a layout that does not match the columns; head_dim not divisible by M */
    assert_int_equal(tb_permute_search_heads(s, ROWS, H * HD, 3, 1, HD, 2, 4, &po, p, &st), TB_EUSAGE);
    assert_int_equal(tb_permute_search_heads(s, ROWS, H * HD, H, 3, HD, 2, 4, &po, p, &st), TB_EUSAGE);
    assert_int_equal(tb_permute_search_heads(s, ROWS, H * HD, 8, 2, 4, 4, 8, &po, p, &st), TB_EDATA);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topn_known),
        cmocka_unit_test(test_optimal_equals_topn),
        cmocka_unit_test(test_iterative_never_worse),
        cmocka_unit_test(test_nm_patterns_and_errors),
        cmocka_unit_test(test_unstructured_units),
        cmocka_unit_test(test_unstructured_pool),
        cmocka_unit_test(test_mask_roundtrip),
        cmocka_unit_test(test_permute_identity),
        cmocka_unit_test(test_permute_search),
        cmocka_unit_test(test_permute_search_heads),
    };
    return cmocka_run_group_tests_name("nm", tests, NULL, NULL);
}
