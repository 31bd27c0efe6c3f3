/* tb_forward.c - the decoder forward pass over the KV cache, on a backend.
 *
 * Device-neutral: every array is backend memory and every computation a call
 * into f->be->ops (tb_backend.h). The same code runs on the CPU and on CUDA. */
#include "tb_error.h"
#include "tb_log.h"
#include "tb_model.h"
#include "tb_nvtx.h"
#include "tb_ops.h"

#include <stdlib.h>
#include <string.h>

/* Carve every buffer out of one block. Called twice: with base NULL to size
 * the block, then with the block to set the pointers. Sizes are rounded to 16
 * floats (64 bytes) so no two buffers share a cache line. */
static float *carve(float **cur, size_t n)
{
    float *p = *cur;
    *cur += (n + 15) & ~(size_t)15;
    return p;
}

static size_t layout(tb_forward *f, float *base)
{
    const tb_config *c = &f->m->cfg;
    size_t T = (size_t)f->o.max_tokens, S = (size_t)f->o.max_seq;
    size_t D = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    size_t Q = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim;
    const tb_attn_shape shape = {c->n_heads, c->n_kv_heads, c->head_dim, c->sliding_window};
    size_t saved = f->o.keep_acts ? f->be->ops->attention_saved(f->be, &shape, (int)T, (int)S) : 0;
    float *cur = base;
    const int lb = f->o.layer_begin, le = f->o.layer_end;
    for (int l = 0; l < c->n_layers; l++) {
        tb_layer_acts *a = &f->acts[l];
        memset(a, 0, sizeof *a);
        if (l < lb || l > le) continue; /* outside the range: nothing */
        if (l == le) {                  /* only the stream entering it */
            a->x = f->o.keep_acts ? carve(&cur, T * D) : f->acts[lb].x;
            continue;
        }
        float *kc = carve(&cur, S * KV), *vc = carve(&cur, S * KV);
        if (l > lb && !f->o.keep_acts) {
            /* inference: the layers take turns with one set, only the caches are per layer */
            *a = f->acts[lb];
        } else {
            a->x = carve(&cur, T * D);
            a->xn1 = carve(&cur, T * D);
            a->rms1 = carve(&cur, T);
            a->q = carve(&cur, T * Q);
            a->saved = f->o.keep_acts ? carve(&cur, saved) : NULL;
            a->att = carve(&cur, T * Q);
            a->h = carve(&cur, T * D);
            a->xn2 = carve(&cur, T * D);
            a->rms2 = carve(&cur, T);
            a->gate = carve(&cur, T * F);
            a->up = carve(&cur, T * F);
            a->act = carve(&cur, T * F);
        }
        a->k_cache = kc;
        a->v_cache = vc;
    }
    /* the head's buffers only for a whole-model run state ([T, vocab] logits
     * are a GB at 128k tokens of vocabulary) */
    int whole = lb == 0 && le == c->n_layers;
    f->x_final = le == c->n_layers ? carve(&cur, T * D) : NULL;
    f->xn_final = whole ? carve(&cur, T * D) : NULL;
    f->rms_final = whole ? carve(&cur, T) : NULL;
    f->logits = whole ? carve(&cur, T * (size_t)c->vocab_size) : NULL;
    f->tmp = carve(&cur, T * D);
    f->k_new = carve(&cur, KV);
    f->v_new = carve(&cur, KV);
    f->pos_dev = (int32_t *)carve(&cur, 1);
    f->rope_cos = carve(&cur, S * (size_t)c->head_dim / 2);
    f->rope_sin = carve(&cur, S * (size_t)c->head_dim / 2);
    f->rope_neg_sin = carve(&cur, S * (size_t)c->head_dim / 2);
    f->final_norm = carve(&cur, D);
    return (size_t)(cur - base);
}

