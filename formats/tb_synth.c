#include "tb_synth.h"
#include "tb_config.h"
#include "tb_error.h"
#include "tb_io.h"
#include "tb_outdir.h"
#include "tb_safetensors.h"
#include "tb_threads.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SYNTH_DEFAULT_SHARD 5000000000ull /* 5 GB, transformers' default */
#define SYNTH_BLOCK (1 << 20)             /* elements generated and written at a time */

/* ------------------------------------------------------------ random */

/* SplitMix64's output function: a bijective mix, so hashing a counter gives
 * a counter-based generator (any element computable on its own). */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t name_key(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* Box-Muller on pair p of the stream: elements 2p (cos) and 2p+1 (sin). */
static void normal_pair(uint64_t stream, uint64_t p, double *z0, double *z1)
{
    uint64_t a = mix64(stream + 2 * p * 0x9e3779b97f4a7c15ull);
    uint64_t b = mix64(stream + (2 * p + 1) * 0x9e3779b97f4a7c15ull);
    double u1 = ((a >> 11) + 1) * 0x1.0p-53; /* (0, 1]: log is finite */
    double u2 = (b >> 11) * 0x1.0p-53;
    double r = sqrt(-2.0 * log(u1)), t = 6.283185307179586 * u2;
    *z0 = r * cos(t);
    *z1 = r * sin(t);
}

void tb_synth_normal(uint64_t seed, uint64_t key, uint64_t first, int64_t n, float *out)
{
    uint64_t stream = mix64(seed ^ mix64(key));
    int64_t i = 0;
    double z0, z1;
    if (n > 0 && (first & 1)) {
        normal_pair(stream, first / 2, &z0, &z1);
        out[i++] = (float)z1;
    }
    for (; i + 1 < n; i += 2) {
        normal_pair(stream, (first + (uint64_t)i) / 2, &z0, &z1);
        out[i] = (float)z0;
        out[i + 1] = (float)z1;
    }
    if (i < n) {
        normal_pair(stream, (first + (uint64_t)i) / 2, &z0, &z1);
        out[i] = (float)z0;
    }
}

/* ------------------------------------------------------- the tensors */

enum { INIT_NORMAL, INIT_ONES, INIT_ZEROS };

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    int64_t numel;
    int init;
    int64_t zero_row; /* the embedding's padding row, or -1 */
    int file;
} synth_tensor;

typedef struct {
    synth_tensor *t;
    int n, cap;
} tensor_list;

static int add_tensor(tensor_list *l, const char *name, int ndim, int64_t d0, int64_t d1, int init)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        synth_tensor *nt = tb_realloc(l->t, (size_t)cap * sizeof *nt);
        if (!nt) return TB_EIO;
        l->t = nt;
        l->cap = cap;
    }
    synth_tensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->numel = ndim == 1 ? d0 : d0 * d1;
    t->init = init;
    t->zero_row = -1;
    return TB_OK;
}

