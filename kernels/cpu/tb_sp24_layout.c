/* tb_sp24_layout.c - .tb -> sparse-mma fragment layout, its decoder, and the
 * CPU reference GEMM. See tb_sp24_layout.h for the layout. */
#include "tb_sp24_layout.h"

#include <string.h>

#include "tb_dtype.h"
#include "tb_error.h"

int tb_sp24_check_shape(int64_t rows, int64_t cols)
{
    if (rows <= 0 || rows % 32)
        return tb_fail(TB_EUSAGE, "2:4 GEMM: rows (%lld) must be a positive multiple of 32", (long long)rows);
    if (cols <= 0 || cols % 64)
        return tb_fail(TB_EUSAGE, "2:4 GEMM: cols (%lld) must be a positive multiple of 64", (long long)cols);
    return TB_OK;
}

size_t tb_sp24_a_bytes(int64_t rows, int64_t cols) { return (size_t)rows * (size_t)cols; }
size_t tb_sp24_e_bytes(int64_t rows, int64_t cols) { return (size_t)rows * (size_t)cols / 8; }

/* nibble of group j of a .tb index row (two groups per byte, low nibble first) */
static inline unsigned tb_nibble(const uint8_t *idx_row, int64_t j) { return (idx_row[j >> 1] >> ((j & 1) * 4)) & 15u; }

int tb_sp24_reorder(const uint16_t *values, const uint8_t *indices, int64_t rows, int64_t cols, uint16_t *a,
                    uint32_t *e)
{
    int rc = tb_sp24_check_shape(rows, cols);
    if (rc) return rc;
    const int64_t k32 = cols / 32, vrow = cols / 2, irow = cols / 8;
    /* validate first, so a bad file leaves no half-written output behind */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols / 4; j++) {
            unsigned nib = tb_nibble(indices + r * irow, j);
            if ((nib & 3u) >= (nib >> 2))
                return tb_fail(TB_EDATA, "2:4 weight: row %lld, group %lld: positions %u, %u not ascending",
                               (long long)r, (long long)j, nib & 3u, nib >> 2);
        }
    memset(e, 0, tb_sp24_e_bytes(rows, cols));
    /* Walk the weight row by row, group by group, and put each kept pair and
     * nibble where its lane holds it. */
    for (int64_t r = 0; r < rows; r++) {
        const int64_t mt = r / 16, p = r / 32;
        const int g = (int)(r % 8), hi_row = (int)((r % 16) / 8); /* row g or g + 8 of the tile */
        const int tile_in_pair = (int)((r % 32) / 16);
        for (int64_t j = 0; j < cols / 4; j++) {
            const int64_t ks = j / 8;
            const int q = (int)(j % 8); /* group within the 32 columns */
            const int t = q % 4, upper = q / 4;
            /* A: lane 4g + t, registers (a0 a1 | a2 a3 | a4 a5 | a6 a7) */
            const int slot = upper * 4 + hi_row * 2;
            uint16_t *dst = a + ((mt * k32 + ks) * 32 + (4 * g + t)) * 8 + slot;
            dst[0] = values[r * vrow + 2 * j];
            dst[1] = values[r * vrow + 2 * j + 1];
            /* E: lane 4g + s, s = 2 * tile_in_pair + half; nibble c of the half */
            const int s = 2 * tile_in_pair + upper, c = q % 4;
            uint32_t *w = e + (p * k32 + ks) * 32 + (4 * g + s);
            *w |= (uint32_t)tb_nibble(indices + r * irow, j) << (16 * hi_row + 4 * c);
        }
    }
    return TB_OK;
}

void tb_sp24_decode(const uint16_t *a, const uint32_t *e, int64_t rows, int64_t cols, float *dense)
{
    const int64_t k32 = cols / 32;
    memset(dense, 0, (size_t)rows * (size_t)cols * sizeof(float));
    /* Read as the hardware does: tile by tile, lane by lane, register by
     * register (PTX ISA, sparse mma.m16n8k32 .bf16: the A fragment is the
     * dense m16n8k16 one over the compressed tile; the metadata comes from
     * the lanes the sparsity selector names). */
    for (int64_t mt = 0; mt < rows / 16; mt++)
        for (int64_t ks = 0; ks < k32; ks++) {
            const int64_t p = mt / 2;
            const int sel = (int)(mt % 2);
            for (int lane = 0; lane < 32; lane++) {
                const int g = lane >> 2, t = lane & 3;
                const uint16_t *frag = a + ((mt * k32 + ks) * 32 + lane) * 8;
                for (int i = 0; i < 8; i++) {
                    const int row = g + ((i >> 1) & 1) * 8;        /* a2 a3, a6 a7: row g + 8 */
                    const int ccol = t * 2 + (i & 1) + (i >> 2) * 8; /* column in the compressed 16 */
                    const int grp = ccol / 2, which = ccol % 2;      /* group of the 32, first/second kept */
                    /* metadata: lane 4g + 2 sel + (grp / 4), row half in bits 16.. */
                    const uint32_t word = e[(p * k32 + ks) * 32 + 4 * g + 2 * sel + grp / 4];
                    const int shift = 16 * (row / 8) + 4 * (grp % 4) + 2 * which;
                    const int pos = (int)((word >> shift) & 3u);
                    dense[(mt * 16 + row) * cols + ks * 32 + grp * 4 + pos] = tb_bf16_to_f32(frag[i]);
                }
            }
        }
}

void tb_sp24_gemm_ref(const uint16_t *values, const uint8_t *indices, int64_t rows, int64_t cols, const float *x,
                      int n, int64_t row_from, int64_t row_to, double *y)
{
    const int64_t vrow = cols / 2, irow = cols / 8;
    for (int64_t r = row_from; r < row_to; r++) {
        const uint16_t *v = values + r * vrow;
        const uint8_t *ix = indices + r * irow;
        for (int tk = 0; tk < n; tk++) {
            const float *xr = x + (int64_t)tk * cols;
            double acc = 0.0;
            for (int64_t j = 0; j < cols / 4; j++) {
                unsigned nib = tb_nibble(ix, j);
                acc += (double)tb_bf16_to_f32(v[2 * j]) * xr[4 * j + (nib & 3u)];
                acc += (double)tb_bf16_to_f32(v[2 * j + 1]) * xr[4 * j + (nib >> 2)];
            }
            y[(int64_t)tk * rows + r] = acc;
        }
    }
}
