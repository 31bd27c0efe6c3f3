/* tb_calib.c - Fisher diagonal, Gram matrices and gradient samples over
 * calibration windows (see tb_calib.h). */
#include "tb_calib.h"
#include "tb_error.h"
#include "tb_fisher.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const tb_linear *lin_of(const tb_model *m, int layer, int which)
{
    return layer == m->cfg.n_layers ? &m->lm_head : &m->layers[layer].lin[which];
}

/* input dimension of each Gram slot */
static int gram_dim(const tb_model *m, int slot)
{
    static const tb_lin_id reader[TB_GRAM_PER_LAYER] = {TB_LIN_Q, TB_LIN_O, TB_LIN_GATE, TB_LIN_DOWN};
    return m->layers[0].lin[reader[slot]].cols;
}

static int gram_slot(tb_lin_id which)
{
    switch (which) {
    case TB_LIN_Q: return TB_GRAM_QKV;      /* k and v read the same input */
    case TB_LIN_O: return TB_GRAM_O;
    case TB_LIN_GATE: return TB_GRAM_GATE_UP; /* up reads the same input */
    case TB_LIN_DOWN: return TB_GRAM_DOWN;
    default: return -1;
    }
}

void tb_calib_weight_name(const tb_model *m, int layer, tb_lin_id which, char *buf, size_t n)
{
    if (layer == m->cfg.n_layers) snprintf(buf, n, "lm_head.weight");
    else snprintf(buf, n, "model.layers.%d.%s.weight", layer, tb_lin_name(which));
}

int tb_calib_init(tb_calib *c, const tb_model *m, int max_tokens, const tb_calib_opts *o)
{
    memset(c, 0, sizeof *c);
    c->m = m;
    c->o = *o;
    c->sample_slot = -1;
    const int L = m->cfg.n_layers, n_lin = L * TB_LIN_PER_LAYER + 1;
    if (c->o.layer_end <= 0 || c->o.layer_end > L) c->o.layer_end = L;
    if (c->o.grad_samples > c->o.total_windows) c->o.grad_samples = (int)c->o.total_windows;
    c->with_lm_head = !m->cfg.tie_word_embeddings;
    int rc;
    if (o->backend) {
        c->be = o->backend;
    } else {
        if ((rc = tb_cpu_backend_open(&c->own_be))) return rc;
        c->be = &c->own_be;
    }
    if (o->fisher || o->grad_samples > 0) {
        c->fisher = tb_calloc((size_t)n_lin, sizeof(float *));
        c->samples = tb_calloc((size_t)n_lin, sizeof(uint16_t *));
        if (!c->fisher || !c->samples) goto oom;
        for (int l = 0; l <= L; l++)
            for (int i = 0; i < (l == L ? 1 : TB_LIN_PER_LAYER); i++) {
                if (l == L && !c->with_lm_head) continue;
                const tb_linear *W = lin_of(m, l, i);
                size_t sz = (size_t)W->rows * W->cols;
                int idx = l * TB_LIN_PER_LAYER + i;
                if (o->fisher) {
                    if (!(c->fisher[idx] = tb_alloc_f32(c->be, sz, "the Fisher diagonal"))) goto oom;
                    c->be->ops->zero(c->be, c->fisher[idx], sz * sizeof(float));
                }
                if (c->o.grad_samples > 0 &&
                    !(c->samples[idx] = tb_calloc(sz * (size_t)c->o.grad_samples, sizeof(uint16_t))))
                    goto oom;
                if (c->o.grad_samples > 0 && !c->host_tmp) {
                    size_t big = (size_t)m->lm_head.rows * m->lm_head.cols;
                    for (int k = 0; k < L; k++)
                        for (int j = 0; j < TB_LIN_PER_LAYER; j++) {
                            size_t s = (size_t)m->layers[k].lin[j].rows * m->layers[k].lin[j].cols;
                            big = s > big ? s : big;
                        }
                    if (!(c->host_tmp = tb_malloc(big * sizeof(float)))) goto oom;
                }
            }
    }
    if (o->gram) {
        c->gram = tb_calloc((size_t)L * TB_GRAM_PER_LAYER, sizeof(double *));
        c->gram_tokens = tb_calloc((size_t)L * TB_GRAM_PER_LAYER, sizeof(int64_t));
        if (!c->gram || !c->gram_tokens) goto oom;
        for (int l = c->o.layer_begin; l < c->o.layer_end; l++)
            for (int s = 0; s < TB_GRAM_PER_LAYER; s++) {
                size_t d = (size_t)gram_dim(m, s);
                double **G = &c->gram[l * TB_GRAM_PER_LAYER + s];
                if (!(*G = c->be->ops->alloc(c->be, d * d * sizeof(double), "a Gram matrix"))) goto oom;
                c->be->ops->zero(c->be, *G, d * d * sizeof(double));
            }
    }
    return TB_OK;
oom:
    tb_calib_free(c);
    return TB_EIO;
}