/* the decoder's tensors in the order of transformers' state_dict */
static int list_tensors(const tb_config *c, int64_t pad_id, tensor_list *l)
{
    int64_t h = c->hidden_size, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t im = c->intermediate_size, v = c->vocab_size;
    int rc = add_tensor(l, "model.embed_tokens.weight", 2, v, h, INIT_NORMAL);
    if (!rc && pad_id >= 0 && pad_id < v) l->t[l->n - 1].zero_row = pad_id;
    char name[96];
#define ADD(suffix, nd, a, b, init)                                                       \
    do {                                                                                  \
        snprintf(name, sizeof name, "model.layers.%d.%s", layer, suffix);                 \
        if (!rc) rc = add_tensor(l, name, nd, a, b, init);                               \
    } while (0)
    for (int layer = 0; layer < c->n_layers && !rc; layer++) {
        ADD("self_attn.q_proj.weight", 2, q, h, INIT_NORMAL);
        if (c->attention_bias) ADD("self_attn.q_proj.bias", 1, q, 0, INIT_ZEROS);
        ADD("self_attn.k_proj.weight", 2, kv, h, INIT_NORMAL);
        if (c->attention_bias) ADD("self_attn.k_proj.bias", 1, kv, 0, INIT_ZEROS);
        ADD("self_attn.v_proj.weight", 2, kv, h, INIT_NORMAL);
        if (c->attention_bias) ADD("self_attn.v_proj.bias", 1, kv, 0, INIT_ZEROS);
        ADD("self_attn.o_proj.weight", 2, h, q, INIT_NORMAL);
        ADD("mlp.gate_proj.weight", 2, im, h, INIT_NORMAL);
        ADD("mlp.up_proj.weight", 2, im, h, INIT_NORMAL);
        ADD("mlp.down_proj.weight", 2, h, im, INIT_NORMAL);
        ADD("input_layernorm.weight", 1, h, 0, INIT_ONES);
        ADD("post_attention_layernorm.weight", 1, h, 0, INIT_ONES);
    }
#undef ADD
    if (!rc) rc = add_tensor(l, "model.norm.weight", 1, h, 0, INIT_ONES);
    if (!rc && !c->tie_word_embeddings) rc = add_tensor(l, "lm_head.weight", 2, v, h, INIT_NORMAL);
    return rc;
}

/* ------------------------------------------------------ generation */

typedef struct {
    const synth_tensor *t;
    uint64_t seed, key;
    double std;
    int64_t first, n;
    float *f32;
    void *out;
    tb_dtype dt;
} gen_job;

static void gen_range(void *ctx, int64_t b, int64_t e, int tid)
{
    (void)tid;
    const gen_job *j = ctx;
    float *f = j->f32 + b;
    int64_t n = e - b;
    if (j->t->init == INIT_NORMAL) {
        tb_synth_normal(j->seed, j->key, (uint64_t)(j->first + b), n, f);
        for (int64_t i = 0; i < n; i++) f[i] = (float)(f[i] * j->std);
        if (j->t->zero_row >= 0) {
            int64_t cols = j->t->shape[1], z0 = j->t->zero_row * cols, z1 = z0 + cols;
            for (int64_t i = 0; i < n; i++) {
                int64_t g = j->first + b + i;
                if (g >= z0 && g < z1) f[i] = 0.0f;
            }
        }
    } else {
        float v = j->t->init == INIT_ONES ? 1.0f : 0.0f;
        for (int64_t i = 0; i < n; i++) f[i] = v;
    }
    if (j->dt == TB_BF16) {
        uint16_t *o = (uint16_t *)j->out + b;
        for (int64_t i = 0; i < n; i++) o[i] = tb_f32_to_bf16(f[i]);
    } else if (j->dt == TB_F16) {
        uint16_t *o = (uint16_t *)j->out + b;
        for (int64_t i = 0; i < n; i++) o[i] = tb_f32_to_f16(f[i]);
    } /* F32: out is f32 itself */
}

typedef struct {
    const tb_synth_opts *o;
    double std;
    int n_threads;
    float *f32;
    void *out;
    uint64_t done, total;
} gen_state;

static int write_tensor(gen_state *g, st_writer *w, const synth_tensor *t)
{
    size_t es = tb_dtype_size(g->o->dtype);
    gen_job j = {.t = t, .seed = g->o->seed, .key = name_key(t->name), .std = g->std, .f32 = g->f32,
                 .out = g->o->dtype == TB_F32 ? (void *)g->f32 : g->out, .dt = g->o->dtype};
    for (int64_t first = 0; first < t->numel; first += SYNTH_BLOCK) {
        j.first = first;
        j.n = t->numel - first < SYNTH_BLOCK ? t->numel - first : SYNTH_BLOCK;
        tb_parallel_for(j.n >= 65536 ? g->n_threads : 1, j.n, gen_range, &j);
        int rc = st_writer_write(w, j.out, (size_t)j.n * es);
        if (rc) return rc;
        g->done += (uint64_t)j.n * es;
        if (g->o->on_bytes) g->o->on_bytes(g->o->ctx, g->done, g->total);
    }
    return TB_OK;
}

