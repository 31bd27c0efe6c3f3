/* tb_model.c - binding an HF checkpoint's tensors to the decoder's weights. */
#include "tb_model.h"
#include "tb_pack.h"
#include "tb_error.h"
#include "tb_io.h"
#include "tb_ops.h"
#include "tb_sha256.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const lin_names[TB_LIN_PER_LAYER + 1] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",    "lm_head",
};

const char *tb_lin_name(tb_lin_id id) { return (unsigned)id <= TB_LIN_LM_HEAD ? lin_names[id] : "?"; }

/* An expected dimension and where the config says it comes from. */
typedef struct {
    int64_t size;
    const char *why;
} dim;

/* Find `name` and check dtype and shape; every failure is one line naming the
 * tensor (and the dimension). */
/* A .tbm's own tensors first; a partial .tbm falls back to its base checkpoint. */
static const st_tensor *find_dense(const tb_model *m, const char *name)
{
    const st_tensor *t = m->is_tbm ? tb_tbm_find_dense(&m->tbm, name) : NULL;
    if (!t && m->ckpt.path) t = tb_ckpt_find(&m->ckpt, name);
    return t;
}

static int get_tensor(const tb_model *m, const char *name, int ndim, const dim *dims, const st_tensor **out)
{
    const st_tensor *t = find_dense(m, name);
    if (!t) return tb_fail(TB_EDATA, "%s: missing tensor '%s'", m->path, name);
    if (t->dtype != TB_F32 && t->dtype != TB_F16 && t->dtype != TB_BF16)
        return tb_fail(TB_EDATA, "%s: tensor '%s': dtype %s is not F32, F16 or BF16", m->path, name,
                       tb_dtype_name(t->dtype));
    if (t->ndim != ndim)
        return tb_fail(TB_EDATA, "%s: tensor '%s' has %d dimensions, expected %d", m->path, name, t->ndim, ndim);
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] != dims[d].size)
            return tb_fail(TB_EDATA, "%s: tensor '%s': dim %d is %lld, expected %lld (%s)", m->path, name, d,
                           (long long)t->shape[d], (long long)dims[d].size, dims[d].why);
    *out = t;
    return TB_OK;
}

/* A pruned weight of a .tbm: N:M packed or masked dense, maybe permuted. */
static int bind_packed(tb_model *m, const tb_packed *p, dim rows, dim cols, tb_linear *L)
{
    if (p->rows != rows.size || p->cols != cols.size)
        return tb_fail(TB_EDATA, "%s: pruned tensor '%s' is [%lld, %lld], expected [%lld, %lld] (%s, %s)", m->path,
                       p->name, (long long)p->rows, (long long)p->cols, (long long)rows.size, (long long)cols.size,
                       rows.why, cols.why);
    *L = (tb_linear){.name = p->name, .rows = (int)rows.size, .cols = (int)cols.size, .dtype = p->dtype};
    if (p->kind == TB_PACKED_NM) {
        L->format = TB_LINEAR_NM;
        L->data = p->values->data;
        L->indices = p->indices->data;
        L->n = p->n;
        L->m = p->m;
    } else {
        L->format = TB_LINEAR_DENSE;
        L->data = p->dense->data;
    }
    if (p->perm) { /* copied: the mapping gives no alignment for I32 */
        int32_t *dst = m->perms + m->perms_used;
        memcpy(dst, p->perm->data, (size_t)p->cols * sizeof(int32_t));
        L->perm = dst;
        m->perms_used += (size_t)p->cols;
    }
    return TB_OK;
}

static int bind_linear(tb_model *m, const char *name, dim rows, dim cols, tb_linear *L)
{
    const tb_packed *p = m->is_tbm ? tb_tbm_find_packed(&m->tbm, name) : NULL;
    if (p) return bind_packed(m, p, rows, cols, L);
    const st_tensor *t;
    dim dims[2] = {rows, cols};
    int rc = get_tensor(m, name, 2, dims, &t);
    if (rc) return rc;
    *L = (tb_linear){.name = t->name, .rows = (int)rows.size, .cols = (int)cols.size,
                     .format = TB_LINEAR_DENSE, .dtype = t->dtype, .data = t->data};
    return TB_OK;
}

