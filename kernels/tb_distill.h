/* tb_distill.h - masked distillation of a whole pruned model from the dense
 * model (tb-distill).
 *
 * The student is a pruned model (.tbm); the teacher the dense checkpoint it
 * was pruned from. Every decoder linear of the student becomes a trainable
 * dense f32 array in the model's column order with its keep mask (the N:M
 * slots of the packed format, or the nonzeros of a masked weight); the masks
 * stay fixed and pruned weights exact zeros. Embeddings, norms and lm_head
 * are not trained: they stay bit-identical to the pruned model's, which keeps
 * them bit-identical to the dense model's.
 *
 * Loss (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
 * temperature 1; the "masked KD" stage of Sparse-Llama and of the local
 * reconstruction anchor in REFERENCE.md): over every position t of each
 * calibration window, KL(softmax(teacher_t) || softmax(student_t)), the mean
 * over the step's positions; its gradient with respect to the student's
 * logits is softmax(student) - softmax(teacher) per position, scaled by
 * 1/positions, back-propagated by tb_backward_logits. Adam (bias-corrected)
 * on the kept entries, lr cosine-decayed to 0 over the steps, `batch`
 * windows per step in a seeded shuffle per epoch (tb_train.h).
 *
 * Learned masks (opts.mask.every > 0; N:M weights only): the masks
 * re-select during the first mask.until of the steps, driven by the
 * whole-model KL instead of a layer's output error (the global objective of
 * MaskLLM, Fang et al. 2024, and ProxSparse, Liu et al. 2025, with the
 * mechanism of tb-recon's --learn-masks, tb_learnmask.h): every weight keeps
 * a dense latent (kept entries: the student's values; pruned entries: the
 * teacher's dense weights), the forward uses the latent under the current
 * mask, the backward's dense dL/dW updates every latent entry by Adam
 * (straight-through), pruned latents decay by lr * mask.decay per step, and
 * every mask.every steps each group of M keeps the N entries of largest
 * |W~| * ||x_c|| (x: the linear's inputs seen while learning). Then the masks
 * are fixed for the remaining steps. Masks stay exact N:M and pruned weights
 * exact zeros after every step. The CPU backend only (the mask work is host
 * code; the latents need full-size Adam moments while masks move).
 *
 * Hidden-state loss (opts.hidden = a > 0): the step's loss adds, per window,
 *   a * (1/L) * sum over layers l of ||h_s(l) - h_t(l)||^2 / ||h_t(l)||^2
 * with h(l) the residual stream leaving layer l over the window's positions
 * (student s, teacher t): intermediate-layer distillation (TinyBERT, Jiao et
 * al. 2020; the layer-wise feature loss of "Sparse Fine-tuning for Inference
 * Acceleration of LLMs", Kurtic et al. 2023), each layer's error relative to
 * its signal so that every layer counts alike. Its gradient enters the
 * backward pass at each layer's output (tb_backward.stream_grad). The
 * teacher then keeps its activations and runs every visit (no logits cache).
 * The CPU backend only (the hook reads the streams as host memory).
 *
 * Checkpoints (tb_distill_save/load): a safetensors file with each trained
 * weight ("<name>", F32) and its Adam moments ("<name>.adam_m", ".adam_v"),
 * metadata "tensorbit.kind" = "distill-checkpoint", "step", "steps", "batch",
 * "lr", "seed", "windows", "mask_every", "hidden" (and with learned masks
 * "mask_until", "mask_decay", "tokens_seen", with each weight's "<name>.keep"
 * (U8), "<name>.latent" (F32) and "<name>.colsq" (F64 [cols])). Resuming restores weights, moments and the step;
 * the window order is a function of (seed, epoch), so a resumed run equals an
 * uninterrupted one.
 *
 * Backends (tb_backend.h): written once over the backend table, like
 * tb_recon.c. The student's trainable copies (linear_upload_train: the f32
 * master, and on CUDA in bf16 the compute copy), their keep masks, Adam's
 * moments (the backend's adam_moments_kept layout; a checkpoint always holds
 * them at full [rows, cols], zero at pruned entries), both models' run
 * states, the batch's gradient sums (batch > 1 only: with one window a
 * weight's Adam step is taken as the backward hands over its gradient) and
 * the teacher logits cache live in backend memory. On the CPU the trained
 * weights are t->w themselves; elsewhere tb_distill_download brings them
 * back (tb_distill_save and the tools call it before reading t->w).
 *
 * Memory: per decoder weight the trainable copy (CPU: t->w itself; CUDA: 4
 * bytes, 6 in bf16), a keep byte, two Adam moments (CPU: of the kept entries
 * only, 4 bytes per weight at 2:4; CUDA: 8 bytes) and with batch > 1 a
 * gradient sum (4 bytes); the teacher's weights (CUDA: resident when they fit
 * beside the student, else streamed layer by layer through the forward's
 * weight_budget), one window's activations of both models, the student's
 * activation gradients, and the teacher logits cache (at most cache_bytes:
 * seq_len x vocab x 4 bytes per window kept; on a GPU also at most a quarter
 * of the memory free after the rest). A checkpoint adds 8 host bytes per
 * weight while it is written.
 */
#ifndef TB_DISTILL_H
#define TB_DISTILL_H

#include <stdint.h>

#include "tb_backward.h"
#include "tb_learnmask.h"
#include "tb_model.h"
#include "tb_tokens.h"
#include "tb_train.h"

