/* tb_export.c - .tbm -> HF checkpoint directory (layouts in tb_export.h and
 * FORMATS.md, "tb-export formats"). */
#include "tb_export.h"
#include "tb_error.h"
#include "tb_io.h"
#include "tb_outdir.h"
#include "tb_sha256.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* The compressed-tensors release whose layout this writes (config "version"). */
#define CT_VERSION "0.14.0.1"

/* ------------------------------------------------------------- helpers */

int tb_parse_size(const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !(v > 0)) return tb_fail(TB_EUSAGE, "%s: '%s' is not a size like 5GB", opt, s);
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {{"", 1},           {"B", 1},           {"K", 1e3},          {"KB", 1e3},        {"M", 1e6},
                 {"MB", 1e6},       {"G", 1e9},         {"GB", 1e9},         {"T", 1e12},        {"TB", 1e12},
                 {"KiB", 1024.0},   {"Ki", 1024.0},     {"MiB", 1048576.0},  {"Mi", 1048576.0},  {"GiB", 1073741824.0},
                 {"Gi", 1073741824.0}, {"TiB", 1099511627776.0}, {"Ti", 1099511627776.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcasecmp(end, units[i].suffix) == 0) {
            double b = v * units[i].mult;
            if (b < 1 || b > 1.8e19) return tb_fail(TB_EUSAGE, "%s: '%s' is out of range", opt, s);
            *out = (uint64_t)b;
            return TB_OK;
        }
    return tb_fail(TB_EUSAGE, "%s: unknown unit in '%s' (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", opt, s);
}

int tb_name_natural_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0' && isdigit((unsigned char)a[1])) a++;
            while (*b == '0' && isdigit((unsigned char)b[1])) b++;
            size_t la = 0, lb = 0;
            while (isdigit((unsigned char)a[la])) la++;
            while (isdigit((unsigned char)b[lb])) lb++;
            if (la != lb) return la < lb ? -1 : 1;
            int c = strncmp(a, b, la);
            if (c) return c;
            a += la;
            b += lb;
        } else {
            if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        }
    }
    return (unsigned char)*a - (unsigned char)*b;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Is the element (of dtype dt, as stored) exactly zero? -0.0 counts as zero,
 * as torch's `tensor != 0` (the sparse-bitmask compressor's test) has it. */
static int is_zero(tb_dtype dt, const uint8_t *p)
{
    switch (dt) {
    case TB_F64: { double d; memcpy(&d, p, 8); return d == 0.0; }
    case TB_F32: { float f; memcpy(&f, p, 4); return f == 0.0f; }
    case TB_F16: case TB_BF16: return ((p[0] | p[1] << 8) & 0x7fff) == 0;
    case TB_F8_E4M3: case TB_F8_E5M2: return (p[0] & 0x7f) == 0;
    default: {
        size_t es = tb_dtype_size(dt);
        for (size_t i = 0; i < es; i++)
            if (p[i]) return 0;
        return 1;
    }
    }
}

static int64_t count_zeros(tb_dtype dt, const void *data, size_t n)
{
    size_t es = tb_dtype_size(dt);
    int64_t z = 0;
    for (size_t i = 0; i < n; i++) z += is_zero(dt, (const uint8_t *)data + i * es);
    return z;
}

/* f32 -> out dtype (F32, F16 or BF16), n elements. */
static void from_f32(tb_dtype out_dt, const float *src, size_t n, void *dst)
{
    if (out_dt == TB_F32) { memcpy(dst, src, n * sizeof *src); return; }
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = out_dt == TB_BF16 ? tb_f32_to_bf16(src[i]) : tb_f32_to_f16(src[i]);
}

enum { CHUNK = 4096 }; /* elements per conversion chunk */

/* Convert n elements of src_dt (starting at element 0 of src) to out_dt
 * chunk by chunk, handing each chunk to `sink`. */
typedef int (*chunk_sink)(void *ctx, const void *bytes, size_t nbytes, size_t n);

static int convert_stream(tb_dtype src_dt, const void *src, size_t n, tb_dtype out_dt, chunk_sink sink, void *ctx)
{
    if (src_dt == out_dt) return sink(ctx, src, n * tb_dtype_size(src_dt), n);
    float f[CHUNK];
    uint8_t o[CHUNK * 4];
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        tb_to_f32(src_dt, src, i, k, f);
        from_f32(out_dt, f, k, o);
        int rc = sink(ctx, o, k * tb_dtype_size(out_dt), k);
        if (rc) return rc;
    }
    return TB_OK;
}

/* ------------------------------------------------------------- the plan */

enum how { H_DENSE, H_CT24, H_CTBM };

typedef struct {
    const char *name;         /* model tensor name (owned by the .tbm's JSON) */
    const st_tensor *dense;   /* stored as is, or NULL */
    const tb_packed *packed;  /* pruned, or NULL */
    const tb_pack_file *shard;/* holding `packed` */
    enum how how;
    tb_dtype src_dt, out_dt;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    int64_t nnz;              /* H_CTBM: nonzeros in out_dt */
    char *module;             /* H_CT*: name less ".weight" */
    uint64_t bytes;           /* all output tensors of this unit */
    int file;
    /* a channel permutation folded into the producing layer (FORMATS.md):
     * the consumer keeps its stored (permuted, N:M) column order and the
     * producer writes row j as its row row_perm[j], so the function is the
     * model's and every N:M weight stays N:M in the exported order */
    int fold_cols;            /* consumer: write the stored column order */
    const int32_t *row_perm;  /* producer: rows in this order, or NULL */
    int32_t *row_perm_owned;  /* row_perm when built here (v_proj's) */
} unit;

