/* tb_gemv_bf16.h - y = x W^T for a few tokens with W dense bf16 (CUDA=1 builds;
 * kernels/cuda/tb_gemv_bf16.cu). The decode-time linear of the CUDA backend: at
 * 1-16 tokens the product is bound by reading W once from HBM, and cuBLAS
 * reaches about half the copy rate at the 4096-wide shapes of a 7B layer and
 * needs x converted to bf16 by a kernel of its own first; this kernel reads
 * x (f32) in place, rounds it to bf16 in registers and streams W at close to
 * the copy rate.
 *
 *   if (tb_cuda_gemv_fits(rows, cols, n, W, x))
 *       tb_cuda_gemv_bf16(W, x, n, rows, cols, bias, y, stream);
 *
 * W: device bf16 [rows, cols] row-major; x: device f32 [n, cols]; y: device
 * f32 [n, rows], overwritten; bias: device f32 [rows] or NULL. bf16 x bf16
 * products (x rounded to nearest even, as the backend's other bf16 linears),
 * f32 sums. Asynchronous on `stream` (a cudaStream_t; NULL = default).
 */
#ifndef TB_GEMV_BF16_H
#define TB_GEMV_BF16_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* tokens up to which the backend runs the kernel: 1. bench/gpu/gemv_bench.sh
 * on the H200 (2026-12-02 14:45, BENCHMARKS.md "Dense decode GEMV"): at 1
 * token 1.17-2.74x cuBLAS (1.20-2.80x with the x conversion it needs) on the
 * 7B shapes; at 2 tokens already 0.86-0.97x on the 14336-wide ones, and
 * falling with n (x re-read from L1 for every 16 bytes of W), so batch-1
 * decode only. The kernel itself takes 1-16 (tb_cuda_gemv_fits). */
#define TB_GEMV_MAX_TOKENS 1
#define TB_GEMV_KERNEL_MAX_TOKENS 16

/* 1 if the kernel takes this call: 1 <= n <= TB_GEMV_KERNEL_MAX_TOKENS, cols % 8 == 0
 * and W, x 16-byte aligned (it loads 8 bf16 of W and 4 floats of x at once) */
int tb_cuda_gemv_fits(int64_t rows, int64_t cols, int n, const void *W, const float *x);

/* returns 0, or TB_EIO (with tb_errmsg) when the launch fails */
int tb_cuda_gemv_bf16(const void *W, const float *x, int n, int64_t rows, int64_t cols, const float *bias, float *y,
                      void *stream);

/* out[rows] = silu(x Wg^T + bg) * (x Wu^T + bu) at 1 token, Wg and Wu dense bf16
 * [rows, cols] (both must fit as above), bg, bu f32 [rows] or NULL: the SwiGLU
 * pair in one launch, each product summed as tb_cuda_gemv_bf16 sums it */
int tb_cuda_gemv_bf16_swiglu(const void *Wg, const void *Wu, const float *x, int64_t rows, int64_t cols,
                             const float *bg, const float *bu, float *out, void *stream);

/* y[i][rows[i]] = x W[i]^T + bias[i] for i < count (1..3) at 1 token, every W[i]
 * dense bf16 [rows[i], cols] fitting as above; bias NULL or bias[i] NULL for
 * none: several linears on one x (a decode step's q, k, v) in one launch */
int tb_cuda_gemv_bf16_multi(int count, const void *const *W, const int64_t *rows, int64_t cols, const float *x,
                            const float *const *bias, float *const *y, void *stream);

#ifdef __cplusplus
}
#endif
#endif
