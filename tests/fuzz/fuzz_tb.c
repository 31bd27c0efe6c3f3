/* fuzz_tb.c - the packed .tb shard reader (tb_pack_open: safetensors, the
 * tensorbit.tensors JSON, parts' dtypes and shapes, N:M indices,
 * permutations), then what readers do with an accepted shard: every weight
 * decoded to f32 in stored and model column order, and the per-weight report
 * tb-inspect prints (tb_report_pruned, without the output error, which reads
 * other files). Seeds: corpus/tb (tb-pack outputs of a small fixture). */
#include "fuzz_util.h"
#include "tb_pack.h"
#include "tb_report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("fuzz.tb", data, size);
    tb_pack_file p;
    if (tb_pack_open(&p, path) == TB_OK) {
        for (int i = 0; i < p.n_packed; i++) {
            const tb_packed *t = &p.packed[i];
            if (tb_pack_find(&p, t->name) != t) abort();
            for (int unperm = 0; unperm < 2; unperm++) {
                int64_t n = -1;
                float *w = tb_pack_tensor_f32(&p, t->name, unperm, &n);
                if (w && n != t->rows * t->cols) abort();
                free(w);
                tb_err_clear();
            }
        }
        for (int i = 0; i < p.f.n_tensors; i++) tb_pack_is_part(&p, &p.f.tensors[i]);
        tb_pruned_row *rows = NULL;
        int n = 0;
        if (tb_report_pruned(&p, 1, 0, 0, 0, NULL, NULL, &rows, &n) == TB_OK) free(rows);
        tb_err_clear();
        tb_pack_close(&p);
    }
    fuzz_check_errmsg();
    return 0;
}
