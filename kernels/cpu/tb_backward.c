/* tb_backward.c - reverse-mode pass through the decoder (see tb_backward.h).
 *
 * Each function mirrors one step of tb_forward_run in reverse. Gradients of
 * the residual stream flow in b->d_res; every branch (attention, MLP, final
 * norm) adds its input gradient into it, exactly as the forward adds its
 * output into the stream.
 */
#include "tb_backward.h"
#include "tb_error.h"
#include "tb_ops.h"
#include "tb_threads.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TILE_FLOATS 65536

static int tile_rows(const tb_linear *L)
{
    int t = TILE_FLOATS / (L->cols > 0 ? L->cols : 1);
    return t < 8 ? 8 : t;
}

static float *carve(float **cur, size_t n)
{
    float *p = *cur;
    *cur += (n + 15) & ~(size_t)15;
    return p;
}

static size_t max_linear(const tb_model *m, size_t *tile)
{
    size_t best = (size_t)m->lm_head.rows * m->lm_head.cols;
    *tile = (size_t)tile_rows(&m->lm_head) * m->lm_head.cols;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int i = 0; i < TB_LIN_PER_LAYER; i++) {
            const tb_linear *L = &m->layers[l].lin[i];
            size_t s = (size_t)L->rows * L->cols, t = (size_t)tile_rows(L) * L->cols;
            if (s > best) best = s;
            if (t > *tile) *tile = t;
        }
    return best;
}

static size_t layout(tb_backward *b, float *base)
{
    const tb_config *c = &b->f->m->cfg;
    size_t T = (size_t)b->f->o.max_tokens, D = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    size_t Q = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim, tile;
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
    b->dW = carve(&cur, max_linear(b->f->m, &tile));
    b->neg_sin = carve(&cur, (size_t)b->f->o.max_seq * c->head_dim / 2);
    return (size_t)(cur - base);
}

int tb_backward_init(tb_backward *b, tb_forward *f)
{
    memset(b, 0, sizeof *b);
    if (!f->o.keep_acts) return tb_fail(TB_EUSAGE, "backward: the forward pass must keep its activations");
    b->f = f;
    size_t total = layout(b, NULL);
    if (!(b->mem = tb_malloc(total * sizeof(float)))) return TB_EIO;
    layout(b, b->mem);
    size_t half = (size_t)f->m->cfg.head_dim / 2;
    for (size_t i = 0; i < (size_t)f->o.max_seq * half; i++) b->neg_sin[i] = -f->rope_sin[i];
    size_t tile, T = (size_t)f->o.max_tokens;
    max_linear(f->m, &tile);
    /* a weight tile and the row a permuted weight is decoded into, or a
     * [T, T] attention block */
    size_t widest = (size_t)f->m->cfg.intermediate_size > (size_t)f->m->cfg.hidden_size
                        ? (size_t)f->m->cfg.intermediate_size : (size_t)f->m->cfg.hidden_size;
    if ((size_t)f->m->cfg.n_heads * f->m->cfg.head_dim > widest) widest = (size_t)f->m->cfg.n_heads * f->m->cfg.head_dim;
    size_t per_thread = tile + widest > T * T ? tile + widest : T * T;
    if (tb_scratch_init(&b->scratch, f->o.n_threads, per_thread)) {
        tb_backward_free(b);
        return TB_EIO;
    }
    return TB_OK;
}

void tb_backward_free(tb_backward *b)
{
    tb_scratch_free(&b->scratch);
    free(b->mem);
    memset(b, 0, sizeof *b);
}

/* ---- dX = dY W (the input gradient of y = x W^T), threads over tokens ---- */

typedef struct {
    const tb_linear *L;
    const float *dy;
    float *dx;
    int n, accumulate;
    const tb_scratch *s;
} dx_job;

