/* Unit tests of the few-token linear kernels (kernels/cpu/tb_gemv) with every
 * instruction set this CPU has, against the reference decode tb_linear_rows
 * and a double-precision dot product, on random weights and inputs (never
 * zeros): dense F32/F16/BF16, 2:4 with F32/F16/BF16 values, with and without
 * a channel permutation, with and without bias, shapes whose columns leave a
 * tail after the vector steps and whose rows leave a partial row tile, 1 to 9
 * tokens. Outputs are poisoned with NaN first, so an unwritten element fails;
 * rows outside the asked range must stay poisoned. tb_linear_forward (which
 * picks this path for a few tokens) is checked against its tile path, and
 * decode attention (tb_ops.c's loops for a few queries) against its path for
 * a whole window. The many-token panels (tb_gemm, attention's f32 products,
 * prefill attention against a double-precision softmax) and the vector exp
 * behind tb_softmax, tb_logsumexp and tb_swiglu are checked the same way,
 * with every ISA. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_gemv.h"
#include "tb_linear.h"
#include "tb_ops.h"
#include "tb_pack.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd(void) /* xorshift64* */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545f4914f6cdd1dull) >> 32);
}
/* in [-1, -1/8] u [1/8, 1]: never zero, so a dropped term always shows */
static float rndf(void)
{
    float u = (float)rnd() / 4294967296.0f;
    float v = 0.125f + 0.875f * u;
    return rnd() & 1 ? v : -v;
}

/* A random weight in one storage format, owning its arrays. */
typedef struct {
    tb_linear L;
    void *data;
    uint8_t *indices;
    int32_t *perm;
    float *bias;
} weight;

static void *to_dtype(const float *w, size_t count, tb_dtype dt)
{
    if (dt == TB_F32) {
        float *o = malloc(count * sizeof *o);
        memcpy(o, w, count * sizeof *o);
        return o;
    }
    uint16_t *o = malloc(count * sizeof *o);
    for (size_t i = 0; i < count; i++) o[i] = dt == TB_BF16 ? tb_f32_to_bf16(w[i]) : tb_f32_to_f16(w[i]);
    return o;
}

static void make_weight(weight *W, int rows, int cols, tb_dtype dt, int nm, int permuted, int biased)
{
    memset(W, 0, sizeof *W);
    size_t RC = (size_t)rows * cols;
    float *w = malloc(RC * sizeof *w);
    for (size_t i = 0; i < RC; i++) w[i] = rndf();
    W->L = (tb_linear){.name = "w", .rows = rows, .cols = cols, .dtype = dt};
    if (!nm) {
        W->data = to_dtype(w, RC, dt);
    } else {
        tb_mask mk;
        assert_int_equal(tb_mask_alloc(&mk, rows, cols), TB_OK);
        for (int r = 0; r < rows; r++)
            for (int c0 = 0; c0 < cols; c0 += 4)
                for (int k = 0; k < 2;) {
                    int c = c0 + (int)(rnd() % 4);
                    if (!tb_mask_get(&mk, r, c)) tb_mask_set(&mk, r, c, 1), k++;
                }
        size_t vpr = (size_t)tb_nm_values_per_row(cols, 2, 4), irb = (size_t)tb_nm_index_row_bytes(cols, 2, 4);
        W->data = malloc((size_t)rows * vpr * tb_dtype_size(dt));
        W->indices = malloc((size_t)rows * irb);
        assert_int_equal(tb_nm_pack(TB_F32, w, &mk, 2, 4, dt, W->data, W->indices), TB_OK);
        tb_mask_free(&mk);
        W->L.format = TB_LINEAR_NM;
        W->L.n = 2, W->L.m = 4;
        W->L.indices = W->indices;
    }
    W->L.data = W->data;
    if (permuted) {
        W->perm = malloc((size_t)cols * sizeof *W->perm);
        for (int j = 0; j < cols; j++) W->perm[j] = j;
        for (int j = cols - 1; j > 0; j--) {
            int k = (int)(rnd() % (uint32_t)(j + 1));
            int32_t t = W->perm[j];
            W->perm[j] = W->perm[k], W->perm[k] = t;
        }
        W->L.perm = W->perm;
    }
    if (biased) {
        W->bias = malloc((size_t)rows * sizeof *W->bias);
        for (int r = 0; r < rows; r++) W->bias[r] = rndf();
        W->L.bias = W->bias;
    }
    free(w);
}

