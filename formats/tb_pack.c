/* tb_pack.c - N:M pack/unpack and the .tb shard reader (layout in tb_pack.h). */
#include "tb_pack.h"
#include "tb_error.h"
#include "tb_json.h"
#include "tb_threads.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tb_unpermute_row(const float *in, float *out, int64_t n, const int32_t *perm)
{
    for (int64_t j = 0; j < n; j++) out[perm[j]] = in[j];
}

/* ---------------------------------------------------------------- codec */

int tb_nm_index_bits(int m)
{
    int b = 0;
    while ((1 << b) < m) b++;
    return b;
}

int64_t tb_nm_values_per_row(int64_t cols, int n, int m) { return cols / m * n; }

int64_t tb_nm_index_row_bytes(int64_t cols, int n, int m)
{
    return (tb_nm_values_per_row(cols, n, m) * tb_nm_index_bits(m) + 7) / 8;
}

/* b <= 4 bits at bit position pos of a row: spans at most two bytes */
static inline void put_bits(uint8_t *row, int64_t pos, unsigned v, int b)
{
    int64_t byte = pos >> 3;
    int shift = (int)(pos & 7);
    row[byte] |= (uint8_t)(v << shift);
    if (shift + b > 8) row[byte + 1] |= (uint8_t)(v >> (8 - shift));
}

static inline unsigned get_bits(const uint8_t *row, int64_t pos, int b)
{
    int64_t byte = pos >> 3;
    int shift = (int)(pos & 7);
    unsigned v = (unsigned)row[byte] >> shift;
    if (shift + b > 8) v |= (unsigned)row[byte + 1] << (8 - shift);
    return v & ((1u << b) - 1);
}

static int check_nm(int64_t cols, int n, int m)
{
    if (m < 2 || m > TB_PACK_MAX_M || n < 1 || n >= m)
        return tb_fail(TB_EUSAGE, "pattern %d:%d: need 1 <= N < M <= %d", n, m, TB_PACK_MAX_M);
    if (cols % m) return tb_fail(TB_EDATA, "%lld columns not divisible by M=%d", (long long)cols, m);
    return TB_OK;
}

int tb_pack_parse_pattern(const char *s, int *n, int *m)
{
    char tail;
    *n = *m = 0;
    if (strcmp(s, "unstructured") == 0) return TB_OK;
    if (sscanf(s, "%d:%d%c", n, m, &tail) != 2 || *m < 2 || *m > TB_PACK_MAX_M || *n < 1 || *n >= *m)
        return tb_fail(TB_EDATA, "pattern '%s': expected N:M with 1 <= N < M <= %d, or unstructured", s, TB_PACK_MAX_M);
    return TB_OK;
}

int tb_nm_check_mask(const tb_mask *mask, int n, int m)
{
    int rc = check_nm(mask->cols, n, m);
    if (rc) return rc;
    for (int64_t r = 0; r < mask->rows; r++)
        for (int64_t c0 = 0; c0 < mask->cols; c0 += m) {
            int kept = 0;
            for (int j = 0; j < m; j++) kept += tb_mask_get(mask, r, c0 + j);
            if (kept > n)
                return tb_fail(TB_EDATA, "row %lld, columns %lld..%lld keep %d, pattern %d:%d allows %d", (long long)r,
                               (long long)c0, (long long)(c0 + m - 1), kept, n, m, n);
        }
    return TB_OK;
}

/* element i of w (w_dt) stored as element k of values (v_dt) */
static void put_value(tb_dtype w_dt, const void *w, int64_t i, tb_dtype v_dt, void *values, int64_t k)
{
    size_t es = tb_dtype_size(v_dt);
    if (w_dt == v_dt) {
        memcpy((char *)values + (size_t)k * es, (const char *)w + (size_t)i * es, es);
        return;
    }
    float f = ((const float *)w)[i];
    if (v_dt == TB_BF16) ((uint16_t *)values)[k] = tb_f32_to_bf16(f);
    else ((uint16_t *)values)[k] = tb_f32_to_f16(f); /* F16: the only other case let through */
}

