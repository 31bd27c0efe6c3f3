/* Unit tests of the packed .tb format (formats/tb_pack): the index layout bit
 * for bit, pack/unpack round trips for every N:M with M <= 16 in f32 and
 * bf16, padding of under-full groups, the checks on masks and indices, and a
 * shard written with tb_pack_writer and read back with tb_pack_open. */
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

#include "tb_error.h"
#include "tb_io.h"
#include "tb_pack.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) /* xorshift64*: reproducible across platforms */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545f4914f6cdd1dull) >> 32);
}
static float rndf(void) { return (float)rnd() / 4294967296.0f * 2.0f - 1.0f; }

/* a mask of `rows` x `cols` keeping `keep` random positions of every group of m */
static void random_nm_mask(tb_mask *mk, int64_t rows, int64_t cols, int keep, int m)
{
    assert_int_equal(tb_mask_alloc(mk, rows, cols), TB_OK);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += m)
            for (int k = 0; k < keep;) {
                int64_t c = c0 + rnd() % (uint32_t)m;
                if (!tb_mask_get(mk, r, c)) { tb_mask_set(mk, r, c, 1); k++; }
            }
}

static void test_index_bits(void **state)
{
    (void)state;
    static const int bits[17] = {0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4};
    for (int m = 2; m <= 16; m++) assert_int_equal(tb_nm_index_bits(m), bits[m]);
    assert_int_equal(tb_nm_index_row_bytes(256, 2, 4), 64 * 4 / 8); /* 64 groups x 4 bits */
    assert_int_equal(tb_nm_index_row_bytes(16, 4, 8), 3);             /* 8 values x 3 bits = 24 bits */
    assert_int_equal(tb_nm_index_row_bytes(10, 3, 5), 3);             /* 6 values x 3 bits = 18 bits */
}

/* 2:4, one row of 8 columns: keep {0,2} then {1,3}. The layout: 2-bit
 * indices LSB first, group 0 in the low nibble: 0 | 2<<2 = 0b1000, then
 * 1 | 3<<2 = 0b1101 -> byte 0b1101'1000 = 0xd8. Values in ascending order. */
static void test_24_nibble(void **state)
{
    (void)state;
    tb_mask mk;
    assert_int_equal(tb_mask_alloc(&mk, 1, 8), TB_OK);
    int keep[] = {0, 2, 5, 7};
    for (int i = 0; i < 4; i++) tb_mask_set(&mk, 0, keep[i], 1);
    float w[8] = {1, 2, 3, 4, 5, 6, 7, 8}, v[4];
    uint8_t idx[1] = {0xff};
    assert_int_equal(tb_nm_index_row_bytes(8, 2, 4), 1);
    assert_int_equal(tb_nm_pack(TB_F32, w, &mk, 2, 4, TB_F32, v, idx), TB_OK);
    assert_int_equal(idx[0] & 0x0f, 0x8); /* keep {0,2}: 0b1000 */
    assert_int_equal(idx[0], 0xd8);
    assert_true(v[0] == 1 && v[1] == 3 && v[2] == 6 && v[3] == 8);
    float out[8];
    tb_nm_unpack_rows(TB_F32, v, idx, 8, 2, 4, 0, 1, out);
    float want[8] = {1, 0, 3, 0, 0, 6, 0, 8};
    assert_memory_equal(out, want, sizeof want);
    tb_mask_free(&mk);
}

/* 4:8 (3-bit indices) crosses byte boundaries: keep {1,2,5,7} ->
 * bits 001 010 101 111 LSB first = 0b111'101'010'001 = 0xf51 -> bytes 0x51 0x0f */
static void test_48_bits(void **state)
{
    (void)state;
    tb_mask mk;
    assert_int_equal(tb_mask_alloc(&mk, 1, 8), TB_OK);
    int keep[] = {1, 2, 5, 7};
    for (int i = 0; i < 4; i++) tb_mask_set(&mk, 0, keep[i], 1);
    float w[8] = {1, 2, 3, 4, 5, 6, 7, 8}, v[4];
    uint8_t idx[2];
    assert_int_equal(tb_nm_index_row_bytes(8, 4, 8), 2);
    assert_int_equal(tb_nm_pack(TB_F32, w, &mk, 4, 8, TB_F32, v, idx), TB_OK);
    assert_int_equal(idx[0], 0x51);
    assert_int_equal(idx[1], 0x0f); /* upper 4 bits: padding, 0 */
    assert_int_equal(tb_nm_check_indices(idx, 1, 8, 4, 8), TB_OK);
    tb_mask_free(&mk);
}

