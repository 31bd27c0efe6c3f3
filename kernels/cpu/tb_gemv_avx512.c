/* tb_gemv_avx512.c - tb_gemv's AVX-512 (F, BW, VL) kernels; built with
 * -mavx512f -mavx512bw -mavx512vl -mfma -mf16c (Makefile) and entered only
 * when the CPU has them (tb_gemv.c).
 *
 * Tiles of R <= 4 rows x T <= 4 tokens: each weight vector is loaded and
 * converted once per tile and used for T tokens; each x vector is loaded once
 * and used for R rows. 16 f32 lanes; a row's sum is reduced at the end.
 *
 * Dense: 16 elements of W per step, bf16 -> f32 by widening and shifting
 * (bf16 is the top half of an f32), f16 by vcvtph2ps.
 *
 * 2:4: per step 16 kept values (8 groups, 32 columns of x) and 4 index bytes.
 * Kept value k of the step lies in group k/2 at position p_k (bits 2k..2k+1
 * of the 32 index bits), i.e. column 4*(k/2) + p_k of the step's 32: one
 * vpermt2ps over the two x vectors of those columns picks x for all 16 lanes.
 * The lane indices are (bits >> 2k) & 3 | 4*(k/2): a variable shift of the
 * broadcast bits and one ternary-logic op.
 *
 * Panels (tb_gemm): 32 rows x 12 tokens of accumulators, rows in the lanes,
 * x broadcast; panels are packed with 16 x 16 in-register transposes.
 * Decode attention: 16 keys' scores at a time, summed by the transpose's
 * swaps; P V over 4 keys per step.
 */
#include "tb_gemv_isa.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__FMA__) && defined(__F16C__)

#include "tb_pack.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

const int tb_gemv_avx512_compiled = 1;

#define INLINE static inline __attribute__((always_inline))
/* the tile loops must unroll fully, so that the accumulators live in registers */
#define UNROLL _Pragma("GCC unroll 4")

INLINE __m512 widen(__m256i h, tb_dtype dt)
{
    if (dt == TB_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 elements of dtype dt at element offset i of p; m: which lanes to load (others 0) */
INLINE __m512 load16(const void *p, size_t i, tb_dtype dt)
{
    if (dt == TB_F32) return _mm512_loadu_ps((const float *)p + i);
    return widen(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)), dt);
}

INLINE __m512 load16_mask(const void *p, size_t i, tb_dtype dt, __mmask16 m)
{
    if (dt == TB_F32) return _mm512_maskz_loadu_ps(m, (const float *)p + i);
    return widen(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i), dt);
}

static inline __mmask16 first_lanes(int k) { return k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << k) - 1); }

#define PF_ROWS 4

/* ---- dense ---- */

INLINE void dense_tile(const void *w, size_t r, size_t cols, tb_dtype dt, const float *x, float *y, size_t ldy,
                       const int R, const int T)
{
    /* the rows PF_ROWS ahead are fetched while these are used: rows of a
     * small model are a few cache lines, too short for the hardware
     * prefetcher to follow each one (ldy is the row count) */
    const size_t es = dt == TB_F32 ? 4 : 2;
    const int pf = r + PF_ROWS + R <= ldy;
    __m512 acc[4][4];
    UNROLL
    for (int i = 0; i < R; i++)
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    size_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m512 wv[4];
        UNROLL
        for (int i = 0; i < R; i++) {
            if (pf) _mm_prefetch((const char *)w + ((r + i + PF_ROWS) * cols + c) * es, _MM_HINT_T0);
            wv[i] = load16(w, (r + i) * cols + c, dt);
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_loadu_ps(x + t * cols + c);
            UNROLL
            for (int i = 0; i < R; i++) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
        }
    }
    if (c < cols) {
        __mmask16 m = first_lanes((int)(cols - c));
        __m512 wv[4];
        UNROLL
        for (int i = 0; i < R; i++) wv[i] = load16_mask(w, (r + i) * cols + c, dt, m);
        UNROLL
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + t * cols + c);
            UNROLL
            for (int i = 0; i < R; i++) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
        }
    }
    UNROLL
    for (int i = 0; i < R; i++)
        UNROLL
        for (int t = 0; t < T; t++) y[t * ldy + r + i] = _mm512_reduce_add_ps(acc[i][t]);
}