static void free_weight(weight *W)
{
    free(W->data), free(W->indices), free(W->perm), free(W->bias);
}

static float *random_x(int n, int cols)
{
    float *x = malloc((size_t)n * cols * sizeof *x);
    for (size_t i = 0; i < (size_t)n * cols; i++) x[i] = rndf();
    return x;
}

/* y[t, r] for rows r0..r1 against sum_c x[t, c] W[r, c] in double, W decoded
 * by tb_linear_rows (the model's column order); other rows must be NaN. The
 * tolerance is f32 accumulation error relative to sum_c |x W|. */
static void check_y(const weight *W, const float *x, int n, const float *y, int r0, int r1, const char *what)
{
    const tb_linear *L = &W->L;
    float *row = malloc((size_t)L->cols * sizeof *row), *buf = malloc((size_t)L->cols * sizeof *buf);
    for (int r = 0; r < L->rows; r++) {
        tb_linear_rows(L, r, 1, row, buf);
        for (int t = 0; t < n; t++) {
            float got = y[(size_t)t * L->rows + r];
            if (r < r0 || r >= r1) {
                if (!isnan(got)) fail_msg("%s: row %d outside [%d, %d) was written", what, r, r0, r1);
                continue;
            }
            double ref = L->bias ? L->bias[r] : 0, mag = L->bias ? fabs(L->bias[r]) : 0;
            for (int c = 0; c < L->cols; c++) {
                ref += (double)x[(size_t)t * L->cols + c] * row[c];
                mag += fabs((double)x[(size_t)t * L->cols + c] * row[c]);
            }
            if (!(fabs(got - ref) <= 1e-5 * mag))
                fail_msg("%s: %dx%d, token %d of %d, row %d: %.9g, expected %.9g (tolerance %.3g)", what, L->rows,
                         L->cols, t, n, r, got, ref, 1e-5 * mag);
        }
    }
    free(row), free(buf);
}

static const tb_dtype dtypes[3] = {TB_F32, TB_F16, TB_BF16};
/* columns: vector steps plus tails of every kind (2:4 needs multiples of 4) */
static const int shapes[][2] = {{1, 4}, {5, 12}, {7, 32}, {37, 44}, {8, 64}, {33, 100}, {17, 520}, {64, 256}};

static void run_all_isas(int nm)
{
    for (int isa = 0; isa < TB_ISA_COUNT; isa++) {
        if (!tb_isa_available((tb_isa)isa)) continue;
        assert_int_equal(tb_gemv_set_isa((tb_isa)isa), TB_OK);
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
            for (int d = 0; d < 3; d++)
                for (int variant = 0; variant < 4; variant++) {
                    int rows = shapes[s][0], cols = shapes[s][1];
                    int permuted = variant & 1, biased = variant >> 1;
                    weight W;
                    make_weight(&W, rows, cols, dtypes[d], nm, permuted, biased);
                    assert_true(tb_gemv_supports(&W.L));
                    for (int n = 1; n <= 9; n += (n < 5 ? 1 : 4)) {
                        float *x = random_x(n, cols);
                        float *y = malloc((size_t)n * rows * sizeof *y);
                        float *work = malloc((tb_gemv_scratch(&W.L, n) + 1) * sizeof *work);
                        char what[128];
                        snprintf(what, sizeof what, "%s %s %s%s%s", tb_isa_name((tb_isa)isa), nm ? "2:4" : "dense",
                                 tb_dtype_name(dtypes[d]), permuted ? " permuted" : "", biased ? " bias" : "");
                        for (size_t i = 0; i < (size_t)n * rows; i++) y[i] = NAN;
                        tb_gemv(&W.L, x, n, y, 0, rows, work);
                        check_y(&W, x, n, y, 0, rows, what);
                        /* a row range from the middle: only those rows written */
                        int r0 = rows / 3, r1 = rows - rows / 4;
                        for (size_t i = 0; i < (size_t)n * rows; i++) y[i] = NAN;
                        tb_gemv(&W.L, x, n, y, r0, r1, work);
                        check_y(&W, x, n, y, r0, r1, what);
                        free(x), free(y), free(work);
                    }
                    free_weight(&W);
                }
    }
    tb_gemv_set_isa(TB_ISA_SCALAR);
}