/* every N:M with M <= 16, exactly N kept and (some groups) fewer, f32 and
 * bf16 data: unpack(pack(W)) == W * mask, bit for bit */
static void test_roundtrip_all_nm(void **state)
{
    (void)state;
    int cases = 0;
    for (int m = 2; m <= 16; m++)
        for (int n = 1; n < m; n++)
            for (int bf = 0; bf < 2; bf++) {
                int64_t rows = 5, cols = (int64_t)m * 7; /* odd group count: bit strings end mid-byte */
                tb_mask mk;
                random_nm_mask(&mk, rows, cols, n, m);
                /* under-full groups must round-trip too: drop one kept bit in row 1 */
                for (int64_t c = 0; c < cols; c++)
                    if (tb_mask_get(&mk, 1, c)) { tb_mask_set(&mk, 1, c, 0); break; }
                float *w = malloc((size_t)(rows * cols) * sizeof *w), *out = malloc((size_t)(rows * cols) * sizeof *out);
                uint16_t *wb = malloc((size_t)(rows * cols) * sizeof *wb);
                for (int64_t i = 0; i < rows * cols; i++) {
                    w[i] = rndf();
                    wb[i] = tb_f32_to_bf16(w[i]);
                }
                tb_dtype dt = bf ? TB_BF16 : TB_F32;
                size_t es = tb_dtype_size(dt);
                int64_t vpr = tb_nm_values_per_row(cols, n, m), irb = tb_nm_index_row_bytes(cols, n, m);
                void *v = malloc((size_t)(rows * vpr) * es);
                uint8_t *idx = malloc((size_t)(rows * irb));
                assert_int_equal(tb_nm_pack(dt, bf ? (void *)wb : (void *)w, &mk, n, m, dt, v, idx), TB_OK);
                assert_int_equal(tb_nm_check_indices(idx, rows, cols, n, m), TB_OK);
                /* decode in two tiles, as a linear layer would */
                tb_nm_unpack_rows(dt, v, idx, cols, n, m, 0, 2, out);
                tb_nm_unpack_rows(dt, v, idx, cols, n, m, 2, rows - 2, out + 2 * cols);
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t c = 0; c < cols; c++) {
                        float want = tb_mask_get(&mk, r, c) ? (bf ? tb_bf16_to_f32(wb[r * cols + c]) : w[r * cols + c]) : 0.0f;
                        float got = out[r * cols + c];
                        if (memcmp(&want, &got, 4)) fail_msg("%d:%d %s (%lld,%lld): %g != %g", n, m, bf ? "bf16" : "f32",
                                                             (long long)r, (long long)c, got, want);
                    }
                /* f32 weights stored as bf16 (the compensated path): the same values rounded */
                if (bf) {
                    uint16_t *v2 = malloc((size_t)(rows * vpr) * 2);
                    assert_int_equal(tb_nm_pack(TB_F32, w, &mk, n, m, TB_BF16, v2, idx), TB_OK);
                    assert_memory_equal(v2, v, (size_t)(rows * vpr) * 2);
                    free(v2);
                }
                free(w);
                free(wb);
                free(out);
                free(v);
                free(idx);
                tb_mask_free(&mk);
                cases++;
            }
    assert_int_equal(cases, 240); /* sum over M=2..16 of (M-1), x2 dtypes */
}

/* a group with fewer than N kept is padded with its lowest pruned positions */
static void test_underfull_group(void **state)
{
    (void)state;
    tb_mask mk;
    assert_int_equal(tb_mask_alloc(&mk, 1, 4), TB_OK);
    tb_mask_set(&mk, 0, 2, 1); /* 2:4 group keeping only column 2 */
    float w[4] = {9, 9, 5, 9}, v[2] = {-1, -1};
    uint8_t idx[1];
    assert_int_equal(tb_nm_pack(TB_F32, w, &mk, 2, 4, TB_F32, v, idx), TB_OK);
    assert_int_equal(idx[0], 0 | 2 << 2); /* slots: column 0 (padding, value 0), column 2 */
    assert_true(v[0] == 0.0f && !signbit(v[0]) && v[1] == 5.0f);
    tb_mask_free(&mk);
}

/* tb_nm_keep: the slots (padding included) in the model's column order,
 * known by hand, and on many rows (the parallel split) the same as decoding a
 * weight of ones, its definition */
