/* tb_compensate.h - moving what pruning removed onto the weights that stay.
 *
 * Every solver works on one weight W [rows, cols] in f32, row-major, in place,
 * in the mask's column order (already permuted when the mask has a
 * permutation). On return the pruned entries (mask bit 0) are exactly 0 and
 * the kept ones are compensated. Arithmetic is f64. Rows are independent in
 * every solver, so they thread over rows; call tb_blas_single_thread() first
 * or OpenBLAS threads inside our threads oversubscribe the cores.
 *
 * Errors: TB_EDATA "row r: ..." (the caller adds file and tensor), e.g. a
 * non-finite statistic; never a silent NaN in W.
 *
 *   none       tb_comp_mask: W *= mask.
 *   redist     tb_comp_redist: per group (the M columns of an N:M group, or
 *              the whole row for an unstructured mask) with kept set S and
 *              pruned set P, d = sum_{j in P} w_j is moved onto S:
 *                proportional: w_i += d * |w_i| / sum_{k in S} |w_k|
 *                              (uniform if every kept weight is 0)
 *                uniform:      w_i += d / |S|
 *              Both keep the group's sum of weights, so a row's output for a
 *              constant input is unchanged. A group with S empty cannot keep
 *              its sum; it is counted in stats->empty_groups.
 *   obs        tb_comp_obs: Optimal Brain Surgeon per block of B consecutive
 *              weights of a row, with the empirical Fisher of that block
 *              H = lambda I + (1/K) sum_k g_k g_k^T from K gradient samples,
 *              H^-1 by Woodbury; the block's pruned weights are removed one by
 *              one, smallest w_q^2 / [H^-1]_qq first, each with the OBS update
 *              dw = -w_q / [H^-1]_qq H^-1[:, q] and a Sherman-Morrison
 *              downdate of H^-1. lambda = damp * mean over the tensor of
 *              (1/K) sum_k g^2 (the mean Fisher diagonal).
 *   recon      tb_comp_recon: layer-wise reconstruction, the exact minimiser
 *              of ||(W - W_hat) X||^2 = sum_r e_r^T G e_r (G = X X^T) with the
 *              pruned entries 0: per row w_S += (G_SS + lambda I)^-1 G_SP w_P,
 *              lambda = damp * mean(diag G), solved through tb_sym_solve's
 *              damping ladder. Cost per row ~|S|^3 / 3: exact but cubic.
 *   sparsegpt  tb_comp_sparsegpt: SparseGPT (Frantar & Alistarh 2023) with
 *              the same G: columns left to right, each pruned weight's error
 *              spread over the not-yet-visited columns through the Cholesky
 *              factor of H^-1, in lazy blocks of B columns. With reselect the
 *              keep bits are chosen again from the updated weights as
 *              SparseGPT does (N:M: in each group the N largest
 *              w^2 / [H^-1]_cc^2; unstructured: per row and block the same
 *              number as the given mask), and written back into `mask`.
 */
#ifndef TB_COMPENSATE_H
#define TB_COMPENSATE_H

#include <stdint.h>

#include "tb_dtype.h"
#include "tb_mask.h"

typedef struct {
    int64_t raised;       /* rows (recon) / blocks (obs) / tensors (sparsegpt) that needed more damping */
    int64_t eigen;        /* ... that fell back to the eigen solve */
    int64_t empty_groups; /* redist: groups with nothing kept */
    double lambda;        /* the base damping used */
} tb_comp_stats;

void tb_comp_mask(float *w, const tb_mask *mask);

/* group = M of the N:M pattern, or 0 for the whole row (unstructured). */
int tb_comp_redist(float *w, const tb_mask *mask, int group, int uniform, tb_comp_stats *st);

/* grad: K samples [K, rows, cols] of dtype grad_dt in the model's column
 * order (e.g. a mapped .fisher "grad.<W>"); perm (NULL = identity) maps the
 * mask's column j to the gradient's column perm[j]. */
int tb_comp_obs(float *w, const tb_mask *mask, const void *grad, tb_dtype grad_dt, int k, const int32_t *perm,
                int block, double damp, int n_threads, tb_comp_stats *st);

/* gram: [cols, cols] f64 in the mask's column order. */
int tb_comp_recon(float *w, const tb_mask *mask, const double *gram, double damp, int n_threads, tb_comp_stats *st);

/* n, m: the pattern (0, 0 unstructured); block: lazy-update block (multiple
 * of m); reselect: choose keep bits anew (mask is updated) or keep them. */
int tb_comp_sparsegpt(float *w, tb_mask *mask, int n, int m, const double *gram, double damp, int block,
                      int reselect, int n_threads, tb_comp_stats *st);

/* sum_r (w0_r - w_r)^T G (w0_r - w_r) = ||(W0 - W) X||_F^2, and, with
 * w = NULL, sum_r w0_r^T G w0_r = ||W0 X||_F^2: the measure of every solver. */
double tb_comp_output_error(const float *w0, const float *w, int64_t rows, int64_t cols, const double *gram,
                            int n_threads);

#endif
