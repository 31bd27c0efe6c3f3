/* tb_tbm.c - the .tbm model index: building (tb-merge) and opening. */
#include "tb_tbm.h"
#include "tb_error.h"
#include "tb_io.h"
#include "tb_json.h"
#include "tb_sha256.h"
#include "tb_threads.h"
#include "tb_version.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TBM_FORMAT "tensorbit.tbm"
#define TBM_VERSION 1

/* HF side files carried beside the index, so its directory also serves the tokenizer */
static const char *const side_files[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                         "special_tokens_map.json"};

static void sha256_bytes(const void *data, size_t n, char hex[65])
{
    tb_sha256 h;
    uint8_t d[32];
    tb_sha256_init(&h);
    tb_sha256_update(&h, data, n);
    tb_sha256_final(&h, d);
    tb_sha256_hex(d, hex);
}

static char *dir_of(const char *path)
{
    char *copy = tb_strdup(path);
    if (!copy) return NULL;
    char *d = tb_strdup(dirname(copy));
    free(copy);
    return d;
}

static const char *base_of(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static cJSON *raw_u64(uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return cJSON_CreateRaw(buf);
}

int tb_is_tbm(const char *path)
{
    if (!tb_file_exists(path)) return 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    char head[256] = {0};
    size_t n = fread(head, 1, sizeof head - 1, fp);
    fclose(fp);
    head[n] = 0;
    return n > 0 && strstr(head, "\"" TBM_FORMAT "\"") != NULL;
}

/* ------------------------------------------------------------------ merge */

/* Absolute byte offsets of a stored tensor within its shard file. */
static cJSON *part(const st_file *f, const st_tensor *t)
{
    cJSON *p = cJSON_CreateObject(), *off = cJSON_CreateArray();
    uint64_t base = 8 + f->header_size;
    cJSON_AddStringToObject(p, "tensor", t->name);
    cJSON_AddItemToArray(off, raw_u64(base + t->begin));
    cJSON_AddItemToArray(off, raw_u64(base + t->end));
    cJSON_AddItemToObject(p, "offsets", off);
    return p;
}

static cJSON *shape_json(int ndim, const int64_t *shape)
{
    cJSON *a = cJSON_CreateArray();
    for (int d = 0; d < ndim; d++) cJSON_AddItemToArray(a, raw_u64((uint64_t)shape[d]));
    return a;
}

#define RECIPE_KEY "tensorbit.recipe"

/* Is this stage (by its command line, else its file) in stages already? */
static int has_stage(const cJSON *stages, const cJSON *stage)
{
    const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(stage, "metadata"), "command");
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(stage, "file");
    for (const cJSON *s = stages->child; s; s = s->next) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "metadata"), "command");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(s, "file");
        if (cJSON_IsString(cmd) && cJSON_IsString(c) ? !strcmp(cmd->valuestring, c->valuestring)
            : cJSON_IsString(file) && cJSON_IsString(f) && !strcmp(file->valuestring, f->valuestring))
            return 1;
    }
    return 0;
}

/* Append f's own stage, then the stages it carries (RECIPE_KEY), to stages.
 * for_output: for an output's own metadata, without how long a stage took, so
 * that the same inputs and options give the same bytes. */
static void add_file_stages(cJSON *stages, const st_file *f, const char *label, int for_output)
{
    cJSON *stage = cJSON_CreateObject(), *meta = cJSON_CreateObject();
    const char *kind = st_meta(f, "tensorbit.kind");
    cJSON_AddStringToObject(stage, "kind", kind ? kind : "safetensors");
    cJSON_AddStringToObject(stage, "file", label);
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], "tensorbit.tensors") && strcmp(f->meta_keys[i], RECIPE_KEY) &&
            !(for_output && !strcmp(f->meta_keys[i], "seconds")))
            cJSON_AddStringToObject(meta, f->meta_keys[i], f->meta_vals[i]);
    cJSON_AddItemToObject(stage, "metadata", meta);
    if (has_stage(stages, stage)) cJSON_Delete(stage);
    else cJSON_AddItemToArray(stages, stage);
    const char *carried = st_meta(f, RECIPE_KEY);
    cJSON *up = carried ? cJSON_Parse(carried) : NULL;
    for (cJSON *s = cJSON_IsArray(up) ? up->child : NULL; s; s = s->next)
        if (cJSON_IsObject(s) && !has_stage(stages, s)) cJSON_AddItemToArray(stages, cJSON_Duplicate(s, 1));
    cJSON_Delete(up);
}

