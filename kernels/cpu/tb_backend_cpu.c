/* tb_backend_cpu.c - the CPU implementation of the backend table (tb_backend.h).
 *
 * Backend memory is host memory, so every op is a call into the reference
 * kernels of this directory (tb_ops, tb_linear, tb_grad, tb_loss); this file
 * only adapts arguments and owns the per-thread scratch they share. Weights
 * are used where they are mapped: linear_upload binds, it does not copy.
 */
#include "tb_backend.h"
#include "tb_error.h"
#include "tb_grad.h"
#include "tb_learnmask.h"
#include "tb_loss.h"
#include "tb_ops.h"
#include "tb_threads.h"
#include "tb_train.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    tb_scratch scratch; /* grown on demand to the largest op seen */
    double *xd;         /* gram_acc's f64 copy of its input */
    size_t xd_len;
    int rc;             /* sticky error of an op (sync returns it) */
    char msg[256];
} cpu_impl;

static cpu_impl *impl(tb_backend *b) { return (cpu_impl *)b->impl; }
static int threads(tb_backend *b) { return b->o.n_threads < 1 ? 1 : b->o.n_threads; }

/* an op that cannot run records the first failure; sync reports it */
static void sticky(tb_backend *b, int rc)
{
    cpu_impl *c = impl(b);
    if (rc && !c->rc) {
        c->rc = rc;
        snprintf(c->msg, sizeof c->msg, "%s", tb_errmsg());
    }
}

static const tb_scratch *scratch(tb_backend *b, size_t per_thread)
{
    cpu_impl *c = impl(b);
    if (per_thread <= c->scratch.per_thread && c->scratch.buf) return &c->scratch;
    tb_scratch_free(&c->scratch);
    if (tb_scratch_init(&c->scratch, threads(b), per_thread)) {
        sticky(b, TB_EIO);
        return NULL;
    }
    return &c->scratch;
}

/* ---- memory ---- */

static void cpu_close(tb_backend *b)
{
    cpu_impl *c = impl(b);
    if (!c) return;
    tb_scratch_free(&c->scratch);
    free(c->xd);
    free(c);
    b->impl = NULL;
}

static void *cpu_alloc(tb_backend *b, size_t bytes, const char *what)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) tb_fail(TB_EIO, "out of memory: %zu bytes for %s", bytes, what ? what : "a buffer");
    return p;
}

static void cpu_free(tb_backend *b, void *p) { free(p); }
static void cpu_copy(tb_backend *b, void *dst, const void *src, size_t bytes)
{
    if (bytes && dst != src) memmove(dst, src, bytes);
}
static void cpu_zero(tb_backend *b, void *p, size_t bytes) { memset(p, 0, bytes); }

static int cpu_sync(tb_backend *b)
{
    cpu_impl *c = impl(b);
    if (!c->rc) return TB_OK;
    int rc = c->rc;
    c->rc = TB_OK;
    return tb_fail(rc, "%s", c->msg);
}

static size_t cpu_mem_free(tb_backend *b) { return SIZE_MAX; }

/* ---- weights ---- */

static int cpu_linear_upload(tb_backend *b, tb_dlinear *d, const tb_linear *L)
{
    memset(d, 0, sizeof *d);
    d->host = L;
    d->rows = L->rows;
    d->cols = L->cols;
    return TB_OK;
}

static int cpu_linear_upload_train(tb_backend *b, tb_dlinear *d, const tb_linear *L)
{
    if (L->format != TB_LINEAR_DENSE || L->dtype != TB_F32 || L->perm)
        return tb_fail(TB_EUSAGE, "%s: a trained weight must be dense f32 in model order", L->name ? L->name : "weight");
    cpu_linear_upload(b, d, L);
    d->w32 = (float *)L->data; /* the caller's mutable array: Adam updates it in place */
    d->trainable = 1;
    return TB_OK;
}

static void cpu_linear_download(tb_backend *b, const tb_dlinear *d, float *dst)
{
    if (d->w32 && dst != d->w32) {
        memcpy(dst, d->w32, (size_t)d->rows * d->cols * sizeof(float));
        return;
    }
    if (!d->w32) tb_linear_rows(d->host, 0, d->rows, dst, NULL);
}

static void cpu_linear_release(tb_backend *b, tb_dlinear *d) { memset(d, 0, sizeof *d); }

/* ---- decoder ops ---- */

