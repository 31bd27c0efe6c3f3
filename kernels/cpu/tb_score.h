/* tb_score.h - importance of each weight element (tb-score's kernels).
 *
 * A weight is a 2-D matrix stored [rows, cols] row-major. Its reduction
 * (input-channel) dimension is k_dim: 1 for nn.Linear's [out, in] (the HF
 * layout), 0 for weights stored transposed [in, out]. Below, w_ok is the
 * element of output unit o and input channel k, K the size of the reduction
 * dimension, and every score is >= 0 with larger meaning "more important".
 *
 *   magnitude   |w_ok|
 *   wanda       |w_ok| * sqrt(G_kk)           G = sum over tokens of x x^T
 *   obd         w_ok^2 (F_ok + lambda) / 2     F the Fisher diagonal
 *   obs         w_ok^2 / (2 [H^-1]_kk)         H = 2 G / n + lambda I (Gram)
 *               = obd                           when only F is known (H diagonal)
 *   normalized  base score / max of the base score over its output unit
 *
 * tb-score(1) gives the sources and the reasons. Sums are in f64.
 */
#ifndef TB_SCORE_H
#define TB_SCORE_H

#include <stdint.h>

typedef enum {
    TB_SCORE_MAGNITUDE,
    TB_SCORE_WANDA,
    TB_SCORE_OBD,
    TB_SCORE_OBS,
    TB_SCORE_NORMALIZED,
    TB_SCORE_COUNT
} tb_score_method;

const char *tb_score_method_name(tb_score_method m);
int tb_score_method_parse(const char *s, tb_score_method *out); /* TB_EUSAGE naming the choices */

#define TB_SCORE_DEFAULT_DAMP 0.01

typedef struct {
    tb_score_method method;
    tb_score_method base;  /* for NORMALIZED: the score that is normalised (not NORMALIZED) */
    int k_dim;             /* 1: [out, in] (default); 0: [in, out] */
    double lambda;         /* absolute damping; < 0: relative, damp * mean diagonal */
    double damp;           /* relative damping fraction (TB_SCORE_DEFAULT_DAMP) */
    int n_threads;
} tb_score_opts;

/* What one tensor is scored from. Which fields a method needs:
 * wanda gram_diag; obd fisher; obs hinv_diag (Gram form) else fisher. */
typedef struct {
    int64_t rows, cols;
    const float *w;          /* rows * cols */
    const float *fisher;     /* rows * cols Fisher diagonal, or NULL */
    const double *gram_diag; /* [K] diagonal of G (sums of x_k^2), or NULL */
    const double *hinv_diag; /* [K] diagonal of H^-1 (tb_score_hinv_diag), or NULL */
} tb_score_input;

/* Score one tensor into out[rows * cols]. *lambda_used gets the damping of
 * obd / Fisher-form obs (NaN when none applies). Errors: TB_EUSAGE when an
 * input the method needs is NULL; TB_EDATA "score at [r, c] is nan (w=..)"
 * when a result is not finite (the caller adds the tensor name). */
int tb_score_tensor(const tb_score_opts *o, const tb_score_input *in, float *out, double *lambda_used);

/* lambda = damp * (1/n) sum F_i, the sum in f64 (obd's default damping). */
double tb_score_fisher_lambda(const float *fisher, int64_t n, double damp);

/* diag(H^-1) for H = scale * G + lambda I (G symmetric k x k, row or column
 * major alike). lambda = lambda_abs if >= 0, else damp * mean(diag(scale*G)).
 * Cholesky (dpotrf + dpotri, f64); on failure lambda is raised x10 up to 4
 * times, then an eigendecomposition (dsyevd) of scale*G with eigenvalues
 * clamped to max(mu, 0) + lambda gives the inverse. A G with zero diagonal
 * (an input never seen) and lambda 0 uses lambda = 1 (H = I: magnitude order).
 * Errors: TB_EDATA for a non-finite G entry (index given), TB_EIO for memory. */
typedef struct {
    double lambda;   /* damping finally used */
    int escalations; /* times lambda was raised */
    int eigen;       /* 1 if the eigen fallback was used */
} tb_hinv_info;
int tb_score_hinv_diag(const double *gram, int64_t k, double scale, double lambda_abs, double damp, double *hinv_diag,
                       tb_hinv_info *info);

/* Index of the first non-finite value, or -1. */
int64_t tb_score_first_nonfinite(const float *v, int64_t n);

#endif
