/* tb_block_recon.c - layer reconstruction by units, with learned N:M masks
 * (tb_block_recon.h), written once over the backend table: the same steps run
 * on the CPU and on CUDA. */
#include "tb_block_recon.h"
#include "tb_backward.h"
#include "tb_error.h"
#include "tb_log.h"
#include "tb_nvtx.h"
#include "tb_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int tb_recon_unit_parse(const char *s)
{
    if (!strcmp(s, "layer")) return TB_UNIT_LAYER;
    if (!strcmp(s, "blocks")) return TB_UNIT_BLOCKS;
    return -1;
}

void tb_block_defaults(tb_block_opts *o)
{
    memset(o, 0, sizeof *o);
    tb_recon_defaults(&o->r);
    o->unit = TB_UNIT_LAYER;
    tb_learnmask_defaults(&o->mask);
}

/* The training state of the layer, in backend memory. With learned masks
 * every weight of a unit trains through its latent for all the unit's steps,
 * so the moments stay full-size: once the masks are fixed the latent step
 * without decay moves the kept entries exactly as masked Adam moves the
 * weights, and mask_apply copies them. With fixed masks Adam steps the
 * weights themselves as the backward hands over each gradient (no gradient
 * buffer). */
typedef struct {
    tb_model *m;
    tb_backend *be;
    const tb_block_opts *o;
    int l, T, learn;
    tb_forward *f;
    tb_backward *b;
    tb_dlinear train[TB_LIN_PER_LAYER];
    uint8_t *keep[TB_LIN_PER_LAYER];  /* backend masks (on the CPU the caller's arrays) */
    float *m1[TB_LIN_PER_LAYER], *m2[TB_LIN_PER_LAYER];
    int64_t size[TB_LIN_PER_LAYER], n_moments[TB_LIN_PER_LAYER];
    float *g[TB_LIN_PER_LAYER];       /* learning masks: this step's gradient */
    float *latent[TB_LIN_PER_LAYER];  /* learning masks */
    double *colsq[TB_LIN_PER_LAYER];  /* learning masks: sum of x_c^2 over the tokens seen */
    int64_t tokens_seen;
    float *tgt;                       /* one target window */
    double scale[TB_LIN_PER_LAYER];   /* each weight's rate is lr x scale[k] (as tb_recon.c's adam_state) */
    double lr, c1, c2;                /* this step's Adam */
} trainer;

static int take_grad(void *ctx, int layer, tb_lin_id which, const float *dW, int rows, int cols)
{
    trainer *t = ctx;
    tb_backend *be = t->be;
    if (layer != t->l || which >= TB_LIN_PER_LAYER || (int64_t)rows * cols != t->size[which])
        return tb_fail(TB_EUSAGE, "recon: unexpected gradient (layer %d, %s)", layer, tb_lin_name(which));
    if (be->ops->first_nonfinite(be, dW, (size_t)t->size[which]) >= 0)
        return tb_fail(TB_EDATA, "recon: layer %d: gradient of %s is not finite", layer, tb_lin_name(which));
    if (t->learn)
        be->ops->copy(be, t->g[which], dW, (size_t)t->size[which] * sizeof(float));
    else /* after the weight's last use in the pass (tb_backward.h) */
        be->ops->adam(be, &t->train[which], dW, t->keep[which], t->m1[which], t->m2[which], t->lr * t->scale[which],
                      t->o->r.beta1, t->o->r.beta2, t->c1, t->c2, t->o->r.eps);
    return TB_OK;
}

static const float *unit_output(trainer *t, int at_h)
{
    return at_h ? t->f->acts[t->l].h : tb_forward_stream(t->f, t->l + 1);
}

/* mean squared error of the layer output (at_h: of the attention block's h) */
static double eval_mse(trainer *t, const tb_recon_windows *ws, int64_t n_eval, int at_h)
{
    const size_t nd = ws->nd;
    double se = 0;
    for (int64_t w = 0; w < n_eval; w++) {
        const float *tg;
        if (tb_recon_windows_load(ws, t->f, t->l, w, at_h, t->tgt, &tg)) return NAN;
        se += t->be->ops->sum_sq_diff(t->be, unit_output(t, at_h), tg, nd);
    }
    return se / ((double)n_eval * (double)nd);
}

