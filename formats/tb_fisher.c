#include "tb_fisher.h"
#include "tb_error.h"

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