typedef struct {
    const tb_tbm *t;
    const tb_export_opts *o;
    unit *u;
    int n;
    int n_files;
    char **file_names;        /* n_files */
    int64_t zeros;            /* exact zeros of the dense model, as written */
    int64_t params;
    tb_ckpt base;             /* a partial index's base checkpoint, or zeroed */
} plan;

static int cmp_units(const void *a, const void *b)
{
    return tb_name_natural_cmp(((const unit *)a)->name, ((const unit *)b)->name);
}

static int is_float_convertible(tb_dtype dt) { return dt == TB_F64 || dt == TB_F32 || dt == TB_F16 || dt == TB_BF16; }

static const tb_pack_file *shard_of(const tb_tbm *t, const tb_packed *p)
{
    for (int s = 0; s < t->n_shards; s++)
        if (tb_pack_find(&t->shards[s], p->name) == p) return &t->shards[s];
    return NULL;
}

/* nonzeros a pruned weight has once converted to out_dt (sparse-bitmask
 * stores exactly these, so its "compressed" length is known up front) */
static int64_t packed_nnz(const unit *u)
{
    const tb_packed *p = u->packed;
    const st_tensor *v = p->kind == TB_PACKED_NM ? p->values : p->dense;
    int64_t nz = 0;
    float f[CHUNK];
    uint8_t o[CHUNK * 4];
    size_t es = tb_dtype_size(u->out_dt);
    for (size_t i = 0; i < (size_t)v->numel; i += CHUNK) {
        size_t k = (size_t)v->numel - i < CHUNK ? (size_t)v->numel - i : CHUNK;
        if (p->dtype == u->out_dt) {
            nz += (int64_t)k - count_zeros(p->dtype, (const uint8_t *)v->data + i * es, k);
        } else {
            tb_to_f32(p->dtype, v->data, i, k, f);
            from_f32(u->out_dt, f, k, o);
            nz += (int64_t)k - count_zeros(u->out_dt, o, k);
        }
    }
    return nz;
}

/* Why a pruned weight cannot be stored as sparse-24-bitmask ("" if it can). */
static const char *not_24(const unit *u, char *buf, size_t n)
{
    const tb_packed *p = u->packed;
    size_t len = strlen(u->name);
    if (len < 7 || strcmp(u->name + len - 7, ".weight")) snprintf(buf, n, "tensor '%s' is not a module weight", u->name);
    else if (p->kind != TB_PACKED_NM) snprintf(buf, n, "tensor '%s' is unstructured", u->name);
    else if (p->n != 2 || p->m != 4) snprintf(buf, n, "tensor '%s' is %d:%d", u->name, p->n, p->m);
    else if (p->perm && !u->fold_cols)
        snprintf(buf, n, "tensor '%s' is 2:4 under a channel permutation that cannot be folded into the layer "
                         "before it (tb-nm --permute-foldable)", u->name);
    else buf[0] = 0;
    return buf;
}

static int set_module(unit *u)
{
    size_t len = strlen(u->name) - 7; /* checked by not_24 / the caller */
    if (!(u->module = tb_malloc(len + 1))) return TB_EIO;
    memcpy(u->module, u->name, len);
    u->module[len] = 0;
    return TB_OK;
}

static uint64_t unit_bytes(const unit *u)
{
    size_t es = tb_dtype_size(u->out_dt);
    uint64_t rows = (uint64_t)u->shape[0], cols = (uint64_t)u->shape[1], bm = rows * ((cols + 7) / 8);
    switch (u->how) {
    case H_CT24: return 16 + rows * (cols / 2) * es + bm;
    case H_CTBM: return 16 + (uint64_t)u->nnz * es + bm + 8 * rows;
    default: return (uint64_t)u->numel * es;
    }
}

static unit *find_unit(plan *pl, const char *name)
{
    unit key = {.name = name};
    return bsearch(&key, pl->u, (size_t)pl->n, sizeof *pl->u, cmp_units);
}

/* A producer (gate/up/v_proj weight, or its bias) of `rows` output channels
 * that can take a row order: present, its first dim `rows`, not already
 * reordered. Absent biases are fine (most models have none). */
static int can_reorder(const unit *p, int64_t rows) { return p && p->shape[0] == rows && !p->row_perm; }

static void set_rows(unit *p, const int32_t *perm)
{
    if (p) p->row_perm = perm;
}

/* name less `suffix` (a module prefix), or NULL if it does not end so */
static char *prefix_before(const char *name, const char *suffix)
{
    size_t n = strlen(name), k = strlen(suffix);
    if (n < k || strcmp(name + n - k, suffix)) return NULL;
    char *r = tb_malloc(n - k + 1);
    if (r) {
        memcpy(r, name, n - k);
        r[n - k] = 0;
    }
    return r;
}