static int write_shard(gen_state *g, const tensor_list *l, int file, const char *path, const char *label)
{
    st_writer *w = st_writer_new();
    if (!w) return TB_EIO;
    int rc = st_writer_meta(w, "format", "pt");
    for (int i = 0; i < l->n && !rc; i++)
        if (l->t[i].file == file) rc = st_writer_add(w, l->t[i].name, g->o->dtype, l->t[i].ndim, l->t[i].shape);
    FILE *fp = NULL;
    if (!rc && !(fp = fopen(path, "wb"))) rc = tb_fail(TB_EIO, "%s: cannot create: %s", label, strerror(errno));
    if (!rc) rc = st_writer_begin(w, fp, label);
    for (int i = 0; i < l->n && !rc; i++)
        if (l->t[i].file == file) rc = write_tensor(g, w, &l->t[i]);
    if (!rc) rc = st_writer_finish(w);
    if (fp) {
        if (!rc && (fflush(fp) || tb_fsync(fileno(fp)))) rc = tb_fail(TB_EIO, "%s: write error: %s", label, strerror(errno));
        if (fclose(fp) && !rc) rc = tb_fail(TB_EIO, "%s: close: %s", label, strerror(errno));
    }
    st_writer_free(w);
    return rc;
}

/* ------------------------------------------------------ the tokenizer */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the others for U+0100 onwards; written as UTF-8 into out (<= 3 bytes + NUL). */
static void byte_char(int b, char out[4])
{
    static int table[256], ready;
    if (!ready) {
        int n = 0;
        for (int c = 0; c < 256; c++)
            table[c] = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF) ? c : 256 + n++;
        ready = 1;
    }
    int u = table[b];
    if (u < 0x80) { out[0] = (char)u; out[1] = 0; }
    else { out[0] = (char)(0xC0 | (u >> 6)); out[1] = (char)(0x80 | (u & 0x3F)); out[2] = 0; }
}

static int is_special(int id, const int *ids, int n)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == id) return 1;
    return 0;
}

