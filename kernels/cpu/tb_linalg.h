/* tb_linalg.h - the small dense linear algebra of weight compensation.
 *
 * Shared by tb-pack's solvers (tb_compensate) and tb-score's OBS saliencies.
 * Everything is f64, row-major, symmetric matrices stored full (both
 * triangles); LAPACKE does the factorizations.
 *
 * Damping ladder (tb_sym_solve, tb_sym_inverse). Calibration Hessians are
 * often singular (dead input channels, fewer tokens than inputs) or, after
 * rounding through f32/bf16, very slightly indefinite. So a solve of
 * (A + lambda I) x = b
 *   1. factors A + lambda I by Cholesky (dpotrf);
 *   2. if that fails, multiplies lambda by 10 and retries, at most
 *      TB_DAMP_RAISES times (a zero lambda goes to 1e-9, 1e-8, 1e-7 times
 *      mean|diag A|, so damp 0 still has somewhere to go);
 *   3. if it still fails, solves with the eigen decomposition (dsyevd) of
 *      A + lambda_0 I, dropping eigenvalues <= n * eps * max eigenvalue (the
 *      least-squares, minimum-norm solution on the positive part);
 * and never returns a NaN: non-finite input or output is TB_EDATA
 * ("non-finite ..."), which callers prefix with the tensor and row.
 */
#ifndef TB_LINALG_H
#define TB_LINALG_H

#include <stddef.h>

#define TB_DAMP_RAISES 3

typedef struct {
    double lambda; /* damping finally used (lambda_0 on the eigen path) */
    int raises;    /* how many x10 raises step 2 needed */
    int eigen;     /* 1: step 3 (eigen fallback) gave the answer */
} tb_solve_info;

/* Doubles of `work` tb_sym_solve needs for order n. */
size_t tb_sym_solve_work(int n);

/* Solve (A + lambda I) X = B in place of B ([n, nrhs]). A [n, n] is only
 * read. `work` holds tb_sym_solve_work(n) doubles (callers that solve per row
 * allocate it once per thread). `info` may be NULL. */
int tb_sym_solve(const double *a, int n, double lambda, double *b, int nrhs, double *work, tb_solve_info *info);

/* inv = (A + lambda I)^-1, full symmetric [n, n]; same ladder. Allocates its
 * own work (called once per tensor, not per row). */
int tb_sym_inverse(const double *a, int n, double lambda, double *inv, tb_solve_info *info);

/* Doubles of `work` tb_woodbury_inverse needs. */
size_t tb_woodbury_work(int k, int n);

/* hinv = (lambda I + s G^T G)^-1 for G [k, n] (k samples of an n-vector,
 * e.g. gradients; s = 1/k gives an empirical Fisher), lambda > 0, by the
 * Woodbury identity
 *     (lambda I + s G^T G)^-1 = (1/lambda) (I - G^T (lambda/s I + G G^T)^-1 G),
 * which factors a k x k matrix instead of an n x n one: k << n for Fisher
 * blocks (16 samples, 128 weights). TB_EDATA if lambda <= 0 or non-finite. */
int tb_woodbury_inverse(const double *g, int k, int n, double lambda, double s, double *hinv, double *work);

/* Remove variable q from the system whose inverse is hinv [n, n]:
 *     hinv <- hinv - hinv[:, q] hinv[q, :] / hinv[q, q]
 * (Sherman-Morrison). Afterwards row and column q are exactly 0 and the rest
 * is the inverse of H with row and column q deleted, so removing weights one
 * at a time costs n^2 each instead of a new inversion. Returns -1 (and
 * changes nothing) if hinv[q, q] is not positive, else 0. */
int tb_sm_downdate(double *hinv, int n, int q);

#endif
