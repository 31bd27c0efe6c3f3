#include "tb_config.h"
#include "tb_error.h"
#include "tb_io.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int get_int(const cJSON *root, const char *key, int required, int dflt, int *out, const char *label)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        if (required) return tb_fail(TB_EDATA, "%s: missing '%s'", label, key);
        *out = dflt;
        return TB_OK;
    }
    if (!cJSON_IsNumber(j) || floor(j->valuedouble) != j->valuedouble || j->valuedouble < 0 || j->valuedouble > 1e9)
        return tb_fail(TB_EDATA, "%s: '%s' is not a non-negative integer", label, key);
    *out = (int)j->valuedouble;
    return TB_OK;
}

/* A token id: an integer in [0, 2^31); anything else is refused, not cast. */
static int token_id(const cJSON *j, const char *key, const char *label, int *out)
{
    if (!cJSON_IsNumber(j)) return TB_OK; /* a string or object: absent, as before */
    double d = j->valuedouble;
    if (!(d >= 0 && d < 2147483648.0) || floor(d) != d)
        return tb_fail(TB_EDATA, "%s: '%s' is not a token id (an integer in [0, 2^31))", label, key);
    *out = (int)d;
    return TB_OK;
}

static int get_double(const cJSON *root, const char *key, double dflt, double *out, const char *label)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) { *out = dflt; return TB_OK; }
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0) || !isfinite(j->valuedouble))
        return tb_fail(TB_EDATA, "%s: '%s' is not a positive finite number", label, key);
    *out = j->valuedouble;
    return TB_OK;
}

static int get_bool(const cJSON *root, const char *key, int dflt)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : dflt;
}