void tb_calib_free(tb_calib *c)
{
    const int L = c->m ? c->m->cfg.n_layers : 0, n_lin = L * TB_LIN_PER_LAYER + 1;
    for (int i = 0; c->fisher && i < n_lin; i++)
        if (c->fisher[i]) c->be->ops->free(c->be, c->fisher[i]);
    for (int i = 0; c->samples && i < n_lin; i++) free(c->samples[i]);
    for (int i = 0; c->gram && i < L * TB_GRAM_PER_LAYER; i++)
        if (c->gram[i]) c->be->ops->free(c->be, c->gram[i]);
    free(c->fisher);
    free(c->samples);
    free(c->gram);
    free(c->gram_tokens);
    free(c->host_tmp);
    if (c->be == &c->own_be) tb_backend_close(&c->own_be);
    memset(c, 0, sizeof *c);
}

/* forward hook: G += X^T X for the first reader of each distinct input, in f64 */
static void gram_hook(void *ctx, int layer, tb_lin_id which, const float *x, int n, int cols)
{
    tb_calib *c = ctx;
    int slot = gram_slot(which);
    if (slot < 0 || layer >= c->m->cfg.n_layers || layer < c->o.layer_begin || layer >= c->o.layer_end) return;
    int g = layer * TB_GRAM_PER_LAYER + slot;
    c->be->ops->gram_acc(c->be, x, n, cols, c->gram[g]);
    c->gram_tokens[g] += n;
}

static int grad_cb(void *ctx, int layer, tb_lin_id which, const float *dW, int rows, int cols)
{
    tb_calib *c = ctx;
    int idx = layer * TB_LIN_PER_LAYER + (layer == c->m->cfg.n_layers ? 0 : (int)which);
    size_t sz = (size_t)rows * cols;
    tb_backend *be = c->be;
    int64_t bad = be->ops->first_nonfinite(be, dW, sz);
    if (bad >= 0) {
        char name[128];
        float v;
        be->ops->download(be, &v, dW + bad, sizeof v);
        tb_calib_weight_name(c->m, layer, which, name, sizeof name);
        size_t k = (size_t)bad;
        return tb_fail(TB_EDATA, "window %lld: gradient of '%s' is %s at element %zu (row %zu, col %zu)",
                       (long long)c->cur_window, name, isnan(v) ? "NaN" : "Inf", k, k / cols, k % cols);
    }
    float *F = c->fisher ? c->fisher[idx] : NULL;
    if (F) be->ops->sq_acc(be, F, dW, sz);
    if (c->sample_slot >= 0 && c->samples[idx]) {
        uint16_t *s = c->samples[idx] + (size_t)c->sample_slot * sz;
        be->ops->download(be, c->host_tmp, dW, sz * sizeof(float));
        for (size_t k = 0; k < sz; k++) s[k] = tb_f32_to_bf16(c->host_tmp[k]);
    }
    return TB_OK;
}

int tb_calib_window(tb_calib *c, tb_forward *f, tb_backward *b, const int32_t *ids, int n, double *loss)
{
    int need_grad = c->o.fisher || c->o.grad_samples > 0;
    /* K windows evenly spread over the run: window w is slot k when w = floor(k total / K) */
    c->sample_slot = -1;
    for (int k = 0; k < c->o.grad_samples; k++)
        if ((int64_t)k * c->o.total_windows / c->o.grad_samples == c->windows) c->sample_slot = k;
    c->cur_window = c->windows;
    if (c->o.gram) {
        f->hook = gram_hook;
        f->hook_ctx = c;
    }
    int rc = tb_forward_run(f, ids, n, 0);
    f->hook = NULL;
    f->hook_ctx = NULL;
    if (rc) return rc;
    if (need_grad) rc = tb_backward_run(b, ids, n, c->with_lm_head, grad_cb, c, loss);
    else *loss = f->be->ops->nll(f->be, f->logits, ids, n, c->m->cfg.vocab_size) / (n - 1);
    if (rc) return rc;
    c->windows++;
    c->tokens += n;
    return TB_OK;
}

