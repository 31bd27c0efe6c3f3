/* tb_linalg.c - damped symmetric solves, inverses, Woodbury and
 * Sherman-Morrison (see tb_linalg.h for the damping ladder).
 *
 * Memory layout trick: a full symmetric row-major matrix is its own
 * transpose, so LAPACK is called column-major on it ('L' in column-major is
 * the row-major upper triangle). That avoids LAPACKE's row-major path, which
 * allocates and transposes a copy on every call - per row of a weight matrix
 * that would be most of the work. After dpotrf the row-major upper triangle
 * holds U with A = U^T U, and cblas's row-major triangular solves use it
 * directly. */
#include "tb_linalg.h"
#include "tb_error.h"

#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int all_finite(const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static double mean_abs_diag(const double *a, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += fabs(a[(size_t)i * n + i]);
    return n ? s / n : 0;
}

/* work <- A + lambda I, then Cholesky; 0 on success */
static int chol_at(const double *a, int n, double lambda, double *work)
{
    memcpy(work, a, (size_t)n * n * sizeof *work);
    for (int i = 0; i < n; i++) work[(size_t)i * n + i] += lambda;
    return LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, work, n) != 0;
}

/* Steps 1-2 of the ladder: factor A + lambda I into work, raising lambda.
 * Returns 0 with info filled, or -1 if every level failed. */
static int chol_ladder(const double *a, int n, double lambda, double *work, tb_solve_info *info)
{
    info->lambda = lambda;
    info->raises = 0;
    info->eigen = 0;
    if (!chol_at(a, n, lambda, work)) return 0;
    double l = lambda > 0 ? lambda : 1e-10 * mean_abs_diag(a, n);
    if (!(l > 0)) l = 1e-10; /* A has an all-zero diagonal: any scale will do */
    for (int r = 1; r <= TB_DAMP_RAISES; r++) {
        l *= 10;
        if (!chol_at(a, n, l, work)) {
            info->lambda = l;
            info->raises = r;
            return 0;
        }
    }
    return -1;
}

/* Step 3: eigen decomposition of A + lambda I into work (rows = eigenvectors)
 * and the pseudo-inverted eigenvalues into p[n]. */
static int eigen_pinv(const double *a, int n, double lambda, double *work, double *p)
{
    memcpy(work, a, (size_t)n * n * sizeof *work);
    for (int i = 0; i < n; i++) work[(size_t)i * n + i] += lambda;
    /* column-major 'V': eigenvector j is column j = row j of our row-major view */
    if (LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'L', n, work, n, p) != 0)
        return tb_fail(TB_EDATA, "eigen decomposition did not converge (n = %d)", n);
    double emax = n ? p[n - 1] : 0; /* ascending order */
    double tol = (double)n * DBL_EPSILON * (emax > 0 ? emax : 0);
    for (int i = 0; i < n; i++) p[i] = p[i] > tol ? 1.0 / p[i] : 0.0;
    return TB_OK;
}

size_t tb_sym_solve_work(int n) { return (size_t)n * (size_t)n; }

int tb_sym_solve(const double *a, int n, double lambda, double *b, int nrhs, double *work, tb_solve_info *info)
{
    tb_solve_info dummy;
    if (!info) info = &dummy;
    if (n == 0 || nrhs == 0) return TB_OK;
    if (!all_finite(a, (size_t)n * n) || !isfinite(lambda)) return tb_fail(TB_EDATA, "non-finite matrix (n = %d)", n);
    if (!all_finite(b, (size_t)n * nrhs)) return tb_fail(TB_EDATA, "non-finite right-hand side (n = %d)", n);
    if (chol_ladder(a, n, lambda, work, info) == 0) {
        /* A + lambda I = U^T U: solve U^T y = b, then U x = y */
        cblas_dtrsm(CblasRowMajor, CblasLeft, CblasUpper, CblasTrans, CblasNonUnit, n, nrhs, 1.0, work, n, b, nrhs);
        cblas_dtrsm(CblasRowMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, n, nrhs, 1.0, work, n, b, nrhs);
    } else {
        info->lambda = lambda;
        info->raises = TB_DAMP_RAISES;
        info->eigen = 1;
        double *p = tb_malloc((size_t)n * sizeof *p), *t = tb_malloc((size_t)n * nrhs * sizeof *t);
        int rc = p && t ? eigen_pinv(a, n, lambda, work, p) : TB_EIO;
        if (!rc) {
            /* x = E^T diag(p) E b, E the eigenvectors as rows */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, nrhs, n, 1.0, work, n, b, nrhs, 0.0, t, nrhs);
            for (int i = 0; i < n; i++)
                for (int j = 0; j < nrhs; j++) t[(size_t)i * nrhs + j] *= p[i];
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, nrhs, n, 1.0, work, n, t, nrhs, 0.0, b, nrhs);
        }
        free(p);
        free(t);
        if (rc) return rc;
    }
    if (!all_finite(b, (size_t)n * nrhs)) return tb_fail(TB_EDATA, "non-finite solution (n = %d)", n);
    return TB_OK;
}