static void test_nm_keep(void **state)
{
    (void)state;
    tb_mask mk;
    assert_int_equal(tb_mask_alloc(&mk, 2, 8), TB_OK);
    tb_mask_set(&mk, 0, 2, 1);                          /* row 0, group 0: only column 2 -> slots 0 (pad), 2 */
    tb_mask_set(&mk, 0, 5, 1), tb_mask_set(&mk, 0, 7, 1); /* group 1: 5, 7 */
    tb_mask_set(&mk, 1, 1, 1), tb_mask_set(&mk, 1, 3, 1); /* row 1: 1, 3 and 4, 6 */
    tb_mask_set(&mk, 1, 4, 1), tb_mask_set(&mk, 1, 6, 1);
    float w[16], v[8];
    for (int i = 0; i < 16; i++) w[i] = (float)(i + 1);
    uint8_t idx[4], keep[16];
    assert_int_equal(tb_nm_pack(TB_F32, w, &mk, 2, 4, TB_F32, v, idx), TB_OK);
    memset(keep, 7, sizeof keep); /* poisoned: every byte must be written */
    tb_nm_keep(idx, 2, 8, 2, 4, NULL, keep);
    const uint8_t want[16] = {1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0};
    assert_memory_equal(keep, want, 16);
    /* stored column j is model column perm[j] */
    const int32_t perm[8] = {7, 6, 5, 4, 3, 2, 1, 0};
    memset(keep, 7, sizeof keep);
    tb_nm_keep(idx, 2, 8, 2, 4, perm, keep);
    for (int r = 0; r < 2; r++)
        for (int j = 0; j < 8; j++) assert_int_equal(keep[r * 8 + perm[j]], want[r * 8 + j]);
    tb_mask_free(&mk);

    /* 4:8 on 301 rows x 64 columns, random masks and a random permutation */
    const int R = 301, C = 64, n = 4, m = 8;
    uint64_t s = 88172645463325252ull;
    assert_int_equal(tb_mask_alloc(&mk, R, C), TB_OK);
    for (int r = 0; r < R; r++)
        for (int g = 0; g < C / m; g++) {
            int kept = 0;
            for (int j = 0; j < m && kept < n; j++) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                if (s % 3) tb_mask_set(&mk, r, g * m + j, 1), kept++;
            }
        }
    int32_t pr[64];
    for (int j = 0; j < C; j++) pr[j] = j;
    for (int j = C - 1; j > 0; j--) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        int k = (int)(s % (uint64_t)(j + 1)), t = pr[j];
        pr[j] = pr[k], pr[k] = t;
    }
    const int64_t vpr = tb_nm_values_per_row(C, n, m);
    float *wb = calloc((size_t)R * C, sizeof *wb), *vb = malloc((size_t)(R * vpr) * sizeof *vb),
          *one = malloc((size_t)(R * vpr) * sizeof *one), *pos = malloc((size_t)R * C * sizeof *pos);
    uint8_t *ib = malloc((size_t)(R * tb_nm_index_row_bytes(C, n, m))), *kb = malloc((size_t)R * C);
    assert_non_null(wb), assert_non_null(vb), assert_non_null(one), assert_non_null(pos), assert_non_null(ib),
        assert_non_null(kb);
    assert_int_equal(tb_nm_pack(TB_F32, wb, &mk, n, m, TB_F32, vb, ib), TB_OK);
    for (int64_t k = 0; k < R * vpr; k++) one[k] = 1.0f;
    tb_nm_unpack_rows(TB_F32, one, ib, C, n, m, 0, R, pos);
    memset(kb, 7, (size_t)R * C);
    tb_nm_keep(ib, R, C, n, m, pr, kb);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < C; j++) assert_int_equal(kb[r * C + pr[j]], pos[r * C + j] != 0.0f);
    free(wb), free(vb), free(one), free(pos), free(ib), free(kb);
    tb_mask_free(&mk);
}

static void test_mask_errors(void **state)
{
    (void)state;
    tb_mask mk;
    assert_int_equal(tb_mask_alloc(&mk, 2, 8), TB_OK);
    for (int c = 0; c < 3; c++) tb_mask_set(&mk, 1, 4 + c, 1);
    float w[16] = {0}, v[8];
    uint8_t idx[2];
    assert_int_equal(tb_nm_pack(TB_F32, w, &mk, 2, 4, TB_F32, v, idx), TB_EDATA);
    assert_string_equal(tb_errmsg(), "row 1, columns 4..7 keep 3, pattern 2:4 allows 2");
    assert_int_equal(tb_nm_check_mask(&mk, 3, 4), TB_OK);
    assert_int_equal(tb_nm_check_mask(&mk, 2, 3), TB_EDATA); /* 8 columns, M = 3 */
    assert_non_null(strstr(tb_errmsg(), "not divisible by M=3"));
    assert_int_equal(tb_nm_check_mask(&mk, 4, 4), TB_EUSAGE);
    assert_int_equal(tb_nm_pack(TB_BF16, w, &mk, 3, 4, TB_F32, v, idx), TB_EUSAGE); /* bf16 -> f32 not offered */
    tb_mask_free(&mk);
}