typedef struct {
    tb_dtype w_dt;
    const void *w;
    const tb_mask *mask;
    int n, m;
    tb_dtype v_dt;
    void *values;
    uint8_t *indices;
} nm_pack_ctx;
static void nm_pack_rows(void *vctx, int64_t b0, int64_t b1, int tid);

int tb_nm_pack(tb_dtype w_dt, const void *w, const tb_mask *mask, int n, int m, tb_dtype v_dt, void *values,
               uint8_t *indices)
{
    if (w_dt != v_dt && !(w_dt == TB_F32 && (v_dt == TB_BF16 || v_dt == TB_F16)))
        return tb_fail(TB_EUSAGE, "tb_nm_pack: cannot store %s weights as %s", tb_dtype_name(w_dt), tb_dtype_name(v_dt));
    int rc = tb_nm_check_mask(mask, n, m);
    if (rc) return rc;
    int64_t rows = mask->rows, cols = mask->cols;
    memset(indices, 0, (size_t)(rows * tb_nm_index_row_bytes(cols, n, m)));
    /* rows are independent (each its values and index bytes): in parallel
     * (a 7B layer's 218 M weights took ~2.5 s on one core) */
    nm_pack_ctx c = {w_dt, w, mask, n, m, v_dt, values, indices};
    tb_parallel_for(tb_default_threads(), (rows + 63) / 64, nm_pack_rows, &c);
    return TB_OK;
}

static void nm_pack_rows(void *vctx, int64_t b0, int64_t b1, int tid)
{
    (void)tid;
    const nm_pack_ctx *c = vctx;
    const tb_dtype w_dt = c->w_dt, v_dt = c->v_dt;
    const void *w = c->w;
    const tb_mask *mask = c->mask;
    void *values = c->values;
    uint8_t *indices = c->indices;
    const int n = c->n, m = c->m;
    int64_t cols = mask->cols, vpr = tb_nm_values_per_row(cols, n, m);
    int64_t irb = tb_nm_index_row_bytes(cols, n, m);
    int b = tb_nm_index_bits(m);
    size_t es = tb_dtype_size(v_dt);
    int64_t r1 = b1 * 64 < mask->rows ? b1 * 64 : mask->rows;
    for (int64_t r = b0 * 64; r < r1; r++) {
        uint8_t *irow = indices + r * irb;
        int64_t k = r * vpr; /* element number in values */
        for (int64_t c0 = 0; c0 < cols; c0 += m) {
            int kept = 0;
            for (int j = 0; j < m; j++) kept += tb_mask_get(mask, r, c0 + j);
            int pad = n - kept; /* slots to fill with the lowest pruned positions */
            for (int j = 0; j < m; j++) {
                int keep = tb_mask_get(mask, r, c0 + j);
                if (!keep && pad <= 0) continue;
                if (keep) put_value(w_dt, w, r * cols + c0 + j, v_dt, values, k);
                else { memset((char *)values + (size_t)k * es, 0, es); pad--; } /* +0 in every float format */
                put_bits(irow, (k - r * vpr) * b, (unsigned)j, b);
                k++;
            }
        }
    }
}

void tb_nm_unpack_rows(tb_dtype v_dt, const void *values, const uint8_t *indices, int64_t cols, int n, int m,
                       int64_t r0, int64_t nr, float *out)
{
    int64_t vpr = tb_nm_values_per_row(cols, n, m), irb = tb_nm_index_row_bytes(cols, n, m);
    int b = tb_nm_index_bits(m);
    /* values are converted a chunk at a time into a stack buffer: no
     * allocation on the decode path, one dtype dispatch per chunk */
    enum { CHUNK = 512 };
    float v[CHUNK];
    for (int64_t i = 0; i < nr; i++) {
        int64_t r = r0 + i;
        float *orow = out + i * cols;
        const uint8_t *irow = indices + r * irb;
        memset(orow, 0, (size_t)cols * sizeof *orow);
        for (int64_t k0 = 0; k0 < vpr; k0 += CHUNK) {
            int64_t nk = vpr - k0 < CHUNK ? vpr - k0 : CHUNK;
            tb_to_f32(v_dt, values, (size_t)(r * vpr + k0), (size_t)nk, v);
            for (int64_t k = k0; k < k0 + nk; k++) orow[k / n * m + get_bits(irow, k * b, b)] = v[k - k0];
        }
    }
}

