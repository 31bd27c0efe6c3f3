/* tb_block_recon.h - reconstruction of a decoder layer by units, with
 * optionally learned N:M masks.
 *
 * The layer's kept weights are trained with Adam on the pruned model's own
 * hidden states x (inputs) against what the dense layer gives for the same x,
 * as tb_recon_layer does, but the region whose output is matched is a choice:
 *
 *   TB_UNIT_LAYER   the whole decoder layer: q k v o gate up down against
 *                   the dense layer's output (tb_recon_layer's objective)
 *   TB_UNIT_BLOCKS  two units in turn, each a region with its nonlinearity
 *                   (arXiv 2510.14444, "A Free Lunch in LLM Compression"):
 *                   first the attention block, q k v o against the dense
 *                   block's output h = x + attn(x) (attn_targets), then the
 *                   MLP block, gate up down fed the trained attention's h,
 *                   against the dense layer's output (targets) - so the MLP
 *                   also absorbs what the attention could not recover.
 *
 * Loss: mean squared error over the [seq_len, hidden] output of the unit, one
 * window per step (a seeded shuffle per epoch), cosine-decayed lr; each unit
 * gets o->r.steps steps. Masks: fixed (pruned weights never move), or learned
 * (o->mask.every > 0; tb_learnmask.h): re-selected during the first
 * o->mask.until of each unit's steps, then fixed. Pruned weights are exact
 * zeros in the model's arrays after every step.
 *
 * Backends: written once over the backend table (o->r.backend; NULL: the
 * CPU), like tb_recon.c; the mask re-selection, the channel statistics, the
 * latent step and the masked apply are backend ops (tb_backend.h) whose CUDA
 * kernels round as the CPU does. On the CPU the weights train in w and the
 * masks re-select in keep, after every step; elsewhere both come back at the
 * end.
 *
 * Memory: the inputs and targets (and attention targets) of every window
 * (host), and on the backend one window's activations and gradients, per
 * trained weight its training copy, a keep mask and two Adam moments (fixed
 * masks: of the kept entries only on the CPU), and, learning masks, its
 * gradient, latent copy and channel statistics.
 */
#ifndef TB_BLOCK_RECON_H
#define TB_BLOCK_RECON_H

#include "tb_learnmask.h"
#include "tb_recon.h"

typedef enum { TB_UNIT_LAYER = 0, TB_UNIT_BLOCKS = 1 } tb_recon_unit;

/* "layer", "blocks" -> TB_UNIT_*; -1 otherwise */
int tb_recon_unit_parse(const char *s);

typedef struct {
    tb_recon_opts r;         /* steps per unit, lr, Adam, seed, eval windows, threads */
    tb_recon_unit unit;
    tb_learnmask_opts mask;  /* mask.every > 0: learn masks (needs n, m) */
    int n, m;                /* the N:M pattern of every weight of the layer */
} tb_block_opts;

void tb_block_defaults(tb_block_opts *o); /* tb_recon_defaults, TB_UNIT_LAYER, masks fixed */

typedef struct {
    tb_recon_report r;       /* MSE of the layer output before and after, time */
    double attn_mse_before, attn_mse_after; /* TB_UNIT_BLOCKS: of h */
    int64_t mask_changed;    /* entries whose keep bit differs from the start */
    int64_t mask_total;      /* entries of the trained weights */
} tb_block_report;

/* Train layer l of m. Its seven linears must be dense F32, unpermuted, with
 * data == w[k] (tb_lin_id order); keep[k] marks the trainable entries and is
 * updated when masks are learned. dense[k]: the dense model's weights, the
 * starting latent values of pruned entries (only read when learning masks;
 * may be NULL otherwise). inputs, targets [windows, seq_len, hidden]: the
 * layer's inputs and the dense layer's outputs for them; attn_targets: the
 * dense attention block's output h for them (TB_UNIT_BLOCKS only). */
int tb_recon_block(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER], uint8_t *const keep[TB_LIN_PER_LAYER],
                   const float *const dense[TB_LIN_PER_LAYER], const float *inputs, const float *targets,
                   const float *attn_targets, int64_t windows, int seq_len, const tb_block_opts *o,
                   tb_progress_fn progress, void *ctx, tb_block_report *r);

/* The same on windows made by tb_recon_windows_dense (tb_recon.h): attn
 * targets needed for TB_UNIT_BLOCKS. */
int tb_recon_block_windows(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER], uint8_t *const keep[TB_LIN_PER_LAYER],
                           const float *const dense[TB_LIN_PER_LAYER], const tb_recon_windows *ws,
                           const tb_block_opts *o, tb_progress_fn progress, void *ctx, tb_block_report *r);

/* The dense layer l's outputs (and, attn_out not NULL, its attention block's
 * h) for each input window: [windows, seq_len, hidden] each, host arrays,
 * computed on be (NULL: the CPU with n_threads) holding layer l only. m's
 * layer l must still hold the dense weights. */
int tb_dense_layer_targets(const tb_model *m, int l, const float *inputs, int64_t windows, int seq_len, int n_threads,
                           tb_backend *be, float *out, float *attn_out);

#endif
