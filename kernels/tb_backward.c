/* tb_backward.c - reverse-mode pass through the decoder (see tb_backward.h),
 * device-neutral: every step is an op of the forward's backend.
 *
 * Each function mirrors one step of the forward in reverse. Gradients of the
 * residual stream flow in b->d_res; every branch (attention, MLP, final norm)
 * adds its input gradient into it, exactly as the forward adds its output
 * into the stream.
 */
#include "tb_backward.h"
#include "tb_error.h"
#include "tb_nvtx.h"

#include <string.h>

static float *carve(float **cur, size_t n)
{
    float *p = *cur;
    *cur += (n + 15) & ~(size_t)15;
    return p;
}

/* the largest weight gradient the run state can produce: its layers', and
 * lm_head's when it holds the whole model */
static size_t max_linear(const tb_forward *f)
{
    const tb_model *m = f->m;
    int whole = f->o.layer_begin == 0 && f->o.layer_end == m->cfg.n_layers;
    size_t best = whole ? (size_t)m->lm_head.rows * m->lm_head.cols : 0;
    for (int l = f->o.layer_begin; l < f->o.layer_end; l++)
        for (int i = 0; i < TB_LIN_PER_LAYER; i++) {
            const tb_linear *L = &m->layers[l].lin[i];
            size_t s = (size_t)L->rows * L->cols;
            if (s > best) best = s;
        }
    return best;
}

static size_t layout(tb_backward *b, float *base)
{
    const tb_config *c = &b->f->m->cfg;
    size_t T = (size_t)b->f->o.max_tokens, D = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    size_t Q = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim;
    float *cur = base;
    b->d_res = carve(&cur, T * D);
    b->d_xn = carve(&cur, T * D);
    b->d_norm = carve(&cur, T * D);
    b->d_act = carve(&cur, T * F);
    b->d_up = carve(&cur, T * F);
    b->d_att = carve(&cur, T * Q);
    b->d_q = carve(&cur, T * Q);
    b->d_k = carve(&cur, T * KV);
    b->d_v = carve(&cur, T * KV);
    b->dW = carve(&cur, max_linear(b->f));
    return (size_t)(cur - base);
}

int tb_backward_init(tb_backward *b, tb_forward *f)
{
    memset(b, 0, sizeof *b);
    if (!f->o.keep_acts) return tb_fail(TB_EUSAGE, "backward: the forward pass must keep its activations");
    b->f = f;
    size_t total = layout(b, NULL);
    if (!(b->mem = tb_alloc_f32(f->be, total, "the backward pass's gradients"))) return TB_EIO;
    layout(b, b->mem);
    return TB_OK;
}

void tb_backward_free(tb_backward *b)
{
    if (b->f && b->mem) b->f->be->ops->free(b->f->be, b->mem);
    memset(b, 0, sizeof *b);
}

/* dW = dy^T x into b->dW, handed to the callback */
static int weight_grad(tb_backward *b, int layer, tb_lin_id which, const tb_dlinear *L, const float *dy,
                       const float *x, int n, tb_grad_fn grad, void *ctx)
{
    tb_backend *be = b->f->be;
    be->ops->linear_dw(be, dy, x, n, L->rows, L->cols, b->dW);
    return grad(ctx, layer, which, b->dW, L->rows, L->cols);
}

