/* tb_recon.c - layer-wise reconstruction by Adam (see tb_recon.h), written
 * once over the backend table: the same steps run on the CPU and on CUDA. */
#include "tb_recon.h"
#include "tb_backward.h"
#include "tb_error.h"
#include "tb_log.h"
#include "tb_nvtx.h"
#include "tb_threads.h"

#define _USE_MATH_DEFINES
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void tb_recon_defaults(tb_recon_opts *o)
{
    *o = (tb_recon_opts){.steps = 300, .lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .seed = 0,
                         .eval_windows = 16, .n_threads = 1};
}

/* Sum of squares and count of the kept entries, over TB_PEAK_BLOCKS fixed
 * blocks of rows added in block order: the same total whatever the thread
 * count, and no allocation. Branch-free: a 2:4 keep mask is random to the
 * branch predictor, and the branching loop took ~1 s a Mistral-7B layer (218
 * M weights; H200 host, 2026-12-03 run_7b.sh). */
#define TB_PEAK_BLOCKS 64
typedef struct {
    const float *w;
    const uint8_t *keep;
    int64_t rows, cols;
    double ss[TB_PEAK_BLOCKS];
    int64_t kept[TB_PEAK_BLOCKS];
} kept_sums;

static void kept_sums_blocks(void *ctx, int64_t begin, int64_t end, int thread_id)
{
    (void)thread_id;
    kept_sums *c = ctx;
    for (int64_t b = begin; b < end; b++) {
        /* four partial sums (entry i into i % 4): four add chains, not one */
        double ss4[4] = {0, 0, 0, 0};
        int64_t kept = 0;
        const int64_t n0 = c->rows * b / TB_PEAK_BLOCKS * c->cols, n1 = c->rows * (b + 1) / TB_PEAK_BLOCKS * c->cols;
        for (int64_t i = n0; i < n1; i++) {
            /* w[i] with its bits cleared where pruned: no branch (a ternary
             * here still compiled to one) */
            uint32_t bits;
            memcpy(&bits, &c->w[i], sizeof bits);
            bits &= 0u - (uint32_t)(c->keep[i] != 0);
            float v;
            memcpy(&v, &bits, sizeof v);
            ss4[i & 3] += (double)v * v;
            kept += c->keep[i] != 0;
        }
        c->ss[b] = (ss4[0] + ss4[1]) + (ss4[2] + ss4[3]);
        c->kept[b] = kept;
    }
}

double tb_recon_peak_lr(const tb_recon_opts *o, const float *w, const uint8_t *keep, int64_t rows, int64_t cols)
{
    if (!(o->lr_rel > 0)) return o->lr;
    if (rows <= 0 || cols <= 0) return 0.0;
    kept_sums c = {.w = w, .keep = keep, .rows = rows, .cols = cols};
    tb_parallel_for(o->n_threads > 0 ? o->n_threads : tb_default_threads(), TB_PEAK_BLOCKS, kept_sums_blocks, &c);
    double ss = 0;
    int64_t kept = 0;
    for (int b = 0; b < TB_PEAK_BLOCKS; b++) ss += c.ss[b], kept += c.kept[b];
    return kept ? o->lr_rel * sqrt(ss / (double)kept) / (double)cols : 0.0;
}

/* One Adam step per weight, taken as the backward hands over its gradient
 * (after the weight's last use in the pass, tb_backward.h): no gradient
 * buffer of the layer's size exists, only the backward's one dW. */
typedef struct {
    tb_backend *be;
    int layer;
    tb_dlinear *train;                 /* [TB_LIN_PER_LAYER] the weights trained */
    uint8_t *keep[TB_LIN_PER_LAYER];   /* backend keep masks */
    float *m1[TB_LIN_PER_LAYER], *m2[TB_LIN_PER_LAYER]; /* Adam's moments (tb_backend.h's layout) */
    int64_t size[TB_LIN_PER_LAYER];
    /* each weight's rate is lr x scale[k]: scale 1 (exactly: the default's
     * steps stay bit for bit), or with lr_rel its tb_recon_peak_lr over a
     * cosine of peak 1 */
    double scale[TB_LIN_PER_LAYER];
    double lr, beta1, beta2, c1, c2, eps; /* this step's */
    int step, check;                   /* check: look for a non-finite gradient this step */
} adam_state;