typedef struct {
    const uint8_t *indices;
    int64_t cols;
    int n, m;
    const int32_t *perm;
    uint8_t *keep;
} nm_keep_ctx;

static void nm_keep_rows(void *vctx, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    const nm_keep_ctx *c = vctx;
    const int64_t cols = c->cols, vpr = tb_nm_values_per_row(cols, c->n, c->m);
    const int64_t irb = tb_nm_index_row_bytes(cols, c->n, c->m);
    const int b = tb_nm_index_bits(c->m);
    for (int64_t r = r0; r < r1; r++) {
        uint8_t *krow = c->keep + r * cols;
        const uint8_t *irow = c->indices + r * irb;
        memset(krow, 0, (size_t)cols);
        for (int64_t k = 0; k < vpr; k++) {
            int64_t j = k / c->n * c->m + get_bits(irow, k * b, b);
            krow[c->perm ? c->perm[j] : j] = 1;
        }
    }
}

void tb_nm_keep(const uint8_t *indices, int64_t rows, int64_t cols, int n, int m, const int32_t *perm, uint8_t *keep)
{
    nm_keep_ctx c = {indices, cols, n, m, perm, keep};
    tb_parallel_for(tb_default_threads(), rows, nm_keep_rows, &c);
}

int tb_nm_check_indices(const uint8_t *indices, int64_t rows, int64_t cols, int n, int m)
{
    int rc = check_nm(cols, n, m);
    if (rc) return rc;
    int64_t vpr = tb_nm_values_per_row(cols, n, m), irb = tb_nm_index_row_bytes(cols, n, m);
    int b = tb_nm_index_bits(m);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *irow = indices + r * irb;
        for (int64_t g = 0; g < vpr / n; g++) {
            int prev = -1;
            for (int j = 0; j < n; j++) {
                int p = (int)get_bits(irow, (g * n + j) * b, b);
                if (p >= m || p <= prev)
                    return tb_fail(TB_EDATA, "row %lld, group %lld: index %d %s", (long long)r, (long long)g, p,
                                   p >= m ? "out of range" : "not ascending");
                prev = p;
            }
        }
        int used = (int)((vpr * b) % 8);
        if (used && (irow[irb - 1] >> used))
            return tb_fail(TB_EDATA, "row %lld: padding bits set", (long long)r);
    }
    return TB_OK;
}

/* --------------------------------------------------------------- writer */

static char *suffixed(const char *name, const char *suffix)
{
    size_t n = strlen(name) + strlen(suffix) + 1;
    char *s = tb_malloc(n);
    if (s) snprintf(s, n, "%s%s", name, suffix);
    return s;
}


typedef struct {
    int pruned;          /* 0: copied as is */
    tb_dtype dtype;
    int64_t rows, cols;  /* pruned */
    int n, m, permuted;  /* pruned */
    uint64_t nbytes;     /* copied */
} decl;

struct tb_pack_writer {
    st_writer *st;
    cJSON *tensors; /* the "tensorbit.tensors" object */
    decl *d;
    int nd, cap, cur;
    uint64_t copied; /* bytes of the current copied tensor written so far */
};

tb_pack_writer *tb_pack_writer_new(void)
{
    tb_pack_writer *w = tb_calloc(1, sizeof *w);
    if (!w) return NULL;
    w->st = st_writer_new();
    w->tensors = cJSON_CreateObject();
    if (!w->st || !w->tensors) {
        tb_pack_writer_free(w);
        tb_fail(TB_EIO, "out of memory");
        return NULL;
    }
    return w;
}

void tb_pack_writer_free(tb_pack_writer *w)
{
    if (!w) return;
    st_writer_free(w->st);
    cJSON_Delete(w->tensors);
    free(w->d);
    free(w);
}

