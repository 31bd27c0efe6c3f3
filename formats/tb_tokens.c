#include "tb_tokens.h"
#include "tb_error.h"
#include "tb_safetensors.h"

#include <stdlib.h>
#include <string.h>

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
    for (int64_t i = 0; !rc && i < x->numel; i++) {
        int64_t v;
        if (x->dtype == TB_I32) {
            int32_t v32;
            memcpy(&v32, (const char *)x->data + 4 * i, 4);
            v = v32;
        } else {
            memcpy(&v, (const char *)x->data + 8 * i, 8);
        }
        if (v < 0 || (vocab > 0 && v >= vocab))
            rc = tb_fail(TB_EDATA, "%s: window %lld, position %lld: token id %lld outside the vocabulary [0, %d)", label,
                         (long long)(i / t->seq_len), (long long)(i % t->seq_len), (long long)v, vocab);
        else
            t->ids[i] = (int32_t)v;
    }
    st_close(&f);
    if (rc) tb_tokens_free(t);
    return rc;
}

void tb_tokens_free(tb_tokens *t)
{
    free(t->ids);
    memset(t, 0, sizeof *t);
}