char *tb_recipe_of_inputs(const st_file *const *inputs, int n)
{
    cJSON *stages = cJSON_CreateArray();
    for (int i = 0; i < n && stages; i++)
        if (inputs[i] && inputs[i]->path && st_meta(inputs[i], "tensorbit.kind"))
            add_file_stages(stages, inputs[i], inputs[i]->path, 1);
    char *s = stages && stages->child ? cJSON_PrintUnformatted(stages) : NULL;
    cJSON_Delete(stages);
    return s;
}

/* Add a stage's metadata to the recipe, then follow the files it names. */
static void add_stage(cJSON *stages, const char *path, int depth)
{
    if (depth > 4 || !tb_file_exists(path)) return;
    for (cJSON *s = stages->child; s; s = s->next)
        if (!strcmp(cJSON_GetObjectItem(s, "file")->valuestring, path)) return;
    st_file f;
    if (st_open(&f, path) != TB_OK) {
        tb_err_clear(); /* a missing or foreign upstream file only shortens the recipe */
        return;
    }
    add_file_stages(stages, &f, path, 0);
    static const char *const upstream[] = {"packed_from", "masks", "scores", "stats", "fisher", "tokens_file"};
    char paths[6][1024];
    int np = 0;
    for (size_t i = 0; i < sizeof upstream / sizeof upstream[0]; i++) {
        const char *p = st_meta(&f, upstream[i]);
        if (p && np < 6) snprintf(paths[np++], sizeof paths[0], "%s", p);
    }
    st_close(&f);
    for (int i = 0; i < np; i++) add_stage(stages, paths[i], depth + 1);
}

static int copy_file(const char *src, const char *dst, char hex[65])
{
    tb_mapped m;
    int rc = tb_map_file(src, &m);
    if (rc) return rc;
    sha256_bytes(m.data, m.size, hex);
    tb_outfile o;
    if (!(rc = tb_out_open(&o, dst))) {
        rc = tb_write_all(o.fp, m.data, m.size, dst);
        if (!rc) rc = tb_out_commit(&o);
        else tb_out_abort(&o);
    }
    tb_unmap(&m);
    return rc;
}

/* Names of the tensors a decoder with this config must have. */
static int expected_names(const tb_config *c, char ***out, int *n_out)
{
    static const char *const per_layer[] = {
        "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
        "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"};
    int n = c->n_layers * 9 + 3;
    char **names = tb_calloc((size_t)n, sizeof(char *));
    if (!names) return TB_EIO;
    int k = 0;
    char buf[256];
    names[k++] = tb_strdup("model.embed_tokens.weight");
    names[k++] = tb_strdup("model.norm.weight");
    if (!c->tie_word_embeddings) names[k++] = tb_strdup("lm_head.weight");
    for (int l = 0; l < c->n_layers; l++)
        for (int i = 0; i < 9; i++) {
            snprintf(buf, sizeof buf, "model.layers.%d.%s", l, per_layer[i]);
            names[k++] = tb_strdup(buf);
        }
    *out = names;
    *n_out = k;
    return TB_OK;
}

/* The path of file `to` relative to directory `from` (both absolute and
 * resolved): "../" for each component of `from` past the common prefix,
 * then the rest of `to`. */
