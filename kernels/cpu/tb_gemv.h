/* tb_gemv.h - y = x W^T (+ b) from the stored weights: tb_gemv for a few
 * tokens, tb_gemm's panels for many (below), and decode attention.
 *
 * Decode (one token per step) is bound by the bytes of the weights: every
 * weight is read once per token and used once. tb_linear_forward's tile path
 * (decode a tile of W to f32, then sgemm) is right for hundreds of tokens and
 * wasteful for one: it writes and rereads an f32 copy, 2-3x the bytes. These
 * kernels read W as stored and convert in registers:
 *
 *   dense F32 / F16 / BF16      rows x cols elements
 *   N:M 2:4, values F32/F16/BF16  only the kept values (cols/2 per row) and
 *                               their 2-bit in-group positions (cols/8 bytes
 *                               per row), the .tb layout of formats/tb_pack.h:
 *                               bf16 2:4 reads 0.5625x the bytes of dense bf16.
 *                               The positions select x's entries in registers
 *                               (a permute), never a dense row.
 *   either, channel-permuted    x is permuted once per call (x'[j] = x[perm[j]])
 *
 * Prefill (hundreds of tokens) is bound by the FMAs instead: tb_gemm decodes
 * W once per call into f32 panels and reuses each for every token.
 *
 * Each kernel has a scalar version (the floor of an x86-64-v2 build and of
 * other architectures) and AVX2+FMA+F16C and AVX-512 (F, BW, VL) versions in
 * tb_gemv_avx2.c / tb_gemv_avx512.c, compiled with those ISA flags and
 * chosen at run time from what the CPU reports. Accumulation is f32 (as
 * sgemm's); each output is computed by one thread whatever the thread count,
 * so results do not depend on it.
 */
#ifndef TB_GEMV_H
#define TB_GEMV_H

#include <stddef.h>

#include "tb_linear.h"

typedef enum { TB_ISA_SCALAR = 0, TB_ISA_AVX2 = 1, TB_ISA_AVX512 = 2, TB_ISA_COUNT } tb_isa;

const char *tb_isa_name(tb_isa isa); /* "scalar", "avx2", "avx512" */
/* Is isa compiled in and supported by this CPU (and OS)? */
int tb_isa_available(tb_isa isa);
/* The ISA the kernels use: the best available, or $TB_ISA (a name above) if
 * that is available, or what tb_gemv_set_isa chose. */
tb_isa tb_gemv_isa(void);
/* Use isa from now on (tests, benchmarks). TB_EUSAGE if it is not available. */
int tb_gemv_set_isa(tb_isa isa);

/* Can tb_gemv compute L? Dense F32/F16/BF16, or N:M 2:4 with such values. */
int tb_gemv_supports(const tb_linear *L);

/* Floats of work space tb_gemv needs for n tokens of L (a permuted x). */
size_t tb_gemv_scratch(const tb_linear *L, int n);

/* y[t * rows + r] = sum_c x[t * cols + c] W[r, c] (+ bias[r]) for r0 <= r < r1
 * and t < n, W in the model's column order (x as the model feeds it). Only
 * those entries of y are written. work: tb_gemv_scratch(L, n) floats, private
 * to the calling thread (NULL if that is 0). L must be supported. */
void tb_gemv(const tb_linear *L, const float *x, int n, float *y, int r0, int r1, float *work);

/* Many tokens (prefill, perplexity): the same product through panels. W's
 * rows are decoded tb_gemm_rows_unit() at a time (32 with AVX-512, 16 with
 * AVX2) to f32, transposed into a panel, and multiplied with every token by a
 * register-tiled kernel (32 rows x 12 tokens of accumulators with AVX-512),
 * the decoding spread over all n tokens. Each output is one f32 sum over the
 * columns in order, computed by one thread. Writes rows r0 .. r1-1 of y (bias
 * added); r0 should be a multiple of the unit. work: tb_gemm_scratch(L)
 * floats private to the calling thread. Any linear (tb_linear_rows decodes
 * it); fast where tb_gemv_isa() is AVX2 or AVX-512. */
int tb_gemm_rows_unit(void);
size_t tb_gemm_scratch(const tb_linear *L);
void tb_gemm(const tb_linear *L, const float *x, int n, float *y, int r0, int r1, float *work);

/* The same kernel on f32 matrices, for attention's products (tb_ops.c):
 * nt: y[t * ldy + r] = alpha * sum_c x[t * ldx + c] w[r * ldw + c] (Q K^T);
 * nn: y[t * ldy + d] = sum_c x[t * ldx + c] v[c * ldv + d] (P V), for t < n,
 * r < rows, d < cols, c < k. Each returns 0, having done nothing, where the
 * ISA has no panel kernel (scalar) or nn's cols is not a multiple of
 * tb_gemm_rows_unit(): the caller then uses sgemm. */
int tb_gemm_f32_nt(int n, int rows, int k, float alpha, const float *x, size_t ldx, const float *w, size_t ldw, float *y,
                   size_t ldy);
int tb_gemm_f32_nn(int n, int cols, int k, const float *x, size_t ldx, const float *v, size_t ldv, float *y, size_t ldy);

/* The other decode kernel: attention of one query row of one head over keys
 * lo..p of the cache. row[c] = scale * q . k_c (k_c = k + c * ldk, hd
 * values), softmax over c, out[hd] = sum_c row[c] v_c (v_c = v + c * ldk).
 * row: p + 1 floats of work space (row[lo..p] hold the probabilities after). */
void tb_attend_row(const float *q, const float *k, const float *v, int ldk, int hd, int lo, int p, float scale,
                   float *row, float *out);

#endif