/* o_proj's permutation as v_proj's row order, when it moves channels only
 * within heads and the heads sharing a KV head alike (what tb-nm
 * --permute-foldable searches); else NULL */
static int32_t *heads_to_kv_rows(const tb_config *c, const int32_t *perm, int64_t cols)
{
    int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    if (hd <= 0 || nkv <= 0 || nh % nkv || (int64_t)nh * hd != cols) return NULL;
    int per = nh / nkv;
    int32_t *v = tb_malloc((size_t)nkv * hd * sizeof *v);
    if (!v) return NULL;
    for (int h = 0; h < nh; h++) {
        int g = h / per;
        for (int j = 0; j < hd; j++) {
            int64_t d = (int64_t)perm[(int64_t)h * hd + j] - (int64_t)h * hd; /* within head h? */
            int64_t row = (int64_t)g * hd + d;
            if (d < 0 || d >= hd || (h % per && v[(int64_t)g * hd + j] != row)) { free(v); return NULL; }
            v[(int64_t)g * hd + j] = (int32_t)row;
        }
    }
    return v;
}

/* Folds each foldable permutation: mlp.down_proj's into gate/up's rows,
 * self_attn.o_proj's into v_proj's rows (FORMATS.md). Others stay undone on
 * the consumer's columns, as before. */
static int fold_permutations(plan *pl, tb_export_summary *s)
{
    static const struct {
        const char *consumer, *producer[2];
        int heads;
    } rules[] = {{"mlp.down_proj.weight", {"mlp.gate_proj", "mlp.up_proj"}, 0},
                 {"self_attn.o_proj.weight", {"self_attn.v_proj", NULL}, 1}};
    for (int i = 0; i < pl->n; i++) {
        unit *u = &pl->u[i];
        if (!u->packed || !u->packed->perm) continue;
        for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
            char *prefix = prefix_before(u->name, rules[r].consumer);
            if (!prefix) continue;
            /* a copy: the mapping need not align I32 data */
            int64_t n_rows = u->shape[1];
            int32_t *owned = tb_malloc((size_t)n_rows * sizeof *owned);
            if (!owned) { free(prefix); return TB_EIO; }
            memcpy(owned, u->packed->perm->data, (size_t)n_rows * sizeof *owned);
            if (rules[r].heads) {
                int32_t *cols_perm = owned;
                owned = heads_to_kv_rows(&pl->t->cfg, cols_perm, n_rows);
                free(cols_perm);
                tb_err_clear(); /* not foldable is not an error */
                n_rows = (int64_t)pl->t->cfg.n_kv_heads * pl->t->cfg.head_dim;
            }
            const int32_t *rows_perm = owned;
            unit *prod[4] = {0};
            int ok = rows_perm != NULL, np = 0;
            for (int k = 0; k < 2 && ok && rules[r].producer[k]; k++) {
                char wname[512], bname[512];
                snprintf(wname, sizeof wname, "%s%s.weight", prefix, rules[r].producer[k]);
                snprintf(bname, sizeof bname, "%s%s.bias", prefix, rules[r].producer[k]);
                unit *w = find_unit(pl, wname), *b = find_unit(pl, bname);
                ok = can_reorder(w, n_rows) && (!b || can_reorder(b, n_rows));
                prod[np++] = w;
                prod[np++] = b;
            }
            free(prefix);
            if (!ok) { free(owned); break; }
            for (int k = 0; k < np; k++) set_rows(prod[k], rows_perm);
            prod[0]->row_perm_owned = owned; /* freed with it; the others share it */
            u->fold_cols = 1;
            s->n_folded++;
            break;
        }
    }
    return TB_OK;
}