int tb_calib_layers(tb_calib *c, tb_forward *f, int n, int l0, int l1)
{
    return tb_calib_layers_at(c, f, n, l0, l1, l1, NULL, NULL);
}

int tb_calib_layers_at(tb_calib *c, tb_forward *f, int n, int l0, int mid, int l1, int (*at_mid)(void *ctx),
                       void *ctx)
{
    if (c->o.fisher || c->o.grad_samples > 0)
        return tb_fail(TB_EUSAGE, "Fisher and gradient samples need the whole model, not a layer range");
    if (mid <= l0 || mid > l1) return tb_fail(TB_EUSAGE, "calib: stream %d is not inside layers %d:%d", mid, l0, l1);
    c->cur_window = c->windows;
    if (c->o.gram) {
        f->hook = gram_hook;
        f->hook_ctx = c;
    }
    /* each layer runs unchained (tb_forward_layers), so a split run
     * computes what the whole one does */
    int rc = tb_forward_layers(f, n, l0, mid);
    if (!rc && at_mid) { /* unhooked: it may read streams, never run a linear */
        f->hook = NULL;
        rc = at_mid(ctx);
        if (c->o.gram) f->hook = gram_hook;
    }
    if (!rc && mid < l1) rc = tb_forward_layers(f, n, mid, l1);
    f->hook = NULL;
    f->hook_ctx = NULL;
    if (rc) return rc;
    c->windows++;
    c->tokens += n;
    return TB_OK;
}

/* the .fisher writer reads sums where the backend keeps them */
static void fetch_from_backend(void *ctx, void *dst, const void *src, size_t bytes)
{
    tb_backend *be = ctx;
    be->ops->download(be, dst, src, bytes);
}

/* The statistics in file order (Fisher, then Gram, then samples, each in
 * layer order) handed to formats/' writer, which finalises them on the way:
 * Fisher sums become means, Gram upper triangles are mirrored. */
int tb_calib_write(tb_calib *c, const char *path, const char *const *meta_kv, int n_meta)
{
    const tb_model *m = c->m;
    const int L = m->cfg.n_layers, n_lin = L * TB_LIN_PER_LAYER + 1;
    const double inv = c->windows ? 1.0 / (double)c->windows : 0.0;
    tb_fisher_stat *stats = tb_calloc((size_t)n_lin * 3, sizeof *stats);
    char(*names)[128] = tb_calloc((size_t)n_lin, sizeof *names);
    int n = 0, rc = stats && names ? TB_OK : TB_EIO;
    for (int pass = 0; pass < 3 && !rc; pass++)
        for (int l = 0; l <= L; l++)
            for (int i = 0; i < TB_LIN_PER_LAYER; i++) {
                if (l == L && (i > 0 || !c->with_lm_head)) continue;
                const tb_linear *W = lin_of(m, l, i);
                const int idx = l * TB_LIN_PER_LAYER + i, g = l * TB_GRAM_PER_LAYER + gram_slot(i);
                tb_calib_weight_name(m, l, i, names[idx], sizeof names[idx]);
                tb_fisher_stat s = {.weight = names[idx], .rows = W->rows, .cols = W->cols};
                if (pass == 0 && c->fisher && c->fisher[idx]) {
                    s.kind = TB_FISHER_STAT_DIAG;
                    s.data = c->fisher[idx];
                    s.scale = inv;
                } else if (pass == 1 && c->gram && l < L && gram_slot(i) >= 0 && c->gram[g]) {
                    s.kind = TB_FISHER_STAT_GRAM;
                    s.rows = W->cols;
                    s.data = c->gram[g];
                    s.tokens = c->gram_tokens[g];
                } else if (pass == 2 && c->samples && c->samples[idx]) {
                    s.kind = TB_FISHER_STAT_GRAD;
                    s.samples = c->o.grad_samples;
                    s.data = c->samples[idx];
                } else {
                    continue;
                }
                stats[n++] = s;
            }
    if (!rc) {
        /* from a GPU every fetch is a download: mirroring a Gram 32 MiB of
         * rows at a time took ~k^2 / 2 / rows-per-block column pieces (343 K
         * downloads of 2.3 KB for a 7B down_proj, k = 14336); 512 MiB blocks
         * (two host buffers) take 28 K. The file is the same bytes. */
        tb_fisher_source src = {.fetch = fetch_from_backend, .ctx = c->be,
                                .block_bytes = c->be->o.device == TB_DEVICE_CPU ? 0 : (size_t)512 << 20};
        rc = tb_fisher_write(path, stats, n, &src, meta_kv, n_meta);
    }
    free(stats);
    free(names);
    return rc;
}