int tb_pack_writer_meta(tb_pack_writer *w, const char *key, const char *value)
{
    return st_writer_meta(w->st, key, value);
}

static decl *add_decl(tb_pack_writer *w)
{
    if (w->nd == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        decl *d = tb_realloc(w->d, (size_t)cap * sizeof *d);
        if (!d) return NULL;
        w->d = d;
        w->cap = cap;
    }
    decl *d = &w->d[w->nd++];
    memset(d, 0, sizeof *d);
    return d;
}

static int declare_part(tb_pack_writer *w, const char *name, const char *suffix, tb_dtype dt, int ndim, int64_t d0,
                        int64_t d1)
{
    char *full = suffixed(name, suffix);
    if (!full) return TB_EIO;
    int64_t shape[2] = {d0, d1};
    int rc = st_writer_add(w->st, full, dt, ndim, shape);
    free(full);
    return rc;
}

int tb_pack_declare(tb_pack_writer *w, const char *name, tb_dtype dt, int64_t rows, int64_t cols, int n, int m,
                    int permuted, const char *compensation, const char *mask_source)
{
    if (dt != TB_F32 && dt != TB_BF16 && dt != TB_F16)
        return tb_fail(TB_EUSAGE, "tensor '%s': cannot pack dtype %s (F32, F16, BF16)", name, tb_dtype_name(dt));
    int rc = m ? check_nm(cols, n, m) : TB_OK;
    if (rc) return tb_err_context("tensor '%s'", name);
    if (m) {
        rc = declare_part(w, name, ".values", dt, 2, rows, tb_nm_values_per_row(cols, n, m));
        if (!rc) rc = declare_part(w, name, ".indices", TB_U8, 2, rows, tb_nm_index_row_bytes(cols, n, m));
    } else {
        rc = declare_part(w, name, "", dt, 2, rows, cols);
        if (!rc) rc = declare_part(w, name, ".mask", TB_U8, 2, rows, (cols + 7) / 8);
    }
    if (!rc && permuted) rc = declare_part(w, name, ".perm", TB_I32, 1, cols, 0);
    if (rc) return rc;
    decl *d = add_decl(w);
    if (!d) return TB_EIO;
    *d = (decl){1, dt, rows, cols, n, m, permuted, 0};
    char pattern[32];
    if (m) snprintf(pattern, sizeof pattern, "%d:%d", n, m);
    else snprintf(pattern, sizeof pattern, "unstructured");
    /* items are attached as soon as created, so a failure leaks nothing */
    cJSON *e = cJSON_AddObjectToObject(w->tensors, name), *shape = NULL;
    int ok = e && cJSON_AddStringToObject(e, "format", m ? "nm" : "masked") &&
             cJSON_AddStringToObject(e, "dtype", tb_dtype_name(dt)) && (shape = cJSON_AddArrayToObject(e, "shape")) &&
             cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)rows)) &&
             cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)cols)) &&
             cJSON_AddStringToObject(e, "pattern", pattern) && cJSON_AddNumberToObject(e, "k_dim", 1) &&
             cJSON_AddBoolToObject(e, "permuted", permuted) && cJSON_AddStringToObject(e, "compensation", compensation) &&
             cJSON_AddStringToObject(e, "mask", mask_source);
    return ok ? TB_OK : tb_fail(TB_EIO, "out of memory");
}

int tb_pack_declare_copy(tb_pack_writer *w, const char *name, tb_dtype dt, int ndim, const int64_t *shape)
{
    int rc = st_writer_add(w->st, name, dt, ndim, shape);
    if (rc) return rc;
    decl *d = add_decl(w);
    if (!d) return TB_EIO;
    d->dtype = dt;
    d->nbytes = tb_dtype_size(dt);
    for (int i = 0; i < ndim; i++) d->nbytes *= (uint64_t)shape[i];
    return TB_OK;
}

