/* tb_gemv_avx2.c - tb_gemv's AVX2 kernels (with FMA and F16C); built with
 * -mavx2 -mfma -mf16c (Makefile) and entered only when the CPU has them
 * (tb_gemv.c). The same tiling as tb_gemv_avx512.c with 8 f32 lanes:
 *
 * Dense: 8 elements of W per step.
 * 2:4: per step 8 kept values (4 groups, 16 columns of x) and 2 index bytes.
 * Kept values 0-3 fall in columns 0-7 of the step and 4-7 in columns 8-15:
 * lane k's column within its 8 is (bits >> 2k) & 3 | 4*((k/2) & 1), and two
 * vpermps (one per x vector) and a blend pick x. A tail of fewer than 16
 * columns (8 for dense) is summed in scalar code.
 */
#include "tb_gemv_isa.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include "tb_pack.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

const int tb_gemv_avx2_compiled = 1;

#define INLINE static inline __attribute__((always_inline))
/* the tile loops must unroll fully, so that the accumulators live in registers */
#define UNROLL _Pragma("GCC unroll 4")

INLINE __m256 load8(const void *p, size_t i, tb_dtype dt)
{
    if (dt == TB_F32) return _mm256_loadu_ps((const float *)p + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (dt == TB_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE float load1(const void *p, size_t i, tb_dtype dt)
{
    if (dt == TB_F32) return ((const float *)p)[i];
    uint16_t h;
    memcpy(&h, (const uint16_t *)p + i, 2);
    if (dt == TB_F16) return _cvtsh_ss(h);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

INLINE float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define PF_ROWS 4

/* ---- dense ---- */

INLINE void dense_tile(const void *w, size_t r, size_t cols, tb_dtype dt, const float *x, float *y, size_t ldy,
                       const int R, const int T)
{
    /* prefetch PF_ROWS rows ahead, as in tb_gemv_avx512.c (ldy is the row count) */
    const size_t es = dt == TB_F32 ? 4 : 2;
    const int pf = r + PF_ROWS + R <= ldy;
    __m256 acc[4][4];
    UNROLL
    for (int i = 0; i < R; i++)
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();
    size_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        __m256 wv[4];
        UNROLL
        for (int i = 0; i < R; i++) {
            if (pf) _mm_prefetch((const char *)w + ((r + i + PF_ROWS) * cols + c) * es, _MM_HINT_T0);
            wv[i] = load8(w, (r + i) * cols + c, dt);
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * cols + c);
            UNROLL
            for (int i = 0; i < R; i++) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
        }
    }
    UNROLL
    for (int i = 0; i < R; i++)
        UNROLL
        for (int t = 0; t < T; t++) {
            float s = hsum(acc[i][t]);
            for (size_t k = c; k < cols; k++) s += load1(w, (r + i) * cols + k, dt) * x[t * cols + k];
            y[t * ldy + r + i] = s;
        }
}

/* ---- 2:4 ---- */

INLINE __m256i lane_columns(uint32_t bits16)
{
    const __m256i shift = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i group = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
    __m256i p = _mm256_srlv_epi32(_mm256_set1_epi32((int)bits16), shift);
    return _mm256_or_si256(_mm256_and_si256(p, _mm256_set1_epi32(3)), group);
}

INLINE __m256 pick(__m256 x0, __m256 x1, __m256i sel)
{
    return _mm256_blend_ps(_mm256_permutevar8x32_ps(x0, sel), _mm256_permutevar8x32_ps(x1, sel), 0xf0);
}

INLINE void nm24_tile(const void *v, const uint8_t *ix, size_t irb, size_t r, size_t cols, tb_dtype dt,
                      const float *x, float *y, size_t ldy, const int R, const int T)
{
    const size_t es = dt == TB_F32 ? 4 : 2;
    const int pf = r + PF_ROWS + R <= ldy; /* as in dense_tile */
    const size_t vpr = cols / 2;
    __m256 acc[4][4];
    UNROLL
    for (int i = 0; i < R; i++)
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();
    size_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m256i sel[4];
        __m256 wv[4];
        UNROLL
        for (int i = 0; i < R; i++) {
            uint16_t bits;
            if (pf) {
                _mm_prefetch((const char *)v + ((r + i + PF_ROWS) * vpr + c / 2) * es, _MM_HINT_T0);
                _mm_prefetch((const char *)(ix + (r + i + PF_ROWS) * irb + c / 8), _MM_HINT_T0);
            }
            memcpy(&bits, ix + (r + i) * irb + c / 8, 2);
            sel[i] = lane_columns(bits);
            wv[i] = load8(v, (r + i) * vpr + c / 2, dt);
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            __m256 x0 = _mm256_loadu_ps(x + t * cols + c), x1 = _mm256_loadu_ps(x + t * cols + c + 8);
            UNROLL
            for (int i = 0; i < R; i++) acc[i][t] = _mm256_fmadd_ps(wv[i], pick(x0, x1, sel[i]), acc[i][t]);
        }
    }
    UNROLL
    for (int i = 0; i < R; i++)
        UNROLL
        for (int t = 0; t < T; t++) {
            float s = hsum(acc[i][t]);
            const uint8_t *irow = ix + (r + i) * irb;
            for (size_t g = c / 4; g < cols / 4; g++) {
                unsigned nib = irow[g / 2] >> (4 * (g % 2));
                const float *xg = x + t * cols + 4 * g;
                s += load1(v, (r + i) * vpr + 2 * g, dt) * xg[nib & 3];
                s += load1(v, (r + i) * vpr + 2 * g + 1, dt) * xg[(nib >> 2) & 3];
            }
            y[t * ldy + r + i] = s;
        }
}

/* ---- drivers: tiles of 4 rows (then single rows) x up to 4 tokens ----
 * Rows go in blocks of ROW_BLOCK, all tokens for a block before the next, so
 * that with more than 4 tokens a block's weights are reread from L1/L2. */

#define ROW_BLOCK 16

#define TILE_SWITCH(call, R)                                                                                           \
    switch (T) {                                                                                                       \
    case 1: call(R, 1); break;                                                                                         \
    case 2: call(R, 2); break;                                                                                         \
    case 3: call(R, 3); break;                                                                                         \
    default: call(R, 4); break;                                                                                        \
    }

INLINE void dense_rows(const tb_linear *L, const float *x, int n, float *y, int r0, int r1, tb_dtype dt)
{
    const size_t cols = (size_t)L->cols, ldy = (size_t)L->rows;
    for (int rb = r0; rb < r1; rb += ROW_BLOCK) {
        const int rb1 = r1 - rb < ROW_BLOCK ? r1 : rb + ROW_BLOCK;
        for (int t0 = 0; t0 < n; t0 += 4) {
            const int T = n - t0 < 4 ? n - t0 : 4;
            const float *xt = x + (size_t)t0 * cols;
            float *yt = y + (size_t)t0 * ldy;
            int r = rb;
#define DENSE(R_, T_) dense_tile(L->data, (size_t)r, cols, dt, xt, yt, ldy, R_, T_)
            for (; r + 4 <= rb1; r += 4) TILE_SWITCH(DENSE, 4)
            for (; r < rb1; r++) TILE_SWITCH(DENSE, 1)
#undef DENSE
        }
    }
}

INLINE void nm24_rows(const tb_linear *L, const float *x, int n, float *y, int r0, int r1, tb_dtype dt)
{
    const size_t cols = (size_t)L->cols, ldy = (size_t)L->rows;
    const size_t irb = (size_t)tb_nm_index_row_bytes(L->cols, 2, 4);
    for (int rb = r0; rb < r1; rb += ROW_BLOCK) {
        const int rb1 = r1 - rb < ROW_BLOCK ? r1 : rb + ROW_BLOCK;
        for (int t0 = 0; t0 < n; t0 += 4) {
            const int T = n - t0 < 4 ? n - t0 : 4;
            const float *xt = x + (size_t)t0 * cols;
            float *yt = y + (size_t)t0 * ldy;
            int r = rb;
#define NM24(R_, T_) nm24_tile(L->data, L->indices, irb, (size_t)r, cols, dt, xt, yt, ldy, R_, T_)
            for (; r + 4 <= rb1; r += 4) TILE_SWITCH(NM24, 4)
            for (; r < rb1; r++) TILE_SWITCH(NM24, 1)
#undef NM24
        }
    }
}

static void dense_f32(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    dense_rows(L, x, n, y, r0, r1, TB_F32);
}
static void dense_f16(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    dense_rows(L, x, n, y, r0, r1, TB_F16);
}
static void dense_bf16(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    dense_rows(L, x, n, y, r0, r1, TB_BF16);
}
static void nm24_f32(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    nm24_rows(L, x, n, y, r0, r1, TB_F32);
}
static void nm24_f16(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    nm24_rows(L, x, n, y, r0, r1, TB_F16);
}
static void nm24_bf16(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    nm24_rows(L, x, n, y, r0, r1, TB_BF16);
}

void tb_gemv_rows_avx2(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    int nm = L->format == TB_LINEAR_NM;
    switch (L->dtype) {
    case TB_F32: (nm ? nm24_f32 : dense_f32)(L, x, n, y, r0, r1); break;
    case TB_F16: (nm ? nm24_f16 : dense_f16)(L, x, n, y, r0, r1); break;
    default: (nm ? nm24_bf16 : dense_bf16)(L, x, n, y, r0, r1); break;
    }
}

/* ---- decode attention ---- */

/* lanes < k of 8 loaded, the others 0 */
INLINE __m256i lanes_below(int k)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

void tb_att_scores_avx2(const float *q, const float *k, int ldk, int hd, int lo, int p, float scale, float *row)
{
    for (int c = lo; c <= p; c++) {
        const float *kc = k + (size_t)c * ldk;
        __m256 acc = _mm256_setzero_ps();
        int d = 0;
        for (; d + 8 <= hd; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kc + d), acc);
        if (d < hd) {
            __m256i m = lanes_below(hd - d);
            acc = _mm256_fmadd_ps(_mm256_maskload_ps(q + d, m), _mm256_maskload_ps(kc + d, m), acc);
        }
        row[c] = scale * hsum(acc);
    }
}

