/* tb_grad.c - reference CPU kernels of the backward pass (see tb_grad.h). */
#include "tb_grad.h"
#include "tb_threads.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* the same weight tile tb_linear_forward uses: 64K f32 values */
#define TILE_FLOATS 65536

static int tile_rows(const tb_linear *L)
{
    int t = TILE_FLOATS / (L->cols > 0 ? L->cols : 1);
    return t < 8 ? 8 : t;
}

void tb_rmsnorm_backward(float *dx, const float *dy, const float *x, const float *inv_rms, const float *w, int n,
                         int d, int accumulate)
{
    for (int t = 0; t < n; t++) {
        const float *yt = dy + (size_t)t * d, *xt = x + (size_t)t * d;
        float *dt = dx + (size_t)t * d;
        double s = 0;
        for (int i = 0; i < d; i++) s += (double)w[i] * yt[i] * xt[i];
        double r = inv_rms[t], c = r * r * r * s / d;
        for (int i = 0; i < d; i++) {
            float g = (float)(r * w[i] * yt[i] - xt[i] * c);
            dt[i] = accumulate ? dt[i] + g : g;
        }
    }
}

typedef struct {
    float *d_gate, *d_up;
    const float *d_out, *gate, *up;
} swiglu_bw_job;

static void swiglu_bw_range(void *ctx, int64_t b, int64_t e, int tid)
{
    const swiglu_bw_job *j = ctx;
    for (int64_t i = b; i < e; i++) {
        float g = j->gate[i], s = 1.0f / (1.0f + expf(-g)), d = j->d_out[i];
        j->d_up[i] = d * g * s;
        j->d_gate[i] = d * j->up[i] * s * (1.0f + g * (1.0f - s));
    }
}

void tb_swiglu_backward(float *d_gate, float *d_up, const float *d_out, const float *gate, const float *up,
                        size_t n, int n_threads)
{
    swiglu_bw_job j = {d_gate, d_up, d_out, gate, up};
    tb_parallel_for(n_threads, (int64_t)n, swiglu_bw_range, &j);
}

size_t tb_attention_backward_scratch(int n) { return (size_t)n * (size_t)n; }

typedef struct {
    const tb_attn_shape *a;
    const float *q, *k, *v, *probs, *d_out;
    float *d_q, *d_k, *d_v;
    int n;
    const tb_scratch *s;
} att_bw_job;

static void att_bw_groups(void *ctx, int64_t begin, int64_t end, int tid)
{
    const att_bw_job *j = ctx;
    const int hd = j->a->head_dim, n = j->n, group = j->a->n_heads / j->a->n_kv_heads;
    const int Q = j->a->n_heads * hd, KV = j->a->n_kv_heads * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float *dP = j->s->buf + (size_t)tid * j->s->per_thread;
    for (int64_t g = begin; g < end; g++) {
        const float *K = j->k + g * hd, *V = j->v + g * hd;
        float *dK = j->d_k + g * hd, *dV = j->d_v + g * hd;
        for (int hi = 0; hi < group; hi++) {
            int h = (int)g * group + hi;
            const float *P = j->probs + (size_t)h * n * n;
            const float *dO = j->d_out + (size_t)h * hd, *Qh = j->q + (size_t)h * hd;
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

void tb_attention_backward(const tb_attn_shape *a, const float *q, const float *k, const float *v, const float *probs,
                           const float *d_out, int n, float *d_q, float *d_k, float *d_v, const tb_scratch *s)
{
    att_bw_job j = {a, q, k, v, probs, d_out, d_q, d_k, d_v, n, s};
    tb_parallel_for(s->n_threads, a->n_kv_heads, att_bw_groups, &j);
}

size_t tb_linear_input_grad_scratch(const tb_linear *L)
{
    /* a weight tile and the row a permuted weight is decoded into */
    return (size_t)tile_rows(L) * L->cols + (size_t)L->cols;
}

typedef struct {
    const tb_linear *L;
    const float *dy;
    float *dx;
    int accumulate;
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

void tb_linear_input_grad(const tb_linear *L, const float *dy, int n, float *dx, int accumulate, const tb_scratch *s)
{
    dx_job j = {L, dy, dx, accumulate, s};
    tb_parallel_for(s->n_threads, n, dx_tokens, &j);
}

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

void tb_linear_weight_grad(const float *dy, const float *x, int n, int rows, int cols, float *dW, int n_threads)
{
    dw_job j = {dy, x, dW, n, rows, cols};
    tb_parallel_for(n_threads, rows, dw_rows, &j);
}