/* Every decoder linear of a model as a trainable dense f32 array. */
typedef struct {
    tb_model *m;
    int n;             /* n_layers * TB_LIN_PER_LAYER, index l * TB_LIN_PER_LAYER + k */
    float **w;         /* [n] model column order; m's linears point here */
    uint8_t **keep;    /* [n] trainable entries */
    int64_t *size;     /* [n] rows * cols */
    int *pn, *pm;      /* [n] the weight's N:M pattern (0, 0: unstructured or dense) */
    uint8_t *permuted; /* [n] stored with a column permutation (N:M groups in stored order) */
    int masks_learned; /* the keep masks were re-selected (written as mask source "learned") */
} tb_trainable;

/* Decode every decoder linear of m (packed, masked or dense, any dtype,
 * permuted or not) into f32 arrays in the model's column order and point m
 * at them. keep: the packed format's slots, else the nonzero entries. */
int tb_trainable_init(tb_trainable *t, tb_model *m);
void tb_trainable_free(tb_trainable *t);

/* Write t as a pruned model: for each shard of the .tbm that m was opened
 * from, a new shard "<out stem>.<shard name>" beside out_tbm with the trained
 * values under the same masks and permutations (everything else copied byte
 * for byte, metadata kept, `meta` key/value pairs added, compensation
 * "<was>+<stage>"), then the index out_tbm (tb_tbm_merge with model_dir). */
int tb_trainable_write(const tb_trainable *t, const char *out_tbm, const char *model_dir, const char *stage,
                       const char *command, const char *const *meta, int n_meta);

typedef struct {
    int steps, batch;
    double lr;
    tb_adam_hp adam;
    uint64_t seed;
    int n_threads;       /* CPU threads when backend is NULL */
    int64_t cache_bytes; /* teacher logits kept for reuse, at most this many bytes (0: none) */
    tb_backend *backend; /* where both models run and the student trains (NULL: the CPU with n_threads) */
    tb_learnmask_opts mask; /* learned N:M masks (mask.every 0: fixed; CPU backend) */
    double hidden;          /* weight of the hidden-state loss (0: logits only; CPU backend) */
} tb_distill_opts;

/* 300 steps, batch 1, lr 3e-4 (BENCHMARKS.md), 0.9/0.999/1e-8, seed 0, no
 * cache, fixed masks (learned: until 0.5, decay 20 when every is set), no
 * hidden-state loss */
void tb_distill_defaults(tb_distill_opts *o);

/* The hidden-state loss as a tb_backward stream hook: adds to d_res the
 * gradient of scale * weight * (1/L) * ||h_s(l) - h_t(l)||^2 / ||h_t(l)||^2
 * (the streams of the windows s and t ran last, both keeping activations)
 * and weight * (1/L) * that ratio to *loss. */
typedef struct {
    tb_forward *s, *t;
    double weight, scale, loss;
} tb_hidden_loss;
int tb_hidden_loss_grad(void *ctx, int layer, float *d_res, int n);

typedef struct {
    tb_trainable *s;
    const tb_model *teacher;
    const tb_tokens *tk;
    tb_distill_opts o;
    tb_backend *be;        /* o.backend or own_be */
    tb_backend own_be;
    tb_forward fs, ft;
    tb_backward b;
    tb_dlinear *train;     /* [s->n] the student's trainable copies (fs computes with them) */
    uint8_t **keep;        /* [s->n] backend copies of s->keep */
    float **g;             /* [s->n] batch > 1: the gradient summed over the batch; else NULL */
    float **m1, **m2;      /* [s->n] Adam's moments, the backend's layout (tb_backend.h) */
    int64_t *n_moments;    /* [s->n] floats in each moment array */
    int64_t *order;
    int64_t step;          /* optimizer steps done */
    /* Teacher logits cache: the dense model's logits of a window are the same
     * every epoch, so the first visit keeps them (f32, exact) and later visits
     * skip the teacher's forward (a quarter of a step's work: teacher forward,
     * student forward, backward at twice a forward). slot[w]: the window's
     * row in cache, or -1; as many windows as cache_bytes holds, first come. */
    float *cache;          /* backend memory */
    int64_t *slot, cached, cache_rows;
    tb_hidden_loss hid;    /* opts.hidden > 0: the backward's stream hook */
    /* learned masks (host, CPU backend): [s->n] latents, full-size Adam
     * moments and summed gradients while masks move (the backend's moments
     * cover the kept entries only; filled from these once the masks are
     * fixed), input-channel sums of squares; the steps during which masks
     * move, the tokens their statistics saw */
    float **lat, **lm1, **lm2, **lg;
    double **colsq;
    float *colscale;
    int64_t learn_steps, tokens_seen;
    int masks_fixed;       /* the backend's moments hold the learned phase's */
} tb_distill;

/* With learned masks every weight must be N:M (s->pn) without permutation,
 * its keep an exact N:M mask. */
int tb_distill_init(tb_distill *d, tb_trainable *s, const tb_model *teacher, const tb_tokens *tk,
                    const tb_distill_opts *o);
void tb_distill_free(tb_distill *d);

/* One optimizer step (batch windows). *kl: the mean KL per position over the
 * step's windows, before the update; *top1: the fraction of those positions
 * whose argmaxes agree (either may be NULL). */
int tb_distill_step(tb_distill *d, double *kl, double *top1);

/* Mean KL and top-1 of the current student over windows [0, windows) of tk
 * (no update). */
int tb_distill_eval(tb_distill *d, int64_t windows, double *kl, double *top1);

/* The trained weights into s->w (host): a no-op on the CPU, where they are
 * trained in place. */
int tb_distill_download(tb_distill *d);

int tb_distill_save(tb_distill *d, const char *path);
/* Restore a checkpoint of a run with the same steps, batch, lr, seed,
 * windows, mask options and hidden weight (TB_EUSAGE naming the first that differs) and the same weights
 * (TB_EDATA naming a missing or misshapen tensor, or a nonzero pruned entry). */
int tb_distill_load(tb_distill *d, const char *path);

#endif