static char *relative_path(const char *from, const char *to)
{
    size_t common = 0; /* length of the common prefix, ending at a component boundary */
    for (size_t i = 0;; i++) {
        int fend = from[i] == 0 || from[i] == '/', tend = to[i] == 0 || to[i] == '/';
        if (fend && tend) common = i;
        if (from[i] != to[i] || from[i] == 0) break;
    }
    int ups = 0;
    for (const char *p = from + common; *p; p++)
        if (*p == '/' && p[1]) ups++;
    const char *rest = to + common;
    while (*rest == '/') rest++;
    char *out = tb_malloc((size_t)ups * 3 + strlen(rest) + 1);
    if (!out) return NULL;
    char *q = out;
    for (int i = 0; i < ups; i++, q += 3) memcpy(q, "../", 3);
    strcpy(q, rest);
    return out;
}

/* What the index records for a shard: its name beside the index (copied there
 * first with copy), else its path relative to the index's directory. */
static char *shard_entry(const char *shard, const char *out_dir, int copy)
{
    char *sdir = dir_of(shard), *rs = sdir ? realpath(sdir, NULL) : NULL, *ro = realpath(out_dir, NULL);
    char *entry = NULL;
    if (!rs || !ro) tb_fail(TB_EIO, "%s: cannot resolve its directory", rs ? out_dir : shard);
    else if (!strcmp(rs, ro)) entry = tb_strdup(base_of(shard));
    else if (copy) {
        char *dst = tb_path_join(out_dir, base_of(shard)), hex[65];
        if (dst && tb_file_exists(dst))
            tb_fail(TB_EUSAGE, "%s: --copy would replace %s: rename one of them", shard, dst);
        else if (dst && !copy_file(shard, dst, hex))
            entry = tb_strdup(base_of(shard));
        free(dst);
    } else {
        char *abs = tb_path_join(rs, base_of(shard));
        entry = abs ? relative_path(ro, abs) : NULL;
        free(abs);
    }
    free(sdir);
    free(rs);
    free(ro);
    return entry;
}