static void test_gemv_dense(void **state)
{
    (void)state;
    run_all_isas(0);
}

static void test_gemv_nm24(void **state)
{
    (void)state;
    run_all_isas(1);
}

/* The ISAs agree with each other as closely as f32 sums in different orders can */
static void test_isas_agree(void **state)
{
    (void)state;
    weight W;
    make_weight(&W, 96, 1024, TB_BF16, 1, 1, 1);
    float *x = random_x(3, 1024), *y[TB_ISA_COUNT];
    float *work = malloc(tb_gemv_scratch(&W.L, 3) * sizeof *work);
    int have = 0;
    for (int isa = 0; isa < TB_ISA_COUNT; isa++) {
        y[isa] = NULL;
        if (!tb_isa_available((tb_isa)isa)) continue;
        tb_gemv_set_isa((tb_isa)isa);
        y[isa] = malloc(3 * 96 * sizeof(float));
        tb_gemv(&W.L, x, 3, y[isa], 0, 96, work);
        have++;
        for (int i = 0; i < 3 * 96; i++) assert_float_equal(y[isa][i], y[0][i], 1e-3);
    }
    assert_true(have >= 1);
    for (int isa = 0; isa < TB_ISA_COUNT; isa++) free(y[isa]);
    free(x), free(work);
    free_weight(&W);
    tb_gemv_set_isa(TB_ISA_SCALAR);
}

/* What is not supported, and an ISA that is not there, are refused */
static void test_support(void **state)
{
    (void)state;
    tb_linear L = {.rows = 4, .cols = 8, .format = TB_LINEAR_NM, .dtype = TB_BF16, .n = 4, .m = 8};
    assert_false(tb_gemv_supports(&L)); /* 4:8 goes through the tile path */
    L.n = 2, L.m = 4;
    assert_true(tb_gemv_supports(&L));
    L.dtype = TB_F8_E4M3;
    assert_false(tb_gemv_supports(&L));
    assert_true(tb_isa_available(TB_ISA_SCALAR));
    assert_int_equal(tb_gemv_set_isa(TB_ISA_COUNT), TB_EUSAGE);
    assert_string_equal(tb_isa_name(TB_ISA_AVX512), "avx512");
}

/* tb_linear_forward with a few tokens (the gemv path, threaded over rows)
 * against its tile path, every format, 1 and 3 threads, 1-3 and 40 tokens */
