/* tb_grad.h - the reference CPU kernels of the decoder's backward pass, f32
 * with f64 where a long sum decides the result. Each is the exact derivative
 * of its forward kernel in tb_ops.h / tb_linear.h; tests/unit/test_backward.c
 * checks them by finite differences through the whole model. */
#ifndef TB_GRAD_H
#define TB_GRAD_H

#include <stddef.h>

#include "tb_linear.h"
#include "tb_ops.h"

/* dx (+)= the input gradient of y = w * x * r, r = 1/sqrt(mean(x^2) + eps):
 * dx_j = r w_j dy_j - x_j r^3 / d * sum_i w_i dy_i x_i */
void tb_rmsnorm_backward(float *dx, const float *dy, const float *x, const float *inv_rms, const float *w, int n,
                         int d, int accumulate);

/* d_gate = d_out * up * s * (1 + g (1 - s)), d_up = d_out * g * s, s = sigmoid(g).
 * d_gate may equal d_out. */
void tb_swiglu_backward(float *d_gate, float *d_up, const float *d_out, const float *gate, const float *up,
                        size_t n, int n_threads);

/* Floats of per-thread scratch tb_attention_backward needs for n tokens. */
size_t tb_attention_backward_scratch(int n);

/* Backward of tb_attention for n queries at positions 0..n-1 over the same n
 * keys, from its kept probabilities probs [n_heads, n, n] (masked entries 0):
 * d_q, d_k, d_v overwritten. Threads over KV groups, so the dK/dV sums over a
 * group's query heads never race. */
void tb_attention_backward(const tb_attn_shape *a, const float *q, const float *k, const float *v, const float *probs,
                           const float *d_out, int n, float *d_q, float *d_k, float *d_v, const tb_scratch *s);

/* Floats of per-thread scratch tb_linear_input_grad needs for L. */
size_t tb_linear_input_grad_scratch(const tb_linear *L);

/* dx[n, cols] (+)= dy[n, rows] W, any storage format of W (through
 * tb_linear_rows); threads over tokens. */
void tb_linear_input_grad(const tb_linear *L, const float *dy, int n, float *dx, int accumulate, const tb_scratch *s);

/* dW[rows, cols] = dy[n, rows]^T x[n, cols]; threads over rows of dW. */
void tb_linear_weight_grad(const float *dy, const float *x, int n, int rows, int cols, float *dW, int n_threads);

#endif