/* one unit: train the weights in `set` (bit k = linear k) for o->r.steps steps */
static int train_unit(trainer *t, unsigned set, int at_h, const tb_recon_windows *ws, int64_t *done, int64_t total,
                      tb_progress_fn progress, void *ctx)
{
    const int64_t windows = ws->windows;
    tb_backend *be = t->be;
    const tb_block_opts *o = t->o;
    const int T = t->T, l = t->l, steps = o->r.steps;
    const size_t nd = (size_t)T * t->m->cfg.hidden_size;
    const int learn_steps = t->learn ? (int)(o->mask.until * steps) : 0;
    int64_t *order = tb_malloc((size_t)windows * sizeof(int64_t));
    if (!order) return TB_EIO;
    int rc = TB_OK;
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        if (!(set >> k & 1)) continue;
        be->ops->zero(be, t->m1[k], (size_t)t->n_moments[k] * sizeof(float));
        be->ops->zero(be, t->m2[k], (size_t)t->n_moments[k] * sizeof(float));
    }
    for (int step = 0; step < steps && !rc; step++) {
        TB_RANGE_PUSH("recon step");
        if (step % windows == 0) tb_window_order(order, windows, o->r.seed, step / windows);
        int64_t win = order[step % windows];
        const float *tg;
        if ((rc = tb_recon_windows_load(ws, t->f, l, win, at_h, t->tgt, &tg))) break;
        /* d mean((out - tg)^2) / d out */
        be->ops->scaled_diff(be, t->b->d_res, unit_output(t, at_h), tg, 2.0f / (float)nd, nd);
        /* Adam with bias correction (step + 1) and the cosine schedule, as tb_adam_masked */
        t->lr = tb_cosine_lr(o->r.lr_rel > 0 ? 1.0 : o->r.lr, step, steps);
        t->c1 = 1.0 - pow(o->r.beta1, (double)(step + 1));
        t->c2 = 1.0 - pow(o->r.beta2, (double)(step + 1));
        if (at_h) rc = tb_backward_half(t->b, T, l, TB_HALF_ATTN, take_grad, t);
        else if (set == (1u << TB_LIN_PER_LAYER) - 1) rc = tb_backward_layers(t->b, T, l, l + 1, take_grad, t);
        else rc = tb_backward_half(t->b, T, l, TB_HALF_MLP, take_grad, t);
        if (rc) break;
        const int learning = step < learn_steps;
        if (learning) t->tokens_seen += T;
        for (int k = 0; t->learn && k < TB_LIN_PER_LAYER; k++) {
            if (!(set >> k & 1)) continue;
            const tb_linear *L = &t->m->layers[l].lin[k];
            /* straight-through: every latent entry moves; while learning the pruned ones decay */
            be->ops->latent_step(be, t->latent[k], t->g[k], t->m1[k], t->m2[k], t->keep[k], (size_t)t->size[k],
                                 t->lr * t->scale[k],
                                 o->r.beta1, o->r.beta2, o->r.eps, step + 1, learning ? o->mask.decay : 0);
            if (learning) {
                be->ops->col_sq_acc(be, tb_lin_input(&t->f->acts[l], k), T, L->cols, t->colsq[k]);
                if ((step + 1) % o->mask.every == 0 || step + 1 == learn_steps)
                    be->ops->nm_reselect(be, t->latent[k], t->colsq[k], (double)t->tokens_seen, L->rows, L->cols,
                                         o->n, o->m, t->keep[k]);
            }
            be->ops->mask_apply(be, &t->train[k], t->latent[k], t->keep[k]);
        }
        rc = be->ops->sync(be);
        TB_RANGE_POP();
        ++*done;
        if (progress && !rc) progress(ctx, *done, total);
    }
    free(order);
    return rc;
}

/* The caller's host arrays: on a device with room they go there once
 * (tb_recon_windows_upload), so a step moves nothing over PCIe. */
int tb_recon_block(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER], uint8_t *const keep[TB_LIN_PER_LAYER],
                   const float *const dense[TB_LIN_PER_LAYER], const float *inputs, const float *targets,
                   const float *attn_targets, int64_t windows, int seq_len, const tb_block_opts *o,
                   tb_progress_fn progress, void *ctx, tb_block_report *r)
{
    tb_recon_windows ws;
    tb_recon_windows_host(&ws, inputs, targets, o->unit == TB_UNIT_BLOCKS ? attn_targets : NULL, windows, seq_len,
                          m->cfg.hidden_size);
    int rc = tb_recon_windows_upload(&ws, o->r.backend);
    if (!rc) rc = tb_recon_block_windows(m, l, w, keep, dense, &ws, o, progress, ctx, r);
    tb_recon_windows_free(&ws);
    return rc;
}