static int adam_step(void *ctx, int layer, tb_lin_id which, const float *dW, int rows, int cols)
{
    adam_state *a = ctx;
    tb_backend *be = a->be;
    if (layer != a->layer || which >= TB_LIN_PER_LAYER || (int64_t)rows * cols != a->size[which])
        return tb_fail(TB_EUSAGE, "recon: unexpected gradient (layer %d, %s)", layer, tb_lin_name(which));
    /* a non-finite gradient would poison the weights: look every 32 steps
     * (a check is a device round trip) and at the end */
    if (a->check && be->ops->first_nonfinite(be, dW, (size_t)a->size[which]) >= 0)
        return tb_fail(TB_EDATA, "recon: layer %d: gradient of %s is not finite (step %d)", layer, tb_lin_name(which),
                       a->step + 1);
    /* pruned entries never move */
    be->ops->adam(be, &a->train[which], dW, a->keep[which], a->m1[which], a->m2[which], a->lr * a->scale[which],
                  a->beta1, a->beta2, a->c1, a->c2, a->eps);
    return TB_OK;
}

static double eval_mse(tb_forward *f, int l, const tb_recon_windows *ws, float *tgt_buf, int64_t n_eval)
{
    double se = 0;
    for (int64_t w = 0; w < n_eval; w++) {
        const float *tg;
        if (tb_recon_windows_load(ws, f, l, w, 0, tgt_buf, &tg)) return NAN;
        se += f->be->ops->sum_sq_diff(f->be, tb_forward_stream(f, l + 1), tg, ws->nd);
    }
    return se / ((double)n_eval * (double)ws->nd);
}

/* The caller's host arrays: on a device with room they go there once
 * (tb_recon_windows_upload), so a step moves nothing over PCIe. */
int tb_recon_layer(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER], const uint8_t *const keep[TB_LIN_PER_LAYER],
                   const float *inputs, const float *targets, int64_t windows, int seq_len, const tb_recon_opts *o,
                   tb_progress_fn progress, void *ctx, tb_recon_report *r)
{
    tb_recon_windows ws;
    tb_recon_windows_host(&ws, inputs, targets, NULL, windows, seq_len, m->cfg.hidden_size);
    int rc = tb_recon_windows_upload(&ws, o->backend);
    if (!rc) rc = tb_recon_layer_windows(m, l, w, keep, &ws, o, progress, ctx, r);
    tb_recon_windows_free(&ws);
    return rc;
}

