#include "tb_fisher.h"
#include "tb_error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

int tb_fisher_gram_module(const char *weight_name, char *buf, size_t n)
{
    size_t len = strlen(weight_name);
    if (!ends_with(weight_name, len, ".weight")) return -1;
    len -= strlen(".weight");
    /* modules that read the same activation share one Gram matrix */
    static const char *const shared[][2] = {
        {"self_attn.k_proj", "self_attn.q_proj"},
        {"self_attn.v_proj", "self_attn.q_proj"},
        {"mlp.up_proj", "mlp.gate_proj"},
    };
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        if (ends_with(weight_name, len, shared[i][0])) {
            size_t stem = len - strlen(shared[i][0]);
            int w = snprintf(buf, n, "%.*s%s", (int)stem, weight_name, shared[i][1]);
            return w < 0 || (size_t)w >= n ? -1 : 0;
        }
    }
    int w = snprintf(buf, n, "%.*s", (int)len, weight_name);
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

int tb_fisher_gram_name(const char *weight_name, const char *kind, char *buf, size_t n)
{
    char module[512];
    int rc = tb_fisher_gram_module(weight_name, module, sizeof module);
    int w = snprintf(buf, n, "gram.%s.%s", rc ? "?" : module, kind);
    return rc || w < 0 || (size_t)w >= n ? -1 : 0;
}

int tb_stream_open(st_file *f, const char *path, int hidden, int layer, const st_tensor **h)
{
    int rc = st_open(f, path);
    if (rc) return rc;
    const st_tensor *t = st_find(f, "hidden");
    const char *lay = st_meta(f, "layer");
    if (!t || t->ndim != 3 || t->dtype != TB_F32 || t->shape[2] != hidden || t->shape[1] < 2)
        rc = tb_fail(TB_EDATA, "%s: no F32 tensor 'hidden' [windows, seq_len, %d]", path, hidden);
    else if (!lay || atoi(lay) != layer)
        rc = tb_fail(TB_EDATA, "%s: holds the stream entering layer %s, not layer %d", path, lay ? lay : "?", layer);
    if (rc) st_close(f);
    else *h = t;
    return rc;
}

/* ---------------------------------------------------------------- reading */

static int starts_ends(const char *s, const char *pre, const char *suf)
{
    size_t n = strlen(s), a = strlen(pre), b = strlen(suf);
    return n > a + b && !strncmp(s, pre, a) && !strcmp(s + n - b, suf);
}

int tb_fisher_check(const st_file *f)
{
    const char *kind = st_meta(f, "tensorbit.kind");
    if (kind && strcmp(kind, "fisher"))
        return tb_fail(TB_EDATA, "%s: not a .fisher file (tensorbit.kind is '%s')", f->path, kind);
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        const char *what = NULL;
        if (starts_ends(t->name, "gram.", ".input")) {
            if (t->ndim != 2 || t->shape[0] != t->shape[1] || t->shape[0] < 1 || !tb_dtype_is_float(t->dtype))
                what = "a Gram matrix must be a float [k, k] tensor, k >= 1";
        } else if (starts_ends(t->name, "gram.", ".count")) {
            if (t->numel != 1 || (t->dtype != TB_I64 && t->dtype != TB_I32))
                what = "a token count must be an I64 [1] tensor";
        } else if (!strncmp(t->name, "fisher.", 7)) {
            if (t->ndim != 2 || !tb_dtype_is_float(t->dtype)) what = "a Fisher diagonal must be a float 2-D tensor";
        } else if (!strncmp(t->name, "grad.", 5)) {
            if (t->ndim != 3 || t->shape[0] < 1 || !tb_dtype_is_float(t->dtype))
                what = "gradient samples must be a float [K >= 1, rows, cols] tensor";
        }
        if (what)
            return tb_fail(TB_EDATA, "%s: tensor '%s' (%s, %d dims): %s", f->path, t->name, tb_dtype_name(t->dtype),
                           t->ndim, what);
    }
    return TB_OK;
}

int tb_fisher_find_gram(const st_file *f, const char *weight_name, int64_t k, const st_tensor **g)
{
    char module[512], name[600];
    *g = NULL;
    if (tb_fisher_gram_module(weight_name, module, sizeof module)) return TB_OK;
    snprintf(name, sizeof name, "gram.%s.input", module);
    const st_tensor *t = st_find(f, name);
    if (!t) return TB_OK;
    if (t->ndim != 2 || t->shape[0] != k || t->shape[1] != k || !tb_dtype_is_float(t->dtype))
        return tb_fail(TB_EDATA, "%s: tensor '%s': expected a float [%lld, %lld] Gram for '%s'", f->path, name,
                       (long long)k, (long long)k, weight_name);
    *g = t;
    return TB_OK;
}