static void test_linear_forward_paths(void **state)
{
    (void)state;
    tb_blas_single_thread();
    for (int isa = TB_ISA_COUNT - 1; isa >= 0; isa--)
        if (tb_isa_available((tb_isa)isa)) {
            tb_gemv_set_isa((tb_isa)isa); /* the best, as a run would use */
            break;
        }
    for (int nm = 0; nm < 2; nm++)
        for (int d = 0; d < 3; d++)
            for (int threads = 1; threads <= 3; threads += 2) {
                weight W;
                make_weight(&W, 203, 136, dtypes[d], nm, d == 1, d != 0);
                tb_scratch s;
                assert_int_equal(tb_scratch_init(&s, threads, tb_linear_scratch(&W.L)), TB_OK);
                /* 40 tokens: past the dense limit, inside the 2:4 one */
                static const int counts[] = {1, 2, 3, 40};
                for (size_t k = 0; k < sizeof counts / sizeof *counts; k++) {
                    const int n = counts[k];
                    float *x = random_x(n, 136), *y = malloc((size_t)n * 203 * sizeof *y);
                    float *ref = malloc((size_t)n * 203 * sizeof *ref);
                    for (int i = 0; i < n * 203; i++) y[i] = NAN;
                    tb_linear_forward(&W.L, x, n, y, &s);
                    check_y(&W, x, n, y, 0, 203, "tb_linear_forward");
                    tb_linear_forward_tiles(&W.L, x, n, ref, &s);
                    for (int i = 0; i < n * 203; i++) assert_float_equal(y[i], ref[i], 1e-4);
                    free(x), free(y), free(ref);
                }
                tb_scratch_free(&s);
                free_weight(&W);
            }
}

/* The rows of a causal attention over a whole window (blocks of queries
 * through the panels, or sgemm) equal the same queries run one at a time
 * against the cache (the direct path, tb_attend_row with every ISA), with
 * GQA, with and without a sliding window; head_dim 40 (a tail after the
 * vector steps) and 64 (the 16-keys-at-a-time scores), 40 tokens (whole
 * blocks of 16 keys and a tail) */
static void test_attention_decode(void **state)
{
    (void)state;
    enum { T = 40, H = 4, KVH = 2 };
    static const int hds[] = {40, 64};
    for (int isa = 0; isa < TB_ISA_COUNT; isa++) {
        if (!tb_isa_available((tb_isa)isa)) continue;
        tb_gemv_set_isa((tb_isa)isa);
        for (int hi = 0; hi < 2; hi++)
            for (int window = 0; window <= 5; window += 5) {
                const int HD = hds[hi];
                tb_attn_shape a = {H, KVH, HD, window};
                float *q = random_x(T, H * HD), *k = random_x(T, KVH * HD), *v = random_x(T, KVH * HD);
                float *full = malloc((size_t)T * H * HD * sizeof *full), *one = malloc((size_t)H * HD * sizeof *one);
                tb_scratch s;
                assert_int_equal(tb_scratch_init(&s, 2, tb_attention_scratch(T)), TB_OK);
                tb_attention(&a, q, k, v, T, 0, full, NULL, &s);
                for (int p = 0; p < T; p++) {
                    for (int i = 0; i < H * HD; i++) one[i] = NAN;
                    tb_attention(&a, q + (size_t)p * H * HD, k, v, 1, p, one, NULL, &s);
                    for (int i = 0; i < H * HD; i++) assert_float_equal(one[i], full[p * H * HD + i], 1e-5);
                }
                tb_scratch_free(&s);
                free(q), free(k), free(v), free(full), free(one);
            }
    }
    tb_gemv_set_isa(TB_ISA_SCALAR);
}

/* ---- many tokens: tb_gemm's panels ---- */

/* tb_gemm with every ISA, format, dtype, permutation and bias: token counts
 * that fill the 12- and 6-token tiles and leave tails, rows that leave a
 * partial panel, columns past the 256-column block (600) and short ones */
