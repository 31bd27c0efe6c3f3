#include "tb_safetensors.h"
#include "tb_error.h"
#include "tb_json.h"
#include "tb_kind.h"
#include "tb_sha256.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- reader */

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF); returns the offset
 * of the first bad byte or -1. */
static int64_t utf8_invalid_at(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return (int64_t)i;
        if (i + len > n) return (int64_t)i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return (int64_t)i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return (int64_t)i;
        i += len;
    }
    return -1;
}

/* A JSON number that must be a non-negative integer up to 2^53 (doubles are
 * exact up to there, and no real file is larger). */
static int json_u64(const cJSON *j, uint64_t *out) { return tb_json_u64(j, UINT64_MAX, out); }

static const st_file *sort_ctx;
static int cmp_name(const void *a, const void *b)
{
    return strcmp(sort_ctx->tensors[*(const int *)a].name, sort_ctx->tensors[*(const int *)b].name);
}
static int cmp_offset(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* dim_limit: the file's size. A tensor with elements is bounded by its bytes;
 * one with a zero dimension has no bytes, so its other dimensions must be
 * bounded another way, or [2^53, 0] makes every loop over rows a hang: their
 * product may not exceed the size of the file that declares them. */
static int parse_tensor(st_tensor *t, const cJSON *j, uint64_t dim_limit)
{
    if (!cJSON_IsObject(j)) return tb_fail(TB_EDATA, "tensor '%s': entry is not an object", t->name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    if (!cJSON_IsString(jd)) return tb_fail(TB_EDATA, "tensor '%s': missing dtype", t->name);
    if (tb_dtype_parse(jd->valuestring, &t->dtype) != 0)
        return tb_fail(TB_EDATA, "tensor '%s': unknown dtype '%s'", t->name, jd->valuestring);
    if (!cJSON_IsArray(js)) return tb_fail(TB_EDATA, "tensor '%s': missing shape", t->name);
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS) return tb_fail(TB_EDATA, "tensor '%s': %d dims (max %d)", t->name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    /* numel computed in 128-bit-safe steps: reject products past 2^62 */
    uint64_t numel = 1, nonzero = 1;
    for (int d = 0; d < nd; d++) {
        uint64_t v;
        if (json_u64(cJSON_GetArrayItem(js, d), &v))
            return tb_fail(TB_EDATA, "tensor '%s': shape[%d] is not a non-negative integer", t->name, d);
        t->shape[d] = (int64_t)v;
        if (v && nonzero > (UINT64_C(1) << 62) / v)
            return tb_fail(TB_EDATA, "tensor '%s': shape too large", t->name);
        numel *= v;
        if (v) nonzero *= v;
    }
    if (numel == 0 && nonzero > dim_limit)
        return tb_fail(TB_EDATA, "tensor '%s': zero-element shape whose other dimensions multiply to %" PRIu64
                       ", more than the file's %" PRIu64 " bytes", t->name, nonzero, dim_limit);
    t->numel = (int64_t)numel;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_u64(cJSON_GetArrayItem(jo, 0), &t->begin) ||
        json_u64(cJSON_GetArrayItem(jo, 1), &t->end))
        return tb_fail(TB_EDATA, "tensor '%s': data_offsets must be [begin, end]", t->name);
    if (t->end < t->begin)
        return tb_fail(TB_EDATA, "tensor '%s': data_offsets [%" PRIu64 ",%" PRIu64 "] end before begin", t->name,
                       t->begin, t->end);
    uint64_t need = numel * tb_dtype_size(t->dtype);
    if (need / tb_dtype_size(t->dtype) != numel || need != t->end - t->begin)
        return tb_fail(TB_EDATA, "tensor '%s': %s shape needs %" PRIu64 " bytes, data_offsets [%" PRIu64 ",%" PRIu64 "] hold %" PRIu64,
                       t->name, tb_dtype_name(t->dtype), need, t->begin, t->end, t->end - t->begin);
    return TB_OK;
}

static int parse_header(st_file *f, uint64_t dim_limit)
{
    const uint8_t *buf = f->map.data;
    size_t size = f->map.size;
    if (size < 8) return tb_fail(TB_EDATA, "file too short for a safetensors header (%zu bytes)", size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    /* the value is not printed: for a file that is not safetensors it is just
     * the file's first 8 bytes, which an error message must not disclose */
    if (n > ST_MAX_HEADER)
        return tb_fail(TB_EDATA, "header length field exceeds the %u-byte limit (not a safetensors file?)", ST_MAX_HEADER);
    if (n > size - 8)
        return tb_fail(TB_EDATA, "header length field points past end of file (%zu bytes): truncated or not safetensors", size);
    f->header_size = n;
    const uint8_t *hdr = buf + 8;
    int64_t bad = utf8_invalid_at(hdr, n);
    if (bad >= 0) return tb_fail(TB_EDATA, "header is not valid UTF-8 (byte %" PRId64 ")", bad);
    if (n == 0 || hdr[0] != '{') return tb_fail(TB_EDATA, "header is not a JSON object");

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)hdr, n, &end, 0);
    if (!root) {
        size_t at = cJSON_GetErrorPtr() ? (size_t)(cJSON_GetErrorPtr() - (const char *)hdr) : 0;
        return tb_fail(TB_EDATA, "header is not valid JSON (near byte %zu)", at);
    }
    /* only whitespace may follow the object (writers pad with spaces) */
    for (const char *p = end; p && p < (const char *)hdr + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != 0) {
            cJSON_Delete(root);
            return tb_fail(TB_EDATA, "header has trailing data after the JSON object");
        }
    if (!cJSON_IsObject(root)) { cJSON_Delete(root); return tb_fail(TB_EDATA, "header is not a JSON object"); }

    int count = 0;
    for (cJSON *it = root->child; it; it = it->next) count += strcmp(it->string, "__metadata__") != 0;
    f->tensors = tb_calloc((size_t)count, sizeof(st_tensor));
    f->by_name = tb_calloc((size_t)count, sizeof(int));
    if (!f->tensors || !f->by_name) { cJSON_Delete(root); return TB_EIO; }

    int rc = TB_OK, seen_meta = 0;
    for (cJSON *it = root->child; it && !rc; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (seen_meta++) { rc = tb_fail(TB_EDATA, "duplicate __metadata__"); break; }
            if (!cJSON_IsObject(it)) { rc = tb_fail(TB_EDATA, "__metadata__ is not an object"); break; }
            int nm = cJSON_GetArraySize(it);
            f->meta_keys = tb_calloc((size_t)nm, sizeof(char *));
            f->meta_vals = tb_calloc((size_t)nm, sizeof(char *));
            if (!f->meta_keys || !f->meta_vals) { rc = TB_EIO; break; }
            for (cJSON *m = it->child; m; m = m->next) {
                if (!cJSON_IsString(m)) { rc = tb_fail(TB_EDATA, "__metadata__ '%s' is not a string", m->string); break; }
                f->meta_keys[f->n_meta] = tb_strdup(m->string);
                f->meta_vals[f->n_meta] = tb_strdup(m->valuestring);
                if (!f->meta_keys[f->n_meta] || !f->meta_vals[f->n_meta]) { rc = TB_EIO; break; }
                f->n_meta++;
            }
            continue;
        }
        st_tensor *t = &f->tensors[f->n_tensors++];
        t->name = tb_strdup(it->string);
        if (!t->name) { rc = TB_EIO; break; }
        rc = parse_tensor(t, it, dim_limit);
    }
    cJSON_Delete(root);
    return rc;
}