int tb_sym_inverse(const double *a, int n, double lambda, double *inv, tb_solve_info *info)
{
    tb_solve_info dummy;
    if (!info) info = &dummy;
    if (n == 0) return TB_OK;
    if (!all_finite(a, (size_t)n * n) || !isfinite(lambda)) return tb_fail(TB_EDATA, "non-finite matrix (n = %d)", n);
    if (chol_ladder(a, n, lambda, inv, info) == 0) {
        if (LAPACKE_dpotri(LAPACK_COL_MAJOR, 'L', n, inv, n) != 0)
            return tb_fail(TB_EDATA, "inverse of a Cholesky factor failed (n = %d)", n);
        /* dpotri filled the row-major upper triangle; mirror it */
        for (int i = 0; i < n; i++)
            for (int j = 0; j < i; j++) inv[(size_t)i * n + j] = inv[(size_t)j * n + i];
    } else {
        info->lambda = lambda;
        info->raises = TB_DAMP_RAISES;
        info->eigen = 1;
        double *e = tb_malloc((size_t)n * n * sizeof *e), *p = tb_malloc((size_t)n * sizeof *p);
        int rc = e && p ? eigen_pinv(a, n, lambda, e, p) : TB_EIO;
        if (!rc) {
            /* inv = E^T diag(p) E: scale the rows of a copy, then one gemm */
            double *pe = inv;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) pe[(size_t)i * n + j] = p[i] * e[(size_t)i * n + j];
            double *t = tb_malloc((size_t)n * n * sizeof *t);
            if (!t) rc = TB_EIO;
            else {
                cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, n, n, 1.0, e, n, pe, n, 0.0, t, n);
                memcpy(inv, t, (size_t)n * n * sizeof *t);
                free(t);
            }
        }
        free(e);
        free(p);
        if (rc) return rc;
    }
    if (!all_finite(inv, (size_t)n * n)) return tb_fail(TB_EDATA, "non-finite inverse (n = %d)", n);
    return TB_OK;
}

size_t tb_woodbury_work(int k, int n) { return (size_t)k * k + (size_t)k * n; }

int tb_woodbury_inverse(const double *g, int k, int n, double lambda, double s, double *hinv, double *work)
{
    if (!(lambda > 0) || !isfinite(lambda) || !(s >= 0) || !isfinite(s))
        return tb_fail(TB_EDATA, "Woodbury inverse needs lambda > 0 (got %g) and s >= 0 (got %g)", lambda, s);
    if (!all_finite(g, (size_t)k * n)) return tb_fail(TB_EDATA, "non-finite samples (%d x %d)", k, n);
    double *m = work, *y = work + (size_t)k * k;
    memset(hinv, 0, (size_t)n * n * sizeof *hinv);
    for (int i = 0; i < n; i++) hinv[(size_t)i * n + i] = 1.0 / lambda;
    if (k == 0 || s == 0) return TB_OK;
    /* M = lambda/s I + G G^T (row-major upper triangle is all dpotrf reads) */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, k, n, 1.0, g, n, 0.0, m, k);
    for (int i = 0; i < k; i++) m[(size_t)i * k + i] += lambda / s;
    if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', k, m, k) != 0)
        return tb_fail(TB_EDATA, "Woodbury: %d x %d core not positive definite", k, k);
    /* Y = M^-1 G, then hinv = (1/lambda) (I - G^T Y) */
    memcpy(y, g, (size_t)k * n * sizeof *y);
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasUpper, CblasTrans, CblasNonUnit, k, n, 1.0, m, k, y, n);
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, k, n, 1.0, m, k, y, n);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, n, k, -1.0 / lambda, g, n, y, n, 1.0, hinv, n);
    /* G^T M^-1 G is symmetric only up to rounding; downdates assume symmetry */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) {
            double v = 0.5 * (hinv[(size_t)i * n + j] + hinv[(size_t)j * n + i]);
            hinv[(size_t)i * n + j] = hinv[(size_t)j * n + i] = v;
        }
    return TB_OK;
}

/* y -= a x over distinct rows: restrict lets the compiler vectorise it */
static void row_axpy(double *restrict y, const double *restrict x, double a, int n)
{
    for (int j = 0; j < n; j++) y[j] -= a * x[j];
}

int tb_sm_downdate(double *hinv, int n, int q)
{
    const double *rq = hinv + (size_t)q * n;
    double hqq = rq[q];
    if (!(hqq > 0)) return -1;
    /* row q is read, never written, until the end, so no copy is needed;
     * rows of variables removed earlier are 0 and skipped */
    for (int i = 0; i < n; i++) {
        if (i == q) continue;
        double *ri = hinv + (size_t)i * n;
        double f = ri[q] / hqq;
        if (f == 0) continue;
        row_axpy(ri, rq, f, n);
        ri[q] = 0; /* = ri[q] - f * hqq, exactly 0 in exact arithmetic */
    }
    memset(hinv + (size_t)q * n, 0, (size_t)n * sizeof *hinv);
    return 0;
}
