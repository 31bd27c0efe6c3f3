/* fuzz_fisher.c - the .fisher statistics reader: safetensors, then
 * tb_fisher_check (structure), and every statistic read the way tb-score,
 * tb-nm and tb-pack read it: Gram matrices whole and by diagonal, token
 * counts, Fisher diagonals and gradient samples with the finiteness checks.
 * Seeds: corpus/fisher (tb-fisher outputs of a tiny model, the shipped Gram). */
#include "fuzz_util.h"
#include "tb_fisher.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tb_mapped m = {fuzz_dup(data, size), size, 0};
    st_file f;
    if (st_open_mapped(&f, "fuzz.fisher", m) != TB_OK) { fuzz_check_errmsg(); return 0; }
    if (tb_fisher_check(&f) == TB_OK) {
        for (int i = 0; i < f.n_tensors; i++) {
            const st_tensor *t = &f.tensors[i];
            size_t len = strlen(t->name);
            if (len > 11 && !strncmp(t->name, "gram.", 5) && !strcmp(t->name + len - 6, ".input")) {
                double *a = NULL, *d = malloc((size_t)t->shape[0] * sizeof *d + 1);
                if (tb_fisher_gram_f64(t, &a) == TB_OK) {
                    /* what passes whole also passes by diagonal */
                    if (tb_fisher_gram_diag(t, d) != TB_OK) abort();
                    free(a);
                }
                tb_err_clear();
                free(d);
                char module[512], weight[600];
                snprintf(module, sizeof module, "%.*s", (int)(len - 11), t->name + 5);
                double n;
                tb_fisher_gram_count(&f, module, &n);
                tb_err_clear();
                snprintf(weight, sizeof weight, "%s.weight", module);
                const st_tensor *g;
                tb_fisher_find_gram(&f, weight, t->shape[0], &g); /* k/v/up name q/gate's Gram */
            } else if (!strncmp(t->name, "fisher.", 7) || !strncmp(t->name, "grad.", 5)) {
                float *v = NULL;
                if (tb_fisher_values_f32(t, t->name[0] == 'f', &v) == TB_OK) free(v);
            }
            tb_err_clear();
        }
    }
    st_close(&f);
    fuzz_check_errmsg();
    return 0;
}
