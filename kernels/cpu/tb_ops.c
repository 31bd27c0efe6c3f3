#include "tb_ops.h"
#include "tb_gemv.h"
#include "tb_ops_isa.h"
#include "tb_threads.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void tb_rmsnorm(float *y, float *inv_rms, const float *x, const float *w, int n, int d, float eps)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        /* f64 so the mean does not depend on d's size; 8 partial sums, so the
         * adds pipeline (one chain of dependent adds was 3% of --ppl) */
        double p0 = 0, p1 = 0, p2 = 0, p3 = 0, p4 = 0, p5 = 0, p6 = 0, p7 = 0;
        int j = 0;
        for (; j + 8 <= d; j += 8) {
            const float *v = xi + j;
            p0 += (double)v[0] * v[0], p1 += (double)v[1] * v[1], p2 += (double)v[2] * v[2], p3 += (double)v[3] * v[3];
            p4 += (double)v[4] * v[4], p5 += (double)v[5] * v[5], p6 += (double)v[6] * v[6], p7 += (double)v[7] * v[7];
        }
        for (; j < d; j++) p0 += (double)xi[j] * xi[j];
        double ss = ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7));
        float r = 1.0f / sqrtf((float)(ss / d) + eps);
        if (inv_rms) inv_rms[i] = r;
        /* (x * r) * w, the order transformers rounds in */
        for (j = 0; j < d; j++) yi[j] = w[j] * (xi[j] * r);
    }
}

void tb_rope_inv_freq(float *inv_freq, int head_dim, double theta)
{
    /* transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all f32 */
    for (int i = 0; i < head_dim / 2; i++) {
        float e = (float)(2 * i) / (float)head_dim;
        inv_freq[i] = 1.0f / powf((float)theta, e);
    }
}

void tb_rope_table(float *cos_t, float *sin_t, int n_pos, int head_dim, const float *inv_freq)
{
    int half = head_dim / 2;
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < half; i++) {
            /* the angle is rounded to f32 as in transformers (positions @ inv_freq
             * in f32); cos/sin of that f32 angle are then taken exactly */
            float ang = (float)p * inv_freq[i];
            cos_t[(size_t)p * half + i] = (float)cos((double)ang);
            sin_t[(size_t)p * half + i] = (float)sin((double)ang);
        }
}