static void dx_tokens(void *ctx, int64_t begin, int64_t end, int tid)
{
    const dx_job *j = ctx;
    const tb_linear *L = j->L;
    float *w = j->s->buf + (size_t)tid * j->s->per_thread;
    int nb = (int)(end - begin), tr = tile_rows(L);
    for (int r0 = 0; r0 < L->rows; r0 += tr) {
        int nr = L->rows - r0 < tr ? L->rows - r0 : tr;
        /* through tb_linear_rows, so any storage format of W works here */
        tb_linear_rows(L, r0, nr, w, w + (size_t)tr * L->cols);
        float beta = (r0 == 0 && !j->accumulate) ? 0.0f : 1.0f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, L->cols, nr, 1.0f, j->dy + begin * L->rows + r0,
                    L->rows, w, L->cols, beta, j->dx + begin * L->cols, L->cols);
    }
}

static void input_grad(tb_backward *b, const tb_linear *L, const float *dy, int n, float *dx, int accumulate)
{
    dx_job j = {L, dy, dx, n, accumulate, &b->scratch};
    tb_parallel_for(b->scratch.n_threads, n, dx_tokens, &j);
}

/* ---- dW = dY^T X, threads over rows of dW ---- */

typedef struct {
    const float *dy, *x;
    float *dW;
    int n, rows, cols;
} dw_job;

static void dw_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    const dw_job *j = ctx;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(end - begin), j->cols, j->n, 1.0f, j->dy + begin,
                j->rows, j->x, j->cols, 0.0f, j->dW + begin * j->cols, j->cols);
}

static int weight_grad(tb_backward *b, int layer, tb_lin_id which, const tb_linear *L, const float *dy,
                       const float *x, int n, tb_grad_fn grad, void *ctx)
{
    dw_job j = {dy, x, b->dW, n, L->rows, L->cols};
    tb_parallel_for(b->scratch.n_threads, L->rows, dw_rows, &j);
    return grad(ctx, layer, which, b->dW, L->rows, L->cols);
}

/* ---- RMSNorm: y = w * x * r, r = 1/sqrt(mean(x^2) + eps) ----
 * dx_j = r w_j dy_j - x_j r^3 / d * sum_i w_i dy_i x_i; added into d_res. */
static void rmsnorm_backward(float *d_res, const float *dy, const float *x, const float *rms, const float *w, int n,
                             int d, int accumulate)
{
    for (int t = 0; t < n; t++) {
        const float *yt = dy + (size_t)t * d, *xt = x + (size_t)t * d;
        float *dt = d_res + (size_t)t * d;
        double s = 0;
        for (int i = 0; i < d; i++) s += (double)w[i] * yt[i] * xt[i];
        double r = rms[t], c = r * r * r * s / d;
        for (int i = 0; i < d; i++) {
            float g = (float)(r * w[i] * yt[i] - xt[i] * c);
            dt[i] = accumulate ? dt[i] + g : g;
        }
    }
}

/* ---- attention: out_h = P_h V_g, P_h = softmax(scale Q_h K_g^T + mask) ----
 * threads over KV groups, so the dK/dV sums over a group's query heads never race. */
typedef struct {
    const tb_attn_shape *a;
    const tb_layer_acts *acts;
    const float *d_att;
    float *d_q, *d_k, *d_v;
    int n;
    const tb_scratch *s;
} att_job;