static int check_layout(st_file *f)
{
    size_t data_size = f->map.size - 8 - f->header_size;
    const uint8_t *data = f->map.data + 8 + f->header_size;

    for (int i = 0; i < f->n_tensors; i++) f->by_name[i] = i;
    sort_ctx = f; /* qsort has no context argument in C11; callers are not concurrent on one file */
    if (f->n_tensors > 1) qsort(f->by_name, (size_t)f->n_tensors, sizeof(int), cmp_name);
    for (int i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[f->by_name[i]].name, f->tensors[f->by_name[i - 1]].name) == 0)
            return tb_fail(TB_EDATA, "duplicate tensor name '%s'", f->tensors[f->by_name[i]].name);

    /* the data section must be covered exactly: sorted by offset, each tensor
     * starts where the previous one ended, the last ends at the section's end */
    if (f->n_tensors > 1) qsort(f->tensors, (size_t)f->n_tensors, sizeof(st_tensor), cmp_offset);
    uint64_t pos = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        st_tensor *t = &f->tensors[i];
        if (t->end > data_size)
            return tb_fail(TB_EDATA, "tensor '%s': data_offsets [%" PRIu64 ",%" PRIu64 "] out of bounds (data section is %zu bytes: truncated file?)",
                           t->name, t->begin, t->end, data_size);
        if (t->begin < pos)
            return tb_fail(TB_EDATA, "tensor '%s': data_offsets [%" PRIu64 ",%" PRIu64 "] overlap '%s'", t->name, t->begin,
                           t->end, f->tensors[i - 1].name);
        if (t->begin > pos)
            return tb_fail(TB_EDATA, "tensor '%s': data_offsets [%" PRIu64 ",%" PRIu64 "] leave a gap at byte %" PRIu64,
                           t->name, t->begin, t->end, pos);
        pos = t->end;
        t->data = data + t->begin;
        t->nbytes = (size_t)(t->end - t->begin);
    }
    if (pos != data_size)
        return tb_fail(TB_EDATA, "data section has %zu bytes but tensors cover %" PRIu64 " (truncated or trailing data)",
                       data_size, pos);
    /* re-sort by name after moving tensors */
    for (int i = 0; i < f->n_tensors; i++) f->by_name[i] = i;
    if (f->n_tensors > 1) qsort(f->by_name, (size_t)f->n_tensors, sizeof(int), cmp_name);
    return TB_OK;
}