static int build_plan(plan *pl, const tb_tbm *t, const tb_export_opts *o, tb_export_summary *s)
{
    memset(pl, 0, sizeof *pl);
    pl->t = t;
    pl->o = o;
    const cJSON *tensors = cJSON_GetObjectItemCaseSensitive((const cJSON *)t->json, "tensors");
    int n = cJSON_GetArraySize(tensors), rc;
    /* a partial index (tb-merge --partial) takes the tensors in no shard from
     * its base checkpoint: the export is the whole model either way */
    if (t->base) {
        if ((rc = tb_tbm_open_base(t, &pl->base))) return rc; /* confined: tb_tbm.h */
        n += tb_ckpt_count(&pl->base);
    }
    if (n <= 0) return tb_fail(TB_EDATA, "%s: no tensors", t->path);
    if (!(pl->u = tb_calloc((size_t)n, sizeof *pl->u))) return TB_EIO;
    for (const cJSON *e = tensors->child; e; e = e->next) {
        unit *u = &pl->u[pl->n++];
        u->name = e->string;
        if ((u->packed = tb_tbm_find_packed(t, u->name))) {
            if (!(u->shard = shard_of(t, u->packed))) return tb_fail(TB_EDATA, "%s: tensor '%s': no shard holds it", t->path, u->name);
            u->src_dt = u->packed->dtype;
            u->ndim = 2;
            u->shape[0] = u->packed->rows;
            u->shape[1] = u->packed->cols;
        } else if ((u->dense = tb_tbm_find_dense(t, u->name))) {
            u->src_dt = u->dense->dtype;
            u->ndim = u->dense->ndim;
            memcpy(u->shape, u->dense->shape, sizeof u->shape);
        } else {
            return tb_fail(TB_EDATA, "%s: tensor '%s' is in no shard", t->path, u->name);
        }
    }
    for (int sh = 0; sh < pl->base.n_shards; sh++)
        for (int i = 0; i < pl->base.shards[sh].n_tensors; i++) {
            const st_tensor *b = &pl->base.shards[sh].tensors[i];
            if (cJSON_GetObjectItemCaseSensitive(tensors, b->name)) continue;
            unit *u = &pl->u[pl->n++];
            u->name = b->name;
            u->dense = b;
            u->src_dt = b->dtype;
            u->ndim = b->ndim;
            memcpy(u->shape, b->shape, sizeof u->shape);
        }
    for (int i = 0; i < pl->n; i++) {
        unit *u = &pl->u[i];
        u->numel = 1;
        for (int d = 0; d < u->ndim; d++) u->numel *= u->shape[d];
        u->out_dt = o->dtype >= 0 && is_float_convertible(u->src_dt) ? (tb_dtype)o->dtype : u->src_dt;
        u->how = H_DENSE;
        pl->params += u->numel;
        s->n_tensors++;
        s->n_pruned += u->packed != NULL;
    }
    qsort(pl->u, (size_t)pl->n, sizeof *pl->u, cmp_units);
    if ((rc = fold_permutations(pl, s))) return rc;

    if (o->format == TB_EXPORT_CT24) {
        /* one sparsity format per config: 2:4 weights compressed, the rest dense */
        char why[256];
        for (int i = 0; i < pl->n; i++) {
            unit *u = &pl->u[i];
            if (!u->packed) continue;
            if (!not_24(u, why, sizeof why)[0]) u->how = H_CT24;
            else if (!s->why_not_24[0]) snprintf(s->why_not_24, sizeof s->why_not_24, "%s", why);
        }
        snprintf(s->sparsity_format, sizeof s->sparsity_format, "sparse-24-bitmask");
    } else if (o->format == TB_EXPORT_CTBITMASK) {
        for (int i = 0; i < pl->n; i++) {
            unit *u = &pl->u[i];
            size_t len = strlen(u->name);
            if (u->packed && len > 7 && !strcmp(u->name + len - 7, ".weight")) u->how = H_CTBM;
        }
        snprintf(s->sparsity_format, sizeof s->sparsity_format, "sparse-bitmask");
    }
    for (int i = 0; i < pl->n; i++) {
        unit *u = &pl->u[i];
        if (u->how == H_DENSE) continue;
        if (set_module(u)) return TB_EIO;
        if (u->how == H_CTBM) u->nnz = packed_nnz(u);
        s->n_compressed++;
    }
    if (o->format != TB_EXPORT_DENSE && !s->n_compressed)
        return tb_fail(TB_EDATA, "%s: no weight to store as %s%s%s (export --format dense%s)", t->path,
                       s->sparsity_format, s->why_not_24[0] ? ": " : "", s->why_not_24,
                       s->n_pruned ? " or compressed-tensors-bitmask" : "");

    /* shards: whole units, greedily, as transformers' save_pretrained does */
    uint64_t max = o->max_shard_bytes ? o->max_shard_bytes : TB_EXPORT_DEFAULT_SHARD, cur = 0;
    int file = 0;
    for (int i = 0; i < pl->n; i++) {
        unit *u = &pl->u[i];
        u->bytes = unit_bytes(u);
        if (cur > 0 && cur + u->bytes > max) { file++; cur = 0; }
        u->file = file;
        cur += u->bytes;
        s->bytes += u->bytes;
    }
    pl->n_files = file + 1;
    if (!(pl->file_names = tb_calloc((size_t)pl->n_files, sizeof(char *)))) return TB_EIO;
    for (int f = 0; f < pl->n_files; f++) {
        char name[64];
        if (pl->n_files == 1) snprintf(name, sizeof name, "model.safetensors");
        else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", f + 1, pl->n_files);
        if (!(pl->file_names[f] = tb_strdup(name))) return TB_EIO;
    }
    s->n_files = pl->n_files;
    return TB_OK;
}

static void free_plan(plan *pl)
{
    if (pl->base.path) tb_ckpt_close(&pl->base);
    for (int i = 0; i < pl->n; i++) {
        free(pl->u[i].module);
        free(pl->u[i].row_perm_owned);
    }
    free(pl->u);
    for (int f = 0; f < pl->n_files && pl->file_names; f++) free(pl->file_names[f]);
    free(pl->file_names);
}

/* ----------------------------------------------------- writing tensors */

static char *joined(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = tb_malloc(n);
    if (s) snprintf(s, n, "%s%s", a, b);
    return s;
}