/* A host f32 vector into a backend copy: norms are tiny, so every backend copies. */
static float *vector_copy(tb_forward *f, const float *host, size_t n, const char *what)
{
    float *d = tb_alloc_f32(f->be, n, what);
    if (d) f->be->ops->upload(f->be, d, host, n * sizeof(float));
    return d;
}

static int lm_head_weights(tb_forward *f);

/* the captured decode step holds every pointer it was captured with: weights
 * released or replaced end it (the next steps warm up and capture again) */
static void graph_drop(tb_forward *f)
{
    if (f->graph) f->be->ops->graph_free(f->be, f->graph);
    f->graph = NULL;
    if (f->graph_state > 0) f->graph_state = 0;
}

int tb_forward_init(tb_forward *f, const tb_model *m, const tb_forward_opts *o)
{
    memset(f, 0, sizeof *f);
    const tb_config *c = &m->cfg;
    if (o->max_seq < 1 || o->max_tokens < 1 || o->max_tokens > o->max_seq)
        return tb_fail(TB_EUSAGE, "forward: need 1 <= max_tokens (%d) <= max_seq (%d)", o->max_tokens, o->max_seq);
    f->m = m;
    f->o = *o;
    if (f->o.n_threads < 1) f->o.n_threads = 1;
    if (f->o.layer_end == 0) f->o.layer_end = c->n_layers;
    if (f->o.layer_begin < 0 || f->o.layer_begin >= f->o.layer_end || f->o.layer_end > c->n_layers)
        return tb_fail(TB_EUSAGE, "forward: layers %d:%d outside [0, %d]", o->layer_begin, o->layer_end, c->n_layers);
    int rc;
    if (o->backend) {
        f->be = o->backend;
    } else {
        f->own_be.o.n_threads = f->o.n_threads;
        if ((rc = tb_cpu_backend_open(&f->own_be))) return rc;
        f->be = &f->own_be;
    }
    f->acts = tb_calloc((size_t)c->n_layers, sizeof *f->acts);
    f->dl = tb_calloc((size_t)c->n_layers, sizeof *f->dl);
    if (!f->acts || !f->dl) {
        tb_forward_free(f);
        return TB_EIO;
    }
    size_t total = layout(f, NULL);
    if (!(f->mem = tb_alloc_f32(f->be, total, "the activations and KV cache"))) {
        rc = tb_errcode();
        tb_forward_free(f);
        return rc ? rc : TB_EIO;
    }
    layout(f, f->mem);

    /* RoPE tables on the host (exact f32 angles, f64 cos/sin), then uploaded */
    size_t half = (size_t)o->max_seq * c->head_dim / 2;
    float *tab = tb_malloc(3 * half * sizeof(float));
    if (!tab) {
        tb_forward_free(f);
        return TB_EIO;
    }
    tb_rope_table(tab, tab + half, o->max_seq, c->head_dim, m->inv_freq);
    for (size_t i = 0; i < half; i++) tab[2 * half + i] = -tab[half + i];
    f->be->ops->upload(f->be, f->rope_cos, tab, half * sizeof(float));
    f->be->ops->upload(f->be, f->rope_sin, tab + half, half * sizeof(float));
    f->be->ops->upload(f->be, f->rope_neg_sin, tab + 2 * half, half * sizeof(float));
    free(tab);
    f->be->ops->upload(f->be, f->final_norm, m->final_norm, (size_t)c->hidden_size * sizeof(float));
    /* Without a budget every weight of the range stays resident: load them
     * now, so a run's first window does not pay for the uploads (and runs
     * are timed on compute). With one, layers load on first use. */
    if (!f->o.weight_budget) {
        for (int l = f->o.layer_begin; l < f->o.layer_end; l++)
            if (!tb_forward_layer_weights(f, l)) {
                rc = tb_errcode() ? tb_errcode() : TB_EIO;
                tb_forward_free(f);
                return rc;
            }
        if (f->o.layer_begin == 0 && f->o.layer_end == c->n_layers && (rc = lm_head_weights(f))) {
            tb_forward_free(f);
            return rc;
        }
    }
    return f->be->ops->sync(f->be);
}