/* d_att -> d_q, d_k, d_v, d_xn */
static int attention_backward(tb_backward *b, int l, int n, tb_grad_fn grad, void *ctx)
{
    tb_forward *f = b->f;
    tb_backend *be = f->be;
    const tb_backend_ops *op = be->ops;
    const tb_config *c = &f->m->cfg;
    const tb_layer_acts *a = &f->acts[l];
    const tb_dlayer *w = &f->dl[l];
    const tb_attn_shape shape = {c->n_heads, c->n_kv_heads, c->head_dim, c->sliding_window};
    op->attention_backward(be, &shape, a->q, a->k_cache, a->v_cache, a->att, a->saved, b->d_att, n, b->d_q, b->d_k,
                           b->d_v);
    /* q and k were rotated after their projections: rotate the gradients back */
    op->rope(be, b->d_q, n, c->n_heads, c->head_dim, 0, f->rope_cos, f->rope_neg_sin);
    op->rope(be, b->d_k, n, c->n_kv_heads, c->head_dim, 0, f->rope_cos, f->rope_neg_sin);
    op->linear_dx(be, &w->lin[TB_LIN_Q], b->d_q, n, b->d_xn, 0);
    op->linear_dx(be, &w->lin[TB_LIN_K], b->d_k, n, b->d_xn, 1);
    op->linear_dx(be, &w->lin[TB_LIN_V], b->d_v, n, b->d_xn, 1);
    int rc; /* after the weights' last use (tb_backward.h) */
    if ((rc = weight_grad(b, l, TB_LIN_V, &w->lin[TB_LIN_V], b->d_v, a->xn1, n, grad, ctx)) ||
        (rc = weight_grad(b, l, TB_LIN_K, &w->lin[TB_LIN_K], b->d_k, a->xn1, n, grad, ctx)) ||
        (rc = weight_grad(b, l, TB_LIN_Q, &w->lin[TB_LIN_Q], b->d_q, a->xn1, n, grad, ctx)))
        return rc;
    return TB_OK;
}

/* d_res (gradient of the layer output) -> d_res (gradient of h, the residual
 * after attention): the MLP half, out = h + down(silu(gate(xn2)) * up(xn2)) */
static int mlp_backward(tb_backward *b, int l, int n, tb_grad_fn grad, void *ctx)
{
    tb_forward *f = b->f;
    tb_backend *be = f->be;
    const tb_backend_ops *op = be->ops;
    const tb_config *c = &f->m->cfg;
    const tb_layer_acts *a = &f->acts[l];
    const tb_dlayer *w = &f->dl[l];
    const size_t NF = (size_t)n * c->intermediate_size;
    int rc;
    if (!w->loaded) return tb_fail(TB_EUSAGE, "backward: layer %d was not run forward", l);
    TB_RANGE_PUSH("mlp block backward");
    op->linear_dx(be, &w->lin[TB_LIN_DOWN], b->d_res, n, b->d_act, 0);
    if ((rc = weight_grad(b, l, TB_LIN_DOWN, &w->lin[TB_LIN_DOWN], b->d_res, a->act, n, grad, ctx))) goto out;
    op->swiglu_backward(be, b->d_act, b->d_up, b->d_act, a->gate, a->up, NF); /* d_act becomes d_gate */
    op->linear_dx(be, &w->lin[TB_LIN_GATE], b->d_act, n, b->d_xn, 0);
    op->linear_dx(be, &w->lin[TB_LIN_UP], b->d_up, n, b->d_xn, 1);
    if ((rc = weight_grad(b, l, TB_LIN_UP, &w->lin[TB_LIN_UP], b->d_up, a->xn2, n, grad, ctx)) ||
        (rc = weight_grad(b, l, TB_LIN_GATE, &w->lin[TB_LIN_GATE], b->d_act, a->xn2, n, grad, ctx)))
        goto out;
    op->rmsnorm_backward(be, b->d_res, b->d_xn, a->h, a->rms2, w->mlp_norm, n, c->hidden_size, 1);
out:
    TB_RANGE_POP();
    return rc;
}

/* d_res (gradient of h) -> d_res (gradient of the layer input x): the
 * attention half, h = x + o(attention(q, k, v)) */
static int attn_backward(tb_backward *b, int l, int n, tb_grad_fn grad, void *ctx)
{
    tb_forward *f = b->f;
    tb_backend *be = f->be;
    const tb_backend_ops *op = be->ops;
    const tb_layer_acts *a = &f->acts[l];
    const tb_dlayer *w = &f->dl[l];
    int rc;
    if (!w->loaded) return tb_fail(TB_EUSAGE, "backward: layer %d was not run forward", l);
    TB_RANGE_PUSH("attention block backward");
    op->linear_dx(be, &w->lin[TB_LIN_O], b->d_res, n, b->d_att, 0);
    if ((rc = weight_grad(b, l, TB_LIN_O, &w->lin[TB_LIN_O], b->d_res, a->att, n, grad, ctx))) goto out;
    if ((rc = attention_backward(b, l, n, grad, ctx))) goto out;
    op->rmsnorm_backward(be, b->d_res, b->d_xn, a->x, a->rms1, w->attn_norm, n, f->m->cfg.hidden_size, 1);
out:
    TB_RANGE_POP();
    return rc;
}