static void cpu_embed(tb_backend *b, const tb_linear *table, const int32_t *tokens, int n, float *x)
{
    for (int t = 0; t < n; t++) tb_linear_row(table, tokens[t], x + (size_t)t * table->cols);
}

static void cpu_rmsnorm(tb_backend *b, float *y, float *inv_rms, const float *x, const float *w, int n, int d,
                        float eps)
{
    tb_rmsnorm(y, inv_rms, x, w, n, d, eps);
}

static void cpu_rmsnorm_backward(tb_backend *b, float *dx, const float *dy, const float *x, const float *inv_rms,
                                 const float *w, int n, int d, int accumulate)
{
    tb_rmsnorm_backward(dx, dy, x, inv_rms, w, n, d, accumulate);
}

static void cpu_rope(tb_backend *b, float *x, int n, int heads, int head_dim, int pos0, const float *cos_t,
                     const float *sin_t)
{
    tb_rope_apply(x, n, heads, head_dim, pos0, cos_t, sin_t);
}

static size_t cpu_attention_saved(tb_backend *b, const tb_attn_shape *a, int n, int kv)
{
    return (size_t)a->n_heads * (size_t)n * (size_t)kv; /* the probabilities */
}

static void cpu_attention(tb_backend *b, const tb_attn_shape *a, const float *q, const float *k, const float *v, int n,
                          int pos0, float *out, float *saved)
{
    const tb_scratch *s = scratch(b, tb_attention_scratch(pos0 + n));
    if (s) tb_attention(a, q, k, v, n, pos0, out, saved, s);
}

static void cpu_attention_backward(tb_backend *b, const tb_attn_shape *a, const float *q, const float *k,
                                   const float *v, const float *out, const float *saved, const float *d_out, int n,
                                   float *d_q, float *d_k, float *d_v)
{
    const tb_scratch *s = scratch(b, tb_attention_backward_scratch(n));
    if (s) tb_attention_backward(a, q, k, v, saved, d_out, n, d_q, d_k, d_v, s);
}

static void cpu_swiglu(tb_backend *b, float *out, const float *gate, const float *up, size_t count)
{
    tb_swiglu(out, gate, up, count, threads(b));
}

static void cpu_swiglu_backward(tb_backend *b, float *d_gate, float *d_up, const float *d_out, const float *gate,
                                const float *up, size_t count)
{
    tb_swiglu_backward(d_gate, d_up, d_out, gate, up, count, threads(b));
}

static void cpu_add(tb_backend *b, float *y, const float *a, const float *c, size_t count)
{
    for (size_t i = 0; i < count; i++) y[i] = a[i] + c[i];
}

/* the decode ops at a position in backend memory (host memory here): the
 * unfused ops in the order the engine calls them without them, so the CPU's
 * values do not depend on which path ran */
static void cpu_rope_append(tb_backend *b, float *q, const float *k, const float *v, int n, int q_heads,
                            int kv_heads, int head_dim, const int32_t *pos, const float *cos_t, const float *sin_t,
                            float *k_cache, float *v_cache)
{
    (void)b;
    const int p0 = *pos;
    const size_t kv = (size_t)kv_heads * head_dim;
    memcpy(k_cache + (size_t)p0 * kv, k, (size_t)n * kv * sizeof(float));
    memcpy(v_cache + (size_t)p0 * kv, v, (size_t)n * kv * sizeof(float));
    tb_rope_apply(q, n, q_heads, head_dim, p0, cos_t, sin_t);
    tb_rope_apply(k_cache + (size_t)p0 * kv, n, kv_heads, head_dim, p0, cos_t, sin_t);
}

static void cpu_attention_at(tb_backend *b, const tb_attn_shape *a, const float *q, const float *k, const float *v,
                             int n, const int32_t *pos, float *out)
{
    cpu_attention(b, a, q, k, v, n, *pos, out, NULL);
}

static void cpu_add_rmsnorm(tb_backend *b, float *y, float *yn, float *inv_rms, const float *a, const float *c,
                            const float *w, int n, int d, float eps)
{
    cpu_add(b, y, a, c, (size_t)n * d);
    tb_rmsnorm(yn, inv_rms, y, w, n, d, eps);
}

static void cpu_linear(tb_backend *b, const tb_dlinear *W, const float *x, int n, float *y);

