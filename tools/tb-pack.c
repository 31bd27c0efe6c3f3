/* tb-pack - apply pruning masks, compensate the kept weights, write a .tb shard.
 *
 * One weight at a time (the model is mapped, never loaded): read it as f32,
 * permute its columns as the mask says, compensate (tb_compensate), pack
 * (tb_pack) and stream it out. Everything that can be wrong with the inputs
 * (mask shapes and patterns, missing statistics) is checked before the output
 * is opened, so a bad input is one line on stderr and no file.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_compensate.h"
#include "tb_error.h"
#include "tb_fisher.h"
#include "tb_io.h"
#include "tb_linear.h"
#include "tb_log.h"
#include "tb_mask.h"
#include "tb_nm.h"
#include "tb_opts.h"
#include "tb_pack.h"
#include "tb_safetensors.h"
#include "tb_solve.h"
#include "tb_tbm.h"
#include "tb_threads.h"

static const char description[] =
    "Apply pruning masks (tb-nm) to a model, compensate the kept weights for what\n"
    "was pruned, and write a packed .tb shard: per N:M weight '<W>.values' (kept\n"
    "values, original dtype), '<W>.indices' (U8, ceil(log2 M)-bit in-group\n"
    "positions, LSB first) and '<W>.perm' if the mask permuted the input channels\n"
    "(values stay in permuted order); unstructured masks give '<W>' with exact\n"
    "zeros plus '<W>.mask'. Tensors without a mask are copied as they are.\n";

enum method { M_NONE, M_REDIST, M_OBS, M_RECON, M_SPARSEGPT };
static const char *const method_names[] = {"none", "redist", "obs", "recon", "sparsegpt", NULL};

typedef struct {
    const char *model, *masks, *stats, *out;
    enum method method;
    int uniform, block, keep_mask, include_dense, threads, json;
    double damp;
    tb_layer_range layers;
    tb_backend_opts dev;
    tb_backend *be; /* SparseGPT and the error reports run there */
    char *command;
} options;

typedef struct {
    const st_tensor *t; /* the model's tensor */
    int pruned, permuted;
    const st_tensor *grad, *gram; /* statistics, when found */
} item;

typedef struct {
    tb_ckpt ck;
    st_file masks, stats;
    int have_stats;
    int n, m; /* the masks' pattern (0, 0: unstructured) */
    item *items;
    int n_items, n_pruned;
} job;

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

static const char *comp_label(const options *o)
{
    if (o->method == M_REDIST) return o->uniform ? "redist-uniform" : "redist-proportional";
    return method_names[o->method];
}

/* The Gram matrix serving weight `name`, checked to be [cols, cols]. */
static int find_gram(const job *j, const char *stats_path, const st_tensor *w, const st_tensor **out)
{
    char gname[600];
    *out = NULL;
    if (tb_fisher_gram_name(w->name, "input", gname, sizeof gname)) return TB_OK;
    const st_tensor *g = st_find(&j->stats, gname);
    if (!g) return TB_OK;
    if (g->ndim != 2 || g->shape[0] != w->shape[1] || g->shape[1] != w->shape[1] || !tb_dtype_is_float(g->dtype))
        return tb_fail(TB_EDATA, "%s: tensor '%s': expected a float [%lld, %lld] Gram for '%s'", stats_path, gname,
                       (long long)w->shape[1], (long long)w->shape[1], w->name);
    *out = g;
    return TB_OK;
}