static void layer_release(tb_forward *f, int l)
{
    tb_dlayer *d = &f->dl[l];
    if (!d->loaded) return;
    graph_drop(f);
    for (int i = 0; i < TB_LIN_PER_LAYER; i++)
        if (!d->borrowed[i]) f->be->ops->linear_release(f->be, &d->lin[i]);
    f->be->ops->free(f->be, d->attn_norm);
    f->be->ops->free(f->be, d->mlp_norm);
    f->resident -= d->bytes;
    memset(d, 0, sizeof *d);
}

void tb_forward_free(tb_forward *f)
{
    if (f->be) {
        graph_drop(f);
        for (int l = 0; f->dl && l < f->m->cfg.n_layers; l++) layer_release(f, l);
        if (f->lm_head.host) f->be->ops->linear_release(f->be, &f->lm_head);
        if (f->mem) f->be->ops->free(f->be, f->mem);
        if (f->be == &f->own_be) tb_backend_close(&f->own_be);
    }
    free(f->dl);
    free(f->acts);
    memset(f, 0, sizeof *f);
}

tb_dlayer *tb_forward_layer_weights(tb_forward *f, int l)
{
    tb_dlayer *d = &f->dl[l];
    d->last_use = ++f->clock;
    if (d->loaded) return d;
    const tb_layer *w = &f->m->layers[l];
    const size_t D = (size_t)f->m->cfg.hidden_size;
    TB_RANGE_PUSH("load layer");
    for (int i = 0; i < TB_LIN_PER_LAYER; i++) {
        int rc = f->be->ops->linear_upload(f->be, &d->lin[i], &w->lin[i]);
        /* over the budget (or out of memory): release the least recently used
         * other layers and try again, so a model streams through a small GPU */
        while (!rc && f->o.weight_budget && f->resident + d->bytes + d->lin[i].bytes > f->o.weight_budget) {
            int lru = -1;
            for (int k = 0; k < f->m->cfg.n_layers; k++)
                if (k != l && f->dl[k].loaded && (lru < 0 || f->dl[k].last_use < f->dl[lru].last_use)) lru = k;
            if (lru < 0) break; /* this layer alone exceeds the budget: run it anyway */
            layer_release(f, lru);
        }
        if (rc) {
            for (int k = 0; k < i; k++) f->be->ops->linear_release(f->be, &d->lin[k]);
            memset(d, 0, sizeof *d);
            TB_RANGE_POP();
            tb_err_context("layer %d %s", l, tb_lin_name(i));
            return NULL;
        }
        d->bytes += d->lin[i].bytes;
    }
    d->attn_norm = vector_copy(f, w->attn_norm, D, "a norm weight");
    d->mlp_norm = vector_copy(f, w->mlp_norm, D, "a norm weight");
    d->loaded = 1;
    f->resident += d->bytes;
    if (!d->attn_norm || !d->mlp_norm) {
        layer_release(f, l);
        TB_RANGE_POP();
        return NULL;
    }
    TB_RANGE_POP();
    return d;
}

void tb_forward_use_linear(tb_forward *f, int l, tb_lin_id which, const tb_dlinear *d)
{
    tb_dlayer *dl = &f->dl[l];
    graph_drop(f);
    if (!dl->borrowed[which]) {
        dl->bytes -= dl->lin[which].bytes;
        f->resident -= dl->lin[which].bytes;
        f->be->ops->linear_release(f->be, &dl->lin[which]);
    }
    dl->lin[which] = *d;
    dl->borrowed[which] = 1;
}