static void cpu_linear_swiglu(tb_backend *b, const tb_dlinear *Wg, const tb_dlinear *Wu, const float *x, int n,
                              float *gate, float *up, float *out)
{
    cpu_linear(b, Wg, x, n, gate);
    cpu_linear(b, Wu, x, n, up);
    cpu_swiglu(b, out, gate, up, (size_t)n * Wg->rows);
}

static void cpu_linears(tb_backend *b, int count, const tb_dlinear *const *W, const float *x, int n, float *const *y)
{
    for (int i = 0; i < count; i++) cpu_linear(b, W[i], x, n, y[i]);
}

static void cpu_linear(tb_backend *b, const tb_dlinear *W, const float *x, int n, float *y)
{
    const tb_scratch *s = scratch(b, tb_linear_scratch(W->host));
    if (s) tb_linear_forward(W->host, x, n, y, s);
}

static void cpu_linear_dx(tb_backend *b, const tb_dlinear *W, const float *dy, int n, float *dx, int accumulate)
{
    const tb_scratch *s = scratch(b, tb_linear_input_grad_scratch(W->host));
    if (s) tb_linear_input_grad(W->host, dy, n, dx, accumulate, s);
}

static void cpu_linear_dw(tb_backend *b, const float *dy, const float *x, int n, int rows, int cols, float *dW)
{
    tb_linear_weight_grad(dy, x, n, rows, cols, dW, threads(b));
}

static void cpu_gram_acc(tb_backend *b, const float *x, int n, int cols, double *G)
{
    cpu_impl *c = impl(b);
    size_t len = (size_t)n * cols;
    if (len > c->xd_len) {
        free(c->xd);
        c->xd_len = 0;
        if (!(c->xd = tb_malloc(len * sizeof(double)))) {
            sticky(b, TB_EIO);
            return;
        }
        c->xd_len = len;
    }
    /* f64 products: a Gram over 10^5 tokens loses digits in f32 */
    for (size_t i = 0; i < len; i++) c->xd[i] = x[i];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, cols, n, 1.0, c->xd, cols, 1.0, G, cols);
}

static void cpu_sq_acc(tb_backend *b, float *F, const float *g, size_t count)
{
    for (size_t i = 0; i < count; i++) F[i] += g[i] * g[i];
}

/* ---- losses and reductions ---- */

static double cpu_nll(tb_backend *b, const float *logits, const int32_t *tokens, int n, int vocab)
{
    return n < 2 ? 0.0 : tb_eval_window_nll_mt(logits, tokens, n, vocab, threads(b)) * (n - 1);
}

static double cpu_xent_backward(tb_backend *b, float *logits, const int32_t *tokens, int n, int vocab)
{
    return tb_xent_backward(logits, tokens, n, vocab);
}

static double cpu_kl(tb_backend *b, const float *ref, const float *cur, int n, int vocab, int64_t *top1_same)
{
    return tb_eval_kl_rows(ref, cur, n, vocab, threads(b), top1_same);
}

static double cpu_kl_grad(tb_backend *b, const float *ref, float *cur, int n, int vocab, double scale,
                          int64_t *top1_same)
{
    int64_t same = 0;
    double kl = tb_kl_rows(ref, cur, n, vocab, scale, &same, threads(b));
    if (top1_same) *top1_same = same;
    return kl;
}

static double cpu_sum_sq_diff(tb_backend *b, const float *a, const float *c, size_t count)
{
    double s = 0;
    if (c)
        for (size_t i = 0; i < count; i++) s += ((double)a[i] - c[i]) * ((double)a[i] - c[i]);
    else
        for (size_t i = 0; i < count; i++) s += (double)a[i] * a[i];
    return s;
}

static void cpu_scaled_diff(tb_backend *b, float *d, const float *a, const float *c, float scale, size_t count)
{
    for (size_t i = 0; i < count; i++) d[i] = scale * (a[i] - c[i]);
}

static int64_t cpu_first_nonfinite(tb_backend *b, const float *x, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (!isfinite(x[i])) return (int64_t)i;
    return -1;
}

/* ---- training ---- */

static void cpu_adam(tb_backend *b, tb_dlinear *W, const float *g, const uint8_t *keep, float *m1, float *m2,
                     double lr, double beta1, double beta2, double c1, double c2, double eps)
{
    float *w = W->w32;
    const float b1 = (float)beta1, b2 = (float)beta2;
    size_t count = (size_t)W->rows * W->cols, j = 0; /* j: the moments of the kept entries (adam_moments_kept) */
    for (size_t i = 0; i < count; i++) {
        if (!keep[i]) continue;
        m1[j] = b1 * m1[j] + (1 - b1) * g[i];
        m2[j] = b2 * m2[j] + (1 - b2) * g[i] * g[i];
        w[i] -= (float)(lr * (m1[j] / c1) / (sqrt(m2[j] / c2) + eps));
        j++;
    }
}