static void test_gemm(void **state)
{
    (void)state;
    static const int gshapes[][2] = {{1, 4}, {37, 44}, {33, 100}, {70, 600}, {64, 256}};
    static const int counts[] = {1, 5, 12, 13, 29};
    for (int isa = 0; isa < TB_ISA_COUNT; isa++) {
        if (!tb_isa_available((tb_isa)isa)) continue;
        assert_int_equal(tb_gemv_set_isa((tb_isa)isa), TB_OK);
        const int unit = tb_gemm_rows_unit();
        for (size_t s = 0; s < sizeof gshapes / sizeof *gshapes; s++)
            for (int d = 0; d < 3; d++)
                for (int variant = 0; variant < 8; variant++) {
                    int rows = gshapes[s][0], cols = gshapes[s][1];
                    int permuted = variant & 1, biased = (variant >> 1) & 1, nm = variant >> 2;
                    weight W;
                    make_weight(&W, rows, cols, dtypes[d], nm, permuted, biased);
                    float *work = malloc(tb_gemm_scratch(&W.L) * sizeof *work);
                    for (size_t k = 0; k < sizeof counts / sizeof *counts; k++) {
                        const int n = counts[k];
                        float *x = random_x(n, cols), *y = malloc((size_t)n * rows * sizeof *y);
                        char what[128];
                        snprintf(what, sizeof what, "tb_gemm %s %s %s%s%s", tb_isa_name((tb_isa)isa),
                                 nm ? "2:4" : "dense", tb_dtype_name(dtypes[d]), permuted ? " permuted" : "",
                                 biased ? " bias" : "");
                        for (size_t i = 0; i < (size_t)n * rows; i++) y[i] = NAN;
                        tb_gemm(&W.L, x, n, y, 0, rows, work);
                        check_y(&W, x, n, y, 0, rows, what);
                        /* rows from a unit boundary to the middle of a panel */
                        int r0 = rows > unit ? unit : 0, r1 = rows - rows / 4;
                        for (size_t i = 0; i < (size_t)n * rows; i++) y[i] = NAN;
                        tb_gemm(&W.L, x, n, y, r0, r1, work);
                        check_y(&W, x, n, y, r0, r1, what);
                        free(x), free(y);
                    }
                    free(work);
                    free_weight(&W);
                }
    }
    tb_gemv_set_isa(TB_ISA_SCALAR);
}

/* attention's f32 products through the panels, with strides wider than the
 * matrices (the gaps must stay poisoned) and more columns than one block */
static void test_gemm_f32(void **state)
{
    (void)state;
    for (int isa = 0; isa < TB_ISA_COUNT; isa++) {
        if (!tb_isa_available((tb_isa)isa)) continue;
        tb_gemv_set_isa((tb_isa)isa);
        const int did = isa >= TB_ISA_AVX2;
        static const int cases[][3] = {{1, 5, 64}, {13, 40, 64}, {7, 33, 300}, {30, 64, 17}};
        for (size_t cs = 0; cs < sizeof cases / sizeof *cases; cs++) {
            const int n = cases[cs][0], rows = cases[cs][1], k = cases[cs][2];
            const size_t ldx = k + 3, ldw = k + 5, ldy = rows + 2;
            float *x = random_x(n, (int)ldx), *w = random_x(rows, (int)ldw), *y = malloc(n * ldy * sizeof *y);
            for (size_t i = 0; i < n * ldy; i++) y[i] = NAN;
            assert_int_equal(tb_gemm_f32_nt(n, rows, k, 0.125f, x, ldx, w, ldw, y, ldy), did);
            for (int t = 0; did && t < n; t++)
                for (size_t r = 0; r < ldy; r++) {
                    float got = y[t * ldy + r];
                    if (r >= (size_t)rows) {
                        assert_true(isnan(got));
                        continue;
                    }
                    double ref = 0, mag = 0;
                    for (int c = 0; c < k; c++) {
                        ref += (double)x[t * ldx + c] * w[r * ldw + c];
                        mag += fabs((double)x[t * ldx + c] * w[r * ldw + c]);
                    }
                    assert_true(fabs(got - 0.125 * ref) <= 1e-5 * 0.125 * mag);
                }
            /* nn: y[t, d] = sum_c x[t, c] v[c, d], d < cols (a multiple of the unit) */
            const int cols = 2 * tb_gemm_rows_unit();
            const size_t ldv = cols + 7, ldo = cols + 1;
            float *v = random_x(k, (int)ldv), *o = malloc(n * ldo * sizeof *o);
            for (size_t i = 0; i < n * ldo; i++) o[i] = NAN;
            assert_int_equal(tb_gemm_f32_nn(n, cols, k, x, ldx, v, ldv, o, ldo), did);
            if (did) assert_int_equal(tb_gemm_f32_nn(n, cols + 1, k, x, ldx, v, ldv, o, ldo), 0);
            for (int t = 0; did && t < n; t++)
                for (size_t dd = 0; dd < ldo; dd++) {
                    float got = o[t * ldo + dd];
                    if (dd >= (size_t)cols) {
                        assert_true(isnan(got));
                        continue;
                    }
                    double ref = 0, mag = 0;
                    for (int c = 0; c < k; c++) {
                        ref += (double)x[t * ldx + c] * v[c * ldv + dd];
                        mag += fabs((double)x[t * ldx + c] * v[c * ldv + dd]);
                    }
                    assert_true(fabs(got - ref) <= 1e-5 * mag);
                }
            free(x), free(w), free(y), free(v), free(o);
        }
    }
    tb_gemv_set_isa(TB_ISA_SCALAR);
}

