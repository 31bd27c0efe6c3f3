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
    double lr_rel;     /* > 0: each linear's peak rate is lr_rel x RMS(kept W) / fan_in
                        * instead of lr (tb_recon_peak_lr) */
    double beta1, beta2, eps;
    uint64_t seed;
    int eval_windows;  /* windows the before/after error is measured on */
    int n_threads;
    tb_backend *backend; /* where the layer trains (NULL: the CPU with n_threads) */
} tb_recon_opts;

void tb_recon_defaults(tb_recon_opts *o); /* 300 steps, lr 1e-3, 0.9/0.999/1e-8, 16 eval windows */

/* The tools' default rate rule (tb-recon without --lr): lr_rel 5. Measured
 * (BENCHMARKS.md, "tb-recon's rate"): on a Mistral-7B-shaped layer (4096
 * wide, RMS 0.02, 300 steps of 128 x 2048 tokens) the error kept is 0.911
 * at C 5 (0.875 at C 10) where lr 1e-3 raised it 3.9x; on the layer-wise
 * recipe C 5 gives KL 1.448 against lr 1e-3's 1.469 (tiny-llama-6m) and
 * 0.1413 against 0.1440 (tiny-mistral-10m). C 10 overshoots short runs
 * (tiny-llama-6m layer 0, 4-10 steps: the error raised 1.7x; C 5 keeps
 * 0.92-0.98). The library default stays a fixed lr, so that callers that
 * set .lr get it. */
#define TB_RECON_LR_REL_DEFAULT 5.0

/* The peak learning rate of one [rows, cols] weight w (keep != 0: trained):
 * o->lr, or with o->lr_rel > 0, lr_rel x RMS of the kept entries / cols.
 * Why: Adam moves every weight by ~lr a step whatever its size, and a row's
 * output by up to ~lr x fan_in x |x| when the steps agree, so a rate tuned on
 * one model's weights overshoots wider ones of smaller scale (BACKLOG: 1e-3
 * suits tiny-llama-6m, 256 wide, RMS ~0.1, and raised the error of 4096-wide
 * RMS-0.02 layers 4-13x); the muP rule for Adam, with the weights' scale. */
double tb_recon_peak_lr(const tb_recon_opts *o, const float *w, const uint8_t *keep, int64_t rows, int64_t cols);

typedef struct {
    double mse_before, mse_after; /* mean squared error of the layer output */
    double target_power;          /* mean square of (target - input): the layer's own contribution */
    double seconds;
} tb_recon_report;

/* The windows a layer trains on: inputs [windows, seq_len, hidden], the dense
 * layer's outputs for them (targets) and, for block units, the dense
 * attention block's h (attn). Either host arrays (in, tg, attn) or, on a
 * device with room for all of them (a quarter of its free memory), backend
 * arrays (in_d, tg_d, attn_d: "resident"), so that a training step moves
 * nothing over PCIe. tb_recon_windows.c. */
typedef struct {
    int64_t windows;
    int seq_len;
    size_t nd;                       /* seq_len x hidden: floats of one window */
    const float *in, *tg, *attn;     /* host arrays, or NULL */
    float *in_d, *tg_d, *attn_d;     /* backend arrays when resident, else NULL */
    tb_backend *be;                  /* owner of the backend arrays */
    int owns_host;                   /* the host arrays are freed with the windows */
} tb_recon_windows;

/* Wrap the caller's host arrays (attn may be NULL; not owned). */
void tb_recon_windows_host(tb_recon_windows *ws, const float *inputs, const float *targets, const float *attn,
                           int64_t windows, int seq_len, int hidden);
/* Copy wrapped host arrays to be when they fit (else leave them on the host:
 * each step then uploads its window). */
int tb_recon_windows_upload(tb_recon_windows *ws, tb_backend *be);
/* The windows of layer l, in two steps (a caller times them apart): first
 * the inputs (host f32 of any alignment, e.g. a stream file's mapping, read
 * before this returns), resident on be when they fit (one upload; room for
 * the targets and, want_attn, the attention targets made there too), else
 * host copies; then the dense targets, on the device for resident windows,
 * else a window at a time through be (tb_dense_layer_targets). m's layer l
 * must hold the dense weights. */
int tb_recon_windows_inputs(tb_recon_windows *ws, tb_backend *be, int n_threads, const void *inputs, int64_t windows,
                            int seq_len, int hidden, int want_attn);
int tb_recon_windows_targets(tb_recon_windows *ws, const tb_model *m, int l, tb_backend *be, int n_threads);
void tb_recon_windows_free(tb_recon_windows *ws);
/* Window win's input into f's stream l and the layer run; *tg set to its
 * target (at_h: the attention target) in backend memory: the resident array,
 * or tgt_buf (one window, backend memory) after an upload. */
int tb_recon_windows_load(const tb_recon_windows *ws, tb_forward *f, int l, int64_t win, int at_h, float *tgt_buf,
                          const float **tg);
/* mean square of (target - input) over the first n_eval windows, f64 */
double tb_recon_windows_target_power(const tb_recon_windows *ws, tb_backend *be, int64_t n_eval);

/* Train layer l of m on ws (tb_recon_layer's contract). */
int tb_recon_layer_windows(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER],
                           const uint8_t *const keep[TB_LIN_PER_LAYER], const tb_recon_windows *ws,
                           const tb_recon_opts *o, tb_progress_fn progress, void *ctx, tb_recon_report *r);

/* Train layer l of m. Its seven linears must be dense F32 without permutation
 * and point at the caller's mutable arrays w[k] (tb_lin_id order; pruned
 * entries 0); keep[k][i] != 0 marks the trainable entries. inputs and targets
 * are [windows, seq_len, hidden]. progress(ctx, step, steps) is optional. */
int tb_recon_layer(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER], const uint8_t *const keep[TB_LIN_PER_LAYER],
                   const float *inputs, const float *targets, int64_t windows, int seq_len, const tb_recon_opts *o,
                   tb_progress_fn progress, void *ctx, tb_recon_report *r);

#endif