int tb_tbm_merge(const char *out_path, const char *model_dir, const char *const *shard_paths, int n,
                 const char *command, int partial, int copy)
{
    int rc = TB_OK;
    char *out_dir = dir_of(out_path), *cfg_path = tb_path_join(model_dir, "config.json"), *cfg_text = NULL;
    cJSON *root = cJSON_CreateObject();
    tb_pack_file *shards = tb_calloc((size_t)(n > 0 ? n : 1), sizeof *shards);
    int opened = 0;
    if (!out_dir || !cfg_path || !root || !shards) { rc = tb_fail(TB_EIO, "out of memory"); goto done; }
    if (n < 1) { rc = tb_fail(TB_EUSAGE, "no shards to merge"); goto done; }

    tb_config cfg;
    if ((rc = tb_read_text(cfg_path, &cfg_text, NULL)) || (rc = tb_config_parse(&cfg, cfg_path, cfg_text))) goto done;
    cJSON_AddStringToObject(root, "format", TBM_FORMAT);
    cJSON_AddNumberToObject(root, "format_version", TBM_VERSION);
    cJSON_AddStringToObject(root, "tensorbit_version", TB_VERSION);
    cJSON_AddItemToObject(root, "config", cJSON_Parse(cfg_text));

    /* side files, copied beside the index unless they already are there */
    cJSON *files = cJSON_AddObjectToObject(root, "files");
    for (size_t i = 0; i < sizeof side_files / sizeof side_files[0] && !rc; i++) {
        char *src = tb_path_join(model_dir, side_files[i]), *dst = tb_path_join(out_dir, side_files[i]);
        if (src && dst && tb_file_exists(src)) {
            char hex[65];
            char *rs = realpath(src, NULL), *rd = tb_file_exists(dst) ? realpath(dst, NULL) : NULL;
            if (rd && rs && !strcmp(rs, rd)) {
                tb_mapped m;
                if (!(rc = tb_map_file(src, &m))) { sha256_bytes(m.data, m.size, hex); tb_unmap(&m); }
            } else {
                rc = copy_file(src, dst, hex);
            }
            free(rs);
            free(rd);
            if (!rc) cJSON_AddStringToObject(cJSON_AddObjectToObject(files, side_files[i]), "sha256", hex);
        }
        free(src);
        free(dst);
    }
    if (rc) goto done;

    cJSON *jshards = cJSON_AddArrayToObject(root, "shards");
    cJSON *tensors = cJSON_AddObjectToObject(root, "tensors");
    for (int s = 0; s < n && !rc; s++) {
        if ((rc = tb_pack_open(&shards[s], shard_paths[s]))) break;
        opened++;
        const tb_pack_file *p = &shards[s];
        char hex[65];
        sha256_bytes(p->f.map.data, p->f.map.size, hex);
        cJSON *js = cJSON_CreateObject();
        char *entry = shard_entry(shard_paths[s], out_dir, copy);
        if (!entry) {
            cJSON_Delete(js);
            rc = tb_errcode() ? tb_errcode() : TB_EIO;
            break;
        }
        cJSON_AddStringToObject(js, "file", entry);
        free(entry);
        cJSON_AddItemToObject(js, "bytes", raw_u64(p->f.map.size));
        cJSON_AddStringToObject(js, "sha256", hex);
        cJSON_AddItemToArray(jshards, js);

        for (int i = 0; i < p->n_packed && !rc; i++) {
            const tb_packed *w = &p->packed[i];
            if (cJSON_GetObjectItemCaseSensitive(tensors, w->name)) {
                rc = tb_fail(TB_EDATA, "tensor '%s' is in more than one shard (again in %s)", w->name, shard_paths[s]);
                break;
            }
            cJSON *jt = cJSON_CreateObject(), *parts = cJSON_CreateObject();
            cJSON_AddNumberToObject(jt, "shard", s);
            cJSON_AddStringToObject(jt, "kind", w->kind == TB_PACKED_NM ? "nm" : "masked");
            cJSON_AddStringToObject(jt, "dtype", tb_dtype_name(w->dtype));
            cJSON_AddItemToObject(jt, "shape", shape_json(2, (int64_t[]){w->rows, w->cols}));
            char pat[16] = "unstructured";
            if (w->kind == TB_PACKED_NM) snprintf(pat, sizeof pat, "%d:%d", w->n, w->m);
            cJSON_AddStringToObject(jt, "pattern", pat);
            cJSON_AddBoolToObject(jt, "permuted", w->perm != NULL);
            const st_tensor *pp[3] = {w->kind == TB_PACKED_NM ? w->values : w->dense,
                                      w->kind == TB_PACKED_NM ? w->indices : w->mask, w->perm};
            const char *pn[3] = {w->kind == TB_PACKED_NM ? "values" : "data", w->kind == TB_PACKED_NM ? "indices" : "mask",
                                 "perm"};
            for (int k = 0; k < 3; k++) {
                if (!pp[k]) continue;
                cJSON_AddItemToObject(parts, pn[k], part(&p->f, pp[k]));
            }
            cJSON_AddItemToObject(jt, "parts", parts);
            if (w->compensation) cJSON_AddStringToObject(jt, "compensation", w->compensation);
            cJSON_AddItemToObject(tensors, w->name, jt);
        }
        for (int i = 0; i < p->f.n_tensors && !rc; i++) {
            const st_tensor *t = &p->f.tensors[i];
            if (tb_pack_is_part(p, t)) continue; /* not a model tensor */
            if (cJSON_GetObjectItemCaseSensitive(tensors, t->name)) {
                rc = tb_fail(TB_EDATA, "tensor '%s' is in more than one shard (again in %s)", t->name, shard_paths[s]);
                break;
            }
            cJSON *jt = cJSON_CreateObject(), *parts = cJSON_CreateObject();
            cJSON_AddNumberToObject(jt, "shard", s);
            cJSON_AddStringToObject(jt, "kind", "dense");
            cJSON_AddStringToObject(jt, "dtype", tb_dtype_name(t->dtype));
            cJSON_AddItemToObject(jt, "shape", shape_json(t->ndim, t->shape));
            cJSON_AddItemToObject(parts, "data", part(&p->f, t));
            cJSON_AddItemToObject(jt, "parts", parts);
            cJSON_AddItemToObject(tensors, t->name, jt);
        }
    }
    if (rc) goto done;

    char **names;
    int n_names;
    if ((rc = expected_names(&cfg, &names, &n_names))) goto done;
    for (int i = 0; i < n_names; i++) {
        if (!rc && !partial && !cJSON_GetObjectItemCaseSensitive(tensors, names[i]))
            rc = tb_fail(TB_EDATA, "tensor '%s' is in no shard (--partial reads such tensors from the model)", names[i]);
        free(names[i]);
    }
    free(names);
    if (rc) goto done;

    if (partial) {
        char *abs = realpath(model_dir, NULL);
        if (!abs) { rc = tb_fail(TB_EIO, "%s: cannot resolve the base model's path", model_dir); goto done; }
        cJSON_AddStringToObject(root, "base", abs);
        free(abs);
    }
    cJSON *recipe = cJSON_AddObjectToObject(root, "recipe");
    cJSON_AddStringToObject(recipe, "merge_command", command ? command : "");
    cJSON *stages = cJSON_AddArrayToObject(recipe, "stages");
    for (int s = 0; s < n; s++) add_stage(stages, shard_paths[s], 0);

    char *text = cJSON_Print(root);
    if (!text) { rc = tb_fail(TB_EIO, "out of memory printing %s", out_path); goto done; }
    tb_outfile o;
    if (!(rc = tb_out_open(&o, out_path))) {
        rc = tb_write_all(o.fp, text, strlen(text), out_path);
        if (!rc) rc = tb_write_all(o.fp, "\n", 1, out_path);
        if (!rc) rc = tb_out_commit(&o);
        else tb_out_abort(&o);
    }
    free(text);
done:
    for (int s = 0; s < opened; s++) tb_pack_close(&shards[s]);
    free(shards);
    cJSON_Delete(root);
    free(cfg_text);
    free(cfg_path);
    free(out_dir);
    return rc;
}

