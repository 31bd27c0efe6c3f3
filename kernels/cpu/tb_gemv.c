/* tb_gemv.c - the few-token linear: ISA choice, permutation, bias, and the
 * scalar kernels (the reference the vector ones are tested against is
 * tb_linear_rows, in tests/unit/test_gemv.c). */
#include "tb_gemv.h"
#include "tb_error.h"
#include "tb_gemv_isa.h"
#include "tb_ops.h"
#include "tb_pack.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const isa_names[TB_ISA_COUNT] = {"scalar", "avx2", "avx512"};

const char *tb_isa_name(tb_isa isa) { return isa >= 0 && isa < TB_ISA_COUNT ? isa_names[isa] : "?"; }

int tb_isa_available(tb_isa isa)
{
    switch (isa) {
    case TB_ISA_SCALAR: return 1;
#if defined(__x86_64__) || defined(__i386__)
    /* __builtin_cpu_supports also checks that the OS saves the wide registers.
     * F16C is not asked (clang 14 cannot): every AVX2 CPU has it (Ivy Bridge,
     * Piledriver and later). */
    case TB_ISA_AVX2:
        return tb_gemv_avx2_compiled && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case TB_ISA_AVX512:
        return tb_gemv_avx512_compiled && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
#endif
    default: return 0;
    }
}

static atomic_int chosen = -1;

tb_isa tb_gemv_isa(void)
{
    int isa = atomic_load_explicit(&chosen, memory_order_relaxed);
    if (isa >= 0) return (tb_isa)isa;
    isa = TB_ISA_SCALAR;
    for (int i = TB_ISA_COUNT - 1; i > TB_ISA_SCALAR; i--)
        if (tb_isa_available((tb_isa)i)) {
            isa = i;
            break;
        }
    const char *env = getenv("TB_ISA");
    for (int i = 0; env && i < TB_ISA_COUNT; i++)
        if (!strcmp(env, isa_names[i]) && tb_isa_available((tb_isa)i)) isa = i;
    atomic_store_explicit(&chosen, isa, memory_order_relaxed);
    return (tb_isa)isa;
}

int tb_gemv_set_isa(tb_isa isa)
{
    if (!tb_isa_available(isa))
        return tb_fail(TB_EUSAGE, "instruction set '%s' is not available on this CPU or build", tb_isa_name(isa));
    atomic_store_explicit(&chosen, (int)isa, memory_order_relaxed);
    return TB_OK;
}

static int dtype_ok(tb_dtype dt) { return dt == TB_F32 || dt == TB_F16 || dt == TB_BF16; }

int tb_gemv_supports(const tb_linear *L)
{
    if (!dtype_ok(L->dtype) || L->rows < 1 || L->cols < 1) return 0;
    if (L->format == TB_LINEAR_DENSE) return 1;
    return L->format == TB_LINEAR_NM && L->n == 2 && L->m == 4 && L->cols % 4 == 0;
}

/* a permuted weight's x is permuted this many tokens at a time */
#define PERM_TOKENS 8

size_t tb_gemv_scratch(const tb_linear *L, int n)
{
    return L->perm ? (size_t)(n < PERM_TOKENS ? n : PERM_TOKENS) * (size_t)L->cols : 0;
}

static void rows_isa(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    switch (tb_gemv_isa()) {
    case TB_ISA_AVX512: tb_gemv_rows_avx512(L, x, n, y, r0, r1); break;
    case TB_ISA_AVX2: tb_gemv_rows_avx2(L, x, n, y, r0, r1); break;
    default: tb_gemv_rows_scalar(L, x, n, y, r0, r1); break;
    }
}