int st_open_mapped(st_file *f, const char *label, tb_mapped map)
{
    memset(f, 0, sizeof *f);
    f->map = map;
    f->path = tb_strdup(label);
    if (!f->path) { tb_unmap(&f->map); return TB_EIO; }
    int rc = parse_header(f, f->map.size);
    if (!rc) rc = check_layout(f);
    if (rc) {
        /* not a damaged safetensors file but another kind (a stream is not
         * looked at before it is read): say what it is */
        tb_kind k = tb_kind_of_bytes(map.data, map.size < 4096 ? map.size : 4096, map.size);
        if (k != TB_KIND_SAFETENSORS && k != TB_KIND_BINARY && k != TB_KIND_EMPTY) {
            char why[512];
            snprintf(why, sizeof why, "%s", tb_errmsg());
            rc = tb_fail(TB_EDATA, "%s, not safetensors%s (%s)", tb_kind_name(k),
                         k == TB_KIND_TBM ? ": a .tbm is read by its path, which its shards are relative to" : "", why);
        }
        tb_err_context("%s", label);
        st_close(f);
    }
    return rc;
}

/* stdin is read no further than its own header allows: 8 bytes, a header of
 * at most ST_MAX_HEADER bytes, then exactly the data section the header
 * declares, and it must end there. A stream of zeros or an endless pipe fails
 * after 8 bytes instead of filling memory. */
