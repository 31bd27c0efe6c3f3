#include "tb_stats.h"
#include "tb_error.h"

#include <math.h>

#define CHUNK 4096

void tb_stats_compute(const tb_array *t, tb_tensor_stats *s)
{
    double buf[CHUNK];
    double sum = 0, sumsq = 0;
    int64_t finite = 0;
    s->min = INFINITY;
    s->max = -INFINITY;
    s->count = t->numel;
    s->zeros = s->nans = s->infs = 0;
    for (int64_t off = 0; off < t->numel; off += CHUNK) {
        size_t k = (size_t)(t->numel - off < CHUNK ? t->numel - off : CHUNK);
        tb_to_f64(t->dtype, t->data, (size_t)off, k, buf);
        for (size_t i = 0; i < k; i++) {
            double v = buf[i];
            if (isnan(v)) { s->nans++; continue; }
            if (isinf(v)) { s->infs++; continue; }
            if (v == 0) s->zeros++;
            if (v < s->min) s->min = v;
            if (v > s->max) s->max = v;
            sum += v;
            sumsq += v * v;
            finite++;
        }
    }
    if (finite == 0) {
        s->min = s->max = s->mean = s->std = NAN;
        return;
    }
    s->mean = sum / (double)finite;
    double var = sumsq / (double)finite - s->mean * s->mean;
    s->std = sqrt(var > 0 ? var : 0);
}

int64_t tb_nm_groups_within(const float *x, int64_t n_groups, int n, int m)
{
    int64_t ok = 0;
    for (int64_t g = 0; g < n_groups; g++) {
        int nz = 0;
        for (int i = 0; i < m; i++) nz += x[g * m + i] != 0.0f;
        ok += nz <= n;
    }
    return ok;
}

int tb_nm_conformity(const tb_array *t, int n, int m, double *fraction, int64_t *groups)
{
    if (t->ndim < 1) return tb_fail(TB_EDATA, "tensor '%s': a scalar has no N:M groups", t->name);
    int64_t cols = t->shape[t->ndim - 1];
    if (cols % m)
        return tb_fail(TB_EDATA, "tensor '%s': dim %d (%lld) not divisible by M=%d", t->name, t->ndim - 1,
                       (long long)cols, m);
    float buf[CHUNK];
    int64_t n_groups = t->numel / m, ok = 0;
    int64_t per_chunk = CHUNK / m;
    for (int64_t g = 0; g < n_groups; g += per_chunk) {
        int64_t k = n_groups - g < per_chunk ? n_groups - g : per_chunk;
        tb_to_f32(t->dtype, t->data, (size_t)(g * m), (size_t)(k * m), buf);
        ok += tb_nm_groups_within(buf, k, n, m);
    }
    *groups = n_groups;
    *fraction = n_groups ? (double)ok / (double)n_groups : 1.0;
    return TB_OK;
}