void tb_gemv(const tb_linear *L, const float *x, int n, float *y, int r0, int r1, float *work)
{
    if (n <= 0 || r0 >= r1) return;
    if (!L->perm) {
        rows_isa(L, x, n, y, r0, r1);
    } else {
        /* the weight is stored with its columns permuted: permute x to match */
        for (int t0 = 0; t0 < n; t0 += PERM_TOKENS) {
            int nt = n - t0 < PERM_TOKENS ? n - t0 : PERM_TOKENS;
            for (int t = 0; t < nt; t++) {
                const float *xt = x + (size_t)(t0 + t) * L->cols;
                float *wt = work + (size_t)t * L->cols;
                for (int j = 0; j < L->cols; j++) wt[j] = xt[L->perm[j]];
            }
            rows_isa(L, work, nt, y + (size_t)t0 * L->rows, r0, r1);
        }
    }
    if (L->bias)
        for (int t = 0; t < n; t++)
            for (int r = r0; r < r1; r++) y[(size_t)t * L->rows + r] += L->bias[r];
}

/* ---- scalar kernels ---- */

static inline float load_elem(const void *p, size_t i, tb_dtype dt)
{
    if (dt == TB_F32) return ((const float *)p)[i];
    uint16_t h;
    memcpy(&h, (const char *)p + 2 * i, 2); /* mapped data: no alignment promise */
    if (dt == TB_F16) return tb_f16_to_f32(h);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* four partial sums per dot product, so the adds pipeline */
static void dense_scalar(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    const size_t cols = (size_t)L->cols;
    for (int r = r0; r < r1; r++) {
        const size_t w0 = (size_t)r * cols;
        for (int t = 0; t < n; t++) {
            const float *xt = x + t * cols;
            float s[4] = {0, 0, 0, 0};
            size_t c = 0;
            for (; c + 4 <= cols; c += 4)
                for (int k = 0; k < 4; k++) s[k] += load_elem(L->data, w0 + c + k, L->dtype) * xt[c + k];
            for (; c < cols; c++) s[0] += load_elem(L->data, w0 + c, L->dtype) * xt[c];
            y[(size_t)t * L->rows + r] = (s[0] + s[1]) + (s[2] + s[3]);
        }
    }
}

/* 2:4: each index byte holds two groups' positions (2 bits each, low first),
 * i.e. four kept values over eight columns */
static void nm24_scalar(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    const size_t cols = (size_t)L->cols, vpr = cols / 2;
    const size_t irb = (size_t)tb_nm_index_row_bytes(L->cols, 2, 4);
    for (int r = r0; r < r1; r++) {
        const uint8_t *idx = L->indices + (size_t)r * irb;
        const size_t v0 = (size_t)r * vpr;
        for (int t = 0; t < n; t++) {
            const float *xt = x + t * cols;
            float s[4] = {0, 0, 0, 0};
            for (size_t g = 0; g < cols / 4; g++) {
                unsigned nib = idx[g / 2] >> (4 * (g % 2));
                const float *xg = xt + 4 * g;
                s[2 * (g % 2)] += load_elem(L->data, v0 + 2 * g, L->dtype) * xg[nib & 3];
                s[2 * (g % 2) + 1] += load_elem(L->data, v0 + 2 * g + 1, L->dtype) * xg[(nib >> 2) & 3];
            }
            y[(size_t)t * L->rows + r] = (s[0] + s[1]) + (s[2] + s[3]);
        }
    }
}

void tb_gemv_rows_scalar(const tb_linear *L, const float *x, int n, float *y, int r0, int r1)
{
    if (L->format == TB_LINEAR_NM) nm24_scalar(L, x, n, y, r0, r1);
    else dense_scalar(L, x, n, y, r0, r1);
}

/* ---- many tokens: panels ---- */

void tb_panel_scalar(const float *P, size_t ldp, int k, const float *x, size_t ldx, int n, float *y, size_t ldy, int nr,
                     int accumulate, float scale)
{
    for (int t = 0; t < n; t++)
        for (int r = 0; r < nr; r++) {
            float s = accumulate ? y[t * ldy + r] : 0.0f;
            for (int c = 0; c < k; c++) s += x[t * ldx + c] * P[c * ldp + r];
            y[t * ldy + r] = scale == 1.0f ? s : scale * s;
        }
}

void tb_pack_panel_scalar_width(const void *src, tb_dtype dt, size_t ld, int nr, int cols, float *P, int width)
{
    for (int c = 0; c < cols; c++)
        for (int i = 0; i < width; i++) P[(size_t)c * width + i] = i < nr ? load_elem(src, (size_t)i * ld + c, dt) : 0.0f;
}

void tb_pack_panel_scalar(const void *src, tb_dtype dt, size_t ld, int nr, int cols, float *P)
{
    tb_pack_panel_scalar_width(src, dt, ld, nr, cols, P, TB_PANEL_SCALAR);
}

static void panel_isa(tb_isa isa, const float *P, size_t ldp, int k, const float *x, size_t ldx, int n, float *y,
                      size_t ldy, int nr, int accumulate, float scale)
{
    switch (isa) {
    case TB_ISA_AVX512: tb_panel_avx512(P, ldp, k, x, ldx, n, y, ldy, nr, accumulate, scale); break;
    case TB_ISA_AVX2: tb_panel_avx2(P, ldp, k, x, ldx, n, y, ldy, nr, accumulate, scale); break;
    default: tb_panel_scalar(P, ldp, k, x, ldx, n, y, ldy, nr, accumulate, scale); break;
    }
}

int tb_gemm_rows_unit(void)
{
    switch (tb_gemv_isa()) {
    case TB_ISA_AVX512: return TB_PANEL_AVX512;
    case TB_ISA_AVX2: return TB_PANEL_AVX2;
    default: return TB_PANEL_SCALAR;
    }
}

size_t tb_gemm_scratch(const tb_linear *L)
{
    /* the panel; unless W is dense in stored order, its rows decoded to f32
     * and tb_linear_rows's buffer for a permuted row */
    int direct = L->format == TB_LINEAR_DENSE && !L->perm;
    return (size_t)(direct ? TB_PANEL_MAX : 2 * TB_PANEL_MAX + 1) * (size_t)L->cols;
}

/* Columns of the panel per pass over the tokens: the panel's slice (GEMM_K x
 * 32 floats, 32 KB) and a tile's x (12 x GEMM_K) stay in a 48 KB L1. The
 * blocking does not change any sum: a later block resumes from the f32 value
 * the earlier one stored. */
#define GEMM_K 256

void tb_gemm(const tb_linear *L, const float *x, int n, float *y, int r0, int r1, float *work)
{
    if (n <= 0 || r0 >= r1) return;
    const tb_isa isa = tb_gemv_isa();
    const int pw = tb_gemm_rows_unit(), cols = L->cols;
    const int direct = L->format == TB_LINEAR_DENSE && !L->perm;
    float *P = work, *rows = P + (size_t)pw * cols, *row_buf = rows + (size_t)pw * cols;
    for (int p0 = r0; p0 < r1; p0 += pw) {
        const int nr = r1 - p0 < pw ? r1 - p0 : pw;
        /* W's rows p0 .. p0+nr-1 in model column order, as the panel's
         * columns: read as stored where W is dense, else decoded first */
        const void *src = (const char *)L->data + (size_t)p0 * cols * tb_dtype_size(L->dtype);
        tb_dtype dt = L->dtype;
        if (!direct) {
            tb_linear_rows(L, p0, nr, rows, row_buf);
            src = rows;
            dt = TB_F32;
        }
        switch (isa) {
        case TB_ISA_AVX512: tb_pack_panel_avx512(src, dt, (size_t)cols, nr, cols, P); break;
        case TB_ISA_AVX2: tb_pack_panel_avx2(src, dt, (size_t)cols, nr, cols, P); break;
        default: tb_pack_panel_scalar(src, dt, (size_t)cols, nr, cols, P); break;
        }
        for (int k0 = 0; k0 < cols; k0 += GEMM_K) {
            const int kc = cols - k0 < GEMM_K ? cols - k0 : GEMM_K;
            panel_isa(isa, P + (size_t)k0 * pw, (size_t)pw, kc, x + k0, (size_t)cols, n, y + p0, (size_t)L->rows, nr,
                      k0 > 0, 1.0f);
        }
    }
    if (L->bias)
        for (int t = 0; t < n; t++)
            for (int r = r0; r < r1; r++) y[(size_t)t * L->rows + r] += L->bias[r];
}

int tb_gemm_f32_nt(int n, int rows, int k, float alpha, const float *x, size_t ldx, const float *w, size_t ldw, float *y,
                   size_t ldy)
{
    const tb_isa isa = tb_gemv_isa();
    if (isa < TB_ISA_AVX2) return 0;
    const int pw = tb_gemm_rows_unit();
    float P[TB_PANEL_MAX * GEMM_K] __attribute__((aligned(64)));
    for (int r0 = 0; r0 < rows; r0 += pw) {
        const int nr = rows - r0 < pw ? rows - r0 : pw;
        for (int k0 = 0; k0 < k; k0 += GEMM_K) {
            const int kc = k - k0 < GEMM_K ? k - k0 : GEMM_K;
            const float *src = w + (size_t)r0 * ldw + k0;
            if (isa == TB_ISA_AVX512) tb_pack_panel_avx512(src, TB_F32, ldw, nr, kc, P);
            else tb_pack_panel_avx2(src, TB_F32, ldw, nr, kc, P);
            /* alpha on the finished sum, as sgemm applies it */
            panel_isa(isa, P, (size_t)pw, kc, x + k0, ldx, n, y + r0, ldy, nr, k0 > 0, k0 + kc < k ? 1.0f : alpha);
        }
    }
    return 1;
}

int tb_gemm_f32_nn(int n, int cols, int k, const float *x, size_t ldx, const float *v, size_t ldv, float *y, size_t ldy)
{
    const tb_isa isa = tb_gemv_isa();
    const int pw = tb_gemm_rows_unit();
    if (isa < TB_ISA_AVX2 || cols % pw) return 0;
    for (int d0 = 0; d0 < cols; d0 += pw) panel_isa(isa, v + d0, ldv, k, x, ldx, n, y + d0, ldy, pw, 0, 1.0f);
    return 1;
}

/* ---- decode attention ---- */

/* dot product with 8 independent partial sums, which compilers vectorise */
static float dot8(const float *a, const float *b, int n)
{
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    for (; i < n; i++) acc[0] += a[i] * b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* out += w * v, in blocks of 8 that compilers vectorise */
static void axpy8(float *restrict out, float w, const float *restrict v, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) out[i + k] += w * v[i + k];
    for (; i < n; i++) out[i] += w * v[i];
}

void tb_att_scores_scalar(const float *q, const float *k, int ldk, int hd, int lo, int p, float scale, float *row)
{
    for (int c = lo; c <= p; c++) row[c] = scale * dot8(q, k + (size_t)c * ldk, hd);
}

void tb_att_pv_scalar(const float *row, const float *v, int ldk, int hd, int lo, int p, float *out)
{
    for (int d = 0; d < hd; d++) out[d] = 0.0f;
    for (int c = lo; c <= p; c++) axpy8(out, row[c], v + (size_t)c * ldk, hd);
}

void tb_attend_row(const float *q, const float *k, const float *v, int ldk, int hd, int lo, int p, float scale,
                   float *row, float *out)
{
    switch (tb_gemv_isa()) {
    case TB_ISA_AVX512: tb_att_scores_avx512(q, k, ldk, hd, lo, p, scale, row); break;
    case TB_ISA_AVX2: tb_att_scores_avx2(q, k, ldk, hd, lo, p, scale, row); break;
    default: tb_att_scores_scalar(q, k, ldk, hd, lo, p, scale, row); break;
    }
    tb_softmax(row + lo, p + 1 - lo);
    switch (tb_gemv_isa()) {
    case TB_ISA_AVX512: tb_att_pv_avx512(row, v, ldk, hd, lo, p, out); break;
    case TB_ISA_AVX2: tb_att_pv_avx2(row, v, ldk, hd, lo, p, out); break;
    default: tb_att_pv_scalar(row, v, ldk, hd, lo, p, out); break;
    }
}