int tb_pack_writer_begin(tb_pack_writer *w, FILE *fp, const char *label)
{
    char *js = cJSON_PrintUnformatted(w->tensors);
    if (!js) return tb_fail(TB_EIO, "out of memory");
    int rc = st_writer_meta(w->st, "tensorbit.kind", "tb");
    if (!rc) rc = st_writer_meta(w->st, "format_version", "1");
    if (!rc) rc = st_writer_meta(w->st, "tensorbit.tensors", js);
    free(js);
    if (!rc) rc = st_writer_begin(w->st, fp, label);
    w->cur = 0;
    w->copied = 0;
    return rc;
}

static int next_decl(tb_pack_writer *w, int pruned, decl **out)
{
    /* a copied tensor of 0 bytes is complete before any write */
    while (w->cur < w->nd && !w->d[w->cur].pruned && w->d[w->cur].nbytes == 0) w->cur++;
    if (w->cur >= w->nd || w->d[w->cur].pruned != pruned)
        return tb_fail(TB_EUSAGE, "tb_pack_write%s out of declaration order", pruned ? "" : "_copy");
    *out = &w->d[w->cur];
    return TB_OK;
}

int tb_pack_write(tb_pack_writer *w, const float *wf, const tb_mask *mask)
{
    decl *d;
    int rc = next_decl(w, 1, &d);
    if (rc) return rc;
    if (mask->rows != d->rows || mask->cols != d->cols)
        return tb_fail(TB_EUSAGE, "tb_pack_write: mask [%lld, %lld] for a [%lld, %lld] weight", (long long)mask->rows,
                       (long long)mask->cols, (long long)d->rows, (long long)d->cols);
    if (d->permuted && !mask->perm) return tb_fail(TB_EUSAGE, "tb_pack_write: permutation declared but absent");
    size_t es = tb_dtype_size(d->dtype);
    if (d->m) {
        size_t nv = (size_t)(d->rows * tb_nm_values_per_row(d->cols, d->n, d->m));
        size_t ni = (size_t)(d->rows * tb_nm_index_row_bytes(d->cols, d->n, d->m));
        void *values = tb_malloc(nv * es + 1);
        uint8_t *idx = tb_malloc(ni + 1);
        rc = values && idx ? tb_nm_pack(TB_F32, wf, mask, d->n, d->m, d->dtype, values, idx) : TB_EIO;
        if (!rc) rc = st_writer_write(w->st, values, nv * es);
        if (!rc) rc = st_writer_write(w->st, idx, ni);
        free(values);
        free(idx);
    } else {
        /* one row at a time: the dense copy never exists twice in memory */
        uint8_t *row = tb_malloc((size_t)d->cols * es + 1);
        if (!row) return TB_EIO;
        for (int64_t r = 0; r < d->rows && !rc; r++) {
            for (int64_t c = 0; c < d->cols; c++) {
                float f = tb_mask_get(mask, r, c) ? wf[r * d->cols + c] : 0.0f;
                if (d->dtype == TB_F32) memcpy(row + (size_t)c * 4, &f, 4);
                else ((uint16_t *)(void *)row)[c] = d->dtype == TB_BF16 ? tb_f32_to_bf16(f) : tb_f32_to_f16(f);
            }
            rc = st_writer_write(w->st, row, (size_t)d->cols * es);
        }
        free(row);
        if (!rc) rc = st_writer_write(w->st, mask->bits, (size_t)(mask->rows * mask->row_bytes));
    }
    if (!rc && d->permuted) rc = st_writer_write(w->st, mask->perm, (size_t)d->cols * sizeof(int32_t));
    if (!rc) w->cur++;
    return rc;
}

int tb_pack_write_copy(tb_pack_writer *w, const void *data, size_t nbytes)
{
    decl *d;
    int rc = next_decl(w, 0, &d);
    if (rc) return rc;
    if (w->copied + nbytes > d->nbytes) return tb_fail(TB_EUSAGE, "tb_pack_write_copy: more bytes than declared");
    rc = st_writer_write(w->st, data, nbytes);
    if (rc) return rc;
    w->copied += nbytes;
    if (w->copied == d->nbytes) {
        w->cur++;
        w->copied = 0;
    }
    return TB_OK;
}

int tb_pack_writer_finish(tb_pack_writer *w) { return st_writer_finish(w->st); }

/* --------------------------------------------------------------- reader */

