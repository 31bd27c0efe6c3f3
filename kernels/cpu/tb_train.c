#include "tb_train.h"
#include "tb_model.h"
#include "tb_ops.h"
#include "tb_threads.h"

#define _USE_MATH_DEFINES
#include <math.h>

void tb_adam_masked(float *w, const float *g, float *m1, float *m2, const uint8_t *keep, int64_t n, double lr,
                    const tb_adam_hp *hp, int64_t t)
{
    const double c1 = 1.0 - pow(hp->beta1, (double)t), c2 = 1.0 - pow(hp->beta2, (double)t);
    const float b1 = (float)hp->beta1, b2 = (float)hp->beta2;
    for (int64_t i = 0; i < n; i++) {
        if (keep && !keep[i]) continue;
        m1[i] = b1 * m1[i] + (1 - b1) * g[i];
        m2[i] = b2 * m2[i] + (1 - b2) * g[i] * g[i];
        w[i] -= (float)(lr * (m1[i] / c1) / (sqrt(m2[i] / c2) + hp->eps));
    }
}

double tb_cosine_lr(double peak, int64_t step, int64_t steps)
{
    return steps > 0 ? peak * 0.5 * (1.0 + cos(M_PI * (double)step / (double)steps)) : peak;
}

void tb_window_order(int64_t *order, int64_t n, uint64_t seed, int64_t epoch)
{
    /* xorshift64 seeded from (seed, epoch); never zero */
    uint64_t s = (seed * 0x9E3779B97F4A7C15ull + 1) ^ ((uint64_t)(epoch + 1) * 0xBF58476D1CE4E5B9ull);
    if (!s) s = 1;
    for (int64_t i = 0; i < n; i++) order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        int64_t j = (int64_t)(s % (uint64_t)(i + 1)), tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
}

typedef struct {
    const float *teacher;
    float *student;
    int vocab;
    double grad_scale;
    double kl[256];
    int64_t same[256];
} kl_job;

static void kl_range(void *ctx, int64_t begin, int64_t end, int tid)
{
    kl_job *j = ctx;
    const int V = j->vocab;
    for (int64_t r = begin; r < end; r++) {
        const float *p = j->teacher + (size_t)r * V;
        float *q = j->student + (size_t)r * V;
        int same;
        j->kl[tid] += tb_eval_kl_row(p, q, V, &same);
        j->same[tid] += same;
        if (j->grad_scale == 0) continue;
        double lp = tb_logsumexp(p, V), lq = tb_logsumexp(q, V);
        for (int v = 0; v < V; v++)
            q[v] = (float)(j->grad_scale * (exp((double)q[v] - lq) - exp((double)p[v] - lp)));
    }
}

double tb_kl_rows(const float *teacher, float *student, int rows, int vocab, double grad_scale, int64_t *top1_same,
                  int n_threads)
{
    kl_job j = {.teacher = teacher, .student = student, .vocab = vocab, .grad_scale = grad_scale};
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 256) n_threads = 256;
    tb_parallel_for(n_threads, rows, kl_range, &j);
    double total = 0; /* the per-thread sums in a fixed order */
    for (int t = 0; t < n_threads; t++) {
        total += j.kl[t];
        if (top1_same) *top1_same += j.same[t];
    }
    return total;
}
