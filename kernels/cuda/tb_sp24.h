/* tb_sp24.h - y = x W^T with W 2:4 sparse on the sparse tensor cores (CUDA=1
 * builds; kernels/cuda/tb_sp24_gemm.cu). The C face the CUDA backend calls
 * for a linear whose weight is N:M 2:4 along its input dimension.
 *
 *   tb_sp24_weight w;
 *   tb_cuda_sp24_prepare(&w, values, indices, rows, cols, perm); // once, at load
 *   if (!tb_cuda_sp24_prefer_dense(rows, cols, n))
 *       tb_cuda_sp24_linear(&w, x, TB_F32, n, y, TB_F32, bias, ws, stream, TB_SP24_AUTO);
 *   tb_cuda_sp24_release(&w);
 *
 * values/indices are the host .tb arrays (formats/tb_pack.h: bf16 kept values
 * [rows, cols/2], 2-bit positions [rows, cols/8]); perm is the .tb "<W>.perm"
 * (NULL if none): x is gathered through it on the device, so callers pass x
 * in the model's channel order. The device copy is 0.5625x the bytes of the
 * dense bf16 weight (kernels/cpu/tb_sp24_layout.h has the layout).
 *
 * Errors: the library convention (tb_error.h): TB_EUSAGE for a shape the
 * kernel cannot take (rows % 32, cols % 64), TB_EDATA for bad indices, TB_EIO
 * for CUDA failures (allocation, launch), with a one-line message.
 */
#ifndef TB_SP24_H
#define TB_SP24_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "tb_dtype.h" /* a C header without its own extern "C" */

typedef struct {
    int64_t rows, cols;
    void *a;      /* device: kept values in fragment order (tb_sp24_layout.h) */
    void *e;      /* device: metadata */
    int32_t *perm; /* device [cols] or NULL */
} tb_sp24_weight;

typedef enum {
    TB_SP24_AUTO = 0,   /* the measured choice for (rows, cols, n) */
    TB_SP24_TILED = 1,  /* version 1: 128x128x64 tiles, mma.sp, cp.async 4-stage pipeline */
    TB_SP24_SKINNY = 2, /* version 2: 1-16 tokens, weights streamed to registers, split-K in a block */
} tb_sp24_kernel;

/* Reorder the host .tb arrays and upload (synchronous). */
int tb_cuda_sp24_prepare(tb_sp24_weight *w, const uint16_t *values, const uint8_t *indices, int64_t rows,
                         int64_t cols, const int32_t *perm);
/* The same from the .tb arrays already in device memory (values 4-byte
 * aligned; perm NULL if none), reordered on the device on `stream`: the CUDA
 * backend uploads a weight's packed bytes once and the host does no per-weight
 * work. The indices are trusted (tb_pack_open checked them with
 * tb_nm_check_indices: positions strictly ascending in each group); the
 * arrays must stay valid until the stream has run the reorder. */
int tb_cuda_sp24_prepare_device(tb_sp24_weight *w, const uint16_t *values, const uint8_t *indices, int64_t rows,
                                int64_t cols, const int32_t *perm, void *stream);
void tb_cuda_sp24_release(tb_sp24_weight *w);

/* W as dense [rows, cols] (dt TB_BF16 or TB_F32; device memory) in the
 * model's column order (the permutation undone, pruned entries 0), read from
 * the kernel layout on `stream`: the CUDA backend's dense copy for token
 * counts where cuBLAS wins, and the linear_download of a 2:4 weight. Exact
 * (the kept values are bf16). */
int tb_cuda_sp24_to_dense(const tb_sp24_weight *w, void *dense, tb_dtype dt, void *stream);

/* Device scratch bytes tb_cuda_sp24_linear needs for n tokens of x_dt. */
size_t tb_cuda_sp24_workspace_bytes(const tb_sp24_weight *w, int n, tb_dtype x_dt);

/* y[n, rows] (+)= x[n, cols] W^T (+ bias[rows], f32, may be NULL), on `stream`
 * (a cudaStream_t; NULL = default). x_dt and y_dt are TB_F32 or TB_BF16; x,
 * y, bias and workspace are device pointers; y is overwritten. Asynchronous:
 * returns TB_EIO if a launch fails. */
int tb_cuda_sp24_linear(const tb_sp24_weight *w, const void *x, tb_dtype x_dt, int n, void *y, tb_dtype y_dt,
                        const float *bias, void *workspace, void *stream, tb_sp24_kernel kernel);

/* 1 where cuBLAS dense bf16 measured faster than every 2:4 kernel here for
 * this shape (BENCHMARKS.md, "2:4 GEMM"), so the caller should keep and use
 * the dense weight; 0 where the 2:4 path wins. */
int tb_cuda_sp24_prefer_dense(int64_t rows, int64_t cols, int n);

#ifdef __cplusplus
}
#endif
#endif
