/* Unit tests of the 2:4 sparse-GEMM weight layout (kernels/cpu/tb_sp24_layout):
 * the reorder from .tb into the sparse-mma fragment order, checked against
 * the dense-with-zeros weight that formats/tb_pack decodes from the same .tb
 * arrays (through tb_sp24_decode, which reads the layout lane by lane as the
 * tensor core does), hand-placed elements at known lanes and bits, the
 * rejection of bad shapes and bad indices, and the CPU reference GEMM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tb_dtype.h"
#include "tb_error.h"
#include "tb_pack.h"
#include "tb_sp24_layout.h"

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint32_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545f4914f6cdd1dull) >> 32);
}
static float rndf(void) { return (float)rnd() / 4294967296.0f * 2.0f - 1.0f; }

/* random .tb arrays of a 2:4 weight: nonzero bf16 values, every one of the six
 * ascending position pairs */
static void random_tb(int64_t rows, int64_t cols, uint16_t **values, uint8_t **indices)
{
    static const unsigned pairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
    *values = malloc((size_t)rows * (size_t)cols / 2 * sizeof(uint16_t));
    *indices = calloc((size_t)rows * (size_t)cols / 8, 1);
    assert_non_null(*values);
    assert_non_null(*indices);
    for (int64_t i = 0; i < rows * cols / 2; i++) {
        float v = rndf();
        (*values)[i] = tb_f32_to_bf16(v == 0.0f ? 0.5f : v);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols / 4; j++) {
            const unsigned *pr = pairs[rnd() % 6];
            (*indices)[r * (cols / 8) + j / 2] |= (uint8_t)((pr[0] | pr[1] << 2) << ((j & 1) * 4));
        }
}

static void check_roundtrip(int64_t rows, int64_t cols)
{
    uint16_t *values;
    uint8_t *indices;
    random_tb(rows, cols, &values, &indices);
    uint16_t *a = malloc(tb_sp24_a_bytes(rows, cols));
    uint32_t *e = malloc(tb_sp24_e_bytes(rows, cols));
    float *got = malloc((size_t)(rows * cols) * sizeof(float));
    float *want = malloc((size_t)(rows * cols) * sizeof(float));
    assert_int_equal(tb_sp24_reorder(values, indices, rows, cols, a, e), TB_OK);
    tb_sp24_decode(a, e, rows, cols, got);
    tb_nm_unpack_rows(TB_BF16, values, indices, cols, 2, 4, 0, rows, want);
    int64_t kept = 0;
    for (int64_t i = 0; i < rows * cols; i++) {
        if (got[i] != want[i]) fail_msg("element (%lld, %lld): %g != %g", (long long)(i / cols),
                                        (long long)(i % cols), got[i], want[i]);
        kept += want[i] != 0.0f;
    }
    assert_int_equal(kept, rows * cols / 2); /* the test data keeps exactly two of four, all nonzero */
    free(values), free(indices), free(a), free(e), free(got), free(want);
}

static void test_reorder_matches_dense(void **state)
{
    (void)state;
    check_roundtrip(32, 64);
    check_roundtrip(96, 192);
    check_roundtrip(256, 704);
}

/* Hand-placed: the PTX fragment formulas evaluated for one element. Row 25 of
 * a 32 x 64 weight is row g = 1 (+8) of tile 1; its group 13 is group 5 of
 * k-step 1, so lane 4g + (5 % 4) = 5 holds the pair in a6 a7, and the
 * metadata is in lane 4g + 2 * 1 + 1 = 7 (selector 1, upper half), bits
 * 16 + 4 * 1 .. 16 + 4 * 1 + 3. */
static void test_known_positions(void **state)
{
    (void)state;
    const int64_t rows = 32, cols = 64;
    uint16_t values[32 * 32];
    uint8_t indices[32 * 8];
    for (int i = 0; i < 32 * 32; i++) values[i] = (uint16_t)(0x3f80 + (i & 63)); /* distinct-ish, nonzero */
    memset(indices, 0x44, sizeof indices); /* every group keeps {0, 1}: nibble 0b0100 */
    const int r = 25, j = 13;
    values[r * 32 + 2 * j] = 0x4049;     /* ~3.14 */
    values[r * 32 + 2 * j + 1] = 0xc0a0; /* -5 */
    indices[r * 8 + j / 2] = (uint8_t)((indices[r * 8 + j / 2] & 0x0f) | (0xd << 4)); /* {1, 3}: 0b1101 */
    uint16_t a[32 * 64 / 2];
    uint32_t e[32 * 64 / 32];
    assert_int_equal(tb_sp24_reorder(values, indices, rows, cols, a, e), TB_OK);
    const int64_t k32 = cols / 32, mt = 1, ks = 1;
    assert_int_equal(a[((mt * k32 + ks) * 32 + 5) * 8 + 6], 0x4049);
    assert_int_equal(a[((mt * k32 + ks) * 32 + 5) * 8 + 7], 0xc0a0);
    assert_int_equal((e[(0 * k32 + ks) * 32 + 7] >> 20) & 15u, 0xd);
    /* its neighbours keep {0, 1} */
    assert_int_equal((e[(0 * k32 + ks) * 32 + 7] >> 16) & 15u, 0x4);
    assert_int_equal((e[(0 * k32 + ks) * 32 + 7] >> 24) & 15u, 0x4);
}

static void test_rejects(void **state)
{
    (void)state;
    uint16_t values[32 * 32] = {0};
    uint8_t indices[32 * 8];
    uint16_t a[32 * 32];
    uint32_t e[64];
    memset(indices, 0x44, sizeof indices);
    assert_int_equal(tb_sp24_reorder(values, indices, 16, 64, a, e), TB_EUSAGE);
    assert_non_null(strstr(tb_errmsg(), "rows (16)"));
    assert_int_equal(tb_sp24_reorder(values, indices, 32, 32, a, e), TB_EUSAGE);
    assert_non_null(strstr(tb_errmsg(), "cols (32)"));
    indices[3 * 8 + 2] = 0x45; /* row 3, group 4: positions {1, 1} */
    assert_int_equal(tb_sp24_reorder(values, indices, 32, 64, a, e), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "row 3, group 4"));
    indices[3 * 8 + 2] = 0x4e; /* {2, 3} | {0, 1}: fine */
    assert_int_equal(tb_sp24_reorder(values, indices, 32, 64, a, e), TB_OK);
}

/* the reference GEMM against a dense product of the decoded weight */
static void test_gemm_ref(void **state)
{
    (void)state;
    const int64_t rows = 64, cols = 128;
    const int n = 3;
    uint16_t *values;
    uint8_t *indices;
    random_tb(rows, cols, &values, &indices);
    float *w = malloc((size_t)(rows * cols) * sizeof(float));
    float x[3 * 128];
    double y[3 * 64];
    tb_nm_unpack_rows(TB_BF16, values, indices, cols, 2, 4, 0, rows, w);
    for (int i = 0; i < n * cols; i++) x[i] = rndf();
    for (int i = 0; i < n * rows; i++) y[i] = NAN;
    tb_sp24_gemm_ref(values, indices, rows, cols, x, n, 0, rows, y);
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < rows; r++) {
            double want = 0;
            for (int64_t c = 0; c < cols; c++) want += (double)w[r * cols + c] * x[t * cols + c];
            assert_true(fabs(y[t * rows + r] - want) <= 1e-12 * (1 + fabs(want)));
        }
    free(values), free(indices), free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reorder_matches_dense),
        cmocka_unit_test(test_known_positions),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_gemm_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
