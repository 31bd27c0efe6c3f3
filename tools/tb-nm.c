/* tb-nm - pruning masks from importance scores.
 *
 * Reads a scores file (tb-score's output, or any safetensors of 2-D float
 * tensors), chooses for each tensor which elements to keep, N:M along the
 * reduction dimension or unstructured, optionally after permuting the input
 * channels, and writes the masks in the tb_mask.h layout.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tb_error.h"
#include "tb_fisher.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_mask.h"
#include "tb_nm.h"
#include "tb_opts.h"
#include "tb_safetensors.h"
#include "tb_tbm.h"
#include "tb_threads.h"

static const char description[] =
    "Choose which weights to keep from importance scores (tb-score) and write\n"
    "masks (safetensors: U8 keep bits per weight, I32 '<W>.perm' with --permute).\n";

enum per { PER_ROW, PER_TENSOR, PER_LAYER };

typedef struct {
    const char *scores, *out, *model, *stats;
    int n, m, k_dim, permute, foldable, rounds, sweeps, threads, verbose, json;
    tb_config cfg; /* with foldable: the head layout of o_proj */
    double sparsity; /* < 0: N:M */
    enum per per;
    tb_nm_solver solver;
    uint64_t seed;
    char *command;
} options;

/* Decoder layer of a tensor name: the prefix through "layers.<digits>.", so
 * all tensors of one layer pool together; -1 length if none. */
static size_t layer_prefix(const char *name)
{
    const char *p = name;
    while ((p = strstr(p, "layers.")) != NULL) {
        const char *q = p + strlen("layers.");
        const char *d = q;
        while (*d >= '0' && *d <= '9') d++;
        if (d > q && *d == '.') return (size_t)(d + 1 - name);
        p = q;
    }
    return 0;
}

/* The first non-finite score, as "[r, c]". */
static int check_finite(const st_file *f, const st_tensor *t)
{
    float buf[4096];
    for (int64_t off = 0; off < t->numel; off += 4096) {
        int64_t k = t->numel - off < 4096 ? t->numel - off : 4096;
        tb_to_f32(t->dtype, t->data, (size_t)off, (size_t)k, buf);
        for (int64_t j = 0; j < k; j++)
            if (!isfinite(buf[j]))
                return tb_fail(TB_EDATA, "%s: tensor '%s': score at [%lld, %lld] is %s", f->path, t->name,
                               (long long)((off + j) / t->shape[1]), (long long)((off + j) % t->shape[1]),
                               isnan(buf[j]) ? "NaN" : "Inf");
    }
    return TB_OK;
}

typedef struct {
    const st_tensor *s;
    const st_tensor *w;    /* iterative */
    const st_tensor *gram; /* iterative */
} item;

/* Everything that can be wrong with the inputs, found before any output. */
static int validate(const options *o, const st_file *sf, tb_ckpt *ck, const st_file *stats, item *it, int n)
{
    for (int i = 0; i < n; i++) {
        const st_tensor *t = it[i].s;
        if (t->ndim != 2 || !tb_dtype_is_float(t->dtype))
            return tb_fail(TB_EDATA, "%s: tensor '%s': scores must be a 2-D float tensor (%s, %d-D)", sf->path, t->name,
                           tb_dtype_name(t->dtype), t->ndim);
        int64_t K = t->shape[o->k_dim];
        if (o->sparsity < 0 && K % o->m)
            return tb_fail(TB_EDATA, "%s: tensor '%s': dim %d (%lld) not divisible by M=%d", sf->path, t->name, o->k_dim,
                           (long long)K, o->m);
        if (o->sparsity < 0 && K > INT32_MAX) return tb_fail(TB_EDATA, "%s: tensor '%s': dim too large", sf->path, t->name);
        int rc = check_finite(sf, t);
        if (rc) return rc;
        if (o->solver != TB_NM_ITERATIVE || o->sparsity >= 0) continue;
        const st_tensor *w = tb_ckpt_find(ck, t->name);
        if (!w) return tb_fail(TB_EDATA, "%s: no weight '%s' (named in %s)", o->model, t->name, sf->path);
        if (w->ndim != 2 || w->shape[0] != t->shape[0] || w->shape[1] != t->shape[1] || !tb_dtype_is_float(w->dtype))
            return tb_fail(TB_EDATA, "%s: tensor '%s': weight shape differs from the scores' [%lld, %lld]", o->model, t->name,
                           (long long)t->shape[0], (long long)t->shape[1]);
        char gname[600];
        if (tb_fisher_gram_name(t->name, "input", gname, sizeof gname))
            return tb_fail(TB_EDATA, "%s: tensor '%s': not a '<module>.weight' name, no Gram matrix for it", sf->path, t->name);
        const st_tensor *g = st_find(stats, gname);
        if (!g) return tb_fail(TB_EDATA, "%s: no tensor '%s' (needed by the iterative solver for '%s')", o->stats, gname, t->name);
        if (g->ndim != 2 || g->shape[0] != K || g->shape[1] != K || !tb_dtype_is_float(g->dtype))
            return tb_fail(TB_EDATA, "%s: tensor '%s': expected float [%lld, %lld]", o->stats, gname, (long long)K, (long long)K);
        it[i].w = w;
        it[i].gram = g;
    }
    return TB_OK;
}

