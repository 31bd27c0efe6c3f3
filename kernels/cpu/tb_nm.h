/* tb_nm.h - mask solvers (N:M and unstructured) and input-channel permutation.
 *
 * Scores are a 2-D f32 matrix stored [rows, cols] row-major, larger = more
 * important. The reduction (input-channel) dimension is k_dim (1: nn.Linear
 * [out, in]; 0: stored [in, out]); an "output unit" is one index of the other
 * dimension, and N:M groups are M consecutive elements of a unit along k_dim.
 * Masks are tb_mask (formats/tb_mask.h) of the scores' stored shape.
 *
 * Ties are broken deterministically toward the lower index: of equal scores
 * the one with the lower reduction index (N:M, per unit) or the earlier
 * element in row-major order (pooled) is kept.
 */
#ifndef TB_NM_H
#define TB_NM_H

#include <stddef.h>
#include <stdint.h>

#include "tb_mask.h"
#include "tb_dtype.h"

#define TB_NM_MAX_M 16

typedef enum { TB_NM_TOPN, TB_NM_OPTIMAL, TB_NM_ITERATIVE, TB_NM_SOLVER_COUNT } tb_nm_solver;

const char *tb_nm_solver_name(tb_nm_solver s);
int tb_nm_solver_parse(const char *s, tb_nm_solver *out);

/* ---- one group of m <= 16 values; bit t of the result keeps v[t] ---- */

/* The n largest of v[0..m-1]; ties keep the lower index. [5,1,4,2], 2 -> 0b0101. */
uint32_t tb_nm_topn_group(const float *v, int m, int n);

/* A group objective to maximise: the value of keeping `keep` in a group whose
 * scores are `vals`. NULL means the separable one, the sum of kept scores.
 * A joint objective keeps whatever else it needs (row, group, state) in ctx. */
typedef double (*tb_nm_objective)(void *ctx, const float *vals, uint32_t keep);

/* Exhaustive search over the C(m, n) keep sets (Gosper's hack enumerates them
 * in increasing numeric order, so on equal values the set with the lower
 * indices wins, as in topn). C(16, 8) = 12870 sets at most. */
uint32_t tb_nm_optimal_group(const float *v, int m, int n, tb_nm_objective obj, void *ctx);

/* ---- whole matrices ---- */

typedef struct {
    int n, m, k_dim;
    tb_nm_solver solver;
    int n_threads;
    int max_sweeps;     /* iterative: sweeps over a unit's groups (<= 0: 10) */
    /* iterative only, in the same channel order as the scores: */
    const float *w;     /* the weight, same shape as the scores */
    const double *gram; /* [K, K] Gram (sum of x x^T) of the reduction dim */
} tb_nm_opts;

typedef struct {
    double kept, total;      /* sum of kept scores, sum of all scores */
    double err_start, err;   /* iterative: joint error of the topn start and of the result */
    int64_t changed_groups;  /* iterative: groups whose keep set left topn's */
} tb_nm_stats;

/* N:M mask of a [rows, cols] score matrix into `mask` (already allocated
 * rows x cols). topn / optimal maximise kept importance per group; iterative
 * starts from topn and, unit by unit, re-solves each group exactly
 * (tb_nm_optimal_group) against the joint error below with the other groups
 * fixed, accepting only strict decreases, so its error is never above topn's.
 * Errors: TB_EUSAGE (bad n, m, k_dim; iterative without w or gram);
 * TB_EDATA "dim D (X) not divisible by M=m". */
int tb_nm_solve(const tb_nm_opts *o, const float *s, int64_t rows, int64_t cols, tb_mask *mask, tb_nm_stats *st);

/* The joint objective of the iterative solver: for each output unit, with
 * d = w * (1 - mask) the weights it prunes (zeroed, not compensated),
 * d^T G d = || d^T X ||^2, the squared change of that unit's output over the
 * calibration tokens. Summed over units, in f64. */
double tb_nm_joint_error(const float *w, const double *gram, int64_t rows, int64_t cols, int k_dim, const tb_mask *mask);

/* Sum of the scores a mask keeps, and of all scores (f64). */
double tb_nm_kept(const float *s, const tb_mask *mask, double *total);