static void test_bad_indices(void **state)
{
    (void)state;
    uint8_t idx[1] = {2 | 1 << 2}; /* 2:4 group (2, 1): not ascending */
    assert_int_equal(tb_nm_check_indices(idx, 1, 4, 2, 4), TB_EDATA);
    assert_string_equal(tb_errmsg(), "row 0, group 0: index 1 not ascending");
    idx[0] = 1 | 1 << 2; /* repeated */
    assert_int_equal(tb_nm_check_indices(idx, 1, 4, 2, 4), TB_EDATA);
    idx[0] = 0 | 1 << 2 | 1 << 4; /* padding bit set (4 bits used) */
    assert_int_equal(tb_nm_check_indices(idx, 1, 4, 2, 4), TB_EDATA);
    assert_string_equal(tb_errmsg(), "row 0: padding bits set");
    uint8_t i5[1] = {7}; /* 1:5, 3-bit index 7 >= 5 */
    assert_int_equal(tb_nm_check_indices(i5, 1, 5, 1, 5), TB_EDATA);
    assert_string_equal(tb_errmsg(), "row 0, group 0: index 7 out of range");
}

/* ---- shard writer and reader ---- */

static char tmpdir[] = "/tmp/tb_test_pack_XXXXXX";

static char *tmp_path(const char *name) { return tb_path_join(tmpdir, name); }

/* write a shard: a 2:4 bf16 weight with a permutation, an unstructured f32
 * weight, and a copied norm vector; returns the path (caller frees) */
static char *write_shard(const float *a, const tb_mask *ma, const float *b, const tb_mask *mb, const uint16_t *norm)
{
    char *path = tmp_path("s.tb");
    tb_pack_writer *w = tb_pack_writer_new();
    assert_non_null(w);
    int64_t nshape[1] = {4};
    assert_int_equal(tb_pack_writer_meta(w, "pattern", "2:4"), TB_OK);
    assert_int_equal(tb_pack_declare(w, "a.weight", TB_BF16, 3, 8, 2, 4, 1, "recon", "given"), TB_OK);
    assert_int_equal(tb_pack_declare(w, "b.weight", TB_F32, 2, 12, 0, 0, 0, "none", "given"), TB_OK);
    assert_int_equal(tb_pack_declare_copy(w, "norm.weight", TB_BF16, 1, nshape), TB_OK);
    tb_outfile o;
    assert_int_equal(tb_out_open(&o, path), TB_OK);
    assert_int_equal(tb_pack_writer_begin(w, o.fp, path), TB_OK);
    assert_int_equal(tb_pack_write_copy(w, norm, 8), TB_EUSAGE); /* out of order */
    assert_int_equal(tb_pack_write(w, a, ma), TB_OK);
    assert_int_equal(tb_pack_write(w, b, mb), TB_OK);
    assert_int_equal(tb_pack_write_copy(w, norm, 4), TB_OK);
    assert_int_equal(tb_pack_write_copy(w, norm + 2, 4), TB_OK);
    assert_int_equal(tb_pack_writer_finish(w), TB_OK);
    assert_int_equal(tb_out_commit(&o), TB_OK);
    tb_pack_writer_free(w);
    return path;
}

