/* tb_score.c - per-element importance scores (see tb_score.h, tb-score(1)). */
#include "tb_score.h"
#include "tb_error.h"
#include "tb_threads.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const method_names[TB_SCORE_COUNT] = {"magnitude", "wanda", "obd", "obs", "normalized"};

const char *tb_score_method_name(tb_score_method m)
{
    return (unsigned)m < TB_SCORE_COUNT ? method_names[m] : "?";
}

int tb_score_method_parse(const char *s, tb_score_method *out)
{
    for (int i = 0; i < TB_SCORE_COUNT; i++)
        if (strcmp(s, method_names[i]) == 0) { *out = (tb_score_method)i; return TB_OK; }
    return tb_fail(TB_EUSAGE, "unknown method '%s' (magnitude, wanda, obd, obs, normalized)", s);
}

double tb_score_fisher_lambda(const float *fisher, int64_t n, double damp)
{
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += fisher[i];
    return n > 0 ? damp * sum / (double)n : 0.0;
}

int64_t tb_score_first_nonfinite(const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return i;
    return -1;
}

/* ---- elementwise scores, threaded over rows ---- */

typedef struct {
    tb_score_method method; /* never NORMALIZED here */
    const tb_score_input *in;
    int k_dim;
    double lambda;
    float *out;
} elem_ctx;

static void elem_rows(void *vctx, int64_t r0, int64_t r1, int tid)
{
    const elem_ctx *c = vctx;
    const tb_score_input *in = c->in;
    int64_t cols = in->cols;
    for (int64_t r = r0; r < r1; r++) {
        const float *w = in->w + r * cols;
        float *o = c->out + r * cols;
        for (int64_t j = 0; j < cols; j++) {
            double wv = w[j];
            int64_t k = c->k_dim ? j : r; /* the input channel of element (r, j) */
            double s;
            switch (c->method) {
            case TB_SCORE_WANDA: s = fabs(wv) * sqrt(in->gram_diag[k]); break;
            case TB_SCORE_OBD: s = wv * wv * ((double)in->fisher[r * cols + j] + c->lambda) * 0.5; break;
            case TB_SCORE_OBS:
                s = in->hinv_diag ? wv * wv / (2.0 * in->hinv_diag[k])
                                  : wv * wv * ((double)in->fisher[r * cols + j] + c->lambda) * 0.5;
                break;
            default: s = fabs(wv); break;
            }
            o[j] = (float)s;
        }
    }
}

/* Divide each output unit's scores by their maximum, so every unit's scores
 * lie in [0, 1] with its most important weight at 1. An all-zero unit stays 0. */
static int normalize_units(float *s, int64_t rows, int64_t cols, int k_dim)
{
    if (k_dim == 1) {
        for (int64_t r = 0; r < rows; r++) {
            float *p = s + r * cols, mx = 0;
            for (int64_t j = 0; j < cols; j++) mx = p[j] > mx ? p[j] : mx;
            if (mx > 0)
                for (int64_t j = 0; j < cols; j++) p[j] = (float)((double)p[j] / mx);
        }
        return TB_OK;
    }
    /* [in, out]: the output unit is a column */
    float *mx = tb_calloc((size_t)cols + 1, sizeof *mx);
    if (!mx) return TB_EIO;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) mx[c] = s[r * cols + c] > mx[c] ? s[r * cols + c] : mx[c];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            if (mx[c] > 0) s[r * cols + c] = (float)((double)s[r * cols + c] / mx[c]);
    free(mx);
    return TB_OK;
}

int tb_score_tensor(const tb_score_opts *o, const tb_score_input *in, float *out, double *lambda_used)
{
    tb_score_method m = o->method == TB_SCORE_NORMALIZED ? o->base : o->method;
    if (m == TB_SCORE_NORMALIZED) return tb_fail(TB_EUSAGE, "normalized needs a base method other than itself");
    if (o->k_dim != 0 && o->k_dim != 1) return tb_fail(TB_EUSAGE, "k_dim %d (must be 0 or 1)", o->k_dim);
    int64_t n = in->rows * in->cols;
    double lambda = NAN;
    switch (m) {
    case TB_SCORE_WANDA:
        if (!in->gram_diag) return tb_fail(TB_EUSAGE, "wanda needs the Gram diagonal");
        break;
    case TB_SCORE_OBD:
    case TB_SCORE_OBS:
        if (m == TB_SCORE_OBS && in->hinv_diag) break;
        if (!in->fisher) return tb_fail(TB_EUSAGE, "%s needs the Fisher diagonal", tb_score_method_name(m));
        lambda = o->lambda >= 0 ? o->lambda : tb_score_fisher_lambda(in->fisher, n, o->damp);
        break;
    default: break;
    }
    if (lambda_used) *lambda_used = lambda;
    elem_ctx c = {m, in, o->k_dim, lambda, out};
    tb_parallel_for(o->n_threads > 0 ? o->n_threads : 1, in->rows, elem_rows, &c);
    if (o->method == TB_SCORE_NORMALIZED && normalize_units(out, in->rows, in->cols, o->k_dim)) return TB_EIO;
    int64_t bad = tb_score_first_nonfinite(out, n);
    if (bad >= 0) {
        int64_t r = bad / in->cols, j = bad % in->cols;
        return tb_fail(TB_EDATA, "score at [%lld, %lld] is %s (w=%g)", (long long)r, (long long)j,
                       isnan(out[bad]) ? "nan" : "inf", (double)in->w[bad]);
    }
    return TB_OK;
}