static int read_stdin(tb_mapped *out)
{
    const char *label = "<stdin>";
    uint8_t *buf = tb_malloc(8);
    if (!buf) return TB_EIO;
    int rc = tb_read_exact(stdin, label, buf, 8);
    uint64_t n = 0;
    for (int i = 7; !rc && i >= 0; i--) n = (n << 8) | buf[i];
    if (!rc && n > ST_MAX_HEADER) {
        /* failing anyway: look at a little more of the stream to say what it is */
        uint8_t head[4096];
        memcpy(head, buf, 8);
        size_t got = 8 + fread(head + 8, 1, sizeof head - 8, stdin);
        tb_kind k = tb_kind_of_bytes(head, got, UINT64_MAX);
        if (k != TB_KIND_SAFETENSORS && k != TB_KIND_BINARY && k != TB_KIND_EMPTY)
            rc = tb_fail(TB_EDATA, "%s: %s, not safetensors%s (header length field exceeds the %u-byte limit)", label,
                         tb_kind_name(k), k == TB_KIND_TBM ? ": give the .tbm's path, its shards are found from it" : "",
                         ST_MAX_HEADER);
        else
            rc = tb_fail(TB_EDATA, "%s: header length field exceeds the %u-byte limit (not a safetensors stream?)",
                         label, ST_MAX_HEADER);
    }
    uint8_t *nb = rc ? NULL : tb_realloc(buf, 8 + (size_t)n);
    if (!rc && !nb) rc = TB_EIO;
    if (nb) buf = nb;
    if (!rc) rc = tb_read_exact(stdin, label, buf + 8, (size_t)n);
    /* the declared data size: parse the header alone (no dimension bound yet) */
    uint64_t data = 0;
    if (!rc) {
        st_file h;
        memset(&h, 0, sizeof h);
        h.map = (tb_mapped){buf, 8 + (size_t)n, 0};
        h.path = (char *)label;
        rc = parse_header(&h, UINT64_MAX);
        for (int i = 0; !rc && i < h.n_tensors; i++)
            if (h.tensors[i].end > data) data = h.tensors[i].end;
        h.map.data = NULL; /* buf stays ours */
        h.path = NULL;
        st_close(&h);
        if (rc) tb_err_context("%s", label);
    }
    if (!rc && data > SIZE_MAX - 9 - n) rc = tb_fail(TB_EDATA, "%s: data section too large", label);
    if (!rc && !(nb = tb_realloc(buf, 8 + (size_t)n + (size_t)data + 1))) rc = TB_EIO;
    if (!rc) buf = nb;
    if (!rc) rc = tb_read_exact(stdin, label, buf + 8 + n, (size_t)data);
    if (!rc && fgetc(stdin) != EOF)
        rc = tb_fail(TB_EDATA, "%s: data past the %" PRIu64 " bytes the header declares", label, data);
    if (rc) { free(buf); return rc; }
    *out = (tb_mapped){buf, 8 + (size_t)n + (size_t)data, 0};
    return TB_OK;
}

int st_open(st_file *f, const char *path)
{
    tb_mapped m;
    memset(f, 0, sizeof *f);
    int rc = strcmp(path, "-") ? tb_map_file(path, &m) : read_stdin(&m);
    if (rc) return rc;
    return st_open_mapped(f, strcmp(path, "-") ? path : "<stdin>", m);
}

void st_close(st_file *f)
{
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) { free(f->meta_keys[i]); free(f->meta_vals[i]); }
    free(f->tensors);
    free(f->by_name);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    tb_unmap(&f->map);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    int lo = 0, hi = f->n_tensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const st_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *st_meta(const st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

tb_array st_array(const st_tensor *t)
{
    tb_array a = {.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .numel = t->numel, .data = t->data};
    for (int d = 0; d < t->ndim && d < TB_MAX_DIMS; d++) a.shape[d] = t->shape[d];
    return a;
}

float *st_tensor_f32(const st_tensor *t)
{
    float *out = tb_malloc((size_t)t->numel * sizeof(float));
    if (out) tb_to_f32(t->dtype, t->data, 0, (size_t)t->numel, out);
    return out;
}

int st_tensor_f32_finite(const st_tensor *t, float **out)
{
    float *v = st_tensor_f32(t);
    *out = NULL;
    if (!v) return TB_EIO;
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(v[i])) {
            int rc = t->ndim == 2 ? tb_fail(TB_EDATA, "tensor '%s': element (%lld, %lld) is %s", t->name,
                                            (long long)(i / t->shape[1]), (long long)(i % t->shape[1]),
                                            v[i] != v[i] ? "NaN" : "infinite")
                                  : tb_fail(TB_EDATA, "tensor '%s': element %lld is %s", t->name, (long long)i,
                                            v[i] != v[i] ? "NaN" : "infinite");
            free(v);
            return rc;
        }
    *out = v;
    return TB_OK;
}