/* ---- 2:4 ---- */

INLINE __m512i lane_columns(uint32_t bits)
{
    const __m512i shift = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i group = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    __m512i p = _mm512_srlv_epi32(_mm512_set1_epi32((int)bits), shift);
    return _mm512_ternarylogic_epi32(p, _mm512_set1_epi32(3), group, 0xEA); /* (p & 3) | group */
}

INLINE void nm24_tile(const void *v, const uint8_t *ix, size_t irb, size_t r, size_t cols, tb_dtype dt,
                      const float *x, float *y, size_t ldy, const int R, const int T)
{
    const size_t es = dt == TB_F32 ? 4 : 2;
    const int pf = r + PF_ROWS + R <= ldy; /* as in dense_tile */
    const size_t vpr = cols / 2;
    __m512 acc[4][4];
    UNROLL
    for (int i = 0; i < R; i++)
        UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    size_t c = 0;
    for (; c + 32 <= cols; c += 32) {
        __m512i sel[4];
        __m512 wv[4];
        UNROLL
        for (int i = 0; i < R; i++) {
            uint32_t bits;
            if (pf) {
                _mm_prefetch((const char *)v + ((r + i + PF_ROWS) * vpr + c / 2) * es, _MM_HINT_T0);
                _mm_prefetch((const char *)(ix + (r + i + PF_ROWS) * irb + c / 8), _MM_HINT_T0);
            }
            memcpy(&bits, ix + (r + i) * irb + c / 8, 4);
            sel[i] = lane_columns(bits);
            wv[i] = load16(v, (r + i) * vpr + c / 2, dt);
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            __m512 x0 = _mm512_loadu_ps(x + t * cols + c), x1 = _mm512_loadu_ps(x + t * cols + c + 16);
            UNROLL
            for (int i = 0; i < R; i++)
                acc[i][t] = _mm512_fmadd_ps(wv[i], _mm512_permutex2var_ps(x0, sel[i], x1), acc[i][t]);
        }
    }
    if (c < cols) {
        /* the last 4..28 columns: g groups, 2g kept values, ceil(g/2) index bytes */
        int rest = (int)(cols - c), g = rest / 4;
        __mmask16 mv = first_lanes(2 * g), mx0 = first_lanes(rest), mx1 = first_lanes(rest > 16 ? rest - 16 : 0);
        __m512i sel[4];
        __m512 wv[4];
        UNROLL
        for (int i = 0; i < R; i++) {
            uint32_t bits = 0;
            memcpy(&bits, ix + (r + i) * irb + c / 8, (size_t)(g + 1) / 2);
            sel[i] = lane_columns(bits);
            wv[i] = load16_mask(v, (r + i) * vpr + c / 2, dt, mv);
        }
        UNROLL
        for (int t = 0; t < T; t++) {
            __m512 x0 = _mm512_maskz_loadu_ps(mx0, x + t * cols + c);
            __m512 x1 = _mm512_maskz_loadu_ps(mx1, x + t * cols + c + 16);
            UNROLL
            for (int i = 0; i < R; i++)
                acc[i][t] = _mm512_fmadd_ps(wv[i], _mm512_permutex2var_ps(x0, sel[i], x1), acc[i][t]);
        }
    }
    UNROLL
    for (int i = 0; i < R; i++)
        UNROLL
        for (int t = 0; t < T; t++) y[t * ldy + r + i] = _mm512_reduce_add_ps(acc[i][t]);
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

/* one instantiation per dtype, so the conversion is resolved at compile time */
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

void tb_gemv_rows_avx512(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    int nm = L->format == TB_LINEAR_NM;
    switch (L->dtype) {
    case TB_F32: (nm ? nm24_f32 : dense_f32)(L, x, n, y, r0, r1); break;
    case TB_F16: (nm ? nm24_f16 : dense_f16)(L, x, n, y, r0, r1); break;
    default: (nm ? nm24_bf16 : dense_bf16)(L, x, n, y, r0, r1); break;
    }
}

/* ---- many tokens: the panel kernel (tb_gemm) ----
 * 32 rows (two registers) x up to 12 tokens of accumulators: per column of
 * the panel, two loads of W, 12 broadcasts of x and 24 FMAs; no reduction at
 * the end, the rows are the lanes. Each output's sum runs over c in order, in
 * one lane, whatever the tile it falls in. */

#define PANEL_TOKENS 12

INLINE void panel_tile(const float *P, size_t ldp, int k, const float *x, size_t ldx, float *y, size_t ldy, __mmask16 m0,
                       __mmask16 m1, int accumulate, float scale, const int T)
{
    __m512 a0[PANEL_TOKENS], a1[PANEL_TOKENS];
    _Pragma("GCC unroll 12") for (int t = 0; t < T; t++)
    {
        a0[t] = accumulate ? _mm512_maskz_loadu_ps(m0, y + t * ldy) : _mm512_setzero_ps();
        a1[t] = accumulate ? _mm512_maskz_loadu_ps(m1, y + t * ldy + 16) : _mm512_setzero_ps();
    }
    for (size_t c = 0; c < (size_t)k; c++) {
        __m512 w0 = _mm512_loadu_ps(P + c * ldp), w1 = _mm512_loadu_ps(P + c * ldp + 16);
        _Pragma("GCC unroll 12") for (int t = 0; t < T; t++)
        {
            __m512 b = _mm512_set1_ps(x[t * ldx + c]);
            a0[t] = _mm512_fmadd_ps(w0, b, a0[t]);
            a1[t] = _mm512_fmadd_ps(w1, b, a1[t]);
        }
    }
    _Pragma("GCC unroll 12") for (int t = 0; t < T; t++)
    {
        if (scale != 1.0f) {
            a0[t] = _mm512_mul_ps(a0[t], _mm512_set1_ps(scale));
            a1[t] = _mm512_mul_ps(a1[t], _mm512_set1_ps(scale));
        }
        _mm512_mask_storeu_ps(y + t * ldy, m0, a0[t]);
        _mm512_mask_storeu_ps(y + t * ldy + 16, m1, a1[t]);
    }
}


/* 16 x 16 transpose in registers: swap the off-diagonal 8 x 8 blocks, then
 * the 4 x 4 blocks inside each, then 2 x 2, then single elements, each swap
 * one two-source permute per row (64 in all) */
/* lane indices of the swaps: a row with bit s clear takes its own lanes
 * without bit s and its partner's (row + s) lanes l - s where l has bit s */
static const int32_t swap_idx[4][2][16] __attribute__((aligned(64))) = {
#define SWAP_IDX(s)                                                                                                    \
    {{0 & s ? 16 : 0, 1 & s ? 17 - s : 1, 2 & s ? 18 - s : 2, 3 & s ? 19 - s : 3, 4 & s ? 20 - s : 4,              \
      5 & s ? 21 - s : 5, 6 & s ? 22 - s : 6, 7 & s ? 23 - s : 7, 8 & s ? 24 - s : 8, 9 & s ? 25 - s : 9,           \
      10 & s ? 26 - s : 10, 11 & s ? 27 - s : 11, 12 & s ? 28 - s : 12, 13 & s ? 29 - s : 13,                      \
      14 & s ? 30 - s : 14, 15 & s ? 31 - s : 15},                                                                   \
     {0 & s ? 16 : 0 + s, 1 & s ? 17 : 1 + s, 2 & s ? 18 : 2 + s, 3 & s ? 19 : 3 + s, 4 & s ? 20 : 4 + s,           \
      5 & s ? 21 : 5 + s, 6 & s ? 22 : 6 + s, 7 & s ? 23 : 7 + s, 8 & s ? 24 : 8 + s, 9 & s ? 25 : 9 + s,           \
      10 & s ? 26 : 10 + s, 11 & s ? 27 : 11 + s, 12 & s ? 28 : 12 + s, 13 & s ? 29 : 13 + s,                      \
      14 & s ? 30 : 14 + s, 15 & s ? 31 : 15 + s}}
    SWAP_IDX(8), SWAP_IDX(4), SWAP_IDX(2), SWAP_IDX(1)
#undef SWAP_IDX
};

/* 16 x 16 transpose in registers: swap the off-diagonal 8 x 8 blocks, then
 * the 4 x 4 blocks inside each, then 2 x 2, then single elements, each swap
 * one two-source permute per row (64 in all) */
INLINE void transpose16(__m512 r[16])
{
    _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++)
    {
        const int s = 8 >> q;
        const __m512i lo = _mm512_load_si512(swap_idx[q][0]), hi = _mm512_load_si512(swap_idx[q][1]);
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)
        {
            if (i & s) continue;
            __m512 a = r[i], b = r[i + s];
            r[i] = _mm512_permutex2var_ps(a, lo, b);
            r[i + s] = _mm512_permutex2var_ps(a, hi, b);
        }
    }
}

