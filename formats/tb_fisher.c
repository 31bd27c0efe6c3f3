#include "tb_fisher.h"

#include <stdio.h>
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