/* d_res (gradient of the layer output) -> d_res (gradient of the layer input) */
static int layer_backward(tb_backward *b, int l, int n, tb_grad_fn grad, void *ctx)
{
    int rc = mlp_backward(b, l, n, grad, ctx);
    return rc ? rc : attn_backward(b, l, n, grad, ctx);
}

int tb_backward_run(tb_backward *b, const int32_t *tokens, int n, int want_lm_head, tb_grad_fn grad, void *ctx,
                    double *loss)
{
    tb_forward *f = b->f;
    if (n < 2 || n != f->n) return tb_fail(TB_EUSAGE, "backward: need the %d-token window just run forward (n=%d)", f->n, n);
    /* loss and dloss/dlogits, in place: softmax - onehot, over the n-1 targets */
    *loss = f->be->ops->xent_backward(f->be, f->logits, tokens, n, f->m->cfg.vocab_size);
    return tb_backward_logits(b, n, want_lm_head, grad, ctx);
}

int tb_backward_logits(tb_backward *b, int n, int want_lm_head, tb_grad_fn grad, void *ctx)
{
    tb_forward *f = b->f;
    tb_backend *be = f->be;
    const tb_config *c = &f->m->cfg;
    const int D = c->hidden_size;
    if (n < 1 || n != f->n) return tb_fail(TB_EUSAGE, "backward: need the %d-token window just run forward (n=%d)", f->n, n);
    if (!f->logits) return tb_fail(TB_EUSAGE, "backward: the run state does not hold the whole model");
    int rc;
    be->ops->linear_dx(be, &f->lm_head, f->logits, n, b->d_xn, 0);
    if (want_lm_head &&
        (rc = weight_grad(b, c->n_layers, TB_LIN_LM_HEAD, &f->lm_head, f->logits, f->xn_final, n, grad, ctx)))
        return rc;
    be->ops->rmsnorm_backward(be, b->d_res, b->d_xn, f->x_final, f->rms_final, f->final_norm, n, D, 0);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        if (b->stream_grad && ((rc = be->ops->sync(be)) || (rc = b->stream_grad(b->stream_ctx, l, b->d_res, n))))
            return rc;
        if ((rc = layer_backward(b, l, n, grad, ctx))) return rc;
    }
    return be->ops->sync(be);
}

int tb_backward_layers(tb_backward *b, int n, int l0, int l1, tb_grad_fn grad, void *ctx)
{
    if (n < 1 || n != b->f->n || l0 < b->f->o.layer_begin || l1 > b->f->o.layer_end || l0 >= l1)
        return tb_fail(TB_EUSAGE, "backward: layers %d:%d on %d tokens do not match the forward", l0, l1, n);
    for (int l = l1 - 1; l >= l0; l--) {
        int rc = layer_backward(b, l, n, grad, ctx);
        if (rc) return rc;
    }
    return b->f->be->ops->sync(b->f->be);
}

int tb_backward_half(tb_backward *b, int n, int l, tb_layer_half half, tb_grad_fn grad, void *ctx)
{
    if (n < 1 || n != b->f->n || l < b->f->o.layer_begin || l >= b->f->o.layer_end)
        return tb_fail(TB_EUSAGE, "backward: layer %d on %d tokens does not match the forward", l, n);
    int rc = half == TB_HALF_MLP ? mlp_backward(b, l, n, grad, ctx) : attn_backward(b, l, n, grad, ctx);
    return rc ? rc : b->f->be->ops->sync(b->f->be);
}