void tb_att_pv_avx2(const float *row, const float *v, int ldk, int hd, int lo, int p, float *out)
{
    /* 32 outputs (4 registers) at a time over all keys */
    for (int d0 = 0; d0 < hd; d0 += 32) {
        __m256i m[4];
        __m256 acc[4];
        UNROLL
        for (int i = 0; i < 4; i++) {
            m[i] = lanes_below(hd - d0 - 8 * i);
            acc[i] = _mm256_setzero_ps();
        }
        for (int c = lo; c <= p; c++) {
            const float *vc = v + (size_t)c * ldk + d0;
            __m256 w = _mm256_set1_ps(row[c]);
            UNROLL
            for (int i = 0; i < 4; i++) acc[i] = _mm256_fmadd_ps(w, _mm256_maskload_ps(vc + 8 * i, m[i]), acc[i]);
        }
        UNROLL
        for (int i = 0; i < 4; i++) _mm256_maskstore_ps(out + d0 + 8 * i, m[i], acc[i]);
    }
}

#else /* not built for AVX2 */

const int tb_gemv_avx2_compiled = 0;

void tb_gemv_rows_avx2(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    tb_gemv_rows_scalar(L, x, n, y, r0, r1);
}

void tb_att_scores_avx2(const float *q, const float *k, int ldk, int hd, int lo, int p, float scale, float *row)
{
    tb_att_scores_scalar(q, k, ldk, hd, lo, p, scale, row);
}

void tb_att_pv_avx2(const float *row, const float *v, int ldk, int hd, int lo, int p, float *out)
{
    tb_att_pv_scalar(row, v, ldk, hd, lo, p, out);
}

#endif