char *tb_synth_tokenizer_json(int vocab_size, const int *special_ids, const char *const *special_names, int n_special)
{
    if (vocab_size < 256 + n_special) {
        tb_fail(TB_EDATA, "vocab_size %d is too small for a byte-level tokenizer (256 bytes + %d special tokens)",
                vocab_size, n_special);
        return NULL;
    }
    for (int i = 0; i < n_special; i++)
        if (special_ids[i] < 0 || special_ids[i] >= vocab_size) {
            tb_fail(TB_EDATA, "special token id %d is outside the vocabulary (%d)", special_ids[i], vocab_size);
            return NULL;
        }
    char special_text[TB_SYNTH_MAX_SPECIAL][48];
    if (n_special > TB_SYNTH_MAX_SPECIAL) {
        tb_fail(TB_EUSAGE, "more than %d special tokens", TB_SYNTH_MAX_SPECIAL);
        return NULL;
    }
    for (int i = 0; i < n_special; i++)
        if (special_names && special_names[i]) snprintf(special_text[i], sizeof special_text[i], "%s", special_names[i]);
        else snprintf(special_text[i], sizeof special_text[i], "<|special_%d|>", special_ids[i]);
    cJSON *root = cJSON_CreateObject(), *added = NULL, *model = NULL, *vocab = NULL, *merges = NULL;
    char *text = NULL;
    if (!root) goto oom;
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    if (!(added = cJSON_AddArrayToObject(root, "added_tokens"))) goto oom;
    for (int i = 0; i < n_special; i++) {
        cJSON *a = cJSON_CreateObject();
        if (!a) goto oom;
        cJSON_AddItemToArray(added, a);
        cJSON_AddNumberToObject(a, "id", special_ids[i]);
        cJSON_AddStringToObject(a, "content", special_text[i]);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", 1);
    }
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    if (!pre) goto oom;
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", 0);
    cJSON_AddBoolToObject(pre, "trim_offsets", 1);
    cJSON_AddBoolToObject(pre, "use_regex", 1);
    cJSON_AddNullToObject(root, "post_processor");
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    if (!dec) goto oom;
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON_AddBoolToObject(dec, "add_prefix_space", 1);
    cJSON_AddBoolToObject(dec, "trim_offsets", 1);
    cJSON_AddBoolToObject(dec, "use_regex", 1);
    if (!(model = cJSON_AddObjectToObject(root, "model"))) goto oom;
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    if (!(vocab = cJSON_AddObjectToObject(model, "vocab")) || !(merges = cJSON_AddArrayToObject(model, "merges")))
        goto oom;
    /* the special tokens are in the model's vocabulary too, as in Llama-2's
     * and Mistral's files: HF tokenizers gives an added token missing from it
     * the next id after the vocabulary instead of its own */
    for (int i = 0; i < n_special; i++) {
        cJSON *num = cJSON_CreateNumber(special_ids[i]);
        if (!num) goto oom;
        cJSON_AddItemToObject(vocab, special_text[i], num);
    }

    /* ids in order, skipping the special ones: the 256 bytes, then tokens of
     * length k+1 = a token of length k followed by a byte (first all 2-byte
     * strings, then 3-byte ones, ...), each a merge of its two parts */
    int n_tokens = vocab_size - n_special;
    char (*str)[64] = tb_malloc((size_t)n_tokens * sizeof *str); /* each token's byte-level string */
    if (!str) goto fail;
    int id = 0, made = 0, level_begin = 0, level_end = 256, prefix = 0, byte = 0;
    while (made < n_tokens) {
        while (is_special(id, special_ids, n_special)) id++;
        char buf[4];
        if (made < 256) {
            byte_char(made, buf);
            snprintf(str[made], sizeof str[made], "%s", buf);
        } else {
            if (byte == 256) { byte = 0; prefix++; }
            if (level_begin + prefix == level_end) { /* the next length */
                level_begin = level_end;
                level_end = made;
                prefix = 0;
            }
            int left = level_begin + prefix;
            byte_char(byte, buf);
            if (strlen(str[left]) + strlen(buf) >= sizeof str[made]) {
                free(str);
                tb_fail(TB_EDATA, "vocab_size %d is too large for the byte-level tokenizer", vocab_size);
                goto fail;
            }
            size_t ll = strlen(str[left]);
            memcpy(str[made], str[left], ll);
            memcpy(str[made] + ll, buf, strlen(buf) + 1);
            byte++;
            int clash = 0; /* a special token's text is never a second entry */
            for (int i = 0; i < n_special; i++) clash |= !strcmp(str[made], special_text[i]);
            if (clash) continue;
            char merge[160];
            snprintf(merge, sizeof merge, "%s %s", str[left], buf);
            cJSON *m = cJSON_CreateString(merge);
            if (!m) { free(str); goto oom; }
            cJSON_AddItemToArray(merges, m);
        }
        cJSON *num = cJSON_CreateNumber(id);
        if (!num) { free(str); goto oom; }
        cJSON_AddItemToObject(vocab, str[made], num);
        made++;
        id++;
    }
    free(str);
    text = cJSON_Print(root);
    if (!text) goto oom;
    cJSON_Delete(root);
    return text;
oom:
    tb_fail(TB_EIO, "out of memory building the tokenizer");
fail:
    cJSON_Delete(root);
    return NULL;
}