/* ---- unstructured ---- */

/* Prune exactly llround(sparsity * K) elements of every output unit. */
int tb_unstructured_units(const float *s, int64_t rows, int64_t cols, int k_dim, double sparsity, int n_threads,
                          tb_mask *mask);

/* Prune exactly n_prune elements of a pool of 2-D score tensors (one tensor,
 * or all the tensors of a layer), any float dtype, read in chunks so a pool
 * costs no copy. The lowest keys go; ties at the threshold go from the end of
 * the pool's order (tensor order, then row-major). Then tb_pool_mask gives
 * tensor i its mask. Scores must be finite (checked by the caller). */
typedef struct {
    int64_t n_prune;
    uint32_t key;       /* order-preserving key of the threshold score */
    int64_t ties_total; /* elements of the pool whose key == key */
    int64_t ties_prune; /* of which the last ties_prune are pruned */
} tb_pool_threshold;
int tb_pool_select(const tb_array *t, int n, int64_t n_prune, tb_pool_threshold *thr, int64_t *ties_before);
int tb_pool_mask(const tb_array *t, const tb_pool_threshold *thr, int64_t ties_before, tb_mask *mask);

/* ---- channel permutation (Pool & Yu 2021) ----
 * perm[j] = the original input channel at position j of the permuted weight.
 * Permuting a weight's input channels and its input x the same way leaves
 * W x unchanged, so a permuted mask is as good as a mask of the original. */

typedef struct {
    int rounds;     /* bound on swap rounds (<= 0: 100) */
    uint64_t seed;  /* for the random pairing of groups in each round */
    int n_threads;
} tb_perm_opts;

typedef struct {
    double kept_identity, kept_seed, kept; /* topn kept importance: no permutation, greedy seed, final */
    int rounds, swaps;
} tb_perm_stats;

/* Search a permutation of the K input channels maximising the kept
 * importance of topn N:M; never worse than the identity. Cost per round
 * O(K * M * units) plus O(units * M^2) per accepted swap (tb-nm(1)). */
int tb_permute_search(const float *s, int64_t rows, int64_t cols, int k_dim, int n, int m, const tb_perm_opts *o,
                      int32_t *perm, tb_perm_stats *st);

/* The same search for an attention output projection (o_proj, [rows, cols]
 * with cols = n_heads * head_dim, k_dim 1), constrained so the permutation
 * can be folded into v_proj's rows: channels move only within a head, and
 * the heads that share a KV head (n_heads / n_kv_heads of them, GQA) move
 * theirs the same way. Each KV group is one search over the group's heads
 * stacked as units ([rows * heads per group, head_dim]). st sums the groups. */
int tb_permute_search_heads(const float *s, int64_t rows, int64_t cols, int n_heads, int n_kv_heads, int head_dim,
                            int n, int m, const tb_perm_opts *o, int32_t *perm, tb_perm_stats *st);

/* topn kept importance of s with its reduction dim permuted by perm (NULL: identity). */
double tb_nm_kept_topn(const float *s, int64_t rows, int64_t cols, int k_dim, int n, int m, const int32_t *perm);

/* out = in with the reduction dim permuted: out(o, j) = in(o, perm[j]).
 * Elements of elem_size bytes (any dtype); in and out must not overlap.
 * Apply the inverse (tb_permute_invert) to undo. A vector is rows = 1. */
void tb_permute_apply(const void *in, void *out, size_t elem_size, int64_t rows, int64_t cols, int k_dim,
                      const int32_t *perm);
/* w [rows, cols] f32 in place, columns into perm's order (undo = 0:
 * w'(r, j) = w(r, perm[j])) or back (undo = 1: w(r, perm[j]) = w'(r, j)). */
int tb_permute_cols_inplace(float *w, int64_t rows, int64_t cols, const int32_t *perm, int undo);
/* inv[perm[j]] = j */
void tb_permute_invert(const int32_t *perm, int32_t *inv, int64_t k);
/* TB_OK if perm is a permutation of 0..k-1, else TB_EDATA naming the index. */
int tb_permute_check(const int32_t *perm, int64_t k);

#endif