static void att_groups(void *ctx, int64_t begin, int64_t end, int tid)
{
    const att_job *j = ctx;
    const int hd = j->a->head_dim, n = j->n, group = j->a->n_heads / j->a->n_kv_heads;
    const int Q = j->a->n_heads * hd, KV = j->a->n_kv_heads * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float *dP = j->s->buf + (size_t)tid * j->s->per_thread;
    for (int64_t g = begin; g < end; g++) {
        const float *K = j->acts->k_cache + g * hd, *V = j->acts->v_cache + g * hd;
        float *dK = j->d_k + g * hd, *dV = j->d_v + g * hd;
        for (int hi = 0; hi < group; hi++) {
            int h = (int)g * group + hi;
            const float *P = j->acts->probs + (size_t)h * n * n;
            const float *dO = j->d_att + (size_t)h * hd, *Qh = j->acts->q + (size_t)h * hd;
            float beta = hi == 0 ? 0.0f : 1.0f;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, hd, 1.0f, dO, Q, V, KV, 0.0f, dP, n);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, hd, n, 1.0f, P, n, dO, Q, beta, dV, KV);
            /* softmax backward: dS = P * (dP - sum_c P dP); masked P are 0 */
            for (int t = 0; t < n; t++) {
                const float *pr = P + (size_t)t * n;
                float *dr = dP + (size_t)t * n;
                double dot = 0;
                for (int c = 0; c <= t; c++) dot += (double)pr[c] * dr[c];
                for (int c = 0; c < n; c++) dr[c] = pr[c] * (dr[c] - (float)dot);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, n, scale, dP, n, K, KV, 0.0f,
                        j->d_q + (size_t)h * hd, Q);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, hd, n, scale, dP, n, Qh, Q, beta, dK, KV);
        }
    }
}

/* d_att -> d_q, d_k, d_v, d_xn */
static int attention_backward(tb_backward *b, int l, int n, tb_grad_fn grad, void *ctx)
{
    const tb_model *m = b->f->m;
    const tb_config *c = &m->cfg;
    const tb_layer_acts *a = &b->f->acts[l];
    const tb_layer *w = &m->layers[l];
    const tb_attn_shape shape = {c->n_heads, c->n_kv_heads, c->head_dim, c->sliding_window};
    att_job j = {&shape, a, b->d_att, b->d_q, b->d_k, b->d_v, n, &b->scratch};
    tb_parallel_for(b->scratch.n_threads, c->n_kv_heads, att_groups, &j);
    /* q and k were rotated after their projections: rotate the gradients back */
    tb_rope_apply(b->d_q, n, c->n_heads, c->head_dim, 0, b->f->rope_cos, b->neg_sin);
    tb_rope_apply(b->d_k, n, c->n_kv_heads, c->head_dim, 0, b->f->rope_cos, b->neg_sin);
    int rc;
    if ((rc = weight_grad(b, l, TB_LIN_V, &w->lin[TB_LIN_V], b->d_v, a->xn1, n, grad, ctx)) ||
        (rc = weight_grad(b, l, TB_LIN_K, &w->lin[TB_LIN_K], b->d_k, a->xn1, n, grad, ctx)) ||
        (rc = weight_grad(b, l, TB_LIN_Q, &w->lin[TB_LIN_Q], b->d_q, a->xn1, n, grad, ctx)))
        return rc;
    input_grad(b, &w->lin[TB_LIN_Q], b->d_q, n, b->d_xn, 0);
    input_grad(b, &w->lin[TB_LIN_K], b->d_k, n, b->d_xn, 1);
    input_grad(b, &w->lin[TB_LIN_V], b->d_v, n, b->d_xn, 1);
    return TB_OK;
}