int st_find_nonfinite(const st_file *f, const st_tensor **t, int64_t *at)
{
    float buf[1024];
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *x = &f->tensors[i];
        if (!tb_dtype_is_float(x->dtype)) continue;
        for (int64_t k0 = 0; k0 < x->numel; k0 += 1024) {
            int64_t n = x->numel - k0 < 1024 ? x->numel - k0 : 1024;
            tb_to_f32(x->dtype, x->data, (size_t)k0, (size_t)n, buf);
            for (int64_t k = 0; k < n; k++)
                if (!isfinite(buf[k])) {
                    *t = x;
                    *at = k0 + k;
                    return 1;
                }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    char *name;
    tb_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
} w_entry;

struct st_writer {
    w_entry *entries;
    int n, cap;
    cJSON *meta;
    FILE *fp;
    char *label;
    int cur;          /* tensor being written */
    uint64_t written; /* bytes of the current tensor written so far */
    int began;
};

st_writer *st_writer_new(void)
{
    st_writer *w = tb_calloc(1, sizeof *w);
    return w;
}

void st_writer_free(st_writer *w)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->entries[i].name);
    free(w->entries);
    cJSON_Delete(w->meta);
    free(w->label);
    free(w);
}

int st_writer_meta(st_writer *w, const char *key, const char *value)
{
    if (w->began) return tb_fail(TB_EUSAGE, "st_writer_meta after begin");
    if (!w->meta && !(w->meta = cJSON_CreateObject())) return tb_fail(TB_EIO, "out of memory");
    cJSON_DeleteItemFromObjectCaseSensitive(w->meta, key);
    if (!cJSON_AddStringToObject(w->meta, key, value)) return tb_fail(TB_EIO, "out of memory");
    return TB_OK;
}

int st_writer_add(st_writer *w, const char *name, tb_dtype dt, int ndim, const int64_t *shape)
{
    if (w->began) return tb_fail(TB_EUSAGE, "st_writer_add after begin");
    if (ndim < 0 || ndim > ST_MAX_DIMS) return tb_fail(TB_EUSAGE, "tensor '%s': %d dims", name, ndim);
    if (strcmp(name, "__metadata__") == 0) return tb_fail(TB_EUSAGE, "tensor name '__metadata__' is reserved");
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->entries[i].name, name) == 0) return tb_fail(TB_EUSAGE, "duplicate tensor name '%s'", name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        w_entry *e = tb_realloc(w->entries, (size_t)cap * sizeof *e);
        if (!e) return TB_EIO;
        w->entries = e;
        w->cap = cap;
    }
    w_entry *e = &w->entries[w->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = tb_strdup(name))) return TB_EIO;
    e->dtype = dt;
    e->ndim = ndim;
    uint64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) { free(e->name); return tb_fail(TB_EUSAGE, "tensor '%s': negative dim", name); }
        e->shape[d] = shape[d];
        numel *= (uint64_t)shape[d];
    }
    e->nbytes = numel * tb_dtype_size(dt);
    w->n++;
    return TB_OK;
}

static cJSON *raw_u64(uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return cJSON_CreateRaw(buf); /* exact integers, never via double formatting */
}