/* ------------------------------------------------------------------- open */

static int get_u64(const cJSON *j, uint64_t *v) { return tb_json_u64(j, UINT64_MAX, v); }

/* one shard of an index being opened: where it is, what the index says its
 * SHA-256 is, and (after hash_shards) what it is */
typedef struct {
    const char *name, *sha; /* the index's strings */
    char *path;
    tb_mapped map;
    int mapped;
    char hex[65];
} shard_check;

static void hash_shards(void *ctx, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    shard_check *c = ctx;
    for (int64_t s = begin; s < end; s++) sha256_bytes(c[s].map.data, c[s].map.size, c[s].hex);
}

int tb_tbm_open(tb_tbm *t, const char *path, int verify)
{
    memset(t, 0, sizeof *t);
    char *text = NULL;
    int rc = tb_read_text(path, &text, NULL);
    if (rc) return rc;
    cJSON *root = cJSON_Parse(text);
    free(text);
    t->json = root;
    t->path = tb_strdup(path);
    t->dir = dir_of(path);
    if (!t->path || !t->dir) { tb_tbm_close(t); return TB_EIO; }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "format_version");
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(root, "config");
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(root, "shards");
    const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    if (!root || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, TBM_FORMAT))
        rc = tb_fail(TB_EDATA, "%s: not a tensorbit .tbm index", path);
    else if (!cJSON_IsNumber(ver) || ver->valueint != TBM_VERSION)
        rc = tb_fail(TB_EDATA, "%s: format_version %d not supported (this is %d)", path,
                     cJSON_IsNumber(ver) ? ver->valueint : -1, TBM_VERSION);
    else if (!cJSON_IsObject(cfg) || !cJSON_IsArray(shards) || !cJSON_IsObject(tensors))
        rc = tb_fail(TB_EDATA, "%s: missing config, shards or tensors", path);
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(root, "base");
    if (!rc && base && (!cJSON_IsString(base) || !(t->base = tb_strdup(base->valuestring))))
        rc = tb_fail(TB_EDATA, "%s: bad base", path);
    if (!rc) {
        char *ct = cJSON_PrintUnformatted(cfg);
        rc = ct ? tb_config_parse(&t->cfg, path, ct) : TB_EIO;
        free(ct);
    }
    int n = rc ? 0 : cJSON_GetArraySize(shards);
    if (!rc && !(t->shards = tb_calloc((size_t)(n ? n : 1), sizeof *t->shards))) rc = TB_EIO;
    /* each shard: its entry, its size, then (verify) its SHA-256 - hashed on
     * threads, one shard each: a 7B model's shards are gigabytes */
    shard_check *chk = rc ? NULL : tb_calloc((size_t)(n ? n : 1), sizeof *chk);
    if (!rc && !chk) rc = TB_EIO;
    for (int s = 0; s < n && !rc; s++) {
        const cJSON *js = cJSON_GetArrayItem(shards, s);
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(js, "file");
        const cJSON *sha = cJSON_GetObjectItemCaseSensitive(js, "sha256");
        uint64_t bytes;
        if (!cJSON_IsString(file) || !*file->valuestring || !cJSON_IsString(sha) ||
            get_u64(cJSON_GetObjectItemCaseSensitive(js, "bytes"), &bytes)) {
            rc = tb_fail(TB_EDATA, "%s: shard %d: needs file, bytes and sha256", path, s);
            break;
        }
        chk[s].name = file->valuestring;
        chk[s].sha = sha->valuestring;
        /* a name or a path relative to the index's directory, or absolute */
        chk[s].path = file->valuestring[0] == '/' ? tb_strdup(file->valuestring) : tb_path_join(t->dir, file->valuestring);
        if (!chk[s].path) { rc = TB_EIO; break; }
        if ((rc = tb_map_file(chk[s].path, &chk[s].map))) break;
        chk[s].mapped = 1;
        if (chk[s].map.size != bytes)
            rc = tb_fail(TB_EDATA, "%s: shard '%s' has %zu bytes, the index says %" PRIu64, path, file->valuestring,
                         chk[s].map.size, bytes);
    }
    if (!rc && verify) tb_parallel_for(tb_default_threads(), n, hash_shards, chk);
    for (int s = 0; s < n && !rc && verify; s++)
        if (strcmp(chk[s].hex, chk[s].sha))
            rc = tb_fail(TB_EDATA, "%s: shard '%s': SHA-256 %s does not match the index (%s)", path, chk[s].name,
                         chk[s].hex, chk[s].sha);
    for (int s = 0; chk && s < n; s++)
        if (chk[s].mapped) tb_unmap(&chk[s].map);
    for (int s = 0; s < n && !rc; s++) {
        rc = tb_pack_open(&t->shards[s], chk[s].path);
        if (!rc) t->n_shards++;
    }
    for (int s = 0; chk && s < n; s++) free(chk[s].path);
    free(chk);
    /* every entry must point at what its shard really holds */
    for (const cJSON *e = rc ? NULL : tensors->child; e && !rc; e = e->next) {
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shard"), *kind = cJSON_GetObjectItemCaseSensitive(e, "kind");
        uint64_t si;
        if (tb_json_u64(sh, (uint64_t)(t->n_shards > 0 ? t->n_shards - 1 : 0), &si) || !t->n_shards || !cJSON_IsString(kind)) {
            rc = tb_fail(TB_EDATA, "%s: tensor '%s': bad shard or kind", path, e->string);
            break;
        }
        const tb_pack_file *p = &t->shards[si];
        if (!strcmp(kind->valuestring, "dense")) {
            if (!st_find(&p->f, e->string)) rc = tb_fail(TB_EDATA, "%s: tensor '%s' not in its shard", path, e->string);
        } else if (!tb_pack_find(p, e->string)) {
            rc = tb_fail(TB_EDATA, "%s: pruned tensor '%s' not in its shard", path, e->string);
        }
    }
    if (rc) tb_tbm_close(t);
    return rc;
}