static void test_shard_roundtrip(void **state)
{
    (void)state;
    float a[24], b[24];
    uint16_t norm[4] = {0x3f80, 0x4000, 0x4040, 0x4080};
    for (int i = 0; i < 24; i++) {
        a[i] = tb_bf16_to_f32(tb_f32_to_bf16(rndf())); /* bf16-exact, so the round trip is exact */
        b[i] = rndf();
    }
    tb_mask ma, mb;
    random_nm_mask(&ma, 3, 8, 2, 4);
    ma.perm = malloc(8 * sizeof(int32_t));
    int32_t perm[8] = {3, 0, 7, 1, 6, 2, 5, 4};
    memcpy(ma.perm, perm, sizeof perm);
    random_nm_mask(&mb, 2, 12, 5, 12);
    char *path = write_shard(a, &ma, b, &mb, norm);

    tb_pack_file p;
    assert_int_equal(tb_pack_open(&p, path), TB_OK);
    assert_int_equal(p.n_packed, 2);
    const tb_packed *ta = tb_pack_find(&p, "a.weight"), *tbw = tb_pack_find(&p, "b.weight");
    assert_non_null(ta);
    assert_non_null(tbw);
    assert_null(tb_pack_find(&p, "norm.weight"));
    assert_int_equal(ta->kind, TB_PACKED_NM);
    assert_int_equal(ta->n, 2);
    assert_int_equal(ta->m, 4);
    assert_int_equal(ta->dtype, TB_BF16);
    assert_string_equal(ta->compensation, "recon");
    assert_non_null(ta->perm);
    assert_int_equal(tbw->kind, TB_PACKED_MASKED);
    assert_null(tbw->perm);

    int64_t n;
    float *da = tb_pack_tensor_f32(&p, "a.weight", 0, &n);
    assert_int_equal(n, 24);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 8; c++) assert_true(da[r * 8 + c] == (tb_mask_get(&ma, r, c) ? a[r * 8 + c] : 0.0f));
    float *ua = tb_pack_tensor_f32(&p, "a.weight", 1, NULL);
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 8; j++) assert_true(ua[r * 8 + perm[j]] == da[r * 8 + j]);
    float *db = tb_pack_tensor_f32(&p, "b.weight", 1, &n);
    assert_int_equal(n, 24);
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 12; c++) assert_true(db[r * 12 + c] == (tb_mask_get(&mb, r, c) ? b[r * 12 + c] : 0.0f));
    const st_tensor *mt = st_find(&p.f, "b.weight.mask");
    assert_non_null(mt);
    assert_memory_equal(mt->data, mb.bits, 4);
    float *dn = tb_pack_tensor_f32(&p, "norm.weight", 1, &n);
    assert_int_equal(n, 4);
    assert_true(dn[0] == 1 && dn[3] == 4);
    assert_null(tb_pack_tensor_f32(&p, "nope", 0, NULL));
    assert_non_null(strstr(tb_errmsg(), "no tensor 'nope'"));
    assert_string_equal(st_meta(&p.f, "pattern"), "2:4");
    free(da);
    free(ua);
    free(db);
    free(dn);
    tb_pack_close(&p);
    tb_mask_free(&ma);
    tb_mask_free(&mb);
    unlink(path);
    free(path);
}

/* the reader refuses a shard whose indices were corrupted after writing */
static void test_shard_corrupt(void **state)
{
    (void)state;
    float a[24] = {0}, b[24] = {0};
    uint16_t norm[4] = {0};
    tb_mask ma, mb;
    random_nm_mask(&ma, 3, 8, 2, 4);
    ma.perm = malloc(8 * sizeof(int32_t));
    for (int i = 0; i < 8; i++) ma.perm[i] = i;
    random_nm_mask(&mb, 2, 12, 5, 12);
    char *path = write_shard(a, &ma, b, &mb, norm);
    st_file f;
    assert_int_equal(st_open(&f, path), TB_OK);
    const st_tensor *t = st_find(&f, "a.weight.indices");
    long off = (long)(8 + f.header_size + t->begin);
    st_close(&f);
    FILE *fp = fopen(path, "r+b");
    fseek(fp, off, SEEK_SET);
    fputc(0x4b, fp); /* groups (3,2), (0,1): the first is not ascending */
    fclose(fp);
    tb_pack_file p;
    assert_int_equal(tb_pack_open(&p, path), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "tensor 'a.weight.indices': row 0, group 0: index 2 not ascending"));
    tb_mask_free(&ma);
    tb_mask_free(&mb);
    unlink(path);
    free(path);
}

static void test_not_a_shard(void **state)
{
    (void)state;
    char *path = tmp_path("plain.safetensors");
    float x[2] = {1, 2};
    st_entry e = {"x", TB_F32, 1, {2}, x};
    assert_int_equal(st_save(path, &e, 1, NULL, 0), TB_OK);
    tb_pack_file p;
    assert_int_equal(tb_pack_open(&p, path), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "not a .tb shard"));
    unlink(path);
    free(path);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_bits),       cmocka_unit_test(test_24_nibble),
        cmocka_unit_test(test_48_bits),          cmocka_unit_test(test_roundtrip_all_nm),
        cmocka_unit_test(test_underfull_group),  cmocka_unit_test(test_nm_keep),
        cmocka_unit_test(test_mask_errors),
        cmocka_unit_test(test_bad_indices),      cmocka_unit_test(test_shard_roundtrip),
        cmocka_unit_test(test_shard_corrupt),    cmocka_unit_test(test_not_a_shard),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(tmpdir);
    return rc;
}
