/* tb_learnmask.h - N:M masks learned together with the weights.
 *
 * Straight-through estimation with sparse-refined decay (SR-STE, Zhou et al.,
 * "Learning N:M Fine-grained Structured Sparse Neural Networks From
 * Scratch", ICLR 2021), adapted to reconstruction from a pruned start:
 *
 *   - every weight has a dense latent value W~ (kept entries: the pruned
 *     model's compensated weight; pruned entries: the dense model's weight);
 *   - the forward uses W = W~ (.) K, K the current N:M mask, so pruned weights
 *     are exact zeros in every forward and every checkpoint;
 *   - the backward's dL/dW (computed dense: dY^T X) updates every entry of W~
 *     (the straight-through estimate dL/dW~ = dL/dW), by Adam;
 *   - pruned latents decay: W~ -= lr * decay * W~ on (not K) after each step
 *     (SR-STE's lambda_W term, decoupled from Adam's scaling), which pulls
 *     the mask toward its start and damps flip-flopping;
 *   - every `every` steps while step < until * steps, K is re-selected: in
 *     each group of M consecutive inputs of a row the N entries of largest
 *     |W~[r, c]| * ||x_c|| (Wanda's score with the latent weight; ||x_c|| the
 *     RMS of input channel c over the tokens seen so far) are kept;
 *   - after that the mask is fixed and training continues on the kept
 *     entries only (the latents of pruned entries are dropped).
 */
#ifndef TB_LEARNMASK_H
#define TB_LEARNMASK_H

#include <stdint.h>

#include "tb_model.h"
#include "tb_train.h"

typedef struct {
    int every;     /* re-select every this many steps; 0: masks fixed */
    double until;  /* fraction of the steps during which masks may change (0.5) */
    double decay;  /* SR-STE decay of pruned latent weights, per unit lr (0: plain STE) */
} tb_learnmask_opts;

void tb_learnmask_defaults(tb_learnmask_opts *o); /* every 0 (off), until 0.5, decay 20 (BENCHMARKS.md) */

/* Re-select a [rows, cols] weight's N:M mask: in each group of m consecutive
 * columns of a row keep the n entries of largest |w| * col_scale[c]
 * (col_scale NULL: 1; ties to the lower column). keep is overwritten with
 * 0/1; returns how many entries were kept before and are pruned now. */
int64_t tb_nm_reselect(const float *w, const float *col_scale, int64_t rows, int64_t cols, int n, int m,
                       uint8_t *keep);

/* One straight-through step of a weight whose mask may still change: Adam on
 * every latent entry (g: dL/dW, computed dense), then the pruned latents
 * decay, W~ *= 1 - lr * decay (t, lr, hp as tb_adam_masked). */
void tb_learnmask_update(float *lat, const float *g, float *m1, float *m2, const uint8_t *keep, int64_t n, double lr,
                         const tb_adam_hp *hp, int64_t t, double decay);

/* colsq[c] += sum over the T rows of x [T, cols] of x[t, c]^2: the input
 * channel statistics behind the re-selection's ||x_c|| */
void tb_learnmask_colsq(double *colsq, const float *x, int T, int cols);

/* w = lat on keep, exact zeros elsewhere */
void tb_learnmask_apply(float *w, const float *lat, const uint8_t *keep, int64_t n);

/* The input of decoder linear k in a layer's kept activations. */
static inline const float *tb_lin_input(const tb_layer_acts *a, int k)
{
    switch (k) {
    case TB_LIN_Q: case TB_LIN_K: case TB_LIN_V: return a->xn1;
    case TB_LIN_O: return a->att;
    case TB_LIN_GATE: case TB_LIN_UP: return a->xn2;
    default: return a->act;
    }
}

/* Is keep a valid exact N:M mask (every group keeps exactly n)? */
int tb_nm_keep_valid(const uint8_t *keep, int64_t rows, int64_t cols, int n, int m);

#endif