static int declare_unit(st_writer *w, const unit *u)
{
    if (u->how == H_DENSE) return st_writer_add(w, u->name, u->out_dt, u->ndim, u->shape);
    int64_t rows = u->shape[0], cols = u->shape[1];
    static const char *const parts[] = {".shape", ".compressed", ".bitmask", ".row_offsets"};
    int rc = TB_OK;
    for (int k = 0; k < (u->how == H_CTBM ? 4 : 3) && !rc; k++) {
        char *nm = joined(u->module, parts[k]);
        if (!nm) return TB_EIO;
        int64_t sh[2];
        switch (k) {
        case 0: /* Sparse24BitMaskTensor stores it [2, 1], BitmaskTensor [2] */
            sh[0] = 2; sh[1] = 1;
            rc = st_writer_add(w, nm, TB_I64, u->how == H_CT24 ? 2 : 1, sh);
            break;
        case 1:
            sh[0] = rows; sh[1] = cols / 2;
            if (u->how == H_CTBM) sh[0] = u->nnz;
            rc = st_writer_add(w, nm, u->out_dt, u->how == H_CT24 ? 2 : 1, sh);
            break;
        case 2:
            sh[0] = rows; sh[1] = (cols + 7) / 8;
            rc = st_writer_add(w, nm, TB_U8, 2, sh);
            break;
        default:
            sh[0] = rows;
            rc = st_writer_add(w, nm, TB_I64, 1, sh);
        }
        free(nm);
    }
    return rc;
}

typedef struct {
    st_writer *w;
    tb_dtype dt;
    int64_t zeros;
} write_ctx;

static int sink_write(void *ctx, const void *bytes, size_t nbytes, size_t n)
{
    write_ctx *c = ctx;
    c->zeros += count_zeros(c->dt, bytes, n);
    return st_writer_write(c->w, bytes, nbytes);
}

/* in-group position of kept value k of a packed row (b-bit fields, least
 * significant bit first; tb_pack.h) */
static int slot_pos(const uint8_t *irow, int64_t k, int b)
{
    int64_t pos = k * b, byte = pos >> 3;
    int shift = (int)(pos & 7);
    unsigned v = (unsigned)irow[byte] >> shift;
    if (shift + b > 8) v |= (unsigned)irow[byte + 1] << (8 - shift);
    return (int)(v & ((1u << b) - 1));
}

static int write_shape(st_writer *w, const unit *u)
{
    uint8_t b[16];
    put_le64(b, (uint64_t)u->shape[0]);
    put_le64(b + 8, (uint64_t)u->shape[1]);
    return st_writer_write(w, b, 16);
}

/* the source row of output row r (a folded permutation reorders producers' rows) */
static int64_t src_row(const unit *u, int64_t r) { return u->row_perm ? u->row_perm[r] : r; }

/* a pruned weight in f32: the model's column order, or the stored one where
 * its permutation is folded */
static float *unit_f32(const unit *u) { return tb_pack_tensor_f32(u->shard, u->name, !u->fold_cols, NULL); }

/* sparse-24-bitmask: the .tb's kept values are already the row-major list
 * of the masked positions, so "compressed" is .values (converted if asked);
 * the bitmask marks each stored slot, padding slots included (they hold 0),
 * so every group of 4 has exactly 2 bits as the format requires. */
static int write_ct24(st_writer *w, const unit *u, int64_t *zeros)
{
    const tb_packed *p = u->packed;
    int64_t rows = p->rows, cols = p->cols, vpr = tb_nm_values_per_row(cols, 2, 4);
    int64_t irb = tb_nm_index_row_bytes(cols, 2, 4), rb = (cols + 7) / 8;
    int rc = write_shape(w, u);
    write_ctx c = {w, u->out_dt, 0};
    size_t ves = tb_dtype_size(p->dtype);
    if (!u->row_perm && !rc) rc = convert_stream(p->dtype, p->values->data, (size_t)(rows * vpr), u->out_dt, sink_write, &c);
    for (int64_t r = 0; u->row_perm && r < rows && !rc; r++)
        rc = convert_stream(p->dtype, (const uint8_t *)p->values->data + (size_t)(src_row(u, r) * vpr) * ves,
                            (size_t)vpr, u->out_dt, sink_write, &c);
    *zeros += c.zeros + rows * (cols - vpr); /* kept slots holding 0, and the pruned entries */
    uint8_t *row = tb_malloc((size_t)rb + 1);
    if (!row) return TB_EIO;
    const uint8_t *idx = p->indices->data;
    for (int64_t r = 0; r < rows && !rc; r++) {
        memset(row, 0, (size_t)rb);
        const uint8_t *irow = idx + src_row(u, r) * irb;
        for (int64_t k = 0; k < vpr; k++) {
            int64_t c0 = k / 2 * 4 + slot_pos(irow, k, 2);
            row[c0 >> 3] |= (uint8_t)(1u << (c0 & 7)); /* numpy packbits bitorder="little" */
        }
        rc = st_writer_write(w, row, (size_t)rb);
    }
    free(row);
    return rc;
}

/* sparse-bitmask: every nonzero of the dense weight (model column order),
 * row-major; bitmask of the nonzeros; row_offsets = exclusive prefix sums of
 * the per-row counts. */