INLINE void pack_panel(const void *src, size_t ld, int nr, int cols, float *P, tb_dtype dt)
{
    for (int c = 0; c < cols; c += 16) {
        const int nc = cols - c < 16 ? cols - c : 16;
        const __mmask16 m = first_lanes(nc);
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++)
        {
            __m512 r[16];
            _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)
            {
                const int row = 16 * h + i;
                r[i] = row < nr ? load16_mask(src, (size_t)row * ld + c, dt, m) : _mm512_setzero_ps();
            }
            transpose16(r);
            _Pragma("GCC unroll 16") for (int j = 0; j < 16; j++) if (j < nc)
                _mm512_storeu_ps(P + (size_t)(c + j) * 32 + 16 * h, r[j]);
        }
    }
}

void tb_pack_panel_avx512(const void *src, tb_dtype dt, size_t ld, int nr, int cols, float *P)
{
    switch (dt) {
    case TB_F32: pack_panel(src, ld, nr, cols, P, TB_F32); break;
    case TB_F16: pack_panel(src, ld, nr, cols, P, TB_F16); break;
    default: pack_panel(src, ld, nr, cols, P, TB_BF16); break;
    }
}

void tb_panel_avx512(const float *P, size_t ldp, int k, const float *x, size_t ldx, int n, float *y, size_t ldy, int nr,
                     int accumulate, float scale)
{
    __mmask16 m0 = first_lanes(nr), m1 = first_lanes(nr > 16 ? nr - 16 : 0);
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
        case 6: TILE(6); break;
        case 7: TILE(7); break;
        case 8: TILE(8); break;
        case 9: TILE(9); break;
        case 10: TILE(10); break;
        case 11: TILE(11); break;
        default: TILE(12); break;
        }