void tb_forward_restore_linear(tb_forward *f, int l, tb_lin_id which)
{
    tb_dlayer *dl = &f->dl[l];
    if (!dl->borrowed[which]) return;
    graph_drop(f);
    dl->borrowed[which] = 0;
    if (f->be->ops->linear_upload(f->be, &dl->lin[which], &f->m->layers[l].lin[which])) {
        memset(&dl->lin[which], 0, sizeof dl->lin[which]);
        layer_release(f, l); /* reloaded whole on next use */
        return;
    }
    dl->bytes += dl->lin[which].bytes;
    f->resident += dl->lin[which].bytes;
}

static void linear(tb_forward *f, int layer, tb_lin_id id, const tb_dlinear *L, const float *x, int n, float *y)
{
    if (f->hook) f->hook(f->hook_ctx, layer, id, x, n, L->cols);
    f->be->ops->linear(f->be, L, x, n, y);
}

/* One decoder layer on acts[l].x for n tokens at positions pos0..; leaves the
 * result in the next layer's x (or x_final). The attention block's residual
 * add and the MLP's norm run as one op (add_rmsnorm: the same values).
 * pos_dev (the one-token decode step, never with keep_acts): the positions
 * start at *pos_dev in backend memory instead (pos0 unused), and gate, up and
 * SwiGLU are one op. chained (the decode step, and tb_forward_run's
 * whole-model pass): acts[l].xn1 already holds the attention norm of x (the
 * previous layer, or the caller, computed it), and the layer ends with the
 * next norm fused into its residual add: the next layer's xn1, or after the
 * last layer xn_final (one pass over the stream instead of two, and one launch
 * fewer, per norm). q, k and v are one op too at decode. 8 launches a layer on
 * CUDA for dense bf16 weights at decode (q/k/v, rope_append, attention, o,
 * add_rmsnorm, gate/up/SwiGLU, down, add_rmsnorm); prefill chained runs 13
 * ops (its norms fused likewise). */