static const char *nonfinite_name(double v) { return v != v ? "NaN" : "infinite"; }

static int check_gram(const char *name, const double *row, int64_t i, int64_t j0, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        double v = row[j];
        if (!isfinite(v))
            return tb_fail(TB_EDATA, "tensor '%s': entry (%lld, %lld) is %s", name, (long long)i,
                           (long long)(j0 + j), nonfinite_name(v));
        if (i == j0 + j && v < 0)
            return tb_fail(TB_EDATA, "tensor '%s': diagonal entry %lld is negative (%g): not a Gram matrix", name,
                           (long long)i, v);
    }
    return TB_OK;
}

int tb_fisher_gram_check(const char *name, const double *a, int64_t k)
{
    for (int64_t i = 0; i < k; i++) {
        int rc = check_gram(name, a + i * k, i, 0, k);
        if (rc) return rc;
    }
    return TB_OK;
}

int tb_fisher_gram_f64(const st_tensor *g, double **out)
{
    *out = NULL;
    if (g->ndim != 2 || g->shape[0] != g->shape[1] || !tb_dtype_is_float(g->dtype))
        return tb_fail(TB_EDATA, "tensor '%s': not a float [k, k] Gram matrix", g->name);
    int64_t k = g->shape[0];
    double *a = tb_malloc((size_t)g->numel * sizeof *a + 1);
    if (!a) return TB_EIO;
    tb_to_f64(g->dtype, g->data, 0, (size_t)g->numel, a);
    int rc = tb_fisher_gram_check(g->name, a, k);
    if (rc) { free(a); return rc; }
    *out = a;
    return TB_OK;
}

int tb_fisher_gram_diag(const st_tensor *g, double *diag)
{
    if (g->ndim != 2 || g->shape[0] != g->shape[1] || !tb_dtype_is_float(g->dtype))
        return tb_fail(TB_EDATA, "tensor '%s': not a float [k, k] Gram matrix", g->name);
    int64_t k = g->shape[0];
    for (int64_t i = 0; i < k; i++) {
        tb_to_f64(g->dtype, g->data, (size_t)(i * k + i), 1, &diag[i]);
        int rc = check_gram(g->name, &diag[i], i, i, 1);
        if (rc) return rc;
    }
    return TB_OK;
}

int tb_fisher_gram_count(const st_file *f, const char *module, double *n)
{
    char name[600];
    *n = 0;
    snprintf(name, sizeof name, "gram.%s.count", module);
    const st_tensor *t = st_find(f, name);
    if (!t) return TB_OK;
    int64_t v = 0;
    if (t->numel == 1 && t->dtype == TB_I64) memcpy(&v, t->data, 8);
    else if (t->numel == 1 && t->dtype == TB_I32) {
        int32_t v32;
        memcpy(&v32, t->data, 4);
        v = v32;
    } else {
        return tb_fail(TB_EDATA, "%s: tensor '%s': a token count must be an I64 [1] tensor", f->path, name);
    }
    if (v < 1) return tb_fail(TB_EDATA, "%s: tensor '%s': token count %lld is not positive", f->path, name, (long long)v);
    *n = (double)v;
    return TB_OK;
}

int tb_fisher_values_f32(const st_tensor *t, int nonneg, float **out)
{
    *out = NULL;
    if (!tb_dtype_is_float(t->dtype)) return tb_fail(TB_EDATA, "tensor '%s': %s is not a float type", t->name, tb_dtype_name(t->dtype));
    float *v = st_tensor_f32(t);
    if (!v) return TB_EIO;
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(v[i]) || (nonneg && v[i] < 0)) {
            int rc = tb_fail(TB_EDATA, "tensor '%s': element %lld is %s", t->name, (long long)i,
                             isfinite(v[i]) ? "negative" : nonfinite_name(v[i]));
            free(v);
            return rc;
        }
    *out = v;
    return TB_OK;
}

/* ---------------------------------------------------------------- writing */

static void fetch_bytes(const tb_fisher_source *src, void *dst, const void *from, size_t bytes)
{
    if (src && src->fetch) src->fetch(src->ctx, dst, from, bytes);
    else memcpy(dst, from, bytes);
}

/* Declare stat s's tensors (write == 0) or write its data (write == 1);
 * buf: block_bytes of host memory, seg: the same again for a GRAM's column
 * pieces. */