int tb_recon_block_windows(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER], uint8_t *const keep[TB_LIN_PER_LAYER],
                           const float *const dense[TB_LIN_PER_LAYER], const tb_recon_windows *ws,
                           const tb_block_opts *o, tb_progress_fn progress, void *ctx, tb_block_report *r)
{
    const int T = ws->seq_len;
    const int64_t windows = ws->windows;
    const int learn = o->mask.every > 0;
    memset(r, 0, sizeof *r);
    if (windows < 1) return tb_fail(TB_EUSAGE, "recon: no windows");
    if (o->unit == TB_UNIT_BLOCKS && !ws->attn && !ws->attn_d)
        return tb_fail(TB_EUSAGE, "recon: blocks need the attention targets");
    if (learn && (o->n < 1 || o->m <= o->n || o->m > 16 || !dense))
        return tb_fail(TB_EUSAGE, "recon: learned masks need an N:M pattern and the dense weights");
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        const tb_linear *L = &m->layers[l].lin[k];
        if (L->format != TB_LINEAR_DENSE || L->dtype != TB_F32 || L->perm || L->data != w[k])
            return tb_fail(TB_EUSAGE, "recon: layer %d %s must be the caller's dense f32 array", l, tb_lin_name(k));
        if (learn && (L->cols % o->m || !tb_nm_keep_valid(keep[k], L->rows, L->cols, o->n, o->m)))
            return tb_fail(TB_EUSAGE, "recon: layer %d %s: learned masks need an exact %d:%d starting mask", l,
                           tb_lin_name(k), o->n, o->m);
    }
    tb_forward f;
    tb_forward_opts fo = {.max_seq = T, .max_tokens = T, .keep_acts = 1, .n_threads = o->r.n_threads,
                          .backend = o->r.backend, .layer_begin = l, .layer_end = l + 1};
    int rc = tb_forward_init(&f, m, &fo);
    if (rc) return rc;
    tb_backend *be = f.be;
    tb_backward b;
    if ((rc = tb_backward_init(&b, &f))) {
        tb_forward_free(&f);
        return rc;
    }
    /* the CPU backend's memory is the host's: the masks are re-selected in
     * the caller's arrays (and the weights trained in w), which a progress
     * callback may read after every step; elsewhere they come back at the end */
    const int in_place = be->o.device == TB_DEVICE_CPU;
    trainer t = {.m = m, .be = be, .o = o, .l = l, .T = T, .learn = learn, .f = &f, .b = &b};
    uint8_t *keep0[TB_LIN_PER_LAYER] = {0};
    /* one target window on the backend, for windows that are not resident */
    t.tgt = ws->tg_d ? NULL : tb_alloc_f32(be, ws->nd, "a target window");
    if ((!ws->tg_d && !t.tgt) || !tb_forward_layer_weights(&f, l)) rc = tb_errcode() ? tb_errcode() : TB_EIO;
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
        const tb_linear *L = &m->layers[l].lin[k];
        const size_t n = (size_t)L->rows * L->cols;
        size_t nm = n;
        t.size[k] = (int64_t)n;
        t.scale[k] = o->r.lr_rel > 0 ? tb_recon_peak_lr(&o->r, w[k], keep[k], L->rows, L->cols) : 1.0;
        if (!learn && be->ops->adam_moments_kept) { /* masked Adam: the kept entries' moments only */
            nm = 0;
            for (size_t i = 0; i < n; i++) nm += keep[k][i] != 0;
        }
        t.n_moments[k] = (int64_t)nm;
        if ((rc = be->ops->linear_upload_train(be, &t.train[k], L))) break;
        tb_forward_use_linear(&f, l, k, &t.train[k]);
        t.m1[k] = tb_alloc_f32(be, nm ? nm : 1, "Adam's first moment");
        t.m2[k] = tb_alloc_f32(be, nm ? nm : 1, "Adam's second moment");
        t.keep[k] = in_place ? keep[k] : be->ops->alloc(be, n, "a keep mask");
        keep0[k] = tb_malloc(n);
        if (!t.m1[k] || !t.m2[k] || !t.keep[k] || !keep0[k]) {
            rc = tb_errcode() ? tb_errcode() : TB_EIO;
            break;
        }
        memcpy(keep0[k], keep[k], n);
        if (!in_place) be->ops->upload(be, t.keep[k], keep[k], n);
        if (learn) {
            t.g[k] = tb_alloc_f32(be, n, "a gradient");
            t.latent[k] = tb_alloc_f32(be, n, "a latent weight");
            t.colsq[k] = be->ops->alloc(be, (size_t)L->cols * sizeof(double), "channel statistics");
            float *lat = tb_malloc(n * sizeof(float));
            if (!t.g[k] || !t.latent[k] || !t.colsq[k] || !lat) {
                free(lat);
                rc = tb_errcode() ? tb_errcode() : TB_EIO;
                break;
            }
            for (size_t i = 0; i < n; i++) lat[i] = keep[k][i] ? w[k][i] : dense[k][i];
            be->ops->upload(be, t.latent[k], lat, n * sizeof(float));
            be->ops->zero(be, t.colsq[k], (size_t)L->cols * sizeof(double));
            if ((rc = be->ops->sync(be))) { /* lat is read before it is freed */
                free(lat);
                break;
            }
            free(lat);
        }
        r->mask_total += (int64_t)n;
    }

    double t0 = tb_now();
    int64_t n_eval = o->r.eval_windows < windows ? o->r.eval_windows : windows;
    if (!rc) {
        r->r.target_power = tb_recon_windows_target_power(ws, be, n_eval);
        r->r.mse_before = eval_mse(&t, ws, n_eval, 0);
        if (o->unit == TB_UNIT_BLOCKS) r->attn_mse_before = eval_mse(&t, ws, n_eval, 1);
    }
    const unsigned attn = 1u << TB_LIN_Q | 1u << TB_LIN_K | 1u << TB_LIN_V | 1u << TB_LIN_O;
    const unsigned all = (1u << TB_LIN_PER_LAYER) - 1;
    int64_t done = 0, total = (int64_t)o->r.steps * (o->unit == TB_UNIT_BLOCKS ? 2 : 1);
    if (!rc && o->unit == TB_UNIT_LAYER) rc = train_unit(&t, all, 0, ws, &done, total, progress, ctx);
    if (!rc && o->unit == TB_UNIT_BLOCKS) {
        rc = train_unit(&t, attn, 1, ws, &done, total, progress, ctx);
        if (!rc) r->attn_mse_after = eval_mse(&t, ws, n_eval, 1);
        t.tokens_seen = 0;
        for (int k = 0; learn && k < TB_LIN_PER_LAYER; k++)
            be->ops->zero(be, t.colsq[k], (size_t)m->layers[l].lin[k].cols * sizeof(double));
        if (!rc) rc = train_unit(&t, all & ~attn, 0, ws, &done, total, progress, ctx);
    }
    if (!rc) {
        r->r.mse_after = eval_mse(&t, ws, n_eval, 0);
        if (!isfinite(r->r.mse_after))
            rc = tb_fail(TB_EDATA, "recon: layer %d: the error is not finite after training", l);
    }
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
        be->ops->linear_download(be, &t.train[k], w[k]);
        if (!in_place) be->ops->download(be, keep[k], t.keep[k], (size_t)t.size[k]);
    }
    if (!rc) rc = be->ops->sync(be);
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++)
        for (int64_t i = 0; i < t.size[k]; i++) r->mask_changed += keep[k][i] != keep0[k][i];
    r->r.seconds = tb_now() - t0;
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        if (f.dl && f.dl[l].borrowed[k]) f.dl[l].borrowed[k] = 0; /* released below, not by the forward */
        if (t.train[k].host) be->ops->linear_release(be, &t.train[k]);
        if (t.m1[k]) be->ops->free(be, t.m1[k]);
        if (t.m2[k]) be->ops->free(be, t.m2[k]);
        if (t.keep[k] && !in_place) be->ops->free(be, t.keep[k]);
        if (t.g[k]) be->ops->free(be, t.g[k]);
        if (t.latent[k]) be->ops->free(be, t.latent[k]);
        if (t.colsq[k]) be->ops->free(be, t.colsq[k]);
        free(keep0[k]);
    }
    if (t.tgt) be->ops->free(be, t.tgt);
    tb_backward_free(&b);
    /* the layer's linears were the training copies: the forward must not release them again */
    if (f.dl) memset(f.dl[l].lin, 0, sizeof f.dl[l].lin);
    tb_forward_free(&f);
    return rc;
}