int st_writer_begin(st_writer *w, FILE *fp, const char *label)
{
    if (w->began) return tb_fail(TB_EUSAGE, "st_writer_begin twice");
    w->fp = fp;
    if (!(w->label = tb_strdup(label))) return TB_EIO;
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && w->meta) {
        cJSON *m = cJSON_Duplicate(w->meta, 1);
        ok = m && cJSON_AddItemToObject(root, "__metadata__", m);
    }
    uint64_t off = 0;
    for (int i = 0; ok && i < w->n; i++) {
        w_entry *e = &w->entries[i];
        cJSON *t = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
        ok = t && shape && offs && cJSON_AddItemToObject(root, e->name, t) &&
             cJSON_AddStringToObject(t, "dtype", tb_dtype_name(e->dtype));
        if (!ok) { cJSON_Delete(shape); cJSON_Delete(offs); break; }
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(shape, raw_u64((uint64_t)e->shape[d]));
        cJSON_AddItemToObject(t, "shape", shape);
        cJSON_AddItemToArray(offs, raw_u64(off));
        cJSON_AddItemToArray(offs, raw_u64(off + e->nbytes));
        cJSON_AddItemToObject(t, "data_offsets", offs);
        off += e->nbytes;
    }
    char *json = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!json) return tb_fail(TB_EIO, "%s: out of memory building header", label);
    size_t len = strlen(json), padded = (len + 7) & ~(size_t)7; /* data section 8-byte aligned */
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int rc = tb_write_all(fp, lenbuf, 8, label);
    if (!rc) rc = tb_write_all(fp, json, len, label);
    if (!rc) rc = tb_write_all(fp, "        ", padded - len, label);
    free(json);
    w->began = 1;
    w->cur = 0;
    w->written = 0;
    return rc;
}

int st_writer_write(st_writer *w, const void *data, size_t nbytes)
{
    if (!w->began) return tb_fail(TB_EUSAGE, "st_writer_write before begin");
    while (nbytes) {
        while (w->cur < w->n && w->written == w->entries[w->cur].nbytes) { w->cur++; w->written = 0; }
        if (w->cur >= w->n) return tb_fail(TB_EUSAGE, "%s: more data than declared tensors", w->label);
        size_t room = (size_t)(w->entries[w->cur].nbytes - w->written), k = nbytes < room ? nbytes : room;
        int rc = tb_write_all(w->fp, data, k, w->label);
        if (rc) return rc;
        w->written += k;
        data = (const char *)data + k;
        nbytes -= k;
    }
    return TB_OK;
}

int st_writer_finish(st_writer *w)
{
    while (w->cur < w->n && w->written == w->entries[w->cur].nbytes) { w->cur++; w->written = 0; }
    if (w->cur < w->n)
        return tb_fail(TB_EUSAGE, "%s: tensor '%s' not fully written", w->label, w->entries[w->cur].name);
    return TB_OK;
}

int st_save(const char *path, const st_entry *entries, int n, const char *const *meta_kv, int n_meta)
{
    st_writer *w = st_writer_new();
    if (!w) return TB_EIO;
    int rc = TB_OK;
    for (int i = 0; !rc && i < n_meta; i++) rc = st_writer_meta(w, meta_kv[2 * i], meta_kv[2 * i + 1]);
    for (int i = 0; !rc && i < n; i++) rc = st_writer_add(w, entries[i].name, entries[i].dtype, entries[i].ndim, entries[i].shape);
    tb_outfile out;
    if (!rc) rc = tb_out_open(&out, path);
    if (rc) { st_writer_free(w); return rc; }
    const char *label = strcmp(path, "-") ? path : "<stdout>";
    rc = st_writer_begin(w, out.fp, label);
    for (int i = 0; !rc && i < n; i++) rc = st_writer_write(w, entries[i].data, (size_t)w->entries[i].nbytes);
    if (!rc) rc = st_writer_finish(w);
    if (!rc) rc = tb_out_commit(&out);
    else tb_out_abort(&out);
    st_writer_free(w);
    return rc;
}

/* ------------------------------------------------------------ checkpoint */

static int ckpt_add_shard(tb_ckpt *c, const char *path)
{
    st_file *s = tb_realloc(c->shards, (size_t)(c->n_shards + 1) * sizeof *s);
    if (!s) return TB_EIO;
    c->shards = s;
    int rc = st_open(&c->shards[c->n_shards], path);
    if (!rc) c->n_shards++;
    return rc;
}

