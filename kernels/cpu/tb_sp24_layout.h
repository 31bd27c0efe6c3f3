/* tb_sp24_layout.h - the 2:4 weight layout of the sparse tensor-core GEMM
 * (kernels/cuda/tb_sp24_gemm.cu), its reorder from the .tb layout, and the
 * CPU reference of y = x W^T for a 2:4 weight. Plain C, no CUDA: the reorder
 * runs on the host at load time and is unit tested without a GPU.
 *
 * W is [rows, cols] (nn.Linear: out, in) with 2 of every 4 consecutive
 * columns kept. In .tb (formats/tb_pack.h) a row is its kept values in column
 * order ([rows, cols/2] bf16) plus 2-bit in-group positions, one nibble per
 * group (lower position in the low 2 bits), two groups per byte.
 *
 * The kernel computes D = A B with the sparse mma
 *   mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32
 * where A = W (16 rows x 32 columns, stored as 16 x 16 kept values), B = x^T
 * (32 columns x 8 tokens) and D = y^T. The layout stores every operand in
 * the order the threads of a warp hold it, so a warp loads its A fragment
 * and metadata with one 16-byte and one 4-byte coalesced load per lane and
 * no shuffles. With lane = 4*g + t (g = lane / 4, t = lane % 4), K32 =
 * cols / 32, and a "tile" being 16 rows x 32 columns:
 *
 *   A  bf16, tile (mt, ks) = rows 16mt.., columns 32ks.. at element
 *      ((mt * K32 + ks) * 32 + lane) * 8. The lane's 8 values are the PTX
 *      fragment a0..a7 of the compressed 16 x 16 tile (the dense m16n8k16 A
 *      fragment): a0 a1 = the kept pair of group t of row g, a2 a3 = group t
 *      of row g + 8, a4 a5 = group t + 4 of row g, a6 a7 = group t + 4 of
 *      row g + 8 (groups counted within the tile's 32 columns).
 *   E  u32 metadata, rows 32p.. (tiles 2p and 2p + 1), columns 32ks.. at
 *      word (p * K32 + ks) * 32 + lane. For lane 4g + s, tile 2p + (s >> 1)
 *      and half h = s & 1 (columns 16h .. 16h + 15 of the 32): bits 4c .. 4c+3
 *      hold the nibble of group 4h + c of row g, bits 16 + 4c .. hold that of
 *      row g + 8 (c = 0..3). Tile 2p uses sparsity selector 0 (lanes 4g, 4g+1
 *      supply metadata), tile 2p + 1 selector 1 (lanes 4g + 2, 4g + 3).
 *
 * The A bytes equal the .tb values' (rows * cols), E is rows * cols / 8
 * bytes, the .tb indices' size: 0.5625x the bytes of dense bf16.
 * Shapes: rows % 32 == 0 and cols % 64 == 0 (the GEMM's k-tile).
 */
#ifndef TB_SP24_LAYOUT_H
#define TB_SP24_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* TB_OK, or TB_EUSAGE naming the dimension the kernel layout cannot take. */
int tb_sp24_check_shape(int64_t rows, int64_t cols);
/* Bytes of the kernel layout's A (kept values) and E (metadata) arrays. */
size_t tb_sp24_a_bytes(int64_t rows, int64_t cols);
size_t tb_sp24_e_bytes(int64_t rows, int64_t cols);

/* .tb (values bf16 [rows, cols/2], indices u8 [rows, cols/8]) -> the kernel
 * layout (a: tb_sp24_a_bytes, e: tb_sp24_e_bytes). Checks the shape and that
 * every group's two positions are strictly ascending (TB_EDATA naming row and
 * group otherwise: the sparse mma reads anything else as undefined). */
int tb_sp24_reorder(const uint16_t *values, const uint8_t *indices, int64_t rows, int64_t cols, uint16_t *a,
                    uint32_t *e);

/* The kernel layout back to dense f32 [rows, cols] (pruned entries 0), read
 * the way the tensor core reads it (fragment by fragment, lane by lane): the
 * unit test's independent check of tb_sp24_reorder. */
void tb_sp24_decode(const uint16_t *a, const uint32_t *e, int64_t rows, int64_t cols, float *dense);

/* CPU reference: y[t, r] = sum_c x[t, c] W[r, c] for t < n, from the .tb
 * arrays, in f64 (x f32 [n, cols], y f64 [n, rows]). rows_from..rows_to
 * limits the rows computed (0, rows for all): the GPU checker samples. */
void tb_sp24_gemm_ref(const uint16_t *values, const uint8_t *indices, int64_t rows, int64_t cols, const float *x,
                      int n, int64_t row_from, int64_t row_to, double *y);

#ifdef __cplusplus
}
#endif
#endif