/* Does the tokenizer give every id of [0, vocab) a token, and no id beyond? */
static int tokenizer_covers(const char *label, const char *json, int vocab, char *note, size_t note_n)
{
    cJSON *root = cJSON_Parse(json);
    uint8_t *seen = tb_calloc((size_t)vocab, 1);
    int ok = 0;
    if (!root || !seen) {
        snprintf(note, note_n, "%s: not JSON", label);
        goto done;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vmap = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    int max_id = -1;
    for (const cJSON *e = cJSON_IsObject(vmap) ? vmap->child : NULL; e; e = e->next)
        if (cJSON_IsNumber(e) && e->valuedouble >= 0) {
            int id = (int)e->valuedouble;
            if (id > max_id) max_id = id;
            if (id < vocab) seen[id] = 1;
        }
    for (const cJSON *e = cJSON_IsArray(added) ? added->child : NULL; e; e = e->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (cJSON_IsNumber(id) && id->valuedouble >= 0) {
            int i = (int)id->valuedouble;
            if (i > max_id) max_id = i;
            if (i < vocab) seen[i] = 1;
        }
    }
    if (max_id >= vocab) {
        snprintf(note, note_n, "%s has id %d, beyond vocab_size %d", label, max_id, vocab);
        goto done;
    }
    int missing = 0, first = -1;
    for (int i = 0; i < vocab; i++)
        if (!seen[i]) {
            if (first < 0) first = i;
            missing++;
        }
    if (missing) snprintf(note, note_n, "%s covers %d of the %d ids (first missing: %d)", label, vocab - missing, vocab, first);
    else ok = 1;
done:
    cJSON_Delete(root);
    free(seen);
    return ok;
}

/* the config as given, its dtype keys set to the output dtype */
static char *config_text(cJSON *cfg, tb_dtype dt)
{
    const char *name = dt == TB_BF16 ? "bfloat16" : dt == TB_F16 ? "float16" : "float32";
    static const char *const keys[] = {"torch_dtype", "dtype"};
    int had = 0;
    for (int k = 0; k < 2; k++)
        if (cJSON_GetObjectItemCaseSensitive(cfg, keys[k])) {
            cJSON_ReplaceItemInObjectCaseSensitive(cfg, keys[k], cJSON_CreateString(name));
            had = 1;
        }
    if (!had) cJSON_AddStringToObject(cfg, "torch_dtype", name);
    char *s = cJSON_Print(cfg);
    if (!s) tb_fail(TB_EIO, "out of memory");
    return s;
}

static void add_id(int *ids, const char **names, int *n, int id, const char *name)
{
    if (id < 0 || is_special(id, ids, *n) || *n >= TB_SYNTH_MAX_SPECIAL) return;
    ids[*n] = id;
    names[(*n)++] = name;
}

typedef struct {
    char *name;  /* in the output directory */
    char *text;  /* contents */
} side_file;

int tb_synth_model(const char *config_path, const char *out_dir, const tb_synth_opts *o, tb_synth_summary *s)
{
    memset(s, 0, sizeof *s);
    if (o->dtype != TB_BF16 && o->dtype != TB_F16 && o->dtype != TB_F32)
        return tb_fail(TB_EUSAGE, "dtype must be BF16, F16 or F32");
    char *cfg_text = NULL;
    int rc = tb_read_text(config_path, &cfg_text, NULL);
    if (rc) return rc;
    tb_config c;
    cJSON *cfg = NULL;
    tensor_list l = {0};
    side_file side[6] = {{0}};
    int n_side = 0;
    const char **names = NULL;
    char *tok_path = NULL, *idx = NULL;
    gen_state g = {.o = o};
    tb_outdir d = {0};
    int n_files = 0;

    if ((rc = tb_config_parse(&c, config_path, cfg_text))) goto done;
    cfg = cJSON_Parse(cfg_text);
    if (!cfg) { rc = tb_fail(TB_EDATA, "%s: not a JSON object", config_path); goto done; }
    const cJSON *ir = cJSON_GetObjectItemCaseSensitive(cfg, "initializer_range");
    g.std = cJSON_IsNumber(ir) ? ir->valuedouble : 0.02;
    if (!(g.std > 0 && g.std < 10)) { rc = tb_fail(TB_EDATA, "%s: initializer_range must be in (0, 10)", config_path); goto done; }
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(cfg, "pad_token_id");
    int pad_id = cJSON_IsNumber(pad) ? (int)pad->valuedouble : -1;
    if (c.vocab_size <= 0 || c.n_layers <= 0 || c.intermediate_size <= 0) {
        rc = tb_fail(TB_EDATA, "%s: vocab_size, num_hidden_layers and intermediate_size must be positive", config_path);
        goto done;
    }
    if ((rc = list_tensors(&c, pad_id, &l))) goto done;

    /* shards: whole tensors, greedily in model order, as save_pretrained does */
    size_t es = tb_dtype_size(o->dtype);
    uint64_t max = o->max_shard_bytes ? o->max_shard_bytes : SYNTH_DEFAULT_SHARD, cur = 0;
    for (int i = 0; i < l.n; i++) {
        uint64_t b = (uint64_t)l.t[i].numel * es;
        if (cur > 0 && cur + b > max) { n_files++; cur = 0; }
        l.t[i].file = n_files;
        cur += b;
        s->bytes += b;
        s->params += l.t[i].numel;
    }
    n_files++;
    s->n_tensors = l.n;
    s->n_files = n_files;
    if (o->dry_run) goto done;

    /* the tokenizer: the given one if it covers the vocabulary, else our own */
    if (o->tokenizer_from) {
        int is_dir = tb_is_dir(o->tokenizer_from);
        tok_path = is_dir ? tb_path_join(o->tokenizer_from, "tokenizer.json") : tb_strdup(o->tokenizer_from);
        char *text = NULL;
        if (!tok_path || (rc = tb_read_text(tok_path, &text, NULL))) { rc = rc ? rc : TB_EIO; goto done; }
        if (tokenizer_covers(tok_path, text, c.vocab_size, s->tokenizer_note, sizeof s->tokenizer_note)) {
            side[n_side++] = (side_file){tb_strdup("tokenizer.json"), text};
            s->tokenizer_copied = 1;
            static const char *const extra[] = {"tokenizer_config.json", "special_tokens_map.json"};
            for (int k = 0; k < 2 && is_dir; k++) {
                char *p = tb_path_join(o->tokenizer_from, extra[k]), *t = NULL;
                if (!p) { rc = TB_EIO; goto done; }
                if (tb_file_exists(p) && (rc = tb_read_text(p, &t, NULL))) { free(p); goto done; }
                free(p);
                if (t) side[n_side++] = (side_file){tb_strdup(extra[k]), t};
            }
        } else {
            free(text);
        }
    }
    if (!s->tokenizer_copied) {
        int ids[TB_SYNTH_MAX_SPECIAL], n_ids = 0;
        const char *tnames[TB_SYNTH_MAX_SPECIAL];
        add_id(ids, tnames, &n_ids, c.bos_token_id, "<s>");
        for (int e = 0; e < c.n_eos; e++) add_id(ids, tnames, &n_ids, c.eos_token_ids[e], e == 0 ? "</s>" : NULL);
        add_id(ids, tnames, &n_ids, pad_id, "<pad>");
        char *tok = tb_synth_tokenizer_json(c.vocab_size, ids, tnames, n_ids);
        if (!tok) { rc = tb_errcode() ? tb_errcode() : TB_EIO; tb_err_context("%s", config_path); goto done; }
        side[n_side++] = (side_file){tb_strdup("tokenizer.json"), tok};
        cJSON *tc = cJSON_CreateObject();
        if (!tc) { rc = tb_fail(TB_EIO, "out of memory"); goto done; }
        if (c.bos_token_id >= 0) cJSON_AddStringToObject(tc, "bos_token", "<s>");
        if (c.n_eos) cJSON_AddStringToObject(tc, "eos_token", "</s>");
        if (pad_id >= 0) cJSON_AddStringToObject(tc, "pad_token", "<pad>");
        cJSON_AddBoolToObject(tc, "clean_up_tokenization_spaces", 0);
        cJSON_AddNumberToObject(tc, "model_max_length", c.max_position_embeddings);
        cJSON_AddStringToObject(tc, "tokenizer_class", "PreTrainedTokenizerFast");
        char *t = cJSON_Print(tc);
        cJSON_Delete(tc);
        side[n_side++] = (side_file){tb_strdup("tokenizer_config.json"), t};
    }
    {
        cJSON *gc = cJSON_CreateObject();
        if (!gc) { rc = tb_fail(TB_EIO, "out of memory"); goto done; }
        cJSON_AddBoolToObject(gc, "_from_model_config", 1);
        if (c.bos_token_id >= 0) cJSON_AddNumberToObject(gc, "bos_token_id", c.bos_token_id);
        if (c.n_eos == 1) cJSON_AddNumberToObject(gc, "eos_token_id", c.eos_token_ids[0]);
        else if (c.n_eos > 1) cJSON_AddItemToObject(gc, "eos_token_id", cJSON_CreateIntArray(c.eos_token_ids, c.n_eos));
        side[n_side++] = (side_file){tb_strdup("generation_config.json"), cJSON_Print(gc)};
        cJSON_Delete(gc);
    }
    side[n_side++] = (side_file){tb_strdup("config.json"), config_text(cfg, o->dtype)};
    for (int i = 0; i < n_side; i++)
        if (!side[i].name || !side[i].text) { rc = tb_fail(TB_EIO, "out of memory"); goto done; }

    /* every file name, for the output directory's guard */
    int n_names = n_files + (n_files > 1) + n_side;
    if (!(names = tb_calloc((size_t)n_names, sizeof *names))) { rc = TB_EIO; goto done; }
    for (int f = 0; f < n_files; f++) {
        char buf[64];
        if (n_files == 1) snprintf(buf, sizeof buf, "model.safetensors");
        else snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", f + 1, n_files);
        if (!(names[f] = tb_strdup(buf))) { rc = TB_EIO; goto done; }
    }
    if (n_files > 1) names[n_files] = "model.safetensors.index.json";
    for (int i = 0; i < n_side; i++) names[n_files + (n_files > 1) + i] = side[i].name;
    if ((rc = tb_outdir_begin(&d, out_dir, o->force, names, n_names, s->bytes))) goto done;

    g.n_threads = o->n_threads > 0 ? o->n_threads : tb_default_threads();
    g.total = s->bytes;
    if (!(g.f32 = tb_malloc(SYNTH_BLOCK * sizeof(float))) || !(g.out = tb_malloc(SYNTH_BLOCK * sizeof(uint16_t)))) {
        rc = TB_EIO;
        goto done;
    }
    for (int f = 0; f < n_files && !rc; f++) {
        char *label = tb_path_join(out_dir, names[f]);
        rc = label ? write_shard(&g, &l, f, tb_outdir_path(&d, f), label) : TB_EIO;
        free(label);
    }
    if (!rc && n_files > 1) {
        cJSON *ix = cJSON_CreateObject(), *meta = ix ? cJSON_AddObjectToObject(ix, "metadata") : NULL;
        cJSON *wm = meta ? cJSON_AddObjectToObject(ix, "weight_map") : NULL;
        if (wm) cJSON_AddNumberToObject(meta, "total_size", (double)s->bytes);
        for (int i = 0; wm && i < l.n; i++) cJSON_AddStringToObject(wm, l.t[i].name, names[l.t[i].file]);
        if (!wm || !(idx = cJSON_Print(ix))) rc = tb_fail(TB_EIO, "out of memory");
        cJSON_Delete(ix);
        char *label = tb_path_join(out_dir, names[n_files]);
        if (!rc) rc = label ? tb_write_text_file(tb_outdir_path(&d, n_files), label, idx) : TB_EIO;
        free(label);
    }
    for (int i = 0; i < n_side && !rc; i++) {
        char *label = tb_path_join(out_dir, side[i].name);
        rc = label ? tb_write_text_file(tb_outdir_path(&d, n_files + (n_files > 1) + i), label, side[i].text) : TB_EIO;
        free(label);
    }
    if (!rc) rc = tb_outdir_commit(&d);
done:
    tb_outdir_abort(&d);
    for (int f = 0; names && f < n_files; f++) free((char *)names[f]);
    free(names);
    for (int i = 0; i < n_side; i++) {
        free(side[i].name);
        free(side[i].text);
    }
    free(g.f32);
    free(g.out);
    free(idx);
    free(tok_path);
    free(l.t);
    cJSON_Delete(cfg);
    free(cfg_text);
    return rc;
}