typedef struct {
    double kept, total, kept_plain, kept_perm, err_start, err;
    int64_t changed, pruned, elems;
    int swaps;
    double t_perm, t_solve;
} totals;

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* How a weight's input channels are permuted: not at all, freely (every
 * weight under --permute; down_proj under --permute-foldable, folded into
 * gate/up's rows on export), or within heads (o_proj under
 * --permute-foldable, folded into v_proj's rows). */
enum perm_kind { PERM_NONE, PERM_FREE, PERM_HEADS };

static enum perm_kind perm_kind_of(const options *o, const char *name)
{
    if (o->permute) return PERM_FREE;
    if (!o->foldable) return PERM_NONE;
    if (ends_with(name, "mlp.down_proj.weight")) return PERM_FREE;
    if (ends_with(name, "self_attn.o_proj.weight")) return PERM_HEADS;
    return PERM_NONE;
}

/* One N:M tensor: optional permutation, then the solver. */
static int nm_tensor(const options *o, const item *it, tb_mask *mask, totals *tt)
{
    const st_tensor *t = it->s;
    int64_t rows = t->shape[0], cols = t->shape[1], K = t->shape[o->k_dim], numel = rows * cols;
    float *s = st_tensor_f32(t), *w = NULL;
    double *g = NULL;
    int rc = s ? TB_OK : TB_EIO;
    if (!rc) rc = tb_mask_alloc(mask, rows, cols);
    if (!rc && it->w) {
        w = st_tensor_f32(it->w);
        g = tb_malloc((size_t)(K * K) * sizeof *g);
        if (!w || !g) rc = TB_EIO;
        else tb_to_f64(it->gram->dtype, it->gram->data, 0, (size_t)(K * K), g);
        if (!rc) rc = tb_fisher_gram_check(it->gram->name, g, K); /* NaN/Inf statistics: refused, named */
    }
    tb_perm_stats ps = {0};
    double t0 = tb_now();
    enum perm_kind pk = perm_kind_of(o, t->name);
    if (!rc && pk != PERM_NONE) {
        mask->perm = tb_malloc((size_t)K * sizeof(int32_t));
        float *sp = tb_malloc((size_t)numel * sizeof *sp);
        if (!mask->perm || !sp) rc = TB_EIO;
        tb_perm_opts po = {o->rounds, o->seed, o->threads};
        if (!rc && pk == PERM_HEADS)
            rc = tb_permute_search_heads(s, rows, cols, o->cfg.n_heads, o->cfg.n_kv_heads, o->cfg.head_dim, o->n, o->m,
                                         &po, mask->perm, &ps);
        else if (!rc)
            rc = tb_permute_search(s, rows, cols, o->k_dim, o->n, o->m, &po, mask->perm, &ps);
        if (!rc) {
            /* from here on everything is in the permuted channel order */
            tb_permute_apply(s, sp, sizeof *s, rows, cols, o->k_dim, mask->perm);
            free(s);
            s = sp;
            sp = NULL;
            if (w) {
                float *wp = tb_malloc((size_t)numel * sizeof *wp);
                double *gp = tb_malloc((size_t)(K * K) * sizeof *gp);
                if (!wp || !gp) { free(wp); free(gp); rc = TB_EIO; }
                else {
                    tb_permute_apply(w, wp, sizeof *w, rows, cols, o->k_dim, mask->perm);
                    /* G in the permuted order: rows into gp, then columns back into g */
                    tb_permute_apply(g, gp, sizeof *g, K, K, 0, mask->perm);
                    tb_permute_apply(gp, g, sizeof *g, K, K, 1, mask->perm);
                    free(w);
                    free(gp);
                    w = wp;
                }
            }
        }
        free(sp);
        tt->swaps += ps.swaps;
    }
    double t1 = tb_now();
    tb_nm_stats st = {0};
    if (!rc) {
        tb_nm_opts no = {o->n, o->m, o->k_dim, o->solver, o->threads, o->sweeps, w, g};
        rc = tb_nm_solve(&no, s, rows, cols, mask, &st);
    }
    double t2 = tb_now();
    if (!rc) {
        tt->kept += st.kept;
        tt->total += st.total;
        tt->kept_plain += ps.kept_identity;
        tt->kept_perm += ps.kept;
        tt->err_start += st.err_start;
        tt->err += st.err;
        tt->changed += st.changed_groups;
        tt->t_perm += t1 - t0;
        tt->t_solve += t2 - t1;
        if (o->verbose) {
            char extra[200] = "";
            if (pk != PERM_NONE)
                snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ", permutation: topn kept %+.3f%% (%d swaps, %d rounds, %.2f s)",
                         ps.kept_identity > 0 ? 100 * (ps.kept / ps.kept_identity - 1) : 0.0, ps.swaps, ps.rounds, t1 - t0);
            if (o->solver == TB_NM_ITERATIVE)
                snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ", joint error %.6g -> %.6g (%lld groups changed)",
                         st.err_start, st.err, (long long)st.changed_groups);
            tb_info("%s: kept importance %.3f%%%s", t->name, st.total > 0 ? 100 * st.kept / st.total : 0.0, extra);
        }
    } else if (tb_errcode() != TB_EIO) {
        tb_err_context("tensor '%s'", t->name);
    }
    free(s);
    free(w);
    free(g);
    return rc;
}