#undef TILE
    }
}

/* ---- decode attention ---- */

/* lane j = the sum of v[j]'s lanes, for 16 vectors: four rounds of the
 * transpose's swaps, each adding the two halves it pairs (15 adds, 30
 * permutes, against 16 separate reductions' ~130 dependent ops) */
INLINE __m512 sum16(__m512 v[16])
{
    _Pragma("GCC unroll 4") for (int q = 0, m = 8; q < 4; q++, m /= 2)
    {
        const __m512i lo = _mm512_load_si512(swap_idx[q][0]), hi = _mm512_load_si512(swap_idx[q][1]);
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) if (i < m)
            v[i] = _mm512_add_ps(_mm512_permutex2var_ps(v[i], lo, v[i + m]), _mm512_permutex2var_ps(v[i], hi, v[i + m]));
    }
    return v[0];
}

/* 16 keys at a time, q in registers: hd a multiple of 16 up to 128 */
INLINE int scores16(const float *q, const float *k, int ldk, const int hd, int lo, int p, float scale, float *row)
{
    __m512 qv[8];
    _Pragma("GCC unroll 8") for (int d = 0; d < hd / 16; d++) qv[d] = _mm512_loadu_ps(q + 16 * d);
    int c = lo;
    for (; c + 16 <= p + 1; c += 16) {
        __m512 acc[16];
        _Pragma("GCC unroll 16") for (int j = 0; j < 16; j++)
        {
            const float *kc = k + (size_t)(c + j) * ldk;
            acc[j] = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kc));
            _Pragma("GCC unroll 8") for (int d = 1; d < hd / 16; d++) acc[j] = _mm512_fmadd_ps(qv[d], _mm512_loadu_ps(kc + 16 * d), acc[j]);
        }
        _mm512_storeu_ps(row + c, _mm512_mul_ps(_mm512_set1_ps(scale), sum16(acc)));
    }
    return c;
}

