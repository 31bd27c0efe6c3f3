#include "tb_block_recon.h"
#include "tb_backward.h"
#include "tb_error.h"
#include "tb_log.h"
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

/* The trainers below read activations and the stream in place: they run on
 * the CPU backend (host memory), which tb_forward_init gives without one. */
int tb_dense_layer_targets(const tb_model *m, int l, const float *inputs, int64_t windows, int seq_len, int n_threads,
                           float *out, float *attn_out)
{
    tb_forward f;
    tb_forward_opts fo = {.max_seq = seq_len, .max_tokens = seq_len, .keep_acts = 0, .n_threads = n_threads};
    int rc = tb_forward_init(&f, m, &fo);
    if (rc) return rc;
    const size_t nd = (size_t)seq_len * m->cfg.hidden_size;
    for (int64_t w = 0; !rc && w < windows; w++) {
        if ((rc = tb_forward_set_stream(&f, l, inputs + (size_t)w * nd, seq_len)) ||
            (rc = tb_forward_layers(&f, seq_len, l, l + 1)) ||
            (rc = tb_forward_get_stream(&f, l + 1, out + (size_t)w * nd, seq_len)))
            break;
        if (attn_out) memcpy(attn_out + (size_t)w * nd, f.acts[l].h, nd * sizeof(float));
    }
    tb_forward_free(&f);
    return rc;
}

typedef struct {
    int layer;
    float *g[TB_LIN_PER_LAYER];
    int64_t size[TB_LIN_PER_LAYER];
} grads;

static int keep_grad(void *ctx, int layer, tb_lin_id which, const float *dW, int rows, int cols)
{
    grads *g = ctx;
    if (layer != g->layer || which >= TB_LIN_PER_LAYER || (int64_t)rows * cols != g->size[which])
        return tb_fail(TB_EUSAGE, "recon: unexpected gradient (layer %d, %s)", layer, tb_lin_name(which));
    for (int64_t i = 0; i < g->size[which]; i++) {
        if (!isfinite(dW[i]))
            return tb_fail(TB_EDATA, "recon: layer %d: gradient of %s is not finite", layer, tb_lin_name(which));
        g->g[which][i] = dW[i];
    }
    return TB_OK;
}

static int run_layer(tb_forward *f, int l, const float *inputs, int64_t win, int T)
{
    size_t nd = (size_t)T * f->m->cfg.hidden_size;
    int rc = tb_forward_set_stream(f, l, inputs + (size_t)win * nd, T);
    return rc ? rc : tb_forward_layers(f, T, l, l + 1);
}

/* mean squared error of the layer output (at_h: of the attention block's h) */
static double eval_mse(tb_forward *f, int l, const float *inputs, const float *targets, int64_t n_eval, int T,
                       int at_h)
{
    size_t nd = (size_t)T * f->m->cfg.hidden_size;
    double se = 0;
    for (int64_t w = 0; w < n_eval; w++) {
        if (run_layer(f, l, inputs, w, T)) return NAN;
        const float *out = at_h ? f->acts[l].h : tb_forward_stream(f, l + 1), *tg = targets + (size_t)w * nd;
        for (size_t i = 0; i < nd; i++) se += ((double)out[i] - tg[i]) * ((double)out[i] - tg[i]);
    }
    return se / ((double)n_eval * (double)nd);
}

/* the input of linear k in layer l's kept activations */
typedef struct {
    tb_model *m;
    int l, T;
    tb_forward *f;
    tb_backward *b;
    grads *g;
    float *m1[TB_LIN_PER_LAYER], *m2[TB_LIN_PER_LAYER];
    float *latent[TB_LIN_PER_LAYER]; /* learning masks */
    double *colsq[TB_LIN_PER_LAYER]; /* learning masks: sum of x_c^2 over the tokens seen */
    float *colscale;                 /* work: the RMS per input channel */
    int64_t tokens_seen;
} trainer;