static int write_meta(const options *o, st_writer *w, const st_file *const inputs[2])
{
    char buf[64];
    int rc = st_writer_meta(w, "tensorbit.kind", "mask");
    if (!rc) rc = st_writer_meta(w, "tensorbit.version", TB_VERSION);
    if (o->sparsity < 0) snprintf(buf, sizeof buf, "%d:%d", o->n, o->m);
    else snprintf(buf, sizeof buf, "unstructured");
    if (!rc) rc = st_writer_meta(w, "pattern", buf);
    snprintf(buf, sizeof buf, "%.9g", o->sparsity < 0 ? 1.0 - (double)o->n / o->m : o->sparsity);
    if (!rc) rc = st_writer_meta(w, "sparsity", buf);
    if (!rc) rc = st_writer_meta(w, "k_dim", o->k_dim ? "1" : "0");
    static const char *const per_names[] = {"row", "tensor", "layer"};
    if (!rc && o->sparsity >= 0) rc = st_writer_meta(w, "per", per_names[o->per]);
    if (!rc) rc = st_writer_meta(w, "solver", o->sparsity < 0 ? tb_nm_solver_name(o->solver) : "threshold");
    if (!rc) rc = st_writer_meta(w, "scores", o->scores);
    if (!rc && (o->permute || o->foldable)) {
        snprintf(buf, sizeof buf, "%d", o->rounds);
        rc = st_writer_meta(w, "permute_rounds", buf);
    }
    if (!rc && o->foldable) rc = st_writer_meta(w, "permute", "foldable");
    if (!rc) rc = st_writer_meta(w, "command", o->command);
    char *recipe = tb_recipe_of_inputs(inputs, 2); /* the scores' stages survive a pipe */
    if (!rc && recipe) rc = st_writer_meta(w, "tensorbit.recipe", recipe);
    free(recipe);
    return rc;
}

