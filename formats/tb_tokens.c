#include "tb_tokens.h"
#include "tb_error.h"
#include "tb_safetensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int tb_tokens_convert(const st_tensor *x, const char *label, int vocab, int32_t *out)
{
    if (x->dtype != TB_I32 && x->dtype != TB_I64)
        return tb_fail(TB_EDATA, "%s: tensor '%s': dtype %s, expected I32 or I64", label, x->name,
                       tb_dtype_name(x->dtype));
    int64_t row = x->ndim ? x->shape[x->ndim - 1] : 1;
    if (row < 1) row = 1;
    for (int64_t i = 0; i < x->numel; i++) {
        int64_t v;
        if (x->dtype == TB_I32) {
            int32_t v32;
            memcpy(&v32, (const char *)x->data + 4 * i, 4);
            v = v32;
        } else {
            memcpy(&v, (const char *)x->data + 8 * i, 8);
        }
        if (v < 0 || (vocab > 0 && v >= vocab) || v > INT32_MAX) {
            if (vocab > 0)
                return tb_fail(TB_EDATA, "%s: window %lld, position %lld: token id %lld outside the vocabulary [0, %d)",
                               label, (long long)(i / row), (long long)(i % row), (long long)v, vocab);
            return tb_fail(TB_EDATA, "%s: window %lld, position %lld: token id %lld is not a valid id", label,
                           (long long)(i / row), (long long)(i % row), (long long)v);
        }
        out[i] = (int32_t)v;
    }
    return TB_OK;
}

int tb_tokens_load(tb_tokens *t, const char *path, int vocab, int max_seq)
{
    memset(t, 0, sizeof *t);
    st_file f;
    int rc = st_open(&f, path);
    if (rc) return rc;
    const char *label = strcmp(path, "-") ? path : "<stdin>";
    const st_tensor *x = st_find(&f, "input_ids");
    if (!x) rc = tb_fail(TB_EDATA, "%s: no tensor 'input_ids'", label);
    else if (x->dtype != TB_I32 && x->dtype != TB_I64)
        rc = tb_fail(TB_EDATA, "%s: tensor 'input_ids': dtype %s, expected I32 or I64", label, tb_dtype_name(x->dtype));
    else if (x->ndim != 2)
        rc = tb_fail(TB_EDATA, "%s: tensor 'input_ids': rank %d, expected 2 [windows, seq_len]", label, x->ndim);
    else if (x->shape[0] < 1 || x->shape[1] < 2 || x->shape[1] > (1 << 30))
        rc = tb_fail(TB_EDATA, "%s: tensor 'input_ids': shape [%lld, %lld] needs >= 1 window of >= 2 tokens", label,
                     (long long)x->shape[0], (long long)x->shape[1]);
    else if (max_seq > 0 && x->shape[1] > max_seq)
        rc = tb_fail(TB_EDATA, "%s: windows of %lld tokens exceed max_position_embeddings (%d)", label,
                     (long long)x->shape[1], max_seq);
    if (!rc) {
        t->windows = x->shape[0];
        t->seq_len = (int)x->shape[1];
        if (!(t->ids = tb_malloc((size_t)x->numel * sizeof(int32_t)))) rc = TB_EIO;
    }
    if (!rc) rc = tb_tokens_convert(x, label, vocab, t->ids);
    st_close(&f);
    if (rc) tb_tokens_free(t);
    return rc;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int tb_tokens_draw(tb_tokens *t, const int32_t *ids, size_t n, int64_t windows, int seq_len, uint64_t seed,
                   const char *label)
{
    memset(t, 0, sizeof *t);
    if (windows < 1 || seq_len < 1) return tb_fail(TB_EUSAGE, "windows and seq_len must be positive");
    if (n < (size_t)seq_len) return tb_fail(TB_EDATA, "%s: %zu tokens, fewer than one window of %d (--seq-len)", label, n, seq_len);
    if ((uint64_t)windows > SIZE_MAX / sizeof(int32_t) / (uint64_t)seq_len)
        return tb_fail(TB_EUSAGE, "%lld windows x %d tokens is too large", (long long)windows, seq_len);
    if (!(t->ids = tb_malloc((size_t)windows * (size_t)seq_len * sizeof(int32_t)))) return TB_EIO;
    uint64_t state = seed, range = (uint64_t)(n - (size_t)seq_len + 1);
    for (int64_t i = 0; i < windows; i++) {
        /* floor(r * range / 2^64): uniform enough for range << 2^64, easy to reproduce */
        uint64_t start = (uint64_t)(((unsigned __int128)splitmix64(&state) * range) >> 64);
        memcpy(t->ids + (size_t)i * (size_t)seq_len, ids + start, (size_t)seq_len * sizeof(int32_t));
    }
    t->windows = windows;
    t->seq_len = seq_len;
    return TB_OK;
}

void tb_tokens_free(tb_tokens *t)
{
    free(t->ids);
    memset(t, 0, sizeof *t);
}

int tb_tokens_append(tb_tokens *t, const tb_tokens *more, const char *label)
{
    if (more->windows < 1) return TB_OK;
    if (more->seq_len != t->seq_len)
        return tb_fail(TB_EDATA, "%s: windows of %d tokens, the others have %d", label, more->seq_len, t->seq_len);
    size_t n = (size_t)(t->windows + more->windows) * (size_t)t->seq_len;
    int32_t *ids = tb_realloc(t->ids, n * sizeof *ids);
    if (!ids) return TB_EIO;
    memcpy(ids + (size_t)t->windows * (size_t)t->seq_len, more->ids,
           (size_t)more->windows * (size_t)more->seq_len * sizeof *ids);
    t->ids = ids;
    t->windows += more->windows;
    return TB_OK;
}
