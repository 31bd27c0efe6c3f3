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
 * Checkpoints (tb_distill_save/load): a safetensors file with each trained
 * weight ("<name>", F32) and its Adam moments ("<name>.adam_m", ".adam_v"),
 * metadata "tensorbit.kind" = "distill-checkpoint", "step", "steps", "batch",
 * "lr", "seed", "windows". Resuming restores weights, moments and the step;
 * the window order is a function of (seed, epoch), so a resumed run equals an
 * uninterrupted one.
 *
 * Memory: the student's trainable copy and its gradient and two moments
 * (16 bytes per decoder weight), the teacher's mapping, one window's
 * activations of both models, the student's activation gradients, and the
 * teacher logits cache (at most cache_bytes: seq_len x vocab x 4 bytes per
 * window kept).
 */
#ifndef TB_DISTILL_H
#define TB_DISTILL_H

#include <stdint.h>

#include "tb_backward.h"
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
    int n_threads;
    int64_t cache_bytes; /* teacher logits kept for reuse, at most this many bytes (0: none) */
} tb_distill_opts;

/* 300 steps, batch 1, lr 3e-4 (BENCHMARKS.md), 0.9/0.999/1e-8, seed 0, no cache */
void tb_distill_defaults(tb_distill_opts *o);

typedef struct {
    tb_trainable *s;
    const tb_model *teacher;
    const tb_tokens *tk;
    tb_distill_opts o;
    tb_forward fs, ft;
    tb_backward b;
    float **g, **m1, **m2; /* [s->n] gradient (summed over the batch) and moments */
    int64_t *order;
    int64_t step;          /* optimizer steps done */
    /* Teacher logits cache: the dense model's logits of a window are the same
     * every epoch, so the first visit keeps them (f32, exact) and later visits
     * skip the teacher's forward (a quarter of a step's work: teacher forward,
     * student forward, backward at twice a forward). slot[w]: the window's
     * row in cache, or -1; as many windows as cache_bytes holds, first come. */
    float *cache;
    int64_t *slot, cached, cache_rows;
} tb_distill;

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

int tb_distill_save(const tb_distill *d, const char *path);
/* Restore a checkpoint of a run with the same steps, batch, lr, seed and
 * windows (TB_EUSAGE naming the first that differs) and the same weights
 * (TB_EDATA naming a missing or misshapen tensor, or a nonzero pruned entry). */
int tb_distill_load(tb_distill *d, const char *path);

#endif