static int run(options *o)
{
    st_file sf;
    int rc = st_open(&sf, o->scores);
    if (rc) return rc;
    tb_ckpt ck = {0};
    st_file stats;
    int have_ck = 0, have_stats = 0, out_open = 0, n = sf.n_tensors;
    item *it = NULL;
    st_writer *w = NULL;
    tb_outfile out = {0};
    tb_pool_threshold *thr = NULL;
    int64_t *ties_before = NULL, *pool_ties = NULL;
    int *group_of = NULL;
    tb_array *pool = NULL; /* one pool's tensors at a time */
    tb_mask mask = {0};
    totals tt = {0};

    const char *kind = st_meta(&sf, "tensorbit.kind");
    if (kind && strcmp(kind, "scores") != 0) {
        rc = tb_fail(TB_EDATA, "%s: not a scores file (tensorbit.kind is '%s')", sf.path, kind);
        goto done;
    }
    if (o->k_dim < 0) {
        const char *kd = st_meta(&sf, "k_dim");
        o->k_dim = kd && strcmp(kd, "0") == 0 ? 0 : 1;
    }
    if (o->foldable && o->k_dim != 1) {
        rc = tb_fail(TB_EUSAGE, "--permute-foldable: weights stored [in, out] (k_dim 0) are not supported");
        goto done;
    }
    if (o->foldable && (rc = tb_config_load(&o->cfg, o->model))) goto done;
    if (!n) { rc = tb_fail(TB_EDATA, "%s: no tensors", sf.path); goto done; }
    it = tb_calloc((size_t)n, sizeof *it);
    if (!it) { rc = TB_EIO; goto done; }
    for (int i = 0; i < n; i++) it[i].s = &sf.tensors[sf.by_name[i]];
    if (o->sparsity < 0 && o->solver == TB_NM_ITERATIVE) {
        if ((rc = tb_ckpt_open(&ck, o->model))) goto done;
        have_ck = 1;
        if ((rc = st_open(&stats, o->stats))) goto done;
        have_stats = 1;
    }
    if ((rc = validate(o, &sf, &ck, have_stats ? &stats : NULL, it, n))) goto done;

    /* unstructured per tensor / layer: thresholds of every pool first */
    double t0 = tb_now();
    if (o->sparsity >= 0 && o->per != PER_ROW) {
        thr = tb_calloc((size_t)n, sizeof *thr);
        ties_before = tb_calloc((size_t)n, sizeof *ties_before);
        group_of = tb_calloc((size_t)n, sizeof *group_of);
        pool = tb_calloc((size_t)n, sizeof *pool);
        pool_ties = tb_calloc((size_t)n, sizeof *pool_ties);
        if (!thr || !ties_before || !group_of || !pool || !pool_ties) { rc = TB_EIO; goto done; }
        for (int i = 0; i < n; i++) group_of[i] = -1;
        for (int i = 0; i < n && !rc; i++) {
            if (group_of[i] >= 0) continue;
            size_t pl = o->per == PER_LAYER ? layer_prefix(it[i].s->name) : 0;
            int np = 0;
            int64_t numel = 0;
            for (int j = i; j < n; j++) {
                int same = j == i || (pl && strncmp(it[j].s->name, it[i].s->name, pl) == 0 &&
                                      layer_prefix(it[j].s->name) == pl);
                if (!same) continue;
                group_of[j] = i;
                pool[np++] = st_array(it[j].s);
                numel += it[j].s->numel;
            }
            rc = tb_pool_select(pool, np, llround(o->sparsity * (double)numel), &thr[i], pool_ties);
            for (int j = i, q = 0; j < n && !rc; j++)
                if (group_of[j] == i) ties_before[j] = pool_ties[q++];
        }
        if (rc) goto done;
    }

    w = st_writer_new();
    if (!w) { rc = TB_EIO; goto done; }
    if ((rc = write_meta(o, w, (const st_file *const[2]){&sf, have_stats ? &stats : NULL}))) goto done;
    for (int i = 0; i < n && !rc; i++)
        rc = tb_mask_declare(w, it[i].s->name, it[i].s->shape[0], it[i].s->shape[1],
                             perm_kind_of(o, it[i].s->name) != PERM_NONE ? it[i].s->shape[o->k_dim] : 0);
    if (rc) goto done;
    if ((rc = tb_out_open(&out, o->out))) goto done;
    out_open = 1;
    if ((rc = st_writer_begin(w, out.fp, strcmp(o->out, "-") ? o->out : "<stdout>"))) goto done;

    tb_progress prog;
    tb_progress_begin(&prog, "tensors", (uint64_t)n);
    for (int i = 0; i < n && !rc; i++) {
        const st_tensor *t = it[i].s;
        int64_t rows = t->shape[0], cols = t->shape[1];
        if (o->sparsity < 0) {
            rc = nm_tensor(o, &it[i], &mask, &tt);
        } else if (o->per == PER_ROW) {
            float *s = st_tensor_f32(t);
            rc = s ? tb_mask_alloc(&mask, rows, cols) : TB_EIO;
            if (!rc) rc = tb_unstructured_units(s, rows, cols, o->k_dim, o->sparsity, o->threads, &mask);
            if (!rc) {
                double all, kept = tb_nm_kept(s, &mask, &all);
                tt.kept += kept;
                tt.total += all;
            }
            free(s);
        } else {
            rc = tb_mask_alloc(&mask, rows, cols);
            tb_array ta = st_array(t);
            if (!rc) rc = tb_pool_mask(&ta, &thr[group_of[i]], ties_before[i], &mask);
            if (!rc && o->verbose) {
                float *s = st_tensor_f32(t);
                if (s) {
                    double all, kept = tb_nm_kept(s, &mask, &all);
                    tt.kept += kept;
                    tt.total += all;
                }
                free(s);
            }
        }
        if (!rc) {
            int64_t kept = tb_mask_count_kept(&mask);
            tt.pruned += t->numel - kept;
            tt.elems += t->numel;
            if (o->verbose && o->sparsity >= 0)
                tb_info("%s: pruned %lld of %lld (%.4f%%)", t->name, (long long)(t->numel - kept), (long long)t->numel,
                        100.0 * (double)(t->numel - kept) / (double)t->numel);
            rc = tb_mask_write(w, &mask, perm_kind_of(o, t->name) != PERM_NONE ? t->shape[o->k_dim] : 0);
        }
        tb_mask_free(&mask);
        tb_progress_set(&prog, (uint64_t)i + 1);
    }
    tb_progress_end(&prog);
    if (!rc) rc = st_writer_finish(w);
    if (!rc) rc = tb_out_commit(&out);
    if (!rc) {
        char pat[32];
        if (o->sparsity < 0) snprintf(pat, sizeof pat, "%d:%d %s", o->n, o->m, tb_nm_solver_name(o->solver));
        else snprintf(pat, sizeof pat, "%.4g%% per %s", 100 * o->sparsity, o->per == PER_ROW ? "row" : o->per == PER_TENSOR ? "tensor" : "layer");
        char line[512];
        int k = snprintf(line, sizeof line, "%d tensors, %s: pruned %.4f%%", n, pat,
                         tt.elems ? 100.0 * (double)tt.pruned / (double)tt.elems : 0.0);
        if (tt.total > 0) k += snprintf(line + k, sizeof line - (size_t)k, ", kept importance %.3f%%", 100 * tt.kept / tt.total);
        if ((o->permute || o->foldable) && tt.kept_plain > 0)
            k += snprintf(line + k, sizeof line - (size_t)k, " (permutation: topn kept %+.3f%%, %d swaps, %.2f s)",
                          100 * (tt.kept_perm / tt.kept_plain - 1), tt.swaps, tt.t_perm);
        if (o->sparsity < 0 && o->solver == TB_NM_ITERATIVE)
            k += snprintf(line + k, sizeof line - (size_t)k, ", joint error %.6g -> %.6g (%lld groups changed)", tt.err_start,
                          tt.err, (long long)tt.changed);
        snprintf(line + k, sizeof line - (size_t)k, ", %.2f s", tb_now() - t0);
        tb_info("%s", line);
    }
    if (!rc && o->json) {
        cJSON *js = cJSON_CreateObject();
        cJSON_AddStringToObject(js, "output", o->out);
        cJSON_AddNumberToObject(js, "tensors", n);
        if (o->sparsity < 0) {
            char nm[32];
            snprintf(nm, sizeof nm, "%d:%d", o->n, o->m);
            cJSON_AddStringToObject(js, "pattern", nm);
            cJSON_AddStringToObject(js, "solver", tb_nm_solver_name(o->solver));
        } else {
            cJSON_AddNumberToObject(js, "sparsity", o->sparsity);
        }
        cJSON_AddNumberToObject(js, "pruned_fraction", tt.elems ? (double)tt.pruned / (double)tt.elems : 0.0);
        if (tt.total > 0) cJSON_AddNumberToObject(js, "kept_importance", tt.kept / tt.total);
        else cJSON_AddNullToObject(js, "kept_importance");
        if ((o->permute || o->foldable) && tt.kept_plain > 0) cJSON_AddNumberToObject(js, "permutation_gain", tt.kept_perm / tt.kept_plain - 1);
        if (o->sparsity < 0 && o->solver == TB_NM_ITERATIVE) {
            cJSON_AddNumberToObject(js, "joint_error_start", tt.err_start);
            cJSON_AddNumberToObject(js, "joint_error", tt.err);
        }
        cJSON_AddNumberToObject(js, "seconds", tb_now() - t0);
        rc = tb_json_print(js);
    }
done:
    if (rc && out_open) tb_out_abort(&out);
    tb_mask_free(&mask);
    st_writer_free(w);
    free(thr);
    free(ties_before);
    free(group_of);
    free(pool);
    free(pool_ties);
    free(it);
    if (have_stats) st_close(&stats);
    if (have_ck) tb_ckpt_close(&ck);
    st_close(&sf);
    return rc;
}