/* A 1-D vector converted to f32 into *dst, which then advances past it. */
static int bind_vector(const tb_model *m, const char *name, dim len, float **dst, const float **out)
{
    const st_tensor *t;
    int rc = get_tensor(m, name, 1, &len, &t);
    if (rc) return rc;
    tb_to_f32(t->dtype, t->data, 0, (size_t)len.size, *dst);
    *out = *dst;
    *dst += len.size;
    return TB_OK;
}

static int bind_layer(tb_model *m, int l, float **f32)
{
    const tb_config *c = &m->cfg;
    tb_layer *L = &m->layers[l];
    dim hid = {c->hidden_size, "hidden_size"};
    dim qd = {(int64_t)c->n_heads * c->head_dim, "num_attention_heads * head_dim"};
    dim kvd = {(int64_t)c->n_kv_heads * c->head_dim, "num_key_value_heads * head_dim"};
    dim ff = {c->intermediate_size, "intermediate_size"};
    const dim rows[TB_LIN_PER_LAYER] = {qd, kvd, kvd, hid, ff, ff, hid};
    const dim cols[TB_LIN_PER_LAYER] = {hid, hid, hid, qd, hid, hid, ff};
    char name[160];
    int rc = TB_OK;
    for (int i = 0; i < TB_LIN_PER_LAYER && !rc; i++) {
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, lin_names[i]);
        rc = bind_linear(m, name, rows[i], cols[i], &L->lin[i]);
        /* qwen2-style q/k/v bias */
        if (!rc && c->attention_bias && i <= TB_LIN_V) {
            snprintf(name, sizeof name, "model.layers.%d.%s.bias", l, lin_names[i]);
            rc = bind_vector(m, name, rows[i], f32, &L->lin[i].bias);
        }
    }
    if (!rc) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        rc = bind_vector(m, name, hid, f32, &L->attn_norm);
    }
    if (!rc) {
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        rc = bind_vector(m, name, hid, f32, &L->mlp_norm);
    }
    return rc;
}

static int model_bind(tb_model *m)
{
    const tb_config *c = &m->cfg;
    dim voc = {c->vocab_size, "vocab_size"}, hid = {c->hidden_size, "hidden_size"};
    if (c->n_layers < 1 || c->vocab_size < 1 || c->intermediate_size < 1)
        return tb_fail(TB_EDATA, "%s: num_hidden_layers, vocab_size and intermediate_size must be positive", m->path);
    size_t per_layer = 2 * (size_t)c->hidden_size +
                       (c->attention_bias ? (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim : 0);
    size_t n_f32 = (size_t)c->n_layers * per_layer + (size_t)c->hidden_size + (size_t)c->head_dim / 2;
    m->f32 = tb_malloc(n_f32 * sizeof(float));
    m->layers = tb_calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->f32 || !m->layers) return TB_EIO;
    if (m->is_tbm) { /* room for a permutation of every linear input */
        size_t widest = (size_t)c->hidden_size;
        if ((size_t)c->intermediate_size > widest) widest = (size_t)c->intermediate_size;
        if ((size_t)c->n_heads * c->head_dim > widest) widest = (size_t)c->n_heads * c->head_dim;
        size_t n_perm = ((size_t)c->n_layers * TB_LIN_PER_LAYER + 2) * widest + 1;
        if (!(m->perms = tb_malloc(n_perm * sizeof(int32_t)))) return TB_EIO;
    }
    float *f32 = m->f32;

    int rc = bind_linear(m, "model.embed_tokens.weight", voc, hid, &m->embed);
    for (int l = 0; l < c->n_layers && !rc; l++) rc = bind_layer(m, l, &f32);
    if (!rc) rc = bind_vector(m, "model.norm.weight", hid, &f32, &m->final_norm);
    if (rc) return rc;
    /* transformers ties lm_head to the embedding whenever the config says so,
     * even if the file also carries an lm_head.weight */
    if (c->tie_word_embeddings) m->lm_head = m->embed;
    else if (!find_dense(m, "lm_head.weight") && !(m->is_tbm && tb_tbm_find_packed(&m->tbm, "lm_head.weight")))
        return tb_fail(TB_EDATA, "%s: missing tensor 'lm_head.weight' (tie_word_embeddings is false)", m->path);
    else if ((rc = bind_linear(m, "lm_head.weight", voc, hid, &m->lm_head))) return rc;
    m->inv_freq = f32;
    tb_rope_inv_freq(m->inv_freq, c->head_dim, c->rope_theta);
    return TB_OK;
}