/* ------------------------------------------------------------------- base */

#define TB_MAX_ALLOWED_BASES 16
static char *allowed_bases[TB_MAX_ALLOWED_BASES];
static int n_allowed_bases;

int tb_tbm_allow_base(const char *dir)
{
    char *r = realpath(dir, NULL);
    if (!r) return tb_fail(TB_EIO, "%s: %s", dir, strerror(errno));
    if (n_allowed_bases == TB_MAX_ALLOWED_BASES) { free(r); return tb_fail(TB_EUSAGE, "too many base directories"); }
    allowed_bases[n_allowed_bases++] = r;
    return TB_OK;
}

/* is `path` (resolved) `dir` or below it? */
static int path_within(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    if (n == 1 && dir[0] == '/') return 1;
    return !strncmp(path, dir, n) && (path[n] == 0 || path[n] == '/');
}

int tb_tbm_open_base(const tb_tbm *t, tb_ckpt *c)
{
    memset(c, 0, sizeof *c);
    char *joined = t->base[0] == '/' ? tb_strdup(t->base) : tb_path_join(t->dir, t->base);
    if (!joined) return TB_EIO;
    char *real = realpath(joined, NULL), *dir = realpath(t->dir, NULL);
    int rc = TB_OK, ok = 0;
    if (!real) rc = tb_fail(TB_EIO, "%s: base '%s': %s", t->path, t->base, strerror(errno));
    else if (!dir) rc = tb_fail(TB_EIO, "%s: %s", t->dir, strerror(errno));
    if (!rc) {
        ok = path_within(real, dir);
        for (int i = 0; i < n_allowed_bases && !ok; i++) ok = !strcmp(real, allowed_bases[i]);
        if (!ok)
            rc = tb_fail(TB_EDATA, "%s: base '%s' lies outside the index's directory; name it with --base to read it",
                         t->path, t->base);
    }
    if (!rc) rc = tb_ckpt_open(c, real);
    free(real);
    free(dir);
    free(joined);
    return rc;
}

void tb_tbm_close(tb_tbm *t)
{
    for (int s = 0; s < t->n_shards; s++) tb_pack_close(&t->shards[s]);
    free(t->shards);
    cJSON_Delete(t->json);
    free(t->base);
    free(t->path);
    free(t->dir);
    memset(t, 0, sizeof *t);
}

static const cJSON *entry(const tb_tbm *t, const char *name, const char *kind_wanted, int *shard)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t->json, "tensors"), name);
    if (!e) return NULL;
    const char *kind = cJSON_GetObjectItemCaseSensitive(e, "kind")->valuestring;
    int dense = !strcmp(kind, "dense");
    if (dense != !strcmp(kind_wanted, "dense")) return NULL;
    *shard = cJSON_GetObjectItemCaseSensitive(e, "shard")->valueint;
    return e;
}

const st_tensor *tb_tbm_find_dense(const tb_tbm *t, const char *name)
{
    int s;
    return entry(t, name, "dense", &s) ? st_find(&t->shards[s].f, name) : NULL;
}

const tb_packed *tb_tbm_find_packed(const tb_tbm *t, const char *name)
{
    int s;
    return entry(t, name, "packed", &s) ? tb_pack_find(&t->shards[s], name) : NULL;
}