/* ---- learned N:M masks ---- */

static void cpu_col_sq_acc(tb_backend *b, const float *x, int n, int cols, double *colsq)
{
    tb_learnmask_colsq(colsq, x, n, cols);
}

static void cpu_latent_step(tb_backend *b, float *lat, const float *g, float *m1, float *m2, const uint8_t *keep,
                            size_t count, double lr, double beta1, double beta2, double eps, int64_t t, double decay)
{
    const tb_adam_hp hp = {beta1, beta2, eps};
    tb_learnmask_update(lat, g, m1, m2, keep, (int64_t)count, lr, &hp, t, decay);
}

static void cpu_nm_reselect(tb_backend *b, const float *w, const double *colsq, double tokens, int64_t rows,
                            int64_t cols, int n, int m, uint8_t *keep)
{
    float *scale = tb_malloc((size_t)(cols > 0 ? cols : 1) * sizeof(float));
    if (!scale) {
        sticky(b, TB_EIO);
        return;
    }
    for (int64_t c = 0; c < cols; c++) scale[c] = (float)sqrt(colsq[c] / tokens);
    tb_nm_reselect(w, scale, rows, cols, n, m, keep);
    free(scale);
}

static void cpu_mask_apply(tb_backend *b, tb_dlinear *W, const float *lat, const uint8_t *keep)
{
    if (!W->w32) {
        tb_fail(TB_EUSAGE, "mask_apply: weight %s was not uploaded for training",
                W->host && W->host->name ? W->host->name : "?");
        sticky(b, TB_EUSAGE);
        return;
    }
    tb_learnmask_apply(W->w32, lat, keep, (int64_t)W->rows * W->cols);
}

static const tb_backend_ops cpu_ops = {
    .name = "cpu",
    .close = cpu_close,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .mem_free = cpu_mem_free,
    .linear_upload = cpu_linear_upload,
    .linear_upload_train = cpu_linear_upload_train,
    .linear_download = cpu_linear_download,
    .linear_release = cpu_linear_release,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope = cpu_rope,
    .attention_saved = cpu_attention_saved,
    .attention = cpu_attention,
    .attention_backward = cpu_attention_backward,
    .swiglu = cpu_swiglu,
    .swiglu_backward = cpu_swiglu_backward,
    .add = cpu_add,
    .rope_append = cpu_rope_append,
    .attention_at = cpu_attention_at,
    .add_rmsnorm = cpu_add_rmsnorm,
    .linear_swiglu = cpu_linear_swiglu,
    .linears = cpu_linears,
    .linear = cpu_linear,
    .linear_dx = cpu_linear_dx,
    .linear_dw = cpu_linear_dw,
    .gram_acc = cpu_gram_acc,
    .sq_acc = cpu_sq_acc,
    .nll = cpu_nll,
    .xent_backward = cpu_xent_backward,
    .kl = cpu_kl,
    .kl_grad = cpu_kl_grad,
    .sum_sq_diff = cpu_sum_sq_diff,
    .scaled_diff = cpu_scaled_diff,
    .first_nonfinite = cpu_first_nonfinite,
    .adam = cpu_adam,
    .adam_moments_kept = 1,
    .col_sq_acc = cpu_col_sq_acc,
    .latent_step = cpu_latent_step,
    .nm_reselect = cpu_nm_reselect,
    .mask_apply = cpu_mask_apply,
};

int tb_cpu_backend_open(tb_backend *b)
{
    cpu_impl *c = tb_calloc(1, sizeof *c);
    if (!c) return TB_EIO;
    b->impl = c;
    b->ops = &cpu_ops;
    b->o.device = TB_DEVICE_CPU;
    b->o.precision = TB_PREC_F32;
    if (b->o.n_threads < 1) b->o.n_threads = tb_default_threads();
    tb_blas_single_thread(); /* our threads split the work */
    snprintf(b->desc, sizeof b->desc, "cpu, %d thread%s, f32", b->o.n_threads, b->o.n_threads == 1 ? "" : "s");
    return TB_OK;
}
