/* tb_loss.c - reference CPU kernels of the language-model losses (tb_loss.h). */
#include "tb_loss.h"
#include "tb_ops.h"
#include "tb_threads.h"

#include <math.h>
#include <string.h>

typedef struct {
    const float *logits;
    const int32_t *tokens;
    int vocab;
    double partial[256]; /* one per thread: summed in thread order, so reproducible */
} nll_job;

static void nll_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    nll_job *j = ctx;
    double sum = 0; /* f64: hundreds of terms of ~5 nats each */
    for (int64_t t = begin; t < end; t++) {
        const float *row = j->logits + (size_t)t * j->vocab;
        sum += tb_logsumexp(row, j->vocab) - (double)row[j->tokens[t + 1]];
    }
    j->partial[tid] = sum;
}

double tb_eval_window_nll_mt(const float *logits, const int32_t *tokens, int n, int vocab, int n_threads)
{
    if (n < 2) return 0.0;
    nll_job j = {logits, tokens, vocab, {0}};
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 256) n_threads = 256;
    if (n_threads > n - 1) n_threads = n - 1;
    tb_parallel_for(n_threads, n - 1, nll_rows, &j);
    double sum = 0;
    for (int t = 0; t < n_threads; t++) sum += j.partial[t];
    return sum / (n - 1);
}

double tb_eval_window_nll(const float *logits, const int32_t *tokens, int n, int vocab)
{
    return tb_eval_window_nll_mt(logits, tokens, n, vocab, 1);
}

double tb_eval_kl_row(const float *ref_logits, const float *logits, int n, int *same_top1)
{
    double lp = tb_logsumexp(ref_logits, n), lq = tb_logsumexp(logits, n), kl = 0;
    int ap = 0, aq = 0;
    for (int v = 0; v < n; v++) {
        double a = (double)ref_logits[v] - lp, b = (double)logits[v] - lq;
        kl += exp(a) * (a - b);
        if (ref_logits[v] > ref_logits[ap]) ap = v;
        if (logits[v] > logits[aq]) aq = v;
    }
    *same_top1 = ap == aq;
    return kl > 0 ? kl : 0; /* rounding can take an exact 0 slightly negative */
}

typedef struct {
    const float *ref, *cur;
    int vocab;
    double kl[256];
    int64_t same[256];
} kl_job;

static void kl_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    kl_job *j = ctx;
    double kl = 0;
    int64_t same = 0;
    for (int64_t t = begin; t < end; t++) {
        int s;
        kl += tb_eval_kl_row(j->ref + (size_t)t * j->vocab, j->cur + (size_t)t * j->vocab, j->vocab, &s);
        same += s;
    }
    j->kl[tid] = kl;
    j->same[tid] = same;
}

double tb_eval_kl_rows(const float *ref, const float *cur, int n, int vocab, int n_threads, int64_t *same)
{
    kl_job j = {ref, cur, vocab, {0}, {0}};
    int k = n_threads < 1 ? 1 : n_threads > 256 ? 256 : n_threads;
    if (k > n) k = n;
    double kl = 0;
    *same = 0;
    if (n <= 0) return 0;
    tb_parallel_for(k, n, kl_rows, &j);
    for (int t = 0; t < k; t++) { /* thread order: reproducible */
        kl += j.kl[t];
        *same += j.same[t];
    }
    return kl;
}

double tb_xent_backward(float *logits, const int32_t *tokens, int n, int vocab)
{
    double total = 0, inv = n > 1 ? 1.0 / (n - 1) : 0.0;
    for (int t = 0; t < n; t++) {
        float *row = logits + (size_t)t * vocab;
        if (t == n - 1) {
            memset(row, 0, (size_t)vocab * sizeof(float));
            break;
        }
        double lse = tb_logsumexp(row, vocab);
        int target = tokens[t + 1];
        total += lse - row[target];
        for (int v = 0; v < vocab; v++) row[v] = (float)(exp(row[v] - lse) * inv);
        row[target] -= (float)inv;
    }
    return total * inv;
}