static int write_ctbm(st_writer *w, const unit *u, int64_t *zeros)
{
    const tb_packed *p = u->packed;
    int64_t rows = p->rows, cols = p->cols, rb = (cols + 7) / 8;
    size_t es = tb_dtype_size(u->out_dt);
    float *f = unit_f32(u);
    uint8_t *orow = tb_malloc((size_t)cols * es + 1), *nzrow = tb_malloc((size_t)cols * es + 1);
    uint8_t *brow = tb_malloc((size_t)rb + 1), *offs = tb_malloc((size_t)rows * 8 + 1);
    int rc = f && orow && nzrow && brow && offs ? write_shape(w, u) : TB_EIO;
    int64_t nnz = 0;
    for (int64_t r = 0; r < rows && !rc; r++) { /* pass 1: values */
        from_f32(u->out_dt, f + src_row(u, r) * cols, (size_t)cols, orow);
        put_le64(offs + r * 8, (uint64_t)nnz);
        size_t k = 0;
        for (int64_t c = 0; c < cols; c++)
            if (!is_zero(u->out_dt, orow + c * es)) memcpy(nzrow + es * k++, orow + c * es, es);
        nnz += (int64_t)k;
        if (nnz > u->nnz) break;
        rc = st_writer_write(w, nzrow, k * es);
    }
    if (!rc && nnz != u->nnz)
        rc = tb_fail(TB_EDATA, "tensor '%s': %lld nonzeros, planned %lld", u->name, (long long)nnz, (long long)u->nnz);
    for (int64_t r = 0; r < rows && !rc; r++) { /* pass 2: bitmask */
        from_f32(u->out_dt, f + src_row(u, r) * cols, (size_t)cols, orow);
        memset(brow, 0, (size_t)rb);
        for (int64_t c = 0; c < cols; c++)
            if (!is_zero(u->out_dt, orow + c * es)) brow[c >> 3] |= (uint8_t)(1u << (c & 7));
        rc = st_writer_write(w, brow, (size_t)rb);
    }
    if (!rc) rc = st_writer_write(w, offs, (size_t)rows * 8);
    *zeros += rows * cols - nnz;
    free(f);
    free(orow);
    free(nzrow);
    free(brow);
    free(offs);
    return rc;
}

static int write_dense(st_writer *w, const unit *u, int64_t *zeros)
{
    write_ctx c = {w, u->out_dt, 0};
    int rc;
    if (u->dense && !u->row_perm) {
        rc = convert_stream(u->src_dt, u->dense->data, (size_t)u->numel, u->out_dt, sink_write, &c);
    } else if (u->dense) { /* a producer of a folded permutation: its rows reordered */
        int64_t rows = u->shape[0], per_row = u->numel / rows;
        size_t es = tb_dtype_size(u->src_dt);
        rc = TB_OK;
        for (int64_t r = 0; r < rows && !rc; r++)
            rc = convert_stream(u->src_dt, (const uint8_t *)u->dense->data + (size_t)(src_row(u, r) * per_row) * es,
                                (size_t)per_row, u->out_dt, sink_write, &c);
    } else {
        /* the permutation undone (or kept where folded), so the exported
         * layer computes the same function without permuting its input */
        int64_t rows = u->shape[0], cols = u->shape[1];
        float *f = unit_f32(u);
        if (!f) return TB_EIO;
        rc = TB_OK;
        for (int64_t r = 0; r < rows && !rc; r++) /* f32 -> f32 is a copy, others round exactly back */
            rc = convert_stream(TB_F32, f + src_row(u, r) * cols, (size_t)cols, u->out_dt, sink_write, &c);
        free(f);
    }
    *zeros += c.zeros;
    return rc;
}

/* ------------------------------------------------ the output directory */

/* out_dir must not be the model's directory or hold it: --force would
 * delete the input */
static int contains_model(const char *out_dir, const char *model_dir)
{
    char *ro = realpath(out_dir, NULL), *rm = realpath(model_dir, NULL);
    int bad = 0;
    if (ro && rm) {
        size_t n = strlen(ro);
        bad = strncmp(ro, rm, n) == 0 && (rm[n] == 0 || rm[n] == '/' || (n == 1 && ro[0] == '/'));
    }
    free(ro);
    free(rm);
    return bad;
}

/* -------------------------------------------------------------- files */

/* the side files the .tbm lists, checked against their recorded SHA-256 */
static int copy_side_files(const tb_tbm *t, const char *tmp, const char *out_dir)
{
    const cJSON *files = cJSON_GetObjectItemCaseSensitive((const cJSON *)t->json, "files");
    int rc = TB_OK;
    for (const cJSON *e = cJSON_IsObject(files) ? files->child : NULL; e && !rc; e = e->next) {
        if (strchr(e->string, '/') || !strcmp(e->string, "config.json") || !strcmp(e->string, "..") ||
            !strcmp(e->string, "."))
            return tb_fail(TB_EDATA, "%s: side file name '%s' not allowed", t->path, e->string);
        char *src = tb_path_join(t->dir, e->string), *dst = tb_path_join(tmp, e->string);
        char *label = tb_path_join(out_dir, e->string);
        tb_mapped m = {0};
        if (!src || !dst || !label) rc = TB_EIO;
        else rc = tb_map_file(src, &m);
        if (!rc) {
            const cJSON *sha = cJSON_GetObjectItemCaseSensitive(e, "sha256");
            if (cJSON_IsString(sha)) {
                tb_sha256 h;
                uint8_t dig[32];
                char hex[65];
                tb_sha256_init(&h);
                tb_sha256_update(&h, m.data, m.size);
                tb_sha256_final(&h, dig);
                tb_sha256_hex(dig, hex);
                if (strcmp(hex, sha->valuestring))
                    rc = tb_fail(TB_EDATA, "%s: SHA-256 %s does not match the index (%s)", src, hex, sha->valuestring);
            }
        }
        if (!rc) {
            FILE *fp = fopen(dst, "wb");
            if (!fp) rc = tb_fail(TB_EIO, "%s: cannot create: %s", label, strerror(errno));
            else {
                rc = tb_write_all(fp, m.data, m.size, label);
                if (!rc && (fflush(fp) || tb_fsync(fileno(fp)))) rc = tb_fail(TB_EIO, "%s: write error: %s", label, strerror(errno));
                if (fclose(fp) && !rc) rc = tb_fail(TB_EIO, "%s: close: %s", label, strerror(errno));
            }
        }
        tb_unmap(&m);
        free(src);
        free(dst);
        free(label);
    }
    return rc;
}