static int parse_pattern(const char *opt, const char *arg, void *value)
{
    options *o = value;
    return tb_parse_nm(opt, arg, TB_NM_MAX_M, &o->n, &o->m);
}

static int parse_solver(const char *opt, const char *arg, void *value)
{
    if (tb_nm_solver_parse(arg, value)) return tb_fail(TB_EUSAGE, "%s: %s", opt, tb_errmsg());
    return TB_OK;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-nm");
    options o = {0};
    o.scores = "-";
    o.out = "-";
    o.sparsity = -1;
    o.k_dim = -1;
    o.rounds = 100;
    o.sweeps = 10;
    o.threads = tb_default_threads();
    o.solver = TB_NM_TOPN;
    int per = PER_ROW;
    long seed = 0;
    static const char *const per_choices[] = {"row", "tensor", "layer", NULL};
    const tb_option table[] = {
        TB_OPT_INPUT('s', "scores", &o.scores, "FILE", TB_WANT_SAFETENSORS, "scores (safetensors)", "make them with tb-score",
                     "scores, - for stdin (default -)"),
        {.type = TB_OPTT_STRING, .short_name = 'o', .long_name = "output", .value = &o.out, .argh = "FILE",
         .flags = TB_OPTF_FILE | TB_OPTF_BINARY, .what = "masks", .help = "masks, - for stdout (default -)"},
        {.type = TB_OPTT_CALLBACK, .long_name = "pattern", .value = &o, .argh = "N:M", .callback = parse_pattern,
         .help = "keep N of every M consecutive weights along the reduction\n"
                 "dimension (M <= 16: 2:4, 4:8, 1:4, 2:8, ...)"},
        TB_OPT_DOUBLE(0, "sparsity", &o.sparsity, "F", 0, 1, "unstructured: prune the fraction F (exact count) instead"),
        TB_OPT_CHOICE(0, "per", &per, per_choices, "unstructured: where the count is exact (default row:\n"
                                                    "each output unit; layer: all tensors of a decoder layer)"),
        TB_OPT_CALLBACK(0, "solver", &o.solver, "S", parse_solver,
                        "N:M solver (default topn):\n"
                        "  topn       the N largest scores of each group\n"
                        "  optimal    exhaustive over the C(M,N) keep sets (= topn\n"
                        "             for scores; the engine of iterative)\n"
                        "  iterative  start from topn, then re-solve each group\n"
                        "             exactly to lower the joint error\n"
                        "             sum over output units of d^T G d, d the pruned\n"
                        "             weights (needs -m and -f)"),
        TB_OPT_INT(0, "sweeps", &o.sweeps, "S", 1, 1000000, "iterative: sweeps over each unit's groups (default 10)"),
        TB_OPT_MODEL_OPTIONAL(&o.model, "iterative: the weights the scores came from;\n"
                                          "--permute-foldable: the model (its config)"),
        TB_OPT_INPUT('f', "stats", &o.stats, "FILE", TB_WANT_SAFETENSORS, ".fisher statistics (safetensors)", "make them with tb-fisher", "iterative: .fisher with gram.<module>.input"),
        TB_OPT_INT(0, "k-dim", &o.k_dim, "0|1", 0, 1, "reduction dimension (default: the scores' k_dim, else 1 =\n"
                                                     "[out, in] as nn.Linear; 0 for weights stored [in, out])"),
        TB_OPT_FLAG(0, "permute", &o.permute, "reorder input channels first to keep more importance\n"
                                              "under N:M (Pool & Yu 2021); stored as '<W>.perm'"),
        TB_OPT_FLAG(0, "permute-foldable", &o.foldable,
                    "permute only where tb-export folds the permutation into\n"
                    "the layer producing the input (mlp.down_proj: gate/up rows;\n"
                    "self_attn.o_proj within heads: v_proj rows), so the\n"
                    "exported model is plain N:M; needs -m MODEL (head layout)"),
        TB_OPT_INT(0, "permute-rounds", &o.rounds, "R", 1, 1000000, "swap rounds bound (default 100)"),
        TB_OPT_LONG(0, "seed", &seed, "S", 0, 2147483647L, "seed of the permutation search's group pairing (default 0)"),
        TB_OPT_THREADS(&o.threads),
        TB_OPT_JSON(&o.json, "print a summary as one JSON object on stdout (needs -o FILE):\n"
                             "tensors, pattern or sparsity, pruned_fraction,\n"
                             "kept_importance (the fraction of the scores' sum kept),\n"
                             "permutation_gain, joint_error (iterative), seconds"),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-nm", .usage = "tb-nm -s SCORES (--pattern N:M | --sparsity F) [options]",
                            .description = description, .options = table};
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, NULL, NULL);
    int have_pattern = o.m > 0, have_solver = tb_opt_given(&o.solver), have_per = tb_opt_given(&per),
        have_rounds = tb_opt_given(&o.rounds);
    o.per = (enum per)per;
    o.seed = (uint64_t)seed;
    o.verbose = tb_log_verbose() || o.json;
    if (o.json && !strcmp(o.out, "-")) return tb_usage_error("--json prints to stdout, so the masks need -o FILE");
    if (have_pattern == (o.sparsity >= 0)) return tb_usage_error("give exactly one of --pattern N:M and --sparsity F");
    if (o.sparsity >= 0 && (have_solver || o.permute || o.foldable || have_rounds))
        return tb_usage_error("--solver, --permute, --permute-foldable and --permute-rounds apply to --pattern only");
    if (o.permute && o.foldable) return tb_usage_error("give one of --permute and --permute-foldable");
    if (o.foldable && !o.model) return tb_usage_error("--permute-foldable needs -m MODEL (its heads' layout)");
    if (have_pattern && have_per) return tb_usage_error("--per applies to --sparsity only");
    if (have_rounds && !o.permute && !o.foldable) return tb_usage_error("--permute-rounds needs --permute");
    if (o.solver == TB_NM_ITERATIVE && (!o.model || !o.stats))
        return tb_usage_error("--solver iterative needs -m MODEL and -f STATS (weights and Gram matrices)");
    if (o.solver != TB_NM_ITERATIVE && (o.stats || (o.model && !o.foldable)))
        return tb_usage_error("-m and -f are used by --solver iterative (and -m by --permute-foldable) only");
    o.command = tb_join_args(argc, argv);
    if (!o.command) return tb_report_error();
    int rc = run(&o);
    free(o.command);
    return rc ? tb_report_error() : 0;
}