/* ---- diag(H^-1) ---- */

static void fill_damped(double *a, const double *gram, int64_t k, double scale, double lambda)
{
    for (int64_t i = 0; i < k * k; i++) a[i] = scale * gram[i];
    for (int64_t i = 0; i < k; i++) a[i * k + i] += lambda;
}

static int diag_ok(const double *d, int64_t k)
{
    for (int64_t i = 0; i < k; i++)
        if (!(d[i] > 0) || !isfinite(d[i])) return 0;
    return 1;
}

int tb_score_hinv_diag(const double *gram, int64_t k, double scale, double lambda_abs, double damp, double *hinv_diag,
                       tb_hinv_info *info)
{
    tb_hinv_info dummy;
    if (!info) info = &dummy;
    memset(info, 0, sizeof *info);
    for (int64_t i = 0; i < k * k; i++)
        if (!isfinite(gram[i]))
            return tb_fail(TB_EDATA, "Gram entry [%lld, %lld] is %s", (long long)(i / k), (long long)(i % k),
                           isnan(gram[i]) ? "nan" : "inf");
    double mean_diag = 0;
    for (int64_t i = 0; i < k; i++) mean_diag += scale * gram[i * k + i];
    mean_diag /= (double)(k > 0 ? k : 1);
    double lambda = lambda_abs >= 0 ? lambda_abs : damp * mean_diag;
    /* raising 0 x10 gets nowhere: start escalation from the relative default,
     * and from 1 when the Gram is zero (H = I then orders by magnitude) */
    double step_base = damp * mean_diag > 0 ? damp * mean_diag : 1.0;
    if (!(lambda > 0) && !(mean_diag > 0)) lambda = 1.0;

    double *a = malloc((size_t)(k * k) * sizeof *a + 1);
    if (!a) return tb_fail(TB_EIO, "out of memory (%lld x %lld Hessian)", (long long)k, (long long)k);
    for (int attempt = 0; attempt <= 4; attempt++) {
        if (attempt > 0) {
            lambda = lambda > 0 ? lambda * 10 : step_base;
            info->escalations = attempt;
        }
        fill_damped(a, gram, k, scale, lambda);
        /* symmetric, so row/column major are the same matrix; column major
         * avoids LAPACKE's transposed copy */
        if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', (lapack_int)k, a, (lapack_int)k) != 0) continue;
        if (LAPACKE_dpotri(LAPACK_COL_MAJOR, 'L', (lapack_int)k, a, (lapack_int)k) != 0) continue;
        for (int64_t i = 0; i < k; i++) hinv_diag[i] = a[i * k + i];
        if (diag_ok(hinv_diag, k)) {
            info->lambda = lambda;
            free(a);
            return TB_OK;
        }
    }
    /* eigen fallback: project scale*G onto the PSD cone, then damp with the
     * base lambda. [H^-1]_ii = sum_j V_ij^2 / mu_j. */
    double base = lambda_abs >= 0 ? lambda_abs : damp * mean_diag;
    if (!(base > 0)) base = step_base;
    double *mu = malloc((size_t)k * sizeof *mu + 1);
    if (!mu) { free(a); return tb_fail(TB_EIO, "out of memory (eigenvalues)"); }
    fill_damped(a, gram, k, scale, 0.0);
    int rc = TB_OK;
    if (LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)k, a, (lapack_int)k, mu) != 0) {
        rc = tb_fail(TB_EDATA, "Hessian [%lld x %lld]: Cholesky failed 5 times and the eigendecomposition did not converge",
                     (long long)k, (long long)k);
    } else {
        for (int64_t j = 0; j < k; j++) mu[j] = (mu[j] > 0 ? mu[j] : 0) + base;
        for (int64_t i = 0; i < k; i++) {
            double s = 0;
            for (int64_t j = 0; j < k; j++) s += a[j * k + i] * a[j * k + i] / mu[j]; /* column j = eigenvector j */
            hinv_diag[i] = s;
        }
        if (!diag_ok(hinv_diag, k)) rc = tb_fail(TB_EDATA, "Hessian inverse diagonal not positive after eigen fallback");
        info->eigen = 1;
        info->lambda = base;
    }
    free(mu);
    free(a);
    return rc;
}