static int layer_forward(tb_forward *f, int l, int n, int pos0, const int32_t *pos_dev, int chained)
{
    const tb_model *m = f->m;
    const tb_config *c = &m->cfg;
    const tb_backend_ops *op = f->be->ops;
    tb_backend *be = f->be;
    const int D = c->hidden_size, KV = c->n_kv_heads * c->head_dim;
    const size_t ND = (size_t)n * D;
    const float eps = (float)c->rms_norm_eps;
    const tb_attn_shape shape = {c->n_heads, c->n_kv_heads, c->head_dim, c->sliding_window};
    tb_layer_acts *a = &f->acts[l];
    tb_dlayer *w = tb_forward_layer_weights(f, l);
    if (!w) return tb_errcode() ? tb_errcode() : TB_EIO;
    float *k = a->k_cache + (size_t)pos0 * KV, *v = a->v_cache + (size_t)pos0 * KV;

    if (pos_dev) k = f->k_new, v = f->v_new; /* rope_append caches them at *pos_dev */

    TB_RANGE_PUSH("attention block");
    if (!chained) op->rmsnorm(be, a->xn1, a->rms1, a->x, w->attn_norm, n, D, eps);
    if (pos_dev) { /* q, k, v in one op (one launch on CUDA) */
        const tb_dlinear *qkv[3] = {&w->lin[TB_LIN_Q], &w->lin[TB_LIN_K], &w->lin[TB_LIN_V]};
        float *out[3] = {a->q, k, v};
        for (int i = 0; f->hook && i < 3; i++) f->hook(f->hook_ctx, l, (tb_lin_id)(TB_LIN_Q + i), a->xn1, n, qkv[i]->cols);
        op->linears(be, 3, qkv, a->xn1, n, out);
    } else {
        linear(f, l, TB_LIN_Q, &w->lin[TB_LIN_Q], a->xn1, n, a->q);
        linear(f, l, TB_LIN_K, &w->lin[TB_LIN_K], a->xn1, n, k);
        linear(f, l, TB_LIN_V, &w->lin[TB_LIN_V], a->xn1, n, v);
    }
    if (pos_dev) {
        op->rope_append(be, a->q, k, v, n, c->n_heads, c->n_kv_heads, c->head_dim, pos_dev, f->rope_cos,
                        f->rope_sin, a->k_cache, a->v_cache);
        op->attention_at(be, &shape, a->q, a->k_cache, a->v_cache, n, pos_dev, a->att);
    } else {
        op->rope(be, a->q, n, c->n_heads, c->head_dim, pos0, f->rope_cos, f->rope_sin);
        op->rope(be, k, n, c->n_kv_heads, c->head_dim, pos0, f->rope_cos, f->rope_sin);
        op->attention(be, &shape, a->q, a->k_cache, a->v_cache, n, pos0, a->att, a->saved);
    }
    linear(f, l, TB_LIN_O, &w->lin[TB_LIN_O], a->att, n, f->tmp);
    op->add_rmsnorm(be, a->h, a->xn2, a->rms2, a->x, f->tmp, w->mlp_norm, n, D, eps);
    TB_RANGE_POP();

    TB_RANGE_PUSH("mlp block");
    if (pos_dev) { /* the decode step: gate, up and swiglu in one op (one launch on CUDA) */
        if (f->hook) {
            f->hook(f->hook_ctx, l, TB_LIN_GATE, a->xn2, n, w->lin[TB_LIN_GATE].cols);
            f->hook(f->hook_ctx, l, TB_LIN_UP, a->xn2, n, w->lin[TB_LIN_UP].cols);
        }
        op->linear_swiglu(be, &w->lin[TB_LIN_GATE], &w->lin[TB_LIN_UP], a->xn2, n, a->gate, a->up, a->act);
    } else {
        linear(f, l, TB_LIN_GATE, &w->lin[TB_LIN_GATE], a->xn2, n, a->gate);
        linear(f, l, TB_LIN_UP, &w->lin[TB_LIN_UP], a->xn2, n, a->up);
        op->swiglu(be, a->act, a->gate, a->up, (size_t)n * c->intermediate_size);
    }
    linear(f, l, TB_LIN_DOWN, &w->lin[TB_LIN_DOWN], a->act, n, f->tmp);
    /* without keep_acts the next layer's x is this one's: h is a separate
     * buffer, so overwriting x here is safe (and xn1, rms1: read only by the
     * q/k/v linears above) */
    if (chained) {
        const int last = l + 1 == c->n_layers;
        const tb_dlayer *wn = last ? NULL : tb_forward_layer_weights(f, l + 1);
        if (!last && !wn) {
            TB_RANGE_POP();
            return tb_errcode() ? tb_errcode() : TB_EIO;
        }
        op->add_rmsnorm(be, tb_forward_stream(f, l + 1), last ? f->xn_final : f->acts[l + 1].xn1,
                        last ? f->rms_final : f->acts[l + 1].rms1, a->h, f->tmp, last ? f->final_norm : wn->attn_norm,
                        n, D, eps);
    } else {
        op->add(be, tb_forward_stream(f, l + 1), a->h, f->tmp, ND);
    }
    TB_RANGE_POP();
    return TB_OK;
}

float *tb_forward_stream(tb_forward *f, int layer)
{
    return layer < f->m->cfg.n_layers ? f->acts[layer].x : f->x_final;
}

static int check_range(const tb_forward *f, int n, int pos0)
{
    if (n < 1 || n > f->o.max_tokens || pos0 < 0 || pos0 > f->o.max_seq - n)
        return tb_fail(TB_EUSAGE, "forward: %d tokens at position %d exceed the buffers (%d tokens, %d positions)", n,
                       pos0, f->o.max_tokens, f->o.max_seq);
    return TB_OK;
}

static int check_tokens(const tb_forward *f, const int32_t *tokens, int n)
{
    const int V = f->m->cfg.vocab_size;
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= V)
            return tb_fail(TB_EDATA, "forward: token id %d outside the vocabulary [0, %d)", (int)tokens[t], V);
    return TB_OK;
}

