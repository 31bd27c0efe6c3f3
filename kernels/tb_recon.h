/* tb_recon.h - layer-wise reconstruction by gradient descent.
 *
 * After masking, the kept weights of one decoder layer are trained with Adam
 * (masks fixed, pruned weights exact zeros) so that the layer, fed the pruned
 * model's own hidden states, reproduces what the dense layer outputs for
 * those same states (mean squared error over the residual stream), after "A
 * Free Lunch in LLM Compression" (arXiv 2510.14444): reconstructing a region
 * that contains the nonlinearities (attention, SwiGLU) beats matrix-level
 * reconstruction, which sees each linear map alone.
 *
 * The gradients come from the same reverse pass as tb-fisher's (tb_backward,
 * checked by finite differences), on any backend: on CUDA the whole step
 * (forward, backward, Adam) runs on the GPU and only one window's input and
 * target cross per step. Memory: the caller's inputs and targets of all
 * windows (host, 2 x windows x seq_len x hidden f32); on the backend one
 * window's activations and their gradients (one dW, the largest linear's),
 * and per trainable weight an f32 copy (on the CPU the caller's array), two
 * Adam moments (on the CPU of the kept entries only) and a byte keep mask.
 * At Mistral-7B's shape (218 M weights a layer, 2:4) tb-recon holds 2.4 GiB
 * on the CPU, the tool's copy of the keep masks included (BENCHMARKS.md).
 */
#ifndef TB_RECON_H
#define TB_RECON_H

#include <stdint.h>

#include "tb_model.h"

typedef struct {
    int steps;         /* Adam steps, one window each (cycling in a seeded order) */
    double lr;         /* peak learning rate; cosine decay to 0 over the steps */
    double beta1, beta2, eps;
    uint64_t seed;
    int eval_windows;  /* windows the before/after error is measured on */
    int n_threads;
    tb_backend *backend; /* where the layer trains (NULL: the CPU with n_threads) */
} tb_recon_opts;

void tb_recon_defaults(tb_recon_opts *o); /* 300 steps, lr 1e-3, 0.9/0.999/1e-8, 16 eval windows */

typedef struct {
    double mse_before, mse_after; /* mean squared error of the layer output */
    double target_power;          /* mean square of (target - input): the layer's own contribution */
    double seconds;
} tb_recon_report;

/* Train layer l of m. Its seven linears must be dense F32 without permutation
 * and point at the caller's mutable arrays w[k] (tb_lin_id order; pruned
 * entries 0); keep[k][i] != 0 marks the trainable entries. inputs and targets
 * are [windows, seq_len, hidden]. progress(ctx, step, steps) is optional. */
int tb_recon_layer(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER], const uint8_t *const keep[TB_LIN_PER_LAYER],
                   const float *inputs, const float *targets, int64_t windows, int seq_len, const tb_recon_opts *o,
                   tb_progress_fn progress, void *ctx, tb_recon_report *r);

#endif