int tb_config_parse(tb_config *c, const char *label, const char *json_text)
{
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_Parse(json_text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return tb_fail(TB_EDATA, "%s: not a JSON object", label);
    }
    int rc = TB_OK;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (cJSON_IsArray(arch) && cJSON_IsString(cJSON_GetArrayItem(arch, 0)))
        snprintf(c->architecture, sizeof c->architecture, "%s", cJSON_GetArrayItem(arch, 0)->valuestring);
    if (!cJSON_IsString(mt)) { rc = tb_fail(TB_EDATA, "%s: missing 'model_type'", label); goto done; }
    snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
    if (strcmp(c->model_type, "llama") && strcmp(c->model_type, "mistral") && strcmp(c->model_type, "qwen2")) {
        rc = tb_fail(TB_EDATA, "%s: unsupported architecture '%s'%s%s (supported: llama, mistral, qwen2)", label,
                     c->model_type, c->architecture[0] ? " / " : "", c->architecture);
        goto done;
    }
    if ((rc = get_int(root, "hidden_size", 1, 0, &c->hidden_size, label)) ||
        (rc = get_int(root, "intermediate_size", 1, 0, &c->intermediate_size, label)) ||
        (rc = get_int(root, "num_hidden_layers", 1, 0, &c->n_layers, label)) ||
        (rc = get_int(root, "num_attention_heads", 1, 0, &c->n_heads, label)) ||
        (rc = get_int(root, "vocab_size", 1, 0, &c->vocab_size, label)) ||
        (rc = get_int(root, "num_key_value_heads", 0, c->n_heads, &c->n_kv_heads, label)) ||
        (rc = get_int(root, "max_position_embeddings", 0, 2048, &c->max_position_embeddings, label)) ||
        (rc = get_int(root, "sliding_window", 0, 0, &c->sliding_window, label)))
        goto done;
    if (c->n_heads == 0 || c->hidden_size == 0 || c->n_kv_heads == 0 || c->n_heads % c->n_kv_heads) {
        rc = tb_fail(TB_EDATA, "%s: num_attention_heads (%d) must be a positive multiple of num_key_value_heads (%d)",
                     label, c->n_heads, c->n_kv_heads);
        goto done;
    }
    /* qwen2 carries sliding_window with use_sliding_window: false (not in effect) */
    const cJSON *use_sw = cJSON_GetObjectItemCaseSensitive(root, "use_sliding_window");
    if (cJSON_IsBool(use_sw) && !cJSON_IsTrue(use_sw)) c->sliding_window = 0;
    if ((rc = get_int(root, "head_dim", 0, c->hidden_size / c->n_heads, &c->head_dim, label))) goto done;
    if (c->head_dim == 0 || c->head_dim % 2) {
        rc = tb_fail(TB_EDATA, "%s: head_dim %d must be even and positive", label, c->head_dim);
        goto done;
    }
    /* transformers 5 nests rope_theta in rope_parameters; older files keep it on top */
    double theta = 0;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (cJSON_IsObject(rp) && (rc = get_double(rp, "rope_theta", 0, &theta, label))) goto done;
    if (theta == 0 && (rc = get_double(root, "rope_theta", 10000.0, &theta, label))) goto done;
    c->rope_theta = theta;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    const cJSON *rtype = cJSON_IsObject(rp) ? cJSON_GetObjectItemCaseSensitive(rp, "rope_type") : NULL;
    if (!rtype && cJSON_IsObject(rs)) rtype = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (cJSON_IsString(rtype) && strcmp(rtype->valuestring, "default")) {
        rc = tb_fail(TB_EDATA, "%s: unsupported rope_type '%s' (only 'default')", label, rtype->valuestring);
        goto done;
    }
    if ((rc = get_double(root, "rms_norm_eps", 1e-6, &c->rms_norm_eps, label))) goto done;
    c->tie_word_embeddings = get_bool(root, "tie_word_embeddings", 0);
    c->attention_bias = get_bool(root, "attention_bias", !strcmp(c->model_type, "qwen2"));
    const cJSON *hact = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(hact) && strcmp(hact->valuestring, "silu")) {
        rc = tb_fail(TB_EDATA, "%s: unsupported hidden_act '%s' (only silu)", label, hact->valuestring);
        goto done;
    }

    /* token ids are range-checked before the cast (1e300 or -5 is no id) */
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    c->bos_token_id = -1;
    if (cJSON_IsArray(bos)) bos = cJSON_GetArrayItem(bos, 0);
    if (bos && !cJSON_IsNull(bos) && (rc = token_id(bos, "bos_token_id", label, &c->bos_token_id))) goto done;
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (cJSON_IsNumber(eos)) {
        if ((rc = token_id(eos, "eos_token_id", label, &c->eos_token_ids[c->n_eos++]))) goto done;
    } else if (cJSON_IsArray(eos)) {
        for (const cJSON *e = eos->child; e && c->n_eos < TB_MAX_EOS; e = e->next)
            if (cJSON_IsNumber(e) && (rc = token_id(e, "eos_token_id", label, &c->eos_token_ids[c->n_eos++]))) goto done;
    }
    /* every size product of the architecture must be representable: the
     * parameter count is the largest of them (1e9-wide fields could overflow it) */
    if (tb_config_param_count(c) < 0)
        rc = tb_fail(TB_EDATA, "%s: sizes too large (the parameter count exceeds 2^53)", label);
done:
    cJSON_Delete(root);
    return rc;
}

int tb_config_load(tb_config *c, const char *path)
{
    char *file = tb_is_dir(path) ? tb_path_join(path, "config.json") : tb_strdup(path);
    if (!file) return TB_EIO;
    char *text;
    int rc = tb_read_text(file, &text, NULL);
    if (!rc) {
        rc = tb_config_parse(c, file, text);
        free(text);
    }
    free(file);
    return rc;
}

long long tb_config_param_count(const tb_config *c)
{
    /* in 128 bits: each field is below 2^30, so no partial product overflows */
    typedef __int128 i128;
    i128 h = c->hidden_size, q = (i128)c->n_heads * c->head_dim, kv = (i128)c->n_kv_heads * c->head_dim;
    i128 attn = h * q + 2 * h * kv + q * h + (c->attention_bias ? q + 2 * kv : 0);
    i128 mlp = 3 * h * c->intermediate_size;
    i128 layer = attn + mlp + 2 * h;
    i128 emb = (i128)c->vocab_size * h;
    i128 n = emb * (c->tie_word_embeddings ? 1 : 2) + c->n_layers * layer + h;
    return n > ((i128)1 << 53) ? -1 : (long long)n;
}