/* d_res (gradient of the layer output) -> d_res (gradient of the layer input) */
static int layer_backward(tb_backward *b, int l, int n, tb_grad_fn grad, void *ctx)
{
    const tb_model *m = b->f->m;
    const tb_config *c = &m->cfg;
    const tb_layer_acts *a = &b->f->acts[l];
    const tb_layer *w = &m->layers[l];
    const int D = c->hidden_size;
    const size_t NF = (size_t)n * c->intermediate_size;
    int rc;

    /* MLP: out = h + down(silu(gate) * up) */
    input_grad(b, &w->lin[TB_LIN_DOWN], b->d_res, n, b->d_act, 0);
    if ((rc = weight_grad(b, l, TB_LIN_DOWN, &w->lin[TB_LIN_DOWN], b->d_res, a->act, n, grad, ctx))) return rc;
    for (size_t i = 0; i < NF; i++) {
        float g = a->gate[i], s = 1.0f / (1.0f + expf(-g));
        b->d_up[i] = b->d_act[i] * g * s;
        b->d_act[i] = b->d_act[i] * a->up[i] * s * (1.0f + g * (1.0f - s)); /* now d_gate */
    }
    if ((rc = weight_grad(b, l, TB_LIN_UP, &w->lin[TB_LIN_UP], b->d_up, a->xn2, n, grad, ctx)) ||
        (rc = weight_grad(b, l, TB_LIN_GATE, &w->lin[TB_LIN_GATE], b->d_act, a->xn2, n, grad, ctx)))
        return rc;
    input_grad(b, &w->lin[TB_LIN_GATE], b->d_act, n, b->d_xn, 0);
    input_grad(b, &w->lin[TB_LIN_UP], b->d_up, n, b->d_xn, 1);
    rmsnorm_backward(b->d_res, b->d_xn, a->h, a->rms2, w->mlp_norm, n, D, 1);

    /* attention: h = x + o(attention(q, k, v)) */
    input_grad(b, &w->lin[TB_LIN_O], b->d_res, n, b->d_att, 0);
    if ((rc = weight_grad(b, l, TB_LIN_O, &w->lin[TB_LIN_O], b->d_res, a->att, n, grad, ctx))) return rc;
    if ((rc = attention_backward(b, l, n, grad, ctx))) return rc;
    rmsnorm_backward(b->d_res, b->d_xn, a->x, a->rms1, w->attn_norm, n, D, 1);
    return TB_OK;
}

int tb_backward_run(tb_backward *b, const int32_t *tokens, int n, int want_lm_head, tb_grad_fn grad, void *ctx,
                    double *loss)
{
    tb_forward *f = b->f;
    const tb_model *m = f->m;
    const tb_config *c = &m->cfg;
    const int V = c->vocab_size, D = c->hidden_size;
    if (n < 2 || n != f->n) return tb_fail(TB_EUSAGE, "backward: need the %d-token window just run forward (n=%d)", f->n, n);

    /* loss and dloss/dlogits, in place: softmax - onehot, over the n-1 targets */
    double total = 0, inv = 1.0 / (n - 1);
    for (int t = 0; t < n; t++) {
        float *row = f->logits + (size_t)t * V;
        if (t == n - 1) {
            memset(row, 0, (size_t)V * sizeof(float));
            break;
        }
        double lse = tb_logsumexp(row, V);
        int target = tokens[t + 1];
        total += lse - row[target];
        for (int v = 0; v < V; v++) row[v] = (float)(exp(row[v] - lse) * inv);
        row[target] -= (float)inv;
    }
    *loss = total * inv;

    int rc;
    if (want_lm_head &&
        (rc = weight_grad(b, c->n_layers, TB_LIN_LM_HEAD, &m->lm_head, f->logits, f->xn_final, n, grad, ctx)))
        return rc;
    input_grad(b, &m->lm_head, f->logits, n, b->d_xn, 0);
    rmsnorm_backward(b->d_res, b->d_xn, f->x_final, f->rms_final, m->final_norm, n, D, 0);
    for (int l = c->n_layers - 1; l >= 0; l--)
        if ((rc = layer_backward(b, l, n, grad, ctx))) return rc;
    return TB_OK;
}

int tb_backward_layers(tb_backward *b, int n, int l0, int l1, tb_grad_fn grad, void *ctx)
{
    if (n < 1 || n != b->f->n || l0 < 0 || l1 > b->f->m->cfg.n_layers || l0 >= l1)
        return tb_fail(TB_EUSAGE, "backward: layers %d:%d on %d tokens do not match the forward", l0, l1, n);
    for (int l = l1 - 1; l >= l0; l--) {
        int rc = layer_backward(b, l, n, grad, ctx);
        if (rc) return rc;
    }
    return TB_OK;
}