/* one unit: train the weights in `set` (bit k = linear k) for o->r.steps steps */
static int train_unit(trainer *t, float *const w[TB_LIN_PER_LAYER], uint8_t *const keep[TB_LIN_PER_LAYER],
                      unsigned set, int at_h, const float *inputs, const float *targets, int64_t windows,
                      const tb_block_opts *o, int64_t *done, int64_t total, tb_progress_fn progress, void *ctx)
{
    const int T = t->T, l = t->l, steps = o->r.steps;
    const size_t nd = (size_t)T * t->m->cfg.hidden_size;
    const int learn = o->mask.every > 0;
    const int learn_steps = learn ? (int)(o->mask.until * steps) : 0;
    tb_adam_hp hp = {o->r.beta1, o->r.beta2, o->r.eps};
    int64_t *order = tb_malloc((size_t)windows * sizeof(int64_t));
    if (!order) return TB_EIO;
    int rc = TB_OK;
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        if (!(set >> k & 1)) continue;
        memset(t->m1[k], 0, (size_t)t->g->size[k] * sizeof(float));
        memset(t->m2[k], 0, (size_t)t->g->size[k] * sizeof(float));
    }
    for (int step = 0; step < steps && !rc; step++) {
        if (step % windows == 0) tb_window_order(order, windows, o->r.seed, step / windows);
        int64_t win = order[step % windows];
        if ((rc = run_layer(t->f, l, inputs, win, T))) break;
        const float *out = at_h ? t->f->acts[l].h : tb_forward_stream(t->f, l + 1), *tg = targets + (size_t)win * nd;
        const float scale = 2.0f / (float)nd; /* d mean((out - tg)^2) / d out */
        for (size_t i = 0; i < nd; i++) t->b->d_res[i] = scale * (out[i] - tg[i]);
        if (at_h) rc = tb_backward_half(t->b, T, l, TB_HALF_ATTN, keep_grad, t->g);
        else if (set == (1u << TB_LIN_PER_LAYER) - 1) rc = tb_backward_layers(t->b, T, l, l + 1, keep_grad, t->g);
        else rc = tb_backward_half(t->b, T, l, TB_HALF_MLP, keep_grad, t->g);
        if (rc) break;
        double lr = tb_cosine_lr(o->r.lr, step, steps);
        int learning = step < learn_steps;
        if (learning) t->tokens_seen += T;
        for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
            if (!(set >> k & 1)) continue;
            const tb_linear *L = &t->m->layers[l].lin[k];
            const int64_t n = t->g->size[k];
            if (!learning) {
                tb_adam_masked(w[k], t->g->g[k], t->m1[k], t->m2[k], keep[k], n, lr, &hp, step + 1);
                continue;
            }
            /* straight-through: every latent entry moves; pruned ones decay */
            float *lat = t->latent[k];
            tb_learnmask_update(lat, t->g->g[k], t->m1[k], t->m2[k], keep[k], n, lr, &hp, step + 1, o->mask.decay);
            tb_learnmask_colsq(t->colsq[k], tb_lin_input(&t->f->acts[l], k), T, L->cols);
            if ((step + 1) % o->mask.every == 0 || step + 1 == learn_steps) {
                for (int c = 0; c < L->cols; c++) t->colscale[c] = (float)sqrt(t->colsq[k][c] / (double)t->tokens_seen);
                tb_nm_reselect(lat, t->colscale, L->rows, L->cols, o->n, o->m, keep[k]);
            }
            tb_learnmask_apply(w[k], lat, keep[k], n);
        }
        ++*done;
        if (progress) progress(ctx, *done, total);
    }
    free(order);
    return rc;
}