/* the part "<W><suffix>": must exist with dtype dt and shape [d0, d1] (d1 < 0: 1-D) */
static int find_part(const tb_pack_file *p, const tb_packed *t, const char *suffix, tb_dtype dt, int64_t d0,
                     int64_t d1, const st_tensor **out)
{
    char *name = suffixed(t->name, suffix);
    if (!name) return TB_EIO;
    const st_tensor *s = st_find(&p->f, name);
    int rc = TB_OK;
    int ndim = d1 < 0 ? 1 : 2;
    if (!s) rc = tb_fail(TB_EDATA, "tensor '%s': part '%s' missing", t->name, name);
    else if (s->dtype != dt || s->ndim != ndim || s->shape[0] != d0 || (ndim == 2 && s->shape[1] != d1))
        rc = tb_fail(TB_EDATA, "tensor '%s': part '%s' must be %s [%lld%s%lld]", t->name, name, tb_dtype_name(dt),
                     (long long)d0, ndim == 2 ? ", " : "", ndim == 2 ? (long long)d1 : 0LL);
    free(name);
    *out = s;
    return rc;
}

static int parse_entry(tb_pack_file *p, tb_packed *t, const cJSON *j)
{
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(j, "format");
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(j, "pattern");
    const cJSON *kd = cJSON_GetObjectItemCaseSensitive(j, "k_dim");
    const cJSON *perm = cJSON_GetObjectItemCaseSensitive(j, "permuted");
    const cJSON *comp = cJSON_GetObjectItemCaseSensitive(j, "compensation");
    if (!cJSON_IsString(fmt) || !cJSON_IsString(dt) || !cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 2 ||
        !cJSON_IsString(pat) || !cJSON_IsNumber(kd) || !cJSON_IsBool(perm) || !cJSON_IsString(comp))
        return tb_fail(TB_EDATA, "tensor '%s': metadata entry lacks format/dtype/shape/pattern/k_dim/permuted/compensation",
                       t->name);
    if (tb_dtype_parse(dt->valuestring, &t->dtype) || !tb_dtype_is_float(t->dtype))
        return tb_fail(TB_EDATA, "tensor '%s': dtype '%s' is not a float type", t->name, dt->valuestring);
    /* range-checked before any cast; the parts' shapes (bounded by the file's
     * size, see st_open) must then match, which bounds rows and cols */
    uint64_t r, c;
    if (tb_json_u64(cJSON_GetArrayItem(shape, 0), UINT32_MAX, &r) || tb_json_u64(cJSON_GetArrayItem(shape, 1), UINT32_MAX, &c))
        return tb_fail(TB_EDATA, "tensor '%s': shape is not two integers in [0, 2^32)", t->name);
    t->rows = (int64_t)r;
    t->cols = (int64_t)c;
    uint64_t k_dim;
    if (tb_json_u64(kd, 1, &k_dim) || k_dim != 1) return tb_fail(TB_EDATA, "tensor '%s': k_dim must be 1", t->name);
    if (!(t->compensation = tb_strdup(comp->valuestring))) return TB_EIO;
    int rc;
    if (strcmp(fmt->valuestring, "nm") == 0) {
        if (tb_pack_parse_pattern(pat->valuestring, &t->n, &t->m) || !t->m || check_nm(t->cols, t->n, t->m))
            return tb_fail(TB_EDATA, "tensor '%s': pattern '%s' does not fit %lld columns", t->name, pat->valuestring,
                           (long long)t->cols);
        t->kind = TB_PACKED_NM;
        int64_t vpr = tb_nm_values_per_row(t->cols, t->n, t->m), irb = tb_nm_index_row_bytes(t->cols, t->n, t->m);
        if ((rc = find_part(p, t, ".values", t->dtype, t->rows, vpr, &t->values))) return rc;
        if ((rc = find_part(p, t, ".indices", TB_U8, t->rows, irb, &t->indices))) return rc;
        if (tb_nm_check_indices(t->indices->data, t->rows, t->cols, t->n, t->m))
            return tb_err_context("tensor '%s.indices'", t->name);
    } else if (strcmp(fmt->valuestring, "masked") == 0) {
        t->kind = TB_PACKED_MASKED;
        if ((rc = find_part(p, t, "", t->dtype, t->rows, t->cols, &t->dense))) return rc;
        if ((rc = find_part(p, t, ".mask", TB_U8, t->rows, (t->cols + 7) / 8, &t->mask))) return rc;
    } else {
        return tb_fail(TB_EDATA, "tensor '%s': unknown format '%s'", t->name, fmt->valuestring);
    }
    if (cJSON_IsTrue(perm)) {
        int32_t *pv;
        if ((rc = find_part(p, t, ".perm", TB_I32, t->cols, -1, &t->perm))) return rc;
        if ((rc = tb_mask_read_perm(&p->f, t->name, t->cols, &pv))) return rc; /* checks it is a permutation */
        free(pv);
    }
    return TB_OK;
}

