/* Unit tests of the few-token linear kernels (kernels/cpu/tb_gemv) with every
 * instruction set this CPU has, against the reference decode tb_linear_rows
 * and a double-precision dot product, on random weights and inputs (never
 * zeros): dense F32/F16/BF16, 2:4 with F32/F16/BF16 values, with and without
 * a channel permutation, with and without bias, shapes whose columns leave a
 * tail after the vector steps and whose rows leave a partial row tile, 1 to 9
 * tokens. Outputs are poisoned with NaN first, so an unwritten element fails;
 * rows outside the asked range must stay poisoned. tb_linear_forward (which
 * picks this path for a few tokens) is checked against its tile path, and
 * decode attention (tb_ops.c's loops for a few queries) against its sgemm
 * path for a whole window. */
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

/* The last rows of a 12-token causal attention (sgemm path: 12 queries in one
 * block) equal the same queries run one at a time against the cache (the
 * direct path, tb_attend_row with every ISA), with GQA, with and without a
 * sliding window */
static void test_attention_decode(void **state)
{
    (void)state;
    enum { T = 12, H = 4, KVH = 2, HD = 40 }; /* 40: a tail after the vector steps */
    for (int isa = 0; isa < TB_ISA_COUNT; isa++) {
        if (!tb_isa_available((tb_isa)isa)) continue;
        tb_gemv_set_isa((tb_isa)isa);
        for (int window = 0; window <= 5; window += 5) {
            tb_attn_shape a = {H, KVH, HD, window};
            float *q = random_x(T, H * HD), *k = random_x(T, KVH * HD), *v = random_x(T, KVH * HD);
            float full[T * H * HD], one[H * HD];
            tb_scratch s;
            assert_int_equal(tb_scratch_init(&s, 2, tb_attention_scratch(T)), TB_OK);
            tb_attention(&a, q, k, v, T, 0, full, NULL, &s);
            for (int p = 0; p < T; p++) {
                for (int i = 0; i < H * HD; i++) one[i] = NAN;
                tb_attention(&a, q + (size_t)p * H * HD, k, v, 1, p, one, NULL, &s);
                for (int i = 0; i < H * HD; i++) assert_float_equal(one[i], full[p * H * HD + i], 1e-5);
            }
            tb_scratch_free(&s);
            free(q), free(k), free(v);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