/* Everything checked before any output exists. */
static int preflight(const options *o, job *j)
{
    int rc = tb_ckpt_open(&j->ck, o->model);
    if (rc) return rc;
    if ((rc = st_open(&j->masks, o->masks))) return rc;
    const char *kind = st_meta(&j->masks, "tensorbit.kind"), *pat = st_meta(&j->masks, "pattern");
    const char *kd = st_meta(&j->masks, "k_dim");
    if (kind && strcmp(kind, "mask") != 0)
        return tb_fail(TB_EDATA, "%s: not a mask file (tensorbit.kind is '%s')", o->masks, kind);
    if (!pat) return tb_fail(TB_EDATA, "%s: no 'pattern' metadata (N:M or unstructured)", o->masks);
    if (tb_pack_parse_pattern(pat, &j->n, &j->m)) return tb_err_context("%s", o->masks);
    if (kd && strcmp(kd, "1") != 0)
        return tb_fail(TB_EDATA, "%s: k_dim %s (weights stored [in, out]) is not supported yet", o->masks, kd);
    if (o->stats) {
        if ((rc = st_open(&j->stats, o->stats))) return rc;
        j->have_stats = 1;
        const char *sk = st_meta(&j->stats, "tensorbit.kind");
        if (sk && strcmp(sk, "fisher") != 0)
            return tb_fail(TB_EDATA, "%s: not a .fisher file (tensorbit.kind is '%s')", o->stats, sk);
    }

    /* every mask must name a tensor of the model */
    for (int i = 0; i < j->masks.n_tensors; i++) {
        const char *name = j->masks.tensors[i].name;
        size_t len = strlen(name);
        if (len > 5 && strcmp(name + len - 5, ".perm") == 0) continue;
        if (!tb_ckpt_find(&j->ck, name))
            return tb_fail(TB_EDATA, "%s: tensor '%s': no such tensor in %s", o->masks, name, o->model);
    }

    /* the shard's tensors, sorted by name across shards */
    int total = tb_ckpt_count(&j->ck), k = 0;
    const st_tensor **all = tb_malloc((size_t)total * sizeof *all + 1);
    j->items = tb_calloc((size_t)total + 1, sizeof *j->items);
    if (!all || !j->items) { free(all); return TB_EIO; }
    for (int s = 0; s < j->ck.n_shards; s++)
        for (int i = 0; i < j->ck.shards[s].n_tensors; i++) all[k++] = &j->ck.shards[s].tensors[i];
    qsort(all, (size_t)total, sizeof *all, cmp_tensor_name);
    for (int i = 0; i < total && !rc; i++) {
        const st_tensor *t = all[i];
        int layer = tb_layer_of(t->name);
        if (o->layers.set && (layer < 0 ? !o->include_dense : !tb_layers_has(&o->layers, layer))) continue;
        item *it = &j->items[j->n_items++];
        it->t = t;
        if (!st_find(&j->masks, t->name)) continue;
        it->pruned = 1;
        j->n_pruned++;
        if (t->ndim != 2 || (t->dtype != TB_F32 && t->dtype != TB_BF16 && t->dtype != TB_F16)) {
            rc = tb_fail(TB_EDATA, "%s: tensor '%s': a mask needs a 2-D F32/F16/BF16 weight, not %s with %d dims",
                         o->model, t->name, tb_dtype_name(t->dtype), t->ndim);
            break;
        }
        int64_t rows = t->shape[0], cols = t->shape[1];
        tb_mask mk;
        if ((rc = tb_mask_read(&j->masks, t->name, rows, cols, &mk))) { tb_err_context("%s", o->masks); break; }
        it->permuted = mk.perm != NULL;
        if (j->m && (rc = tb_nm_check_mask(&mk, j->n, j->m))) tb_err_context("%s: tensor '%s'", o->masks, t->name);
        tb_mask_free(&mk);
        if (rc) break;
        if (j->have_stats && (rc = find_gram(j, o->stats, t, &it->gram))) break;
        if ((o->method == M_RECON || o->method == M_SPARSEGPT) && !it->gram) {
            char gname[600];
            tb_fisher_gram_name(t->name, "input", gname, sizeof gname);
            rc = tb_fail(TB_EDATA, "%s: no '%s' for %s of '%s'", o->stats, gname, method_names[o->method], t->name);
            break;
        }
        if (o->method == M_OBS) {
            char gname[600];
            snprintf(gname, sizeof gname, "grad.%s", t->name);
            const st_tensor *g = st_find(&j->stats, gname);
            if (!g) rc = tb_fail(TB_EDATA, "%s: no '%s' for obs (tb-fisher --grad-samples)", o->stats, gname);
            else if (g->ndim != 3 || g->shape[0] < 1 || g->shape[1] != rows || g->shape[2] != cols ||
                     !tb_dtype_is_float(g->dtype))
                rc = tb_fail(TB_EDATA, "%s: tensor '%s': expected float [K, %lld, %lld]", o->stats, gname, (long long)rows,
                             (long long)cols);
            it->grad = g;
            if (rc) break;
        }
        if (o->method == M_SPARSEGPT && j->m && o->block % j->m)
            rc = tb_fail(TB_EUSAGE, "--obs-block-size %d is not a multiple of M=%d", o->block, j->m);
    }
    free(all);
    if (!rc && o->layers.set && j->n_items == 0)
        rc = tb_fail(TB_EDATA, "%s: no tensors in layers %d-%d", o->model, o->layers.lo, o->layers.hi);
    return rc;
}