static int ckpt_open_index(tb_ckpt *c, const char *dir, const char *index_path)
{
    char *text;
    int rc = tb_read_text(index_path, &text, NULL);
    if (rc) return rc;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(root);
        return tb_fail(TB_EDATA, "%s: not a safetensors index (no weight_map object)", index_path);
    }
    /* open each distinct shard once, in order of first mention */
    for (const cJSON *it = map->child; it && !rc; it = it->next) {
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) {
            rc = tb_fail(TB_EDATA, "%s: weight_map['%s'] is not a shard file name", index_path, it->string);
            break;
        }
        int known = 0;
        for (int s = 0; s < c->n_shards && !known; s++) {
            const char *base = strrchr(c->shards[s].path, '/');
            known = strcmp(base ? base + 1 : c->shards[s].path, it->valuestring) == 0;
        }
        if (known) continue;
        char *p = tb_path_join(dir, it->valuestring);
        rc = p ? ckpt_add_shard(c, p) : TB_EIO;
        free(p);
    }
    /* every mapped tensor must be where the index says */
    for (const cJSON *it = map->child; it && !rc; it = it->next) {
        const st_tensor *t = NULL;
        for (int s = 0; s < c->n_shards && !t; s++) {
            const char *base = strrchr(c->shards[s].path, '/');
            if (strcmp(base ? base + 1 : c->shards[s].path, it->valuestring) == 0) t = st_find(&c->shards[s], it->string);
        }
        if (!t) rc = tb_fail(TB_EDATA, "%s: tensor '%s' not found in shard %s", index_path, it->string, it->valuestring);
    }
    cJSON_Delete(root);
    return rc;
}

int tb_ckpt_open(tb_ckpt *c, const char *path)
{
    memset(c, 0, sizeof *c);
    if (!(c->path = tb_strdup(path))) return TB_EIO;
    int rc;
    if (tb_is_dir(path)) {
        char *index = tb_path_join(path, "model.safetensors.index.json");
        char *single = tb_path_join(path, "model.safetensors");
        if (!index || !single) rc = TB_EIO;
        else if (tb_file_exists(index)) rc = ckpt_open_index(c, path, index);
        else if (tb_file_exists(single)) rc = ckpt_add_shard(c, single);
        else rc = tb_fail(TB_EDATA, "%s: no model.safetensors or model.safetensors.index.json", path);
        free(index);
        free(single);
    } else {
        rc = ckpt_add_shard(c, path);
    }
    /* a tensor name may appear in only one shard */
    for (int a = 0; !rc && a < c->n_shards; a++)
        for (int i = 0; !rc && i < c->shards[a].n_tensors; i++)
            for (int b = a + 1; !rc && b < c->n_shards; b++)
                if (st_find(&c->shards[b], c->shards[a].tensors[i].name))
                    rc = tb_fail(TB_EDATA, "%s: tensor '%s' appears in %s and %s", path, c->shards[a].tensors[i].name,
                                 c->shards[a].path, c->shards[b].path);
    if (rc) tb_ckpt_close(c);
    return rc;
}

void tb_ckpt_close(tb_ckpt *c)
{
    for (int i = 0; i < c->n_shards; i++) st_close(&c->shards[i]);
    free(c->shards);
    free(c->path);
    memset(c, 0, sizeof *c);
}

const st_tensor *tb_ckpt_find(const tb_ckpt *c, const char *name)
{
    for (int i = 0; i < c->n_shards; i++) {
        const st_tensor *t = st_find(&c->shards[i], name);
        if (t) return t;
    }
    return NULL;
}

int tb_ckpt_count(const tb_ckpt *c)
{
    int n = 0;
    for (int i = 0; i < c->n_shards; i++) n += c->shards[i].n_tensors;
    return n;
}

int tb_ckpt_sha256(const tb_ckpt *c, char hex[65])
{
    tb_sha256 h;
    uint8_t d[32];
    tb_sha256_init(&h);
    for (int i = 0; i < c->n_shards; i++) tb_sha256_update(&h, c->shards[i].map.data, c->shards[i].map.size);
    tb_sha256_final(&h, d);
    tb_sha256_hex(d, hex);
    return TB_OK;
}
