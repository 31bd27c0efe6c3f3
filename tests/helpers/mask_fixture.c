/* mask_fixture - hand-made mask files for the tb-pack CLI tests, independent
 * of tb-score and tb-nm: magnitude masks (the N largest |w| of each group of
 * M, or the larger half of each row for "unstructured") of the *proj.weight
 * tensors of a model, in the tb_mask.h layout.
 *
 * usage: mask_fixture MODEL OUT N:M|unstructured [--layer L] [--only SUBSTR]...
 *                     [--perm] [--bad-shape] [--meta KEY=VALUE]...
 *   --only       only tensors whose name contains one of the SUBSTRs
 *   --perm       store the permutation perm[j] = (j + 1) mod cols (masks then
 *                apply to the permuted weight)
 *   --bad-shape  declare the first tensor's mask with one row too few
 *   --meta       set a metadata entry (after the defaults, so it overrides) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_mask.h"
#include "tb_safetensors.h"

static void magnitude_mask(const float *w, int64_t cols, int n, int m, int32_t *perm, tb_mask *mk, int64_t r)
{
    const float *row = w + r * cols;
#define W(j) fabsf(row[perm ? perm[j] : (j)])
    int64_t g = m ? m : cols, keep = m ? n : cols / 2;
    for (int64_t c0 = 0; c0 < cols; c0 += g)
        for (int64_t k = 0; k < keep; k++) {
            int64_t best = -1;
            for (int64_t c = c0; c < c0 + g; c++)
                if (!tb_mask_get(mk, r, c) && (best < 0 || W(c) > W(best))) best = c;
            tb_mask_set(mk, r, best, 1);
        }
#undef W
}

int main(int argc, char **argv)
{
    tb_log_init("mask_fixture");
    if (argc < 4) return tb_usage_error("usage: mask_fixture MODEL OUT N:M|unstructured [options]");
    int n = 0, m = 0, layer = -1, perm = 0, bad = 0;
    const char *only[16], *meta[16][2];
    int n_only = 0, n_meta = 0;
    if (strcmp(argv[3], "unstructured") && sscanf(argv[3], "%d:%d", &n, &m) != 2) return tb_usage_error("bad pattern");
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "--layer") && i + 1 < argc) layer = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc && n_only < 16) only[n_only++] = argv[++i];
        else if (!strcmp(argv[i], "--perm")) perm = 1;
        else if (!strcmp(argv[i], "--bad-shape")) bad = 1;
        else if (!strcmp(argv[i], "--meta") && i + 1 < argc && n_meta < 16 && strchr(argv[i + 1], '=')) {
            char *kv = argv[++i], *eq = strchr(kv, '=');
            *eq = 0;
            meta[n_meta][0] = kv;
            meta[n_meta++][1] = eq + 1;
        } else return tb_usage_error("unknown option '%s'", argv[i]);
    }
    tb_ckpt ck;
    if (tb_ckpt_open(&ck, argv[1])) return tb_report_error();
    char prefix[64];
    snprintf(prefix, sizeof prefix, "layers.%d.", layer);
    tb_mask masks[512];
    const st_tensor *ts[512];
    int nt = 0;
    for (int s = 0; s < ck.n_shards; s++)
        for (int i = 0; i < ck.shards[s].n_tensors && nt < 512; i++) {
            const st_tensor *t = &ck.shards[s].tensors[i];
            if (t->ndim != 2 || !strstr(t->name, "proj.weight")) continue;
            int match = !n_only;
            for (int k = 0; k < n_only; k++) match |= strstr(t->name, only[k]) != NULL;
            if ((layer >= 0 && !strstr(t->name, prefix)) || !match) continue;
            int64_t rows = t->shape[0], cols = t->shape[1];
            float *w = st_tensor_f32(t);
            tb_mask *mk = &masks[nt];
            if (!w || tb_mask_alloc(mk, rows, cols)) return tb_report_error();
            if (perm) {
                mk->perm = malloc((size_t)cols * sizeof *mk->perm);
                for (int64_t j = 0; j < cols; j++) mk->perm[j] = (int32_t)((j + 1) % cols);
            }
            for (int64_t r = 0; r < rows; r++) magnitude_mask(w, cols, n, m, mk->perm, mk, r);
            if (bad && nt == 0) mk->rows--;
            free(w);
            ts[nt++] = t;
        }
    st_writer *w = st_writer_new();
    int rc = st_writer_meta(w, "tensorbit.kind", "mask");
    if (!rc) rc = st_writer_meta(w, "pattern", argv[3]);
    if (!rc) rc = st_writer_meta(w, "k_dim", "1");
    for (int i = 0; !rc && i < n_meta; i++) rc = st_writer_meta(w, meta[i][0], meta[i][1]);
    for (int i = 0; !rc && i < nt; i++)
        rc = tb_mask_declare(w, ts[i]->name, masks[i].rows, masks[i].cols, masks[i].perm ? masks[i].cols : 0);
    tb_outfile out;
    if (!rc) rc = tb_out_open(&out, argv[2]);
    if (!rc) rc = st_writer_begin(w, out.fp, argv[2]);
    for (int i = 0; !rc && i < nt; i++) rc = tb_mask_write(w, &masks[i], masks[i].perm ? masks[i].cols : 0);
    if (!rc) rc = st_writer_finish(w);
    if (!rc) rc = tb_out_commit(&out);
    st_writer_free(w);
    for (int i = 0; i < nt; i++) tb_mask_free(&masks[i]);
    tb_ckpt_close(&ck);
    return rc ? tb_report_error() : 0;
}