/* The Gram in the mask's column order, f64: gp[i][k] = G[perm[i]][perm[k]],
 * converted one source row at a time so the matrix exists once in memory. */
static double *load_gram(const st_tensor *g, const int32_t *perm)
{
    int64_t n = g->shape[0];
    double *a = tb_malloc((size_t)(n * n) * sizeof *a + 1), *row = perm ? tb_malloc((size_t)n * sizeof *row) : NULL;
    if (!a || (perm && !row)) { free(a); free(row); return NULL; }
    if (!perm) tb_to_f64(g->dtype, g->data, 0, (size_t)(n * n), a);
    for (int64_t i = 0; perm && i < n; i++) {
        tb_to_f64(g->dtype, g->data, (size_t)((int64_t)perm[i] * n), (size_t)n, row);
        for (int64_t k = 0; k < n; k++) a[i * n + k] = row[perm[k]];
    }
    free(row);
    return a;
}

typedef struct {
    double base, masked, comp; /* sums of ||W X||^2, ||dW X||^2 mask only, compensated */
    int n;
} err_sum;

/* Mask, compensate and write one weight. */
static int pack_one(const options *o, const job *j, const item *it, tb_pack_writer *pw, int index, err_sum *es)
{
    const st_tensor *t = it->t;
    int64_t rows = t->shape[0], cols = t->shape[1];
    double t0 = tb_now();
    tb_mask mk;
    float *w = NULL, *w0 = NULL;
    double *g_copy = NULL;
    const double *g = NULL;
    int rc = tb_mask_read(&j->masks, t->name, rows, cols, &mk);
    if (rc) return tb_err_context("%s", o->masks);
    /* a NaN or infinite weight or statistic is refused, never packed (tb_fisher.h) */
    if ((rc = st_tensor_f32_finite(t, &w))) { tb_err_context("%s", o->model); goto out; }
    if (mk.perm && tb_permute_cols_inplace(w, rows, cols, mk.perm, 0)) { rc = TB_EIO; goto out; }
    /* The output-error reports cost 3 x 2 rows cols^2 flops a weight (more
     * than SparseGPT at 7B) and are only shown: computed for -v and --json */
    const int report = o->json || tb_log_verbose() > 0;
    if (it->gram) {
        /* an F64 Gram in the model's order is used where it is mapped: page
         * cache, not process memory (1.6 GB for a 7B down_proj) */
        if (!mk.perm && it->gram->dtype == TB_F64 && (uintptr_t)it->gram->data % sizeof(double) == 0)
            g = it->gram->data;
        else
            g = g_copy = load_gram(it->gram, mk.perm);
        /* the reference for the error report: the weight as it was */
        if (!g || (report && !(w0 = tb_malloc((size_t)(rows * cols) * sizeof *w0)))) {
            rc = TB_EIO;
            goto out;
        }
        if ((rc = tb_fisher_gram_check(it->gram->name, g, cols))) { tb_err_context("%s", o->stats); goto out; }
        if (w0) memcpy(w0, w, (size_t)(rows * cols) * sizeof *w0);
        /* on a GPU backend G crosses the bus once for the solve and the
         * reports; without room the calls move it themselves */
        if ((report || o->method == M_SPARSEGPT) && tb_solve_gram_begin(o->be, g, cols)) tb_err_clear();
    }
    double e_base = 0, e_mask = 0;
    if (w0) {
        tb_comp_mask(w, &mk);
        e_base = tb_solve_output_error(o->be, w0, NULL, rows, cols, g, o->threads);
        e_mask = tb_solve_output_error(o->be, w0, w, rows, cols, g, o->threads);
        memcpy(w, w0, (size_t)(rows * cols) * sizeof *w);
    }
    tb_comp_stats st = {0};
    switch (o->method) {
    case M_NONE: tb_comp_mask(w, &mk); break;
    case M_REDIST: rc = tb_comp_redist(w, &mk, j->m, o->uniform, &st); break;
    case M_OBS:
        rc = tb_comp_obs(w, &mk, it->grad->data, it->grad->dtype, (int)it->grad->shape[0], mk.perm, o->block, o->damp,
                         o->threads, &st);
        break;
    case M_RECON: rc = tb_comp_recon(w, &mk, g, o->damp, o->threads, &st); break;
    case M_SPARSEGPT:
        rc = tb_solve_sparsegpt(o->be, w, &mk, j->n, j->m, g, o->damp, o->block, !o->keep_mask, o->threads, &st);
        break;
    }
    if (rc) {
        tb_err_context("%s: tensor '%s'", o->method >= M_OBS ? o->stats : o->model, t->name);
        goto out;
    }
    /* round to the stored dtype now, so the error reported is the stored weight's */
    if (t->dtype != TB_F32)
        for (int64_t i = 0; i < rows * cols; i++)
            w[i] = t->dtype == TB_BF16 ? tb_bf16_to_f32(tb_f32_to_bf16(w[i])) : tb_f16_to_f32(tb_f32_to_f16(w[i]));
    if ((rc = tb_pack_write(pw, w, &mk))) goto out;

    char err[128] = "", extra[96] = "";
    if (w0) {
        double e = tb_solve_output_error(o->be, w0, w, rows, cols, g, o->threads);
        snprintf(err, sizeof err, ", ||dW X||/||W X|| %.4f (mask only %.4f)", sqrt(e / e_base), sqrt(e_mask / e_base));
        es->base += e_base;
        es->masked += e_mask;
        es->comp += e;
        es->n++;
    }
    if (st.raised || st.eigen)
        snprintf(extra, sizeof extra, ", %lld raised damping, %lld eigen fallback", (long long)st.raised, (long long)st.eigen);
    if (st.empty_groups) snprintf(extra, sizeof extra, ", %lld groups with nothing kept", (long long)st.empty_groups);
    tb_info("[%d/%d] %s %s%s%s, %.2f s", index, j->n_pruned, t->name, comp_label(o), err, extra, tb_now() - t0);
out:
    tb_solve_gram_end(o->be);
    tb_mask_free(&mk);
    free(w);
    free(w0);
    free(g_copy);
    return rc;
}