static const char *torch_dtype_name(tb_dtype dt)
{
    return dt == TB_BF16 ? "bfloat16" : dt == TB_F16 ? "float16" : "float32";
}

/* the .tbm's config; with --dtype, its dtype keys follow; compressed output
 * adds the compressed-tensors block ModelCompressor.update_config writes */
static char *config_text(const plan *pl, const tb_export_summary *s)
{
    const cJSON *src = cJSON_GetObjectItemCaseSensitive((const cJSON *)pl->t->json, "config");
    cJSON *cfg = cJSON_Duplicate(src, 1);
    if (!cfg) { tb_fail(TB_EIO, "out of memory"); return NULL; }
    if (pl->o->dtype >= 0) {
        const char *name = torch_dtype_name((tb_dtype)pl->o->dtype);
        int had = 0;
        static const char *const keys[] = {"torch_dtype", "dtype"};
        for (int k = 0; k < 2; k++)
            if (cJSON_GetObjectItemCaseSensitive(cfg, keys[k])) {
                cJSON_ReplaceItemInObjectCaseSensitive(cfg, keys[k], cJSON_CreateString(name));
                had = 1;
            }
        if (!had) cJSON_AddStringToObject(cfg, "torch_dtype", name);
    }
    int ok = 1;
    if (s->sparsity_format[0]) {
        cJSON *q = cJSON_AddObjectToObject(cfg, "quantization_config"), *sp = NULL, *targets = NULL;
        ok = q && cJSON_AddStringToObject(q, "quant_method", "compressed-tensors") &&
             cJSON_AddStringToObject(q, "version", CT_VERSION) && (sp = cJSON_AddObjectToObject(q, "sparsity_config")) &&
             cJSON_AddObjectToObject(q, "transform_config") &&
             cJSON_AddStringToObject(sp, "format", s->sparsity_format) &&
             cJSON_AddNumberToObject(sp, "global_sparsity", s->global_sparsity) &&
             cJSON_AddArrayToObject(sp, "ignore") && cJSON_AddFalseToObject(sp, "registry_requires_subclass") &&
             cJSON_AddStringToObject(sp, "sparsity_structure",
                                     strcmp(s->sparsity_format, "sparse-24-bitmask") ? "unstructured" : "2:4") &&
             (targets = cJSON_AddArrayToObject(sp, "targets"));
        for (int i = 0; ok && i < pl->n; i++)
            if (pl->u[i].how != H_DENSE) ok = cJSON_AddItemToArray(targets, cJSON_CreateString(pl->u[i].module));
    }
    char *text = ok ? cJSON_Print(cfg) : NULL;
    cJSON_Delete(cfg);
    if (!text) { tb_fail(TB_EIO, "out of memory"); return NULL; }
    char *withnl = joined(text, "\n");
    free(text);
    return withnl;
}

static char *index_text(const plan *pl, uint64_t total)
{
    cJSON *root = cJSON_CreateObject(), *meta = NULL, *map = NULL;
    char num[32];
    snprintf(num, sizeof num, "%llu", (unsigned long long)total);
    int ok = root && (meta = cJSON_AddObjectToObject(root, "metadata")) &&
             cJSON_AddItemToObject(meta, "total_size", cJSON_CreateRaw(num)) &&
             (map = cJSON_AddObjectToObject(root, "weight_map"));
    static const char *const parts[] = {".shape", ".compressed", ".bitmask", ".row_offsets"};
    for (int i = 0; ok && i < pl->n; i++) {
        const unit *u = &pl->u[i];
        const char *file = pl->file_names[u->file];
        if (u->how == H_DENSE) { ok = cJSON_AddStringToObject(map, u->name, file) != NULL; continue; }
        for (int k = 0; ok && k < (u->how == H_CTBM ? 4 : 3); k++) {
            char *nm = joined(u->module, parts[k]);
            ok = nm && cJSON_AddStringToObject(map, nm, file);
            free(nm);
        }
    }
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) { tb_fail(TB_EIO, "out of memory"); return NULL; }
    char *withnl = joined(text, "\n");
    free(text);
    return withnl;
}