void tb_rope_apply(float *x, int n, int n_heads, int head_dim, int pos0, const float *cos_t, const float *sin_t)
{
    int half = head_dim / 2;
    for (int t = 0; t < n; t++) {
        const float *c = cos_t + (size_t)(pos0 + t) * half;
        const float *s = sin_t + (size_t)(pos0 + t) * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                /* q*cos + rotate_half(q)*sin, rotate_half(q) = (-q2, q1) */
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

/* the vector kernels of tb_ops_isa.h where tb_gemv's ISA choice has them */
static tb_isa ops_isa(void)
{
    tb_isa isa = tb_gemv_isa();
    if (isa == TB_ISA_AVX512 && tb_ops_avx512_compiled) return isa;
    if (isa >= TB_ISA_AVX2 && tb_ops_avx2_compiled) return TB_ISA_AVX2;
    return TB_ISA_SCALAR;
}

void tb_softmax(float *x, int n)
{
    if (n <= 0) return;
    switch (ops_isa()) {
    case TB_ISA_AVX512: tb_softmax_avx512(x, n); return;
    case TB_ISA_AVX2: tb_softmax_avx2(x, n); return;
    default: break;
    }
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

double tb_logsumexp(const float *x, int n)
{
    switch (ops_isa()) {
    case TB_ISA_AVX512: return tb_logsumexp_avx512(x, n);
    case TB_ISA_AVX2: return tb_logsumexp_avx2(x, n);
    default: break;
    }
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    return mx + log(sum);
}

typedef struct {
    float *out;
    const float *gate, *up;
} swiglu_job;

static void swiglu_range(void *ctx, int64_t b, int64_t e, int tid)
{
    const swiglu_job *j = ctx;
    switch (ops_isa()) {
    case TB_ISA_AVX512: tb_swiglu_avx512(j->out + b, j->gate + b, j->up + b, (size_t)(e - b)); return;
    case TB_ISA_AVX2: tb_swiglu_avx2(j->out + b, j->gate + b, j->up + b, (size_t)(e - b)); return;
    default: break;
    }
    for (int64_t i = b; i < e; i++) {
        float g = j->gate[i];
        j->out[i] = g / (1.0f + expf(-g)) * j->up[i];
    }
}

void tb_swiglu(float *out, const float *gate, const float *up, size_t n, int n_threads)
{
    swiglu_job j = {out, gate, up};
    tb_parallel_for(n_threads, (int64_t)n, swiglu_range, &j);
}

/* Queries are processed in blocks so that a block's scores cover only the keys
 * its last query can see: causal prefill then does ~half of the T x T work. */
#define ATT_BLOCK 64

size_t tb_attention_scratch(int kv_len) { return (size_t)ATT_BLOCK * (size_t)kv_len; }

typedef struct {
    const tb_attn_shape *a;
    const float *q, *k, *v;
    float *out, *probs;
    int n, pos0, n_blocks;
    const tb_scratch *s;
} att_job;

/* Blocks of at most this many queries (decode: one) without kept probs go
 * through tb_attend_row (tb_gemv.h): sgemm's packing of a 1 x kv_len product
 * costs more than the product, and it was a third of a decode step. */
#define ATT_DIRECT 4

static void att_units(void *ctx, int64_t begin, int64_t end, int tid)
{
    const att_job *j = ctx;
    const tb_attn_shape *a = j->a;
    int hd = a->head_dim, qd = a->n_heads * hd, kd = a->n_kv_heads * hd;
    int group = a->n_heads / a->n_kv_heads;
    int total_kv = j->pos0 + j->n;
    float scale = 1.0f / sqrtf((float)hd);
    for (int64_t u = begin; u < end; u++) {
        int h = (int)(u / j->n_blocks), blk = (int)(u % j->n_blocks);
        int g = h / group;
        int i0 = blk * ATT_BLOCK;
        int bn = j->n - i0 < ATT_BLOCK ? j->n - i0 : ATT_BLOCK;
        int kv_len = j->pos0 + i0 + bn; /* keys visible to the block's last query */
        if (!j->probs && bn <= ATT_DIRECT) {
            float *row = j->s->buf + (size_t)tid * j->s->per_thread;
            for (int r = 0; r < bn; r++) {
                int p = j->pos0 + i0 + r;
                int lo = a->sliding_window > 0 && p - a->sliding_window + 1 > 0 ? p - a->sliding_window + 1 : 0;
                tb_attend_row(j->q + (size_t)(i0 + r) * qd + h * hd, j->k + g * hd, j->v + g * hd, kd, hd, lo, p,
                              scale, row, j->out + (size_t)(i0 + r) * qd + h * hd);
            }
            continue;
        }
        float *S;
        int lds;
        if (j->probs) {
            S = j->probs + ((size_t)h * j->n + i0) * total_kv;
            lds = total_kv;
        } else {
            S = j->s->buf + (size_t)tid * j->s->per_thread;
            lds = kv_len;
        }
        /* S = scale * Q_h K_g^T over the visible keys */
        const float *qh = j->q + (size_t)i0 * qd + h * hd;
        if (!tb_gemm_f32_nt(bn, kv_len, hd, scale, qh, (size_t)qd, j->k + g * hd, (size_t)kd, S, (size_t)lds))
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bn, kv_len, hd, scale, qh, qd, j->k + g * hd, kd, 0.0f,
                        S, lds);
        for (int r = 0; r < bn; r++) {
            float *row = S + (size_t)r * lds;
            int p = j->pos0 + i0 + r;
            int lo = a->sliding_window > 0 && p - a->sliding_window + 1 > 0 ? p - a->sliding_window + 1 : 0;
            tb_softmax(row + lo, p + 1 - lo);
            /* masked entries are exact zeros, so the P V product below and a
             * kept probs matrix both see the masked softmax */
            for (int c = 0; c < lo; c++) row[c] = 0.0f;
            for (int c = p + 1; c < lds; c++) row[c] = 0.0f;
        }
        /* out_h = P V_g */
        float *oh = j->out + (size_t)i0 * qd + h * hd;
        if (!tb_gemm_f32_nn(bn, hd, kv_len, S, (size_t)lds, j->v + g * hd, (size_t)kd, oh, (size_t)qd))
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bn, hd, kv_len, 1.0f, S, lds, j->v + g * hd, kd, 0.0f,
                        oh, qd);
    }
}

void tb_attention(const tb_attn_shape *a, const float *q, const float *k, const float *v, int n, int pos0, float *out,
                  float *probs, const tb_scratch *s)
{
    if (n <= 0) return;
    att_job j = {a, q, k, v, out, probs, n, pos0, (n + ATT_BLOCK - 1) / ATT_BLOCK, s};
    /* head-major unit order: a contiguous split gives each thread whole heads
     * (equal work) whenever n_heads is a multiple of the thread count */
    tb_parallel_for(s->n_threads, (int64_t)a->n_heads * j.n_blocks, att_units, &j);
}
