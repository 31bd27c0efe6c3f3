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
 *
 * Panels (tb_gemm): 16 rows x 6 tokens of accumulators, packed with 8 x 8
 * in-register transposes.
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

/* ---- many tokens: the panel kernel (tb_gemm), as in tb_gemv_avx512.c with
 * 16 rows (two registers) x up to 6 tokens: 12 accumulators, two W vectors
 * and a broadcast fill the 16 registers ---- */

#define PANEL_TOKENS 6

INLINE __m256i lane_mask(int k) /* the first k of 8 lanes */
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

INLINE void panel_tile(const float *P, size_t ldp, int k, const float *x, size_t ldx, float *y, size_t ldy, __m256i m0,
                       __m256i m1, int accumulate, float scale, const int T)
{
    __m256 a0[PANEL_TOKENS], a1[PANEL_TOKENS];
    _Pragma("GCC unroll 6") for (int t = 0; t < T; t++)
    {
        a0[t] = accumulate ? _mm256_maskload_ps(y + t * ldy, m0) : _mm256_setzero_ps();
        a1[t] = accumulate ? _mm256_maskload_ps(y + t * ldy + 8, m1) : _mm256_setzero_ps();
    }
    for (size_t c = 0; c < (size_t)k; c++) {
        __m256 w0 = _mm256_loadu_ps(P + c * ldp), w1 = _mm256_loadu_ps(P + c * ldp + 8);
        _Pragma("GCC unroll 6") for (int t = 0; t < T; t++)
        {
            __m256 b = _mm256_broadcast_ss(x + t * ldx + c);
            a0[t] = _mm256_fmadd_ps(w0, b, a0[t]);
            a1[t] = _mm256_fmadd_ps(w1, b, a1[t]);
        }
    }
    _Pragma("GCC unroll 6") for (int t = 0; t < T; t++)
    {
        if (scale != 1.0f) {
            a0[t] = _mm256_mul_ps(a0[t], _mm256_set1_ps(scale));
            a1[t] = _mm256_mul_ps(a1[t], _mm256_set1_ps(scale));
        }
        _mm256_maskstore_ps(y + t * ldy, m0, a0[t]);
        _mm256_maskstore_ps(y + t * ldy + 8, m1, a1[t]);
    }
}


/* 8 x 8 transpose in registers (unpack, shuffle, then swap 128-bit halves) */
INLINE void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    _Pragma("GCC unroll 4") for (int i = 0; i < 8; i += 2)
    {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    _Pragma("GCC unroll 2") for (int i = 0; i < 8; i += 4)
    {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++)
    {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

INLINE void pack_panel(const void *src, size_t ld, int nr, int cols, float *P, tb_dtype dt)
{
    int c = 0;
    for (; c + 8 <= cols; c += 8)
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++)
        {
            __m256 r[8];
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++)
            {
                const int row = 8 * h + i;
                r[i] = row < nr ? load8(src, (size_t)row * ld + c, dt) : _mm256_setzero_ps();
            }
            transpose8(r);
            _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) _mm256_storeu_ps(P + (size_t)(c + j) * 16 + 8 * h, r[j]);
        }
    for (; c < cols; c++)
        for (int i = 0; i < 16; i++) P[(size_t)c * 16 + i] = i < nr ? load1(src, (size_t)i * ld + c, dt) : 0.0f;
}

void tb_pack_panel_avx2(const void *src, tb_dtype dt, size_t ld, int nr, int cols, float *P)
{
    switch (dt) {
    case TB_F32: pack_panel(src, ld, nr, cols, P, TB_F32); break;
    case TB_F16: pack_panel(src, ld, nr, cols, P, TB_F16); break;
    default: pack_panel(src, ld, nr, cols, P, TB_BF16); break;
    }
}

void tb_panel_avx2(const float *P, size_t ldp, int k, const float *x, size_t ldx, int n, float *y, size_t ldy, int nr,
                   int accumulate, float scale)
{
    __m256i m0 = lane_mask(nr), m1 = lane_mask(nr - 8);
    for (int t0 = 0; t0 < n; t0 += PANEL_TOKENS) {
        const float *xt = x + (size_t)t0 * ldx;
        float *yt = y + (size_t)t0 * ldy;
#define TILE(T_) panel_tile(P, ldp, k, xt, ldx, yt, ldy, m0, m1, accumulate, scale, T_)
        switch (n - t0 < PANEL_TOKENS ? n - t0 : PANEL_TOKENS) {
        case 1: TILE(1); break;
        case 2: TILE(2); break;
        case 3: TILE(3); break;
        case 4: TILE(4); break;
        case 5: TILE(5); break;
        default: TILE(6); break;
        }
#undef TILE
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

void tb_pack_panel_avx2(const void *src, tb_dtype dt, size_t ld, int nr, int cols, float *P)
{
    tb_pack_panel_scalar_width(src, dt, ld, nr, cols, P, TB_PANEL_AVX2);
}

void tb_panel_avx2(const float *P, size_t ldp, int k, const float *x, size_t ldx, int n, float *y, size_t ldy, int nr,
                   int accumulate, float scale)
{
    tb_panel_scalar(P, ldp, k, x, ldx, n, y, ldy, nr, accumulate, scale);
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