/* Prefill attention (blocks of 64 queries through the panels, or sgemm with
 * the scalar ISA) against a double-precision softmax(q k^T / sqrt(hd)) v
 * with the causal mask, GQA and a sliding window, head_dim 64 (whole panels
 * for P V) and 40 (P V through sgemm) */
static void test_attention_prefill(void **state)
{
    (void)state;
    enum { T = 100, H = 4, KVH = 2 };
    static const int hds[] = {64, 40};
    for (int isa = 0; isa < TB_ISA_COUNT; isa++) {
        if (!tb_isa_available((tb_isa)isa)) continue;
        tb_gemv_set_isa((tb_isa)isa);
        for (int h_i = 0; h_i < 2; h_i++)
            for (int window = 0; window <= 30; window += 30) {
                const int HD = hds[h_i];
                tb_attn_shape a = {H, KVH, HD, window};
                float *q = random_x(T, H * HD), *k = random_x(T, KVH * HD), *v = random_x(T, KVH * HD);
                float *out = malloc((size_t)T * H * HD * sizeof *out);
                for (int i = 0; i < T * H * HD; i++) out[i] = NAN;
                tb_scratch s;
                assert_int_equal(tb_scratch_init(&s, 3, tb_attention_scratch(T)), TB_OK);
                tb_attention(&a, q, k, v, T, 0, out, NULL, &s);
                double sc[T];
                for (int h = 0; h < H; h++) {
                    int g = h / (H / KVH);
                    for (int p = 0; p < T; p++) {
                        int lo = window && p - window + 1 > 0 ? p - window + 1 : 0;
                        double mx = -INFINITY, sum = 0;
                        for (int c = lo; c <= p; c++) {
                            double d = 0;
                            for (int i = 0; i < HD; i++)
                                d += (double)q[(size_t)p * H * HD + h * HD + i] * k[(size_t)c * KVH * HD + g * HD + i];
                            sc[c] = d / sqrt((double)HD);
                            mx = sc[c] > mx ? sc[c] : mx;
                        }
                        for (int c = lo; c <= p; c++) sum += (sc[c] = exp(sc[c] - mx));
                        for (int i = 0; i < HD; i++) {
                            double ref = 0;
                            for (int c = lo; c <= p; c++) ref += sc[c] / sum * v[(size_t)c * KVH * HD + g * HD + i];
                            float got = out[(size_t)p * H * HD + h * HD + i];
                            if (!(fabs(got - ref) <= 2e-5))
                                fail_msg("%s attention hd %d window %d: head %d query %d dim %d: %.9g, expected %.9g",
                                         tb_isa_name((tb_isa)isa), HD, window, h, p, i, got, ref);
                        }
                    }
                }
                tb_scratch_free(&s);
                free(q), free(k), free(v), free(out);
            }
    }
    tb_gemv_set_isa(TB_ISA_SCALAR);
}