/* the output head loads on first use: layer-wise tools never need it */
static int lm_head_weights(tb_forward *f)
{
    if (f->lm_head.host) return TB_OK;
    int rc = f->be->ops->linear_upload(f->be, &f->lm_head, &f->m->lm_head);
    return rc ? tb_err_context("lm_head") : TB_OK;
}

/* The one-token step after the embedding, every launch independent of the
 * position (read from f->pos_dev): layer 0's norm, the layers, the head. */
static int decode_step(tb_forward *f)
{
    const tb_config *c = &f->m->cfg;
    tb_dlayer *w0 = tb_forward_layer_weights(f, 0);
    if (!w0) return tb_errcode() ? tb_errcode() : TB_EIO;
    f->be->ops->rmsnorm(f->be, f->acts[0].xn1, f->acts[0].rms1, f->acts[0].x, w0->attn_norm, 1, c->hidden_size,
                        (float)c->rms_norm_eps);
    int rc = TB_OK;
    for (int l = 0; l < c->n_layers && !rc; l++) rc = layer_forward(f, l, 1, 0, f->pos_dev, 1);
    if (!rc) linear(f, c->n_layers, TB_LIN_LM_HEAD, &f->lm_head, f->xn_final, 1, f->logits);
    return rc;
}

/* One token at pos0. Where the backend has graphs (CUDA), the first step runs
 * plainly (the warm-up: work space grown, lazy forms made), the second is
 * captured, and every later one replays that capture after uploading its
 * embedding row and position: one launch a token instead of ~15 a layer.
 * Not with a linear hook (the host must see every call) or a weight budget
 * (layers move). The replay computes exactly what the plain launches do. */
static int decode_run(tb_forward *f, const int32_t *token, int pos0)
{
    const tb_backend_ops *op = f->be->ops;
    const int32_t p = pos0;
    f->n = 1;
    op->embed(f->be, &f->m->embed, token, 1, f->acts[0].x);
    op->upload(f->be, f->pos_dev, &p, sizeof p);
    int rc;
    if (f->graph_state >= 0 && op->graph_begin && !f->hook && !f->o.weight_budget) {
        if (f->graph) {
            if (!op->graph_launch(f->be, f->graph)) return op->sync(f->be);
            graph_drop(f); /* stale: this step warms up again */
        }
        if (f->graph_state == 0) {
            f->graph_state = 1;
        } else if (op->graph_begin(f->be)) {
            tb_info("decode: plain launches, no CUDA graph: %s", tb_errmsg());
            tb_err_clear();
            f->graph_state = -1;
        } else {
            rc = decode_step(f);
            void *g = op->graph_end(f->be);
            if (g && !rc && !op->graph_launch(f->be, g)) {
                f->graph = g;
                tb_info("decode: the step at position %d captured as a CUDA graph, replayed from here on", pos0);
                return op->sync(f->be);
            }
            if (g) op->graph_free(f->be, g);
            if (rc) return rc;
            tb_info("decode: plain launches, the CUDA graph capture failed: %s", g ? "stale at once" : tb_errmsg());
            tb_err_clear();
            f->graph_state = -1;
        }
    }
    rc = decode_step(f);
    return rc ? rc : op->sync(f->be);
}

