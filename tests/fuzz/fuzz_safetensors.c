/* fuzz_safetensors.c - the safetensors reader (st_open_mapped: header bound,
 * UTF-8, JSON, dtypes, shapes, offsets, layout), every tensor's conversion to
 * f32 and f64, name lookup, metadata, and token-id conversion (tb_tokens_convert,
 * the reader of tb-tokenize output). Seeds: tests/fuzz/corpus/safetensors. */
#include "fuzz_util.h"
#include "tb_safetensors.h"
#include "tb_tokens.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tb_mapped m = {fuzz_dup(data, size), size, 0};
    st_file f;
    if (st_open_mapped(&f, "fuzz.safetensors", m) == TB_OK) {
        for (int i = 0; i < f.n_tensors; i++) {
            const st_tensor *t = &f.tensors[i];
            if (st_find(&f, t->name) != t) abort(); /* names are unique and found */
            /* every element lies inside the mapping */
            if (t->nbytes != (size_t)t->numel * tb_dtype_size(t->dtype)) abort();
            float *x = st_tensor_f32(t);
            free(x);
            double *y = malloc((size_t)t->numel * sizeof *y + 1);
            tb_to_f64(t->dtype, t->data, 0, (size_t)t->numel, y);
            free(y);
            int32_t *ids = malloc((size_t)t->numel * sizeof *ids + 1);
            tb_tokens_convert(t, "fuzz", 0, ids);
            tb_err_clear();
            free(ids);
        }
        for (int i = 0; i < f.n_meta; i++)
            if (!st_meta(&f, f.meta_keys[i])) abort();
        st_close(&f);
    }
    fuzz_check_errmsg();
    return 0;
}