static int write_file(plan *pl, int f, const char *tmp, const char *out_dir, int *done)
{
    char *path = tb_path_join(tmp, pl->file_names[f]), *label = tb_path_join(out_dir, pl->file_names[f]);
    st_writer *w = st_writer_new();
    FILE *fp = NULL;
    int rc = path && label && w ? st_writer_meta(w, "format", "pt") : TB_EIO; /* transformers wants "pt" */
    for (int i = 0; i < pl->n && !rc; i++)
        if (pl->u[i].file == f) rc = declare_unit(w, &pl->u[i]);
    if (!rc && !(fp = fopen(path, "wb"))) rc = tb_fail(TB_EIO, "%s: cannot create: %s", label, strerror(errno));
    if (!rc) rc = st_writer_begin(w, fp, label);
    for (int i = 0; i < pl->n && !rc; i++) {
        unit *u = &pl->u[i];
        if (u->file != f) continue;
        switch (u->how) {
        case H_CT24: rc = write_ct24(w, u, &pl->zeros); break;
        case H_CTBM: rc = write_ctbm(w, u, &pl->zeros); break;
        default: rc = write_dense(w, u, &pl->zeros);
        }
        if (rc) tb_err_context("%s: tensor '%s'", label, u->name);
        else if (pl->o->on_tensor) pl->o->on_tensor(pl->o->ctx, u->name, ++*done, pl->n);
    }
    if (!rc) rc = st_writer_finish(w);
    if (fp) {
        if (!rc && (fflush(fp) || tb_fsync(fileno(fp)))) rc = tb_fail(TB_EIO, "%s: write error: %s", label, strerror(errno));
        if (fclose(fp) && !rc) rc = tb_fail(TB_EIO, "%s: close: %s", label, strerror(errno));
    }
    st_writer_free(w);
    free(path);
    free(label);
    return rc;
}

int tb_export_model(const tb_tbm *t, const char *out_dir, const tb_export_opts *o, tb_export_summary *s)
{
    memset(s, 0, sizeof *s);
    if (o->dtype >= 0 && o->dtype != TB_F32 && o->dtype != TB_F16 && o->dtype != TB_BF16)
        return tb_fail(TB_EUSAGE, "export dtype must be F32, F16 or BF16");
    struct stat st;
    if (stat(out_dir, &st) == 0 && S_ISDIR(st.st_mode) &&
        (contains_model(out_dir, t->dir) || (t->base && contains_model(out_dir, t->base))))
        return tb_fail(TB_EUSAGE, "%s: holds the model being exported; choose another directory", out_dir);

    plan pl;
    char *cfg = NULL, *idx = NULL;
    const char **names = NULL;
    tb_outdir d = {0};
    int rc = build_plan(&pl, t, o, s);
    const cJSON *src_cfg = cJSON_GetObjectItemCaseSensitive((const cJSON *)t->json, "config");
    if (!rc && s->sparsity_format[0] && cJSON_GetObjectItemCaseSensitive(src_cfg, "quantization_config"))
        rc = tb_fail(TB_EDATA, "%s: the config already has a quantization_config; compressed-tensors output would "
                               "replace it (export --format dense)", t->path);

    /* every file that may appear in the directory: shards, side files,
     * config.json, the index */
    const cJSON *files = cJSON_GetObjectItemCaseSensitive((const cJSON *)t->json, "files");
    int n_side = cJSON_IsObject(files) ? cJSON_GetArraySize(files) : 0, n_names = 0;
    if (!rc && !(names = tb_calloc((size_t)(pl.n_files + n_side + 2), sizeof *names))) rc = TB_EIO;
    for (int f = 0; !rc && f < pl.n_files; f++) names[n_names++] = pl.file_names[f];
    for (const cJSON *e = !rc && n_side ? files->child : NULL; e; e = e->next) names[n_names++] = e->string;
    if (!rc) {
        names[n_names++] = "config.json";
        names[n_names++] = "model.safetensors.index.json";
        /* the space check counts tensor bytes; headers and side files are small */
        rc = tb_outdir_begin(&d, out_dir, o->force, names, n_names, s->bytes);
    }
    const char *cfg_path = rc ? NULL : tb_outdir_path(&d, n_names - 2);
    const char *idx_path = rc ? NULL : tb_outdir_path(&d, n_names - 1);

    int done = 0;
    for (int f = 0; f < pl.n_files && !rc; f++) rc = write_file(&pl, f, d.tmp, out_dir, &done);
    if (!rc) {
        s->global_sparsity = pl.params ? (double)pl.zeros / (double)pl.params : 0;
        rc = copy_side_files(t, d.tmp, out_dir);
    }
    if (!rc && !(cfg = config_text(&pl, s))) rc = TB_EIO;
    if (!rc) {
        char *label = tb_path_join(out_dir, "config.json");
        rc = label ? tb_write_text_file(cfg_path, label, cfg) : TB_EIO;
        free(label);
    }
    if (!rc && pl.n_files > 1) {
        char *label = tb_path_join(out_dir, "model.safetensors.index.json");
        if (!(idx = index_text(&pl, s->bytes))) rc = TB_EIO;
        else rc = label ? tb_write_text_file(idx_path, label, idx) : TB_EIO;
        free(label);
    }
    if (!rc) rc = tb_outdir_commit(&d);
    tb_outdir_abort(&d);
    free(names);
    free_plan(&pl);
    free(cfg);
    free(idx);
    return rc;
}