static int fisher_stat_io(st_writer *w, const tb_fisher_stat *s, const tb_fisher_source *src, int write,
                          void *buf, void *seg, size_t block_bytes)
{
    char full[600];
    int rc = TB_OK;
    if (s->kind == TB_FISHER_STAT_DIAG) {
        if (!write) {
            snprintf(full, sizeof full, "fisher.%s", s->weight);
            return st_writer_add(w, full, TB_F32, 2, (int64_t[]){s->rows, s->cols});
        }
        const size_t total = (size_t)s->rows * (size_t)s->cols, per = block_bytes / sizeof(float);
        float *F = buf;
        for (size_t at = 0; at < total && !rc; at += per) {
            size_t k = total - at < per ? total - at : per;
            fetch_bytes(src, F, (const float *)s->data + at, k * sizeof(float));
            for (size_t i = 0; i < k; i++) F[i] = (float)(F[i] * s->scale);
            rc = st_writer_write(w, F, k * sizeof(float));
        }
        return rc;
    }
    if (s->kind == TB_FISHER_STAT_GRAM) {
        const int64_t k = s->rows;
        if (!write) {
            tb_fisher_gram_name(s->weight, "input", full, sizeof full);
            rc = st_writer_add(w, full, TB_F64, 2, (int64_t[]){k, k});
            tb_fisher_gram_name(s->weight, "count", full, sizeof full);
            return rc ? rc : st_writer_add(w, full, TB_I64, 1, (int64_t[]){1});
        }
        /* rows [r0, r1) at a time: each row's upper part from its diagonal on,
         * its lower part (r, q < r) mirrored from (q, r): for q < r0 a piece of
         * an earlier row, for q >= r0 this block's own rows */
        const double *G = s->data;
        const int64_t nb = (int64_t)(block_bytes / ((size_t)k * sizeof(double))) > 0
                               ? (int64_t)(block_bytes / ((size_t)k * sizeof(double))) : 1;
        double *B = buf, *col = seg;
        for (int64_t r0 = 0; r0 < k && !rc; r0 += nb) {
            const int64_t r1 = r0 + nb < k ? r0 + nb : k;
            for (int64_t r = r0; r < r1; r++)
                fetch_bytes(src, B + (r - r0) * k + r, G + r * k + r, (size_t)(k - r) * sizeof(double));
            for (int64_t q = 0; q < r0; q++) {
                fetch_bytes(src, col, G + q * k + r0, (size_t)(r1 - r0) * sizeof(double));
                for (int64_t r = r0; r < r1; r++) B[(r - r0) * k + q] = col[r - r0];
            }
            for (int64_t r = r0; r < r1; r++)
                for (int64_t q = r0; q < r; q++) B[(r - r0) * k + q] = B[(q - r0) * k + r];
            rc = st_writer_write(w, B, (size_t)(r1 - r0) * (size_t)k * sizeof(double));
        }
        return rc ? rc : st_writer_write(w, &s->tokens, sizeof(int64_t));
    }
    if (!write) {
        snprintf(full, sizeof full, "grad.%s", s->weight);
        return st_writer_add(w, full, TB_BF16, 3, (int64_t[]){s->samples, s->rows, s->cols});
    }
    return st_writer_write(w, s->data, (size_t)s->samples * (size_t)s->rows * (size_t)s->cols * sizeof(uint16_t));
}

int tb_fisher_write(const char *path, const tb_fisher_stat *stats, int n, const tb_fisher_source *src,
                    const char *const *meta_kv, int n_meta)
{
    size_t block_bytes = src && src->block_bytes ? src->block_bytes : (size_t)32 << 20;
    int64_t widest = 1; /* a GRAM block holds at least one row */
    for (int i = 0; i < n; i++)
        if (stats[i].kind == TB_FISHER_STAT_GRAM && stats[i].rows > widest) widest = stats[i].rows;
    if (block_bytes < (size_t)widest * sizeof(double)) block_bytes = (size_t)widest * sizeof(double);
    st_writer *w = st_writer_new();
    double *buf = tb_malloc(block_bytes), *seg = tb_malloc(block_bytes);
    int rc = w && buf && seg ? TB_OK : TB_EIO;
    for (int i = 0; !rc && i < n_meta; i++) rc = st_writer_meta(w, meta_kv[2 * i], meta_kv[2 * i + 1]);
    for (int i = 0; !rc && i < n; i++) rc = fisher_stat_io(w, &stats[i], src, 0, NULL, NULL, 0);
    tb_outfile out = {0};
    if (!rc && !(rc = tb_out_open(&out, path))) {
        rc = st_writer_begin(w, out.fp, path);
        for (int i = 0; !rc && i < n; i++) rc = fisher_stat_io(w, &stats[i], src, 1, buf, seg, block_bytes);
        if (!rc) rc = st_writer_finish(w);
        if (!rc) rc = tb_out_commit(&out);
        else tb_out_abort(&out);
    }
    st_writer_free(w);
    free(buf);
    free(seg);
    return rc;
}
