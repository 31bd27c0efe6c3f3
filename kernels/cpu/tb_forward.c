/* tb_forward.c - the decoder forward pass over the KV cache. */
#include "tb_error.h"
#include "tb_model.h"
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
    float *cur = base;
    for (int l = 0; l < c->n_layers; l++) {
        tb_layer_acts *a = &f->acts[l];
        float *kc = carve(&cur, S * KV), *vc = carve(&cur, S * KV);
        if (l > 0 && !f->o.keep_acts) {
            /* inference: the layers take turns with one set, only the caches are per layer */
            *a = f->acts[0];
        } else {
            a->x = carve(&cur, T * D);
            a->xn1 = carve(&cur, T * D);
            a->rms1 = carve(&cur, T);
            a->q = carve(&cur, T * Q);
            a->probs = f->o.keep_acts ? carve(&cur, (size_t)c->n_heads * T * S) : NULL;
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
    f->x_final = carve(&cur, T * D);
    f->xn_final = carve(&cur, T * D);
    f->rms_final = carve(&cur, T);
    f->logits = carve(&cur, T * (size_t)c->vocab_size);
    f->tmp = carve(&cur, T * D);
    f->rope_cos = carve(&cur, S * (size_t)c->head_dim / 2);
    f->rope_sin = carve(&cur, S * (size_t)c->head_dim / 2);
    return (size_t)(cur - base);
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
    f->acts = tb_calloc((size_t)c->n_layers, sizeof *f->acts);
    if (!f->acts) return TB_EIO;
    size_t total = layout(f, NULL);
    if (!(f->mem = tb_malloc(total * sizeof(float)))) {
        tb_forward_free(f);
        return TB_EIO;
    }
    layout(f, f->mem);
    tb_rope_table(f->rope_cos, f->rope_sin, o->max_seq, c->head_dim, m->inv_freq);

    size_t per_thread = tb_attention_scratch(o->max_seq);
    for (int l = 0; l < c->n_layers; l++)
        for (int i = 0; i < TB_LIN_PER_LAYER; i++) {
            size_t s = tb_linear_scratch(&m->layers[l].lin[i]);
            per_thread = s > per_thread ? s : per_thread;
        }
    size_t s = tb_linear_scratch(&m->lm_head);
    per_thread = s > per_thread ? s : per_thread;
    if (tb_scratch_init(&f->scratch, f->o.n_threads, per_thread)) {
        tb_forward_free(f);
        return TB_EIO;
    }
    tb_blas_single_thread();
    return TB_OK;
}

void tb_forward_free(tb_forward *f)
{
    tb_scratch_free(&f->scratch);
    free(f->mem);
    free(f->acts);
    memset(f, 0, sizeof *f);
}

static void linear(tb_forward *f, int layer, tb_lin_id id, const tb_linear *L, const float *x, int n, float *y)
{
    if (f->hook) f->hook(f->hook_ctx, layer, id, x, n, L->cols);
    tb_linear_forward(L, x, n, y, &f->scratch);
}

static void add(float *y, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

/* One decoder layer on acts[l].x for n tokens at positions pos0..; leaves the
 * result in the next layer's x (or x_final). */
static void layer_forward(tb_forward *f, int l, int n, int pos0)
{
    const tb_model *m = f->m;
    const tb_config *c = &m->cfg;
    const int D = c->hidden_size, KV = c->n_kv_heads * c->head_dim;
    const size_t ND = (size_t)n * D;
    const float eps = (float)c->rms_norm_eps;
    const tb_attn_shape shape = {c->n_heads, c->n_kv_heads, c->head_dim, c->sliding_window};
    tb_layer_acts *a = &f->acts[l];
    const tb_layer *w = &m->layers[l];
    float *k = a->k_cache + (size_t)pos0 * KV, *v = a->v_cache + (size_t)pos0 * KV;

    tb_rmsnorm(a->xn1, a->rms1, a->x, w->attn_norm, n, D, eps);
    linear(f, l, TB_LIN_Q, &w->lin[TB_LIN_Q], a->xn1, n, a->q);
    linear(f, l, TB_LIN_K, &w->lin[TB_LIN_K], a->xn1, n, k);
    linear(f, l, TB_LIN_V, &w->lin[TB_LIN_V], a->xn1, n, v);
    tb_rope_apply(a->q, n, c->n_heads, c->head_dim, pos0, f->rope_cos, f->rope_sin);
    tb_rope_apply(k, n, c->n_kv_heads, c->head_dim, pos0, f->rope_cos, f->rope_sin);
    tb_attention(&shape, a->q, a->k_cache, a->v_cache, n, pos0, a->att, a->probs, &f->scratch);
    linear(f, l, TB_LIN_O, &w->lin[TB_LIN_O], a->att, n, f->tmp);
    add(a->h, a->x, f->tmp, ND);

    tb_rmsnorm(a->xn2, a->rms2, a->h, w->mlp_norm, n, D, eps);
    linear(f, l, TB_LIN_GATE, &w->lin[TB_LIN_GATE], a->xn2, n, a->gate);
    linear(f, l, TB_LIN_UP, &w->lin[TB_LIN_UP], a->xn2, n, a->up);
    tb_swiglu(a->act, a->gate, a->up, (size_t)n * c->intermediate_size, f->o.n_threads);
    linear(f, l, TB_LIN_DOWN, &w->lin[TB_LIN_DOWN], a->act, n, f->tmp);
    /* without keep_acts the next layer's x is this one's: h is a separate
     * buffer, so overwriting x here is safe */
    add(tb_forward_stream(f, l + 1), a->h, f->tmp, ND);
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

int tb_forward_run(tb_forward *f, const int32_t *tokens, int n, int pos0)
{
    const tb_model *m = f->m;
    const tb_config *c = &m->cfg;
    int rc = check_range(f, n, pos0);
    if (rc) return rc;
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return tb_fail(TB_EDATA, "forward: token id %d outside the vocabulary [0, %d)", (int)tokens[t],
                           c->vocab_size);
    const int D = c->hidden_size;
    f->n = n;
    for (int t = 0; t < n; t++) tb_linear_row(&m->embed, tokens[t], f->acts[0].x + (size_t)t * D);
    for (int l = 0; l < c->n_layers; l++) layer_forward(f, l, n, pos0);
    tb_rmsnorm(f->xn_final, f->rms_final, f->x_final, m->final_norm, n, D, (float)c->rms_norm_eps);
    linear(f, c->n_layers, TB_LIN_LM_HEAD, &m->lm_head, f->xn_final, n, f->logits);
    return TB_OK;
}

int tb_forward_embed(tb_forward *f, const int32_t *tokens, int n)
{
    const tb_config *c = &f->m->cfg;
    int rc = check_range(f, n, 0);
    if (rc) return rc;
    for (int t = 0; t < n; t++) {
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return tb_fail(TB_EDATA, "forward: token id %d outside the vocabulary [0, %d)", (int)tokens[t],
                           c->vocab_size);
        tb_linear_row(&f->m->embed, tokens[t], f->acts[0].x + (size_t)t * c->hidden_size);
    }
    f->n = n;
    return TB_OK;
}

int tb_forward_layers(tb_forward *f, int n, int l0, int l1)
{
    int rc = check_range(f, n, 0);
    if (rc) return rc;
    if (l0 < 0 || l1 > f->m->cfg.n_layers || l0 >= l1)
        return tb_fail(TB_EUSAGE, "forward: layers %d:%d outside [0, %d]", l0, l1, f->m->cfg.n_layers);
    f->n = n;
    for (int l = l0; l < l1; l++) layer_forward(f, l, n, 0);
    return TB_OK;
}