int tb_forward_run(tb_forward *f, const int32_t *tokens, int n, int pos0)
{
    const tb_model *m = f->m;
    const tb_config *c = &m->cfg;
    int rc = check_range(f, n, pos0);
    if (!rc) rc = check_tokens(f, tokens, n);
    if (!rc && (f->o.layer_begin != 0 || f->o.layer_end != c->n_layers))
        rc = tb_fail(TB_EUSAGE, "forward: this run state holds layers %d:%d, not the whole model", f->o.layer_begin,
                     f->o.layer_end);
    if (!rc) rc = lm_head_weights(f);
    if (rc) return rc;
    if (n == 1 && !f->o.keep_acts) {
        TB_RANGE_PUSH("decode step");
        rc = decode_run(f, tokens, pos0);
        TB_RANGE_POP();
        return rc;
    }
    TB_RANGE_PUSH("forward");
    f->n = n;
    f->be->ops->embed(f->be, &m->embed, tokens, n, f->acts[0].x);
    /* layer 0's norm here, every later norm (the final one too) fused into the layer before */
    tb_dlayer *w0 = tb_forward_layer_weights(f, 0);
    if (!w0) rc = tb_errcode() ? tb_errcode() : TB_EIO;
    else
        f->be->ops->rmsnorm(f->be, f->acts[0].xn1, f->acts[0].rms1, f->acts[0].x, w0->attn_norm, n, c->hidden_size,
                            (float)c->rms_norm_eps);
    for (int l = 0; l < c->n_layers && !rc; l++) rc = layer_forward(f, l, n, pos0, NULL, 1);
    if (!rc) {
        linear(f, c->n_layers, TB_LIN_LM_HEAD, &f->lm_head, f->xn_final, n, f->logits);
        rc = f->be->ops->sync(f->be);
    }
    TB_RANGE_POP();
    return rc;
}

int tb_forward_embed(tb_forward *f, const int32_t *tokens, int n)
{
    int rc = check_range(f, n, 0);
    if (!rc) rc = check_tokens(f, tokens, n);
    if (!rc && f->o.layer_begin != 0) rc = tb_fail(TB_EUSAGE, "forward: embedding needs layer 0 in the run state");
    if (rc) return rc;
    f->be->ops->embed(f->be, &f->m->embed, tokens, n, f->acts[0].x);
    f->n = n;
    return f->be->ops->sync(f->be);
}

int tb_forward_layers(tb_forward *f, int n, int l0, int l1)
{
    int rc = check_range(f, n, 0);
    if (rc) return rc;
    if (l0 < f->o.layer_begin || l1 > f->o.layer_end || l0 >= l1)
        return tb_fail(TB_EUSAGE, "forward: layers %d:%d outside the run state's %d:%d", l0, l1, f->o.layer_begin,
                       f->o.layer_end);
    f->n = n;
    for (int l = l0; l < l1 && !rc; l++) rc = layer_forward(f, l, n, 0, NULL, 0);
    return rc ? rc : f->be->ops->sync(f->be);
}

static int check_stream(const tb_forward *f, int layer, int n)
{
    if (layer < f->o.layer_begin || layer > f->o.layer_end)
        return tb_fail(TB_EUSAGE, "forward: no stream %d in the run state's layers %d:%d", layer, f->o.layer_begin,
                       f->o.layer_end);
    return check_range(f, n, 0);
}

int tb_forward_set_stream(tb_forward *f, int layer, const float *host, int n)
{
    int rc = check_stream(f, layer, n);
    if (rc) return rc;
    f->be->ops->upload(f->be, tb_forward_stream(f, layer), host, (size_t)n * f->m->cfg.hidden_size * sizeof(float));
    return TB_OK;
}

int tb_forward_get_stream(tb_forward *f, int layer, float *host, int n)
{
    int rc = check_stream(f, layer, n);
    if (rc) return rc;
    f->be->ops->download(f->be, host, tb_forward_stream(f, layer), (size_t)n * f->m->cfg.hidden_size * sizeof(float));
    return f->be->ops->sync(f->be);
}

int tb_forward_get_logits(tb_forward *f, int t, float *host)
{
    if (t < 0 || t >= f->n) return tb_fail(TB_EUSAGE, "forward: no logits row %d (last call ran %d tokens)", t, f->n);
    const size_t V = (size_t)f->m->cfg.vocab_size;
    f->be->ops->download(f->be, host, f->logits + (size_t)t * V, V * sizeof(float));
    return f->be->ops->sync(f->be);
}
