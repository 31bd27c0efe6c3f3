/* tb_ops.h - the reference CPU kernels of a Llama-family decoder, f32.
 *
 * Conventions follow HF transformers' modeling_llama.py so that results agree
 * with it to f32 rounding: RMSNorm w * (x / sqrt(mean(x^2) + eps)); RoPE with
 * the rotate_half pairing (i, i + head_dim/2) and inv_freq computed in f32;
 * attention softmax(q k^T * head_dim^-1/2 + causal mask) v in f32, GQA by
 * sharing KV head h / (n_heads / n_kv_heads); MLP down(silu(gate) * up).
 * Activations are row-major [tokens, features].
 */
#ifndef TB_OPS_H
#define TB_OPS_H

#include <stddef.h>

#include "tb_linear.h"

/* y[i] = w * x[i] / sqrt(mean(x[i]^2) + eps) for n rows of d values. inv_rms
 * (NULL or [n]) receives 1/sqrt(mean + eps), what a backward pass needs. y may
 * equal x. */
void tb_rmsnorm(float *y, float *inv_rms, const float *x, const float *w, int n, int d, float eps);

/* inv_freq[i] = 1 / theta^(2i / head_dim), i < head_dim/2, in f32 arithmetic as
 * transformers computes it (its rounding decides the last bits of every angle). */
void tb_rope_inv_freq(float *inv_freq, int head_dim, double theta);
/* cos/sin tables [n_pos, head_dim/2] of the angle pos * inv_freq[i] (f32 product). */
void tb_rope_table(float *cos_t, float *sin_t, int n_pos, int head_dim, const float *inv_freq);
/* Rotate x [n, n_heads * head_dim] in place for positions pos0 .. pos0+n-1:
 * (a, b) = (x[i], x[i + head_dim/2]) -> (a cos - b sin, b cos + a sin). */
void tb_rope_apply(float *x, int n, int n_heads, int head_dim, int pos0, const float *cos_t, const float *sin_t);

/* In-place softmax of n values, max subtracted first so exp never overflows. */
void tb_softmax(float *x, int n);
/* log(sum(exp(x))) in f64, max subtracted: the stable per-token NLL denominator. */
double tb_logsumexp(const float *x, int n);

/* out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). out may equal gate. */
void tb_swiglu(float *out, const float *gate, const float *up, size_t n, int n_threads);

typedef struct {
    int n_heads, n_kv_heads, head_dim;
    int sliding_window; /* 0: unlimited; else a query sees the last sliding_window keys */
} tb_attn_shape;

/* Floats of per-thread scratch tb_attention needs for up to kv_len keys. */
size_t tb_attention_scratch(int kv_len);

/* Causal attention for n queries at positions pos0 .. pos0+n-1 over keys
 * 0 .. pos0+n-1: out[n, n_heads*head_dim] from q[n, n_heads*head_dim] (RoPE
 * applied) and k, v [pos0+n, n_kv_heads*head_dim] (the KV cache, k with RoPE).
 * probs: NULL, or [n_heads, n, pos0+n] to keep the softmax (zeros where
 * masked) for a backward pass. Threads over (head, block of queries). */
void tb_attention(const tb_attn_shape *a, const float *q, const float *k, const float *v, int n, int pos0, float *out,
                  float *probs, const tb_scratch *s);

#endif
