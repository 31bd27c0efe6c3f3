/* tb_mask.c - pruning masks: bit-packed keep masks and channel permutations,
 * read from and streamed into safetensors (layout in tb_mask.h). */
#include "tb_mask.h"
#include "tb_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tb_mask_alloc(tb_mask *m, int64_t rows, int64_t cols)
{
    memset(m, 0, sizeof *m);
    if (rows < 0 || cols < 0) return tb_fail(TB_EUSAGE, "mask shape [%lld, %lld]", (long long)rows, (long long)cols);
    m->rows = rows;
    m->cols = cols;
    m->row_bytes = (cols + 7) / 8;
    /* +1 so a 0-element mask still yields a pointer callers can free */
    m->bits = tb_calloc((size_t)(rows * m->row_bytes) + 1, 1);
    return m->bits ? TB_OK : TB_EIO;
}

void tb_mask_free(tb_mask *m)
{
    if (!m) return;
    free(m->bits);
    free(m->perm);
    m->bits = NULL;
    m->perm = NULL;
}

int64_t tb_mask_count_kept(const tb_mask *m)
{
    int64_t n = 0;
    size_t nb = (size_t)(m->rows * m->row_bytes);
    for (size_t i = 0; i < nb; i++) n += __builtin_popcount(m->bits[i]);
    return n;
}

static char *perm_name(const char *weight_name)
{
    size_t n = strlen(weight_name) + sizeof ".perm";
    char *s = tb_malloc(n);
    if (s) snprintf(s, n, "%s.perm", weight_name);
    return s;
}

int tb_mask_read_perm(const st_file *f, const char *weight_name, int64_t k, int32_t **perm)
{
    *perm = NULL;
    char *name = perm_name(weight_name);
    if (!name) return TB_EIO;
    const st_tensor *t = st_find(f, name);
    int rc = TB_OK;
    if (!t) goto out;
    if (t->dtype != TB_I32 || t->ndim != 1 || t->shape[0] != k) {
        rc = tb_fail(TB_EDATA, "tensor '%s': expected I32 [%lld], got %s %s[%lld]", name, (long long)k,
                     tb_dtype_name(t->dtype), t->ndim == 1 ? "" : "(not 1-D) ", (long long)(t->ndim ? t->shape[0] : 0));
        goto out;
    }
    int32_t *p = tb_malloc((size_t)k * sizeof *p + 1);
    uint8_t *seen = tb_calloc((size_t)k + 1, 1);
    if (!p || !seen) { free(p); free(seen); rc = TB_EIO; goto out; }
    /* the data may be unaligned inside the mapping: copy, then check */
    memcpy(p, t->data, (size_t)k * sizeof *p);
    for (int64_t j = 0; j < k && !rc; j++) {
        if (p[j] < 0 || p[j] >= k || seen[p[j]])
            rc = tb_fail(TB_EDATA, "tensor '%s': index %lld: %d is %s", name, (long long)j, p[j],
                         p[j] < 0 || p[j] >= k ? "out of range" : "repeated (not a permutation)");
        else seen[p[j]] = 1;
    }
    free(seen);
    if (rc) free(p);
    else *perm = p;
out:
    free(name);
    return rc;
}

int tb_mask_read(const st_file *f, const char *weight_name, int64_t rows, int64_t cols, tb_mask *out)
{
    memset(out, 0, sizeof *out);
    const st_tensor *t = st_find(f, weight_name);
    if (!t) return tb_fail(TB_EDATA, "no mask for '%s'", weight_name);
    int64_t rb = (cols + 7) / 8;
    if (t->dtype != TB_U8 || t->ndim != 2 || t->shape[0] != rows || t->shape[1] != rb)
        return tb_fail(TB_EDATA, "mask for '%s' is %s [%lld, %lld], weight [%lld, %lld] needs U8 [%lld, %lld]", weight_name,
                       tb_dtype_name(t->dtype), (long long)(t->ndim > 0 ? t->shape[0] : 0),
                       (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)rows, (long long)cols, (long long)rows,
                       (long long)rb);
    int rc = tb_mask_alloc(out, rows, cols);
    if (rc) return rc;
    memcpy(out->bits, t->data, (size_t)(rows * rb));
    /* bits past cols in each row's last byte must be 0: a set one means the
     * writer and reader disagree on the shape, which we refuse to guess at */
    if (cols % 8) {
        uint8_t pad = (uint8_t)(0xffu << (cols % 8));
        for (int64_t r = 0; r < rows; r++)
            if (out->bits[r * rb + rb - 1] & pad) {
                tb_mask_free(out);
                return tb_fail(TB_EDATA, "mask for '%s': row %lld has padding bits set", weight_name, (long long)r);
            }
    }
    const char *kd = st_meta(f, "k_dim");
    int64_t k = kd && strcmp(kd, "0") == 0 ? rows : cols;
    rc = tb_mask_read_perm(f, weight_name, k, &out->perm);
    if (rc) tb_mask_free(out);
    return rc;
}

int tb_mask_declare(st_writer *w, const char *weight_name, int64_t rows, int64_t cols, int64_t perm_len)
{
    int64_t shape[2] = {rows, (cols + 7) / 8};
    int rc = st_writer_add(w, weight_name, TB_U8, 2, shape);
    if (rc || perm_len <= 0) return rc;
    char *name = perm_name(weight_name);
    if (!name) return TB_EIO;
    rc = st_writer_add(w, name, TB_I32, 1, &perm_len);
    free(name);
    return rc;
}

int tb_mask_write(st_writer *w, const tb_mask *m, int64_t perm_len)
{
    int rc = st_writer_write(w, m->bits, (size_t)(m->rows * m->row_bytes));
    if (!rc && perm_len > 0) {
        if (!m->perm) return tb_fail(TB_EUSAGE, "tb_mask_write: permutation declared but absent");
        rc = st_writer_write(w, m->perm, (size_t)perm_len * sizeof(int32_t));
    }
    return rc;
}