static int cmp_packed(const void *a, const void *b)
{
    return strcmp(((const tb_packed *)a)->name, ((const tb_packed *)b)->name);
}

int tb_pack_open(tb_pack_file *p, const char *path)
{
    memset(p, 0, sizeof *p);
    int rc = st_open(&p->f, path);
    if (rc) return rc;
    const char *kind = st_meta(&p->f, "tensorbit.kind"), *ver = st_meta(&p->f, "format_version");
    const char *js = st_meta(&p->f, "tensorbit.tensors");
    cJSON *root = NULL;
    if (!kind || strcmp(kind, "tb") != 0) rc = tb_fail(TB_EDATA, "not a .tb shard (metadata tensorbit.kind is not \"tb\")");
    else if (!ver || strcmp(ver, "1") != 0) rc = tb_fail(TB_EDATA, "unsupported format_version '%s'", ver ? ver : "");
    else if (!js || !(root = cJSON_Parse(js)) || !cJSON_IsObject(root))
        rc = tb_fail(TB_EDATA, "metadata tensorbit.tensors is missing or not a JSON object");
    int n = root ? cJSON_GetArraySize(root) : 0;
    if (!rc && n > 0 && !(p->packed = tb_calloc((size_t)n, sizeof *p->packed))) rc = TB_EIO;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (rc) break;
        tb_packed *t = &p->packed[p->n_packed++];
        if (!(t->name = tb_strdup(e->string))) rc = TB_EIO;
        else if (!cJSON_IsObject(e)) rc = tb_fail(TB_EDATA, "tensor '%s': metadata entry is not an object", t->name);
        else rc = parse_entry(p, t, e);
    }
    cJSON_Delete(root);
    /* a shard may hold no pruned weight at all (tb-pack --include-dense of
     * copied layers): then packed is NULL, which qsort must not be given */
    if (!rc && p->n_packed > 1) qsort(p->packed, (size_t)p->n_packed, sizeof *p->packed, cmp_packed);
    if (rc) {
        tb_err_context("%s", path);
        tb_pack_close(p);
    }
    return rc;
}

void tb_pack_close(tb_pack_file *p)
{
    for (int i = 0; i < p->n_packed; i++) {
        free(p->packed[i].name);
        free(p->packed[i].compensation);
    }
    free(p->packed);
    st_close(&p->f);
    memset(p, 0, sizeof *p);
}

const tb_packed *tb_pack_find(const tb_pack_file *p, const char *name)
{
    tb_packed key = {.name = (char *)name};
    return p->n_packed ? bsearch(&key, p->packed, (size_t)p->n_packed, sizeof key, cmp_packed) : NULL;
}

typedef struct {
    const tb_packed *t;
    const int32_t *perm; /* NULL: stored order */
    float *out;
    float *rows;         /* with perm: a row buffer per thread, [threads, cols] */
} tensor_f32_ctx;

