#include "tb_recon.h"
#include "tb_backward.h"
#include "tb_error.h"
#include "tb_log.h"

#define _USE_MATH_DEFINES
#include <math.h>
#include <stdlib.h>
#include <string.h>

void tb_recon_defaults(tb_recon_opts *o)
{
    *o = (tb_recon_opts){.steps = 300, .lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .seed = 0,
                         .eval_windows = 16, .n_threads = 1};
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

/* output of layer l for window `win` into the forward's stream l+1 */
static int run_layer(tb_forward *f, int l, const float *inputs, int64_t win, int T)
{
    size_t nd = (size_t)T * f->m->cfg.hidden_size;
    memcpy(tb_forward_stream(f, l), inputs + (size_t)win * nd, nd * sizeof(float));
    return tb_forward_layers(f, T, l, l + 1);
}

static double eval_mse(tb_forward *f, int l, const float *inputs, const float *targets, int64_t n_eval, int T)
{
    size_t nd = (size_t)T * f->m->cfg.hidden_size;
    double se = 0;
    for (int64_t w = 0; w < n_eval; w++) {
        if (run_layer(f, l, inputs, w, T)) return NAN;
        const float *out = tb_forward_stream(f, l + 1), *tg = targets + (size_t)w * nd;
        for (size_t i = 0; i < nd; i++) se += ((double)out[i] - tg[i]) * ((double)out[i] - tg[i]);
    }
    return se / ((double)n_eval * (double)nd);
}

int tb_recon_layer(tb_model *m, int l, float *const w[TB_LIN_PER_LAYER], const uint8_t *const keep[TB_LIN_PER_LAYER],
                   const float *inputs, const float *targets, int64_t windows, int seq_len, const tb_recon_opts *o,
                   tb_progress_fn progress, void *ctx, tb_recon_report *r)
{
    const int T = seq_len;
    const size_t nd = (size_t)T * m->cfg.hidden_size;
    memset(r, 0, sizeof *r);
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        const tb_linear *L = &m->layers[l].lin[k];
        if (L->format != TB_LINEAR_DENSE || L->dtype != TB_F32 || L->perm || L->data != w[k])
            return tb_fail(TB_EUSAGE, "recon: layer %d %s must be the caller's dense f32 array", l, tb_lin_name(k));
    }
    tb_forward f;
    tb_forward_opts fo = {.max_seq = T, .max_tokens = T, .keep_acts = 1, .n_threads = o->n_threads};
    int rc = tb_forward_init(&f, m, &fo);
    if (rc) return rc;
    tb_backward b;
    if ((rc = tb_backward_init(&b, &f))) {
        tb_forward_free(&f);
        return rc;
    }
    grads g = {.layer = l};
    float *m1[TB_LIN_PER_LAYER] = {0}, *m2[TB_LIN_PER_LAYER] = {0};
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
        const tb_linear *L = &m->layers[l].lin[k];
        g.size[k] = (int64_t)L->rows * L->cols;
        g.g[k] = tb_malloc((size_t)g.size[k] * sizeof(float));
        m1[k] = tb_calloc((size_t)g.size[k], sizeof(float));
        m2[k] = tb_calloc((size_t)g.size[k], sizeof(float));
        if (!g.g[k] || !m1[k] || !m2[k]) rc = TB_EIO;
    }
    int64_t *order = rc ? NULL : tb_malloc((size_t)windows * sizeof(int64_t));
    if (!rc && !order) rc = TB_EIO;

    double t0 = tb_now();
    int64_t n_eval = o->eval_windows < windows ? o->eval_windows : windows;
    if (!rc) {
        double p = 0;
        for (size_t i = 0; i < (size_t)n_eval * nd; i++) {
            double d = (double)targets[i] - inputs[i];
            p += d * d;
        }
        r->target_power = p / ((double)n_eval * (double)nd);
        r->mse_before = eval_mse(&f, l, inputs, targets, n_eval, T);
    }
    uint64_t s = o->seed * 0x9E3779B97F4A7C15ull + 1;
    for (int step = 0; step < o->steps && !rc; step++) {
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
        if ((rc = run_layer(&f, l, inputs, win, T))) break;
        const float *out = tb_forward_stream(&f, l + 1), *tg = targets + (size_t)win * nd;
        const float scale = 2.0f / (float)nd; /* d mean((out - tg)^2) / d out */
        for (size_t i = 0; i < nd; i++) b.d_res[i] = scale * (out[i] - tg[i]);
        if ((rc = tb_backward_layers(&b, T, l, l + 1, keep_grad, &g))) break;
        /* Adam with bias correction; cosine decay; pruned entries never move */
        double lr = o->lr * 0.5 * (1.0 + cos(M_PI * step / o->steps));
        double c1 = 1.0 - pow(o->beta1, step + 1), c2 = 1.0 - pow(o->beta2, step + 1);
        float b1 = (float)o->beta1, b2 = (float)o->beta2;
        for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
            float *wk = w[k], *gk = g.g[k], *a = m1[k], *v = m2[k];
            const uint8_t *kk = keep[k];
            for (int64_t i = 0; i < g.size[k]; i++) {
                if (!kk[i]) continue;
                a[i] = b1 * a[i] + (1 - b1) * gk[i];
                v[i] = b2 * v[i] + (1 - b2) * gk[i] * gk[i];
                wk[i] -= (float)(lr * (a[i] / c1) / (sqrt(v[i] / c2) + o->eps));
            }
        }
        if (progress) progress(ctx, step + 1, o->steps);
    }
    if (!rc) {
        r->mse_after = eval_mse(&f, l, inputs, targets, n_eval, T);
        if (!isfinite(r->mse_after)) rc = tb_fail(TB_EDATA, "recon: layer %d: the error is not finite after training", l);
    }
    r->seconds = tb_now() - t0;
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        free(g.g[k]);
        free(m1[k]);
        free(m2[k]);
    }
    free(order);
    tb_backward_free(&b);
    tb_forward_free(&f);
    return rc;
}