int tb_recon_layer_windows(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER],
                           const uint8_t *const keep[TB_LIN_PER_LAYER], const tb_recon_windows *ws,
                           const tb_recon_opts *o, tb_progress_fn progress, void *ctx, tb_recon_report *r)
{
    const int T = ws->seq_len;
    const size_t nd = ws->nd;
    const int64_t windows = ws->windows;
    memset(r, 0, sizeof *r);
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        const tb_linear *L = &m->layers[l].lin[k];
        if (L->format != TB_LINEAR_DENSE || L->dtype != TB_F32 || L->perm || L->data != w[k])
            return tb_fail(TB_EUSAGE, "recon: layer %d %s must be the caller's dense f32 array", l, tb_lin_name(k));
    }
    tb_forward f;
    tb_forward_opts fo = {.max_seq = T, .max_tokens = T, .keep_acts = 1, .n_threads = o->n_threads,
                          .backend = o->backend, .layer_begin = l, .layer_end = l + 1};
    int rc = tb_forward_init(&f, m, &fo);
    if (rc) return rc;
    tb_backend *be = f.be;
    tb_backward b;
    if ((rc = tb_backward_init(&b, &f))) {
        tb_forward_free(&f);
        return rc;
    }
    tb_dlinear train[TB_LIN_PER_LAYER];
    memset(train, 0, sizeof train);
    adam_state a = {.be = be, .layer = l, .train = train, .beta1 = o->beta1, .beta2 = o->beta2, .eps = o->eps};
    /* one target window on the backend, for windows that are not resident */
    float *tgt = ws->tg_d ? NULL : tb_alloc_f32(be, nd, "a target window");
    if ((!ws->tg_d && !tgt) || !tb_forward_layer_weights(&f, l)) rc = tb_errcode() ? tb_errcode() : TB_EIO;
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
        const tb_linear *L = &m->layers[l].lin[k];
        size_t sz = (size_t)L->rows * L->cols, nm = sz;
        a.size[k] = (int64_t)sz;
        a.scale[k] = o->lr_rel > 0 ? tb_recon_peak_lr(o, w[k], keep[k], L->rows, L->cols) : 1.0;
        if (be->ops->adam_moments_kept) { /* moments of the trainable entries only: half at 2:4 */
            nm = 0;
            for (size_t i = 0; i < sz; i++) nm += keep[k][i] != 0;
        }
        if ((rc = be->ops->linear_upload_train(be, &train[k], L))) break;
        tb_forward_use_linear(&f, l, k, &train[k]);
        a.m1[k] = tb_alloc_f32(be, nm ? nm : 1, "Adam's first moment");
        a.m2[k] = tb_alloc_f32(be, nm ? nm : 1, "Adam's second moment");
        a.keep[k] = be->ops->alloc(be, sz, "a keep mask");
        if (!a.m1[k] || !a.m2[k] || !a.keep[k]) {
            rc = TB_EIO;
            break;
        }
        be->ops->zero(be, a.m1[k], nm * sizeof(float));
        be->ops->zero(be, a.m2[k], nm * sizeof(float));
        be->ops->upload(be, a.keep[k], keep[k], sz);
    }
    int64_t *order = rc ? NULL : tb_malloc((size_t)windows * sizeof(int64_t));
    if (!rc && !order) rc = TB_EIO;

    double t0 = tb_now();
    int64_t n_eval = o->eval_windows < windows ? o->eval_windows : windows;
    if (!rc) {
        r->target_power = tb_recon_windows_target_power(ws, be, n_eval);
        r->mse_before = eval_mse(&f, l, ws, tgt, n_eval);
    }
    uint64_t s = o->seed * 0x9E3779B97F4A7C15ull + 1;
    for (int step = 0; step < o->steps && !rc; step++) {
        TB_RANGE_PUSH("recon step");
        int64_t pos = step % windows;
        if (pos == 0) { /* a fresh seeded shuffle of the windows each epoch (Fisher-Yates) */
            for (int64_t i = 0; i < windows; i++) order[i] = i;
            for (int64_t i = windows - 1; i > 0; i--) {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                int64_t j = (int64_t)(s % (uint64_t)(i + 1)), t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
        int64_t win = order[pos];
        const float *tg;
        if ((rc = tb_recon_windows_load(ws, &f, l, win, 0, tgt, &tg))) break;
        /* d mean((out - tg)^2) / d out */
        be->ops->scaled_diff(be, b.d_res, tb_forward_stream(&f, l + 1), tg, 2.0f / (float)nd, nd);
        /* Adam with bias correction and cosine decay, each weight as its gradient arrives */
        a.lr = (o->lr_rel > 0 ? 1.0 : o->lr) * 0.5 * (1.0 + cos(M_PI * step / o->steps));
        a.c1 = 1.0 - pow(o->beta1, step + 1);
        a.c2 = 1.0 - pow(o->beta2, step + 1);
        a.step = step;
        a.check = step % 32 == 31 || step == o->steps - 1;
        if ((rc = tb_backward_layers(&b, T, l, l + 1, adam_step, &a))) break;
        rc = be->ops->sync(be);
        TB_RANGE_POP();
        if (progress && !rc) progress(ctx, step + 1, o->steps);
    }
    if (!rc) {
        r->mse_after = eval_mse(&f, l, ws, tgt, n_eval);
        if (!isfinite(r->mse_after)) rc = tb_fail(TB_EDATA, "recon: layer %d: the error is not finite after training", l);
    }
    if (!rc)
        for (int k = 0; k < TB_LIN_PER_LAYER; k++) be->ops->linear_download(be, &train[k], w[k]);
    if (!rc) rc = be->ops->sync(be);
    r->seconds = tb_now() - t0;
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        if (f.dl && f.dl[l].borrowed[k]) f.dl[l].borrowed[k] = 0; /* released below, not by the forward */
        if (train[k].host) be->ops->linear_release(be, &train[k]);
        if (a.m1[k]) be->ops->free(be, a.m1[k]);
        if (a.m2[k]) be->ops->free(be, a.m2[k]);
        if (a.keep[k]) be->ops->free(be, a.keep[k]);
    }
    if (tgt) be->ops->free(be, tgt);
    free(order);
    tb_backward_free(&b);
    /* the layer's linears were the training copies: the forward must not
     * release them again */
    if (f.dl) memset(f.dl[l].lin, 0, sizeof f.dl[l].lin);
    tb_forward_free(&f);
    return rc;
}