int tb_recon_block(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER], uint8_t *const keep[TB_LIN_PER_LAYER],
                   const float *const dense[TB_LIN_PER_LAYER], const float *inputs, const float *targets,
                   const float *attn_targets, int64_t windows, int seq_len, const tb_block_opts *o,
                   tb_progress_fn progress, void *ctx, tb_block_report *r)
{
    const int T = seq_len;
    const size_t nd = (size_t)T * m->cfg.hidden_size;
    const int learn = o->mask.every > 0;
    memset(r, 0, sizeof *r);
    if (windows < 1) return tb_fail(TB_EUSAGE, "recon: no windows");
    if (o->unit == TB_UNIT_BLOCKS && !attn_targets) return tb_fail(TB_EUSAGE, "recon: blocks need the attention targets");
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
    tb_forward_opts fo = {.max_seq = T, .max_tokens = T, .keep_acts = 1, .n_threads = o->r.n_threads};
    int rc = tb_forward_init(&f, m, &fo);
    if (rc) return rc;
    tb_backward b;
    if ((rc = tb_backward_init(&b, &f))) {
        tb_forward_free(&f);
        return rc;
    }
    grads g = {.layer = l};
    trainer t = {.m = m, .l = l, .T = T, .f = &f, .b = &b, .g = &g};
    uint8_t *keep0[TB_LIN_PER_LAYER] = {0};
    int widest = m->cfg.intermediate_size > m->cfg.hidden_size ? m->cfg.intermediate_size : m->cfg.hidden_size;
    if (m->cfg.n_heads * m->cfg.head_dim > widest) widest = m->cfg.n_heads * m->cfg.head_dim;
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
        const tb_linear *L = &m->layers[l].lin[k];
        int64_t n = g.size[k] = (int64_t)L->rows * L->cols;
        g.g[k] = tb_malloc((size_t)n * sizeof(float));
        t.m1[k] = tb_calloc((size_t)n, sizeof(float));
        t.m2[k] = tb_calloc((size_t)n, sizeof(float));
        keep0[k] = tb_malloc((size_t)n);
        if (!g.g[k] || !t.m1[k] || !t.m2[k] || !keep0[k]) rc = TB_EIO;
        else memcpy(keep0[k], keep[k], (size_t)n);
        if (!rc && learn) {
            t.latent[k] = tb_malloc((size_t)n * sizeof(float));
            t.colsq[k] = tb_calloc((size_t)L->cols, sizeof(double));
            if (!t.latent[k] || !t.colsq[k]) rc = TB_EIO;
            else
                for (int64_t i = 0; i < n; i++) t.latent[k][i] = keep[k][i] ? w[k][i] : dense[k][i];
        }
        r->mask_total += n;
    }
    if (!rc && learn && !(t.colscale = tb_malloc((size_t)widest * sizeof(float)))) rc = TB_EIO;

    double t0 = tb_now();
    int64_t n_eval = o->r.eval_windows < windows ? o->r.eval_windows : windows;
    if (!rc) {
        double p = 0;
        for (size_t i = 0; i < (size_t)n_eval * nd; i++) {
            double d = (double)targets[i] - inputs[i];
            p += d * d;
        }
        r->r.target_power = p / ((double)n_eval * (double)nd);
        r->r.mse_before = eval_mse(&f, l, inputs, targets, n_eval, T, 0);
        if (o->unit == TB_UNIT_BLOCKS) r->attn_mse_before = eval_mse(&f, l, inputs, attn_targets, n_eval, T, 1);
    }
    const unsigned attn = 1u << TB_LIN_Q | 1u << TB_LIN_K | 1u << TB_LIN_V | 1u << TB_LIN_O;
    const unsigned all = (1u << TB_LIN_PER_LAYER) - 1;
    int64_t done = 0, total = (int64_t)o->r.steps * (o->unit == TB_UNIT_BLOCKS ? 2 : 1);
    if (!rc && o->unit == TB_UNIT_LAYER)
        rc = train_unit(&t, w, keep, all, 0, inputs, targets, windows, o, &done, total, progress, ctx);
    if (!rc && o->unit == TB_UNIT_BLOCKS) {
        rc = train_unit(&t, w, keep, attn, 1, inputs, attn_targets, windows, o, &done, total, progress, ctx);
        if (!rc) r->attn_mse_after = eval_mse(&f, l, inputs, attn_targets, n_eval, T, 1);
        t.tokens_seen = 0;
        for (int k = 0; learn && k < TB_LIN_PER_LAYER; k++)
            memset(t.colsq[k], 0, (size_t)m->layers[l].lin[k].cols * sizeof(double));
        if (!rc) rc = train_unit(&t, w, keep, all & ~attn, 0, inputs, targets, windows, o, &done, total, progress, ctx);
    }
    if (!rc) {
        r->r.mse_after = eval_mse(&f, l, inputs, targets, n_eval, T, 0);
        if (!isfinite(r->r.mse_after))
            rc = tb_fail(TB_EDATA, "recon: layer %d: the error is not finite after training", l);
    }
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++)
        for (int64_t i = 0; i < g.size[k]; i++) r->mask_changed += keep[k][i] != keep0[k][i];
    r->r.seconds = tb_now() - t0;
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        free(g.g[k]);
        free(t.m1[k]);
        free(t.m2[k]);
        free(t.latent[k]);
        free(t.colsq[k]);
        free(keep0[k]);
    }
    free(t.colscale);
    tb_backward_free(&b);
    tb_forward_free(&f);
    return rc;
}