static int run(const options *o)
{
    job j;
    memset(&j, 0, sizeof j);
    tb_outfile out = {0};
    tb_pack_writer *pw = NULL;
    double t0 = tb_now();
    int rc = preflight(o, &j);
    if (rc) goto done;

    if (!(pw = tb_pack_writer_new())) { rc = TB_EIO; goto done; }
    char damp[32], block[32], layers[64];
    snprintf(damp, sizeof damp, "%g", o->damp);
    snprintf(block, sizeof block, "%d", o->block);
    snprintf(layers, sizeof layers, "%d-%d", o->layers.lo, o->layers.hi);
    const char *meta[][2] = {
        {"tensorbit.version", TB_VERSION}, {"pattern", st_meta(&j.masks, "pattern")},
        {"compensation", comp_label(o)},   {"damp", damp},
        {"obs_block_size", block},         {"model", o->model},
        {"masks", o->masks},               {"stats", o->stats ? o->stats : ""},
        {"layers", o->layers.set ? layers : "all"}, {"command", o->command},
    };
    for (size_t i = 0; !rc && i < sizeof meta / sizeof meta[0]; i++) rc = tb_pack_writer_meta(pw, meta[i][0], meta[i][1]);
    char *recipe = tb_recipe_of_inputs((const st_file *const[2]){&j.masks, j.have_stats ? &j.stats : NULL}, 2);
    if (!rc && recipe) rc = tb_pack_writer_meta(pw, "tensorbit.recipe", recipe);
    free(recipe);
    const char *mask_src = o->method == M_SPARSEGPT && !o->keep_mask ? "sparsegpt" : "given";
    for (int i = 0; !rc && i < j.n_items; i++) {
        const item *it = &j.items[i];
        rc = it->pruned ? tb_pack_declare(pw, it->t->name, it->t->dtype, it->t->shape[0], it->t->shape[1], j.n, j.m,
                                          it->permuted, comp_label(o), mask_src)
                        : tb_pack_declare_copy(pw, it->t->name, it->t->dtype, it->t->ndim, it->t->shape);
    }
    if (rc || (rc = tb_out_open(&out, o->out)) || (rc = tb_pack_writer_begin(pw, out.fp, o->out))) goto done;

    tb_progress prog;
    tb_progress_begin(&prog, "tensors", (uint64_t)j.n_items);
    err_sum es = {0};
    for (int i = 0, k = 0; !rc && i < j.n_items; i++) {
        const item *it = &j.items[i];
        rc = it->pruned ? pack_one(o, &j, it, pw, ++k, &es) : tb_pack_write_copy(pw, it->t->data, it->t->nbytes);
        tb_progress_set(&prog, (uint64_t)i + 1);
    }
    tb_progress_end(&prog);
    if (!rc) rc = tb_pack_writer_finish(pw);
    if (!rc) rc = tb_out_commit(&out);
    if (!rc && o->json) {
        cJSON *js = cJSON_CreateObject();
        cJSON_AddStringToObject(js, "output", o->out);
        cJSON_AddNumberToObject(js, "tensors", j.n_items);
        cJSON_AddNumberToObject(js, "pruned", j.n_pruned);
        cJSON_AddStringToObject(js, "pattern", st_meta(&j.masks, "pattern"));
        cJSON_AddStringToObject(js, "compensation", comp_label(o));
        cJSON_AddNumberToObject(js, "weights_with_gram", es.n);
        if (es.n && es.base > 0) { /* relative output error ||dW X|| / ||W X|| over those weights */
            cJSON_AddNumberToObject(js, "output_error", sqrt(es.comp / es.base));
            cJSON_AddNumberToObject(js, "output_error_mask_only", sqrt(es.masked / es.base));
        } else {
            cJSON_AddNullToObject(js, "output_error");
            cJSON_AddNullToObject(js, "output_error_mask_only");
        }
        cJSON_AddNumberToObject(js, "seconds", tb_now() - t0);
        rc = tb_json_print(js);
    }
    if (!rc) {
        char err[160] = "";
        if (es.n)
            snprintf(err, sizeof err, "; over the %d with a Gram, ||dW X||/||W X|| %.4f (mask only %.4f)", es.n,
                     sqrt(es.comp / es.base), sqrt(es.masked / es.base));
        tb_info("wrote %s: %d tensors, %d pruned (%s, %s)%s, %.1f s", o->out, j.n_items, j.n_pruned,
                st_meta(&j.masks, "pattern"), comp_label(o), err, tb_now() - t0);
    }
done:
    if (rc && out.fp) tb_out_abort(&out);
    tb_pack_writer_free(pw);
    free(j.items);
    if (j.have_stats) st_close(&j.stats);
    if (j.masks.path) st_close(&j.masks);
    if (j.ck.path) tb_ckpt_close(&j.ck);
    return rc;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-pack");
    options o = {.block = 128, .damp = 0.01, .threads = tb_default_threads(), .dev = {.device = TB_DEVICE_AUTO}};
    int method = M_NONE, redist = 0;
    static const char *const redist_names[] = {"proportional", "uniform", NULL};
    const tb_option table[] = {
        TB_OPT_MODEL(&o.model, "HF model directory or safetensors file"),
        {.type = TB_OPTT_STRING, .long_name = "masks", .value = &o.masks, .argh = "FILE",
         .help = "masks (tb-nm): which weights to prune, N:M or unstructured", .flags = TB_OPTF_FILE | TB_OPTF_REQUIRED,
         .want = TB_WANT_SAFETENSORS, .what = "masks (safetensors)", .fix = "make them with tb-nm"},
        TB_OPT_INPUT('f', "stats", &o.stats, "FILE", TB_WANT_SAFETENSORS, ".fisher statistics (safetensors)", "make them with tb-fisher", ".fisher statistics (tb-fisher): grad.<W> for obs,\n"
                                                   "gram.<module>.input for recon and sparsegpt (and, when\n"
                                                   "present, for the per-tensor output error report)"),
        TB_OPT_OUTPUT(&o.out, "FILE", TB_OPTF_REQUIRED, "the .tb shard to write (- for stdout)"),
        TB_OPT_CHOICE(0, "compensate", &method, method_names,
                      "what to do with the kept weights (default none):\n"
                      "  none       mask only\n"
                      "  redist     move the pruned weights' sum onto the kept\n"
                      "             ones of the same group (row if unstructured)\n"
                      "  obs        Optimal Brain Surgeon per block of a row with\n"
                      "             the Fisher from grad.<W> samples (Woodbury)\n"
                      "  recon      per row, the exact minimiser of\n"
                      "             ||(W - W_hat) X||^2 under the mask (Gram)\n"
                      "  sparsegpt  SparseGPT's column sweep (Gram); re-chooses\n"
                      "             the keep bits within the masks' pattern"),
        TB_OPT_CHOICE(0, "redist", &redist, redist_names, "proportional (to |w|, default) or uniform"),
        TB_OPT_INT(0, "obs-block-size", &o.block, "B", 1, 1 << 16, "obs: weights per OBS block; sparsegpt: columns per lazy\n"
                                                                   "update block, a multiple of M (default 128)"),
        TB_OPT_FLAG(0, "keep-mask", &o.keep_mask, "sparsegpt: keep the given keep bits instead of re-choosing"),
        TB_OPT_DOUBLE(0, "damp", &o.damp, "D", 0, 1e6, "relative damping (default 0.01): lambda = D * mean\n"
                                                      "diagonal of the Gram (recon, sparsegpt) or of the Fisher (obs)"),
        TB_OPT_LAYERS(&o.layers, "decoder layers A..B only (A-B inclusive, A:B = A..B-1, or A);\n"
                                 "the shard then holds those layers' tensors, and the tensors\n"
                                 "outside any layer only with --include-dense"),
        TB_OPT_FLAG(0, "include-dense", &o.include_dense, "with --layers: also copy embeddings, final norm, lm_head"),
        TB_OPT_JSON(&o.json, "print a summary as one JSON object on stdout: tensors,\n"
                             "pruned, pattern, compensation, output_error (relative\n"
                             "||dW X||/||W X|| over the weights with a Gram, null\n"
                             "without), output_error_mask_only, seconds"),
        TB_OPT_THREADS(&o.threads),
        TB_OPT_CHOICE_FN(0, "device", &o.dev.device, tb_opt_device_names, tb_device_parse,
                         "cpu, cuda or auto: where SparseGPT and the error reports\n"
                         "run (default auto; the other solvers run on the CPU)"),
        TB_OPT_INT(0, "gpu", &o.dev.gpu, "N", 0, 1023, "which CUDA device (default 0)"),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-pack", .usage = "tb-pack -m MODEL --masks MASKS [options] -o OUT.tb",
                            .description = description, .options = table};
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, NULL, NULL);
    o.method = (enum method)method;
    o.uniform = redist == 1;
    if (o.json && !strcmp(o.out, "-")) return tb_usage_error("--json prints to stdout, so -o - cannot: give -o FILE");
    if (o.method >= M_OBS && !o.stats)
        return tb_usage_error("--compensate %s needs -f STATS.fisher", method_names[o.method]);
    if (o.method == M_OBS && !(o.damp > 0)) return tb_usage_error("--compensate obs needs --damp > 0");
    if (o.include_dense && !o.layers.set) return tb_usage_error("--include-dense goes with --layers");
    if (o.keep_mask && o.method != M_SPARSEGPT) return tb_usage_error("--keep-mask goes with --compensate sparsegpt");
    tb_blas_single_thread(); /* our threads split the rows */
    if (!(o.command = tb_join_args(argc, argv))) return tb_report_error();
    tb_backend be;
    o.dev.n_threads = o.threads;
    int rc = tb_backend_open(&be, &o.dev);
    if (!rc) {
        o.be = &be;
        rc = run(&o);
        tb_backend_close(&be);
    }
    free(o.command);
    return rc ? tb_report_error() : 0;
}