static void tensor_f32_rows(void *vctx, int64_t r0, int64_t r1, int tid)
{
    tensor_f32_ctx *c = vctx;
    const tb_packed *t = c->t;
    if (t->kind == TB_PACKED_NM)
        tb_nm_unpack_rows(t->dtype, t->values->data, t->indices->data, t->cols, t->n, t->m, r0, r1 - r0,
                          c->out + r0 * t->cols);
    if (!c->perm) return;
    float *row = c->rows + (size_t)tid * (size_t)t->cols;
    for (int64_t r = r0; r < r1; r++) {
        float *o = c->out + r * t->cols;
        memcpy(row, o, (size_t)t->cols * sizeof *row);
        tb_unpermute_row(row, o, t->cols, c->perm);
    }
}

float *tb_pack_tensor_f32(const tb_pack_file *p, const char *name, int unpermute, int64_t *numel)
{
    const tb_packed *t = tb_pack_find(p, name);
    if (!t) {
        const st_tensor *s = st_find(&p->f, name);
        if (!s) { tb_fail(TB_EDATA, "%s: no tensor '%s'", p->f.path, name); return NULL; }
        if (numel) *numel = s->numel;
        return st_tensor_f32(s);
    }
    float *out = t->kind == TB_PACKED_MASKED ? st_tensor_f32(t->dense) : tb_malloc((size_t)(t->rows * t->cols + 1) * sizeof *out);
    if (!out) return NULL;
    /* rows in parallel: a 7B layer's 218 M weights are seconds on one core */
    const int threads = tb_default_threads();
    tensor_f32_ctx c = {t, NULL, out, NULL};
    if (unpermute && t->perm) {
        int32_t *perm = tb_malloc((size_t)t->cols * sizeof *perm + 1);
        c.rows = perm ? tb_malloc((size_t)threads * (size_t)t->cols * sizeof *c.rows + 1) : NULL;
        if (!c.rows) { free(perm); free(out); return NULL; }
        memcpy(perm, t->perm->data, (size_t)t->cols * sizeof *perm); /* may be unaligned in the mapping */
        c.perm = perm;
    }
    tb_parallel_for(threads, t->rows, tensor_f32_rows, &c);
    free((void *)c.perm);
    free(c.rows);
    if (numel) *numel = t->rows * t->cols;
    return out;
}

int tb_pack_is_part(const tb_pack_file *p, const st_tensor *t)
{
    for (int i = 0; i < p->n_packed; i++) {
        const tb_packed *w = &p->packed[i];
        if (t == w->values || t == w->indices || t == w->dense || t == w->mask || t == w->perm) return 1;
    }
    return 0;
}

typedef struct {
    const float *wf;
    const uint8_t *keep;
    const int32_t *perm;
    int64_t cols;
    float *stored;
    tb_mask *mask;
} model_order_ctx;

static void model_order_rows(void *vctx, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    const model_order_ctx *c = vctx;
    const int64_t C = c->cols;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t j = 0; j < C; j++) {
            int64_t src = r * C + (c->perm ? c->perm[j] : j);
            c->stored[r * C + j] = c->keep[src] ? c->wf[src] : 0.0f;
            tb_mask_set(c->mask, r, j, c->keep[src] != 0);
        }
}

int tb_pack_write_model_order(tb_pack_writer *w, const tb_packed *q, const float *wf, const uint8_t *keep)
{
    const int64_t R = q->rows, C = q->cols;
    tb_mask mask;
    float *stored = tb_malloc((size_t)(R * C) * sizeof(float));
    int rc = stored ? tb_mask_alloc(&mask, R, C) : TB_EIO;
    if (rc) {
        free(stored);
        return rc;
    }
    const int32_t *perm = NULL;
    if (q->perm) { /* stored column j is model column perm[j] */
        if (!(mask.perm = tb_malloc((size_t)C * sizeof(int32_t)))) rc = TB_EIO;
        else memcpy(mask.perm, q->perm->data, (size_t)C * sizeof(int32_t));
        perm = mask.perm;
    }
    if (!rc) { /* rows in parallel: each its own mask bytes */
        model_order_ctx c = {wf, keep, perm, C, stored, &mask};
        tb_parallel_for(tb_default_threads(), R, model_order_rows, &c);
        rc = tb_pack_write(w, stored, &mask);
    }
    tb_mask_free(&mask);
    free(stored);
    return rc;
}