/* The vector exp kernels behind tb_softmax, tb_logsumexp and tb_swiglu with
 * every ISA against double-precision exp: lengths that leave tails, values
 * where e^x underflows and overflows, and NaN, which must come out NaN */
static void test_exp_kernels(void **state)
{
    (void)state;
    static const int lens[] = {1, 7, 16, 33, 100, 4096};
    for (int isa = 0; isa < TB_ISA_COUNT; isa++) {
        if (!tb_isa_available((tb_isa)isa)) continue;
        tb_gemv_set_isa((tb_isa)isa);
        for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
            const int n = lens[li];
            float *x = malloc(n * sizeof *x), *p = malloc(n * sizeof *p);
            for (int i = 0; i < n; i++) x[i] = 20.0f * rndf() + (i % 5 == 0 ? -120.0f : 0.0f);
            /* softmax: within 1e-6 relative of the exact probabilities, plus
             * what rounding x - max to f32 (as tb_softmax's contract is) costs */
            memcpy(p, x, n * sizeof *x);
            tb_softmax(p, n);
            double mx = -INFINITY, sum = 0;
            for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
            for (int i = 0; i < n; i++) sum += exp((double)x[i] - mx);
            for (int i = 0; i < n; i++) {
                double ref = exp((double)x[i] - mx) / sum;
                double tol = (1e-6 + 1.2e-7 * (mx - x[i])) * ref + 1e-37;
                if (!(fabs(p[i] - ref) <= tol))
                    fail_msg("%s softmax[%d] of %d: %.9g, expected %.9g", tb_isa_name((tb_isa)isa), i, n, p[i], ref);
            }
            /* log-sum-exp: f64 throughout, within 1e-14 relative */
            double lse = tb_logsumexp(x, n), ref = mx + log(sum);
            if (!(fabs(lse - ref) <= 1e-14 * fabs(ref) + 1e-15))
                fail_msg("%s logsumexp of %d: %.17g, expected %.17g", tb_isa_name((tb_isa)isa), n, lse, ref);
            /* SwiGLU over gates past e^x's range both ways */
            float *g = malloc(n * sizeof *g), *u = malloc(n * sizeof *u), *o = malloc(n * sizeof *o);
            for (int i = 0; i < n; i++) {
                g[i] = (i % 3 == 1 ? 60.0f : 8.0f) * rndf();
                u[i] = rndf();
            }
            if (n > 3) g[0] = -100.0f, g[1] = 100.0f, g[2] = -87.5f, g[3] = 88.9f;
            tb_swiglu(o, g, u, (size_t)n, 2);
            for (int i = 0; i < n; i++) {
                double r = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
                if (!(fabs(o[i] - r) <= 2e-6 * fabs(r) + 1e-30))
                    fail_msg("%s swiglu[%d] (gate %g): %.9g, expected %.9g", tb_isa_name((tb_isa)isa), i, g[i], o[i], r);
            }
            /* NaN in, NaN out: never a silent number */
            x[n / 2] = NAN;
            g[n / 2] = NAN;
            memcpy(p, x, n * sizeof *x);
            tb_softmax(p, n);
            assert_true(isnan(p[n / 2]));
            assert_true(isnan(tb_logsumexp(x, n)));
            tb_swiglu(o, g, u, (size_t)n, 1);
            assert_true(isnan(o[n / 2]));
            free(x), free(p), free(g), free(u), free(o);
        }
    }
    tb_gemv_set_isa(TB_ISA_SCALAR);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_support),
        cmocka_unit_test(test_gemv_dense),
        cmocka_unit_test(test_gemv_nm24),
        cmocka_unit_test(test_isas_agree),
        cmocka_unit_test(test_linear_forward_paths),
        cmocka_unit_test(test_attention_decode),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_gemm_f32),
        cmocka_unit_test(test_attention_prefill),
        cmocka_unit_test(test_exp_kernels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