void tb_att_scores_avx512(const float *q, const float *k, int ldk, int hd, int lo, int p, float scale, float *row)
{
    int c = lo;
    if (hd == 64) c = scores16(q, k, ldk, 64, lo, p, scale, row);
    else if (hd == 128) c = scores16(q, k, ldk, 128, lo, p, scale, row);
    for (; c <= p; c++) {
        const float *kc = k + (size_t)c * ldk;
        __m512 acc = _mm512_setzero_ps();
        for (int d = 0; d < hd; d += 16) {
            __mmask16 m = first_lanes(hd - d);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d), _mm512_maskz_loadu_ps(m, kc + d), acc);
        }
        row[c] = scale * _mm512_reduce_add_ps(acc);
    }
}

void tb_att_pv_avx512(const float *row, const float *v, int ldk, int hd, int lo, int p, float *out)
{
    /* 64 outputs (4 registers) at a time over all keys, 4 keys per step into
     * separate accumulators (one chain of FMAs per register would wait on
     * its own latency), summed at the end */
    for (int d0 = 0; d0 < hd; d0 += 64) {
        __mmask16 m[4];
        __m512 acc[4][4];
        UNROLL
        for (int i = 0; i < 4; i++) {
            m[i] = first_lanes(hd - d0 - 16 * i > 0 ? hd - d0 - 16 * i : 0);
            UNROLL
            for (int u = 0; u < 4; u++) acc[u][i] = _mm512_setzero_ps();
        }
        int c = lo;
        for (; c + 4 <= p + 1; c += 4)
            UNROLL
            for (int u = 0; u < 4; u++) {
                const float *vc = v + (size_t)(c + u) * ldk + d0;
                __m512 w = _mm512_set1_ps(row[c + u]);
                UNROLL
                for (int i = 0; i < 4; i++)
                    acc[u][i] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m[i], vc + 16 * i), acc[u][i]);
            }
        for (; c <= p; c++) {
            const float *vc = v + (size_t)c * ldk + d0;
            __m512 w = _mm512_set1_ps(row[c]);
            UNROLL
            for (int i = 0; i < 4; i++) acc[0][i] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m[i], vc + 16 * i), acc[0][i]);
        }
        UNROLL
        for (int i = 0; i < 4; i++)
            _mm512_mask_storeu_ps(out + d0 + 16 * i, m[i],
                                  _mm512_add_ps(_mm512_add_ps(acc[0][i], acc[1][i]), _mm512_add_ps(acc[2][i], acc[3][i])));
    }
}

#else /* not built for AVX-512 */

const int tb_gemv_avx512_compiled = 0;

void tb_gemv_rows_avx512(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    tb_gemv_rows_scalar(L, x, n, y, r0, r1);
}

void tb_pack_panel_avx512(const void *src, tb_dtype dt, size_t ld, int nr, int cols, float *P)
{
    tb_pack_panel_scalar_width(src, dt, ld, nr, cols, P, TB_PANEL_AVX512);
}

void tb_panel_avx512(const float *P, size_t ldp, int k, const float *x, size_t ldx, int n, float *y, size_t ldy, int nr,
                     int accumulate, float scale)
{
    tb_panel_scalar(P, ldp, k, x, ldx, n, y, ldy, nr, accumulate, scale);
}

void tb_att_scores_avx512(const float *q, const float *k, int ldk, int hd, int lo, int p, float scale, float *row)
{
    tb_att_scores_scalar(q, k, ldk, hd, lo, p, scale, row);
}

void tb_att_pv_avx512(const float *row, const float *v, int ldk, int hd, int lo, int p, float *out)
{
    tb_att_pv_scalar(row, v, ldk, hd, lo, p, out);
}

#endif