int tb_model_open(tb_model *m, const char *path)
{
    memset(m, 0, sizeof *m);
    /* one place decides what a model path is */
    if (tb_is_tbm(path)) {
        if (!(m->path = tb_strdup(path))) return TB_EIO;
        m->is_tbm = 1;
        int rc = tb_tbm_open(&m->tbm, path, 1);
        if (!rc && m->tbm.base) rc = tb_tbm_open_base(&m->tbm, &m->ckpt); /* confined: tb_tbm.h */
        if (!rc) {
            m->cfg = m->tbm.cfg;
            rc = model_bind(m);
        }
        if (rc) tb_model_close(m);
        return rc;
    }
    if (!tb_is_dir(path)) {
        if (tb_file_exists(path))
            return tb_fail(TB_EDATA, "%s: not a model directory (expected config.json and *.safetensors)", path);
        return tb_fail(TB_EIO, "%s: %s", path, strerror(ENOENT));
    }
    if (!(m->path = tb_strdup(path))) return TB_EIO;
    int rc = tb_config_load(&m->cfg, path);
    if (!rc) rc = tb_ckpt_open(&m->ckpt, path);
    if (!rc) rc = model_bind(m);
    if (rc) tb_model_close(m);
    return rc;
}

void tb_model_close(tb_model *m)
{
    if (m->ckpt.path) tb_ckpt_close(&m->ckpt);
    if (m->is_tbm) tb_tbm_close(&m->tbm);
    free(m->perms);
    free(m->layers);
    free(m->f32);
    free(m->path);
    memset(m, 0, sizeof *m);
}

void tb_model_sha256(const tb_model *m, char hex[65])
{
    tb_sha256 h;
    uint8_t d[32];
    tb_sha256_init(&h);
    for (int i = 0; i < m->ckpt.n_shards; i++) /* HF files, or a partial .tbm's base */
        tb_sha256_update(&h, m->ckpt.shards[i].map.data, m->ckpt.shards[i].map.size);
    for (int i = 0; m->is_tbm && i < m->tbm.n_shards; i++)
        tb_sha256_update(&h, m->tbm.shards[i].f.map.data, m->tbm.shards[i].f.map.size);
    tb_sha256_final(&h, d);
    tb_sha256_hex(d, hex);
}

/* the stored bytes of one linear weight: dense data, or kept values, indices
 * and permutation */
static void hash_linear(tb_sha256 *h, const tb_linear *L)
{
    size_t es = tb_dtype_size(L->dtype);
    if (L->format == TB_LINEAR_NM) {
        size_t kept = (size_t)L->rows * (size_t)(L->cols / L->m * L->n);
        size_t row_bytes = ((size_t)(L->cols / L->m * L->n) * (size_t)tb_nm_index_bits(L->m) + 7) / 8;
        tb_sha256_update(h, L->data, kept * es);
        tb_sha256_update(h, L->indices, (size_t)L->rows * row_bytes);
    } else {
        tb_sha256_update(h, L->data, (size_t)L->rows * (size_t)L->cols * es);
    }
    if (L->perm) tb_sha256_update(h, L->perm, (size_t)L->cols * sizeof(int32_t));
    if (L->bias) tb_sha256_update(h, L->bias, (size_t)L->rows * sizeof(float));
}

void tb_model_sha256_layers(const tb_model *m, int l0, int l1, char hex[65])
{
    tb_sha256 h;
    uint8_t d[32];
    const size_t D = (size_t)m->cfg.hidden_size * sizeof(float);
    tb_sha256_init(&h);
    if (l0 == 0) hash_linear(&h, &m->embed);
    for (int l = l0; l < l1; l++) {
        for (int i = 0; i < TB_LIN_PER_LAYER; i++) hash_linear(&h, &m->layers[l].lin[i]);
        tb_sha256_update(&h, m->layers[l].attn_norm, D);
        tb_sha256_update(&h, m->layers[l].mlp_norm, D);
    }
    if (l1 == m->cfg.n_layers) {
        tb_sha256_update(&h, m->final_norm, D);
        if (m->lm_head.data != m->embed.data) hash_linear(&h, &m->lm_head);
    }
    tb_sha256_final(&h, d);
    tb_sha256_hex(d, hex);
}

const char *tb_model_tokenizer_path(const tb_model *m) { return m->is_tbm ? m->tbm.dir : m->path; }
