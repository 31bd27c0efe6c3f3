/* tb-score - importance of every weight element, streamed as safetensors.
 *
 * Reads the weights of an HF checkpoint (and, for the second-order methods,
 * a .fisher statistics file), scores each selected 2-D weight with one of the
 * tb_score.h formulas and writes F32 tensors of the same names and shapes,
 * one at a time, to a file or stdout, ready for tb-nm.
 */
#include <fnmatch.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tb_error.h"
#include "tb_fisher.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_safetensors.h"
#include "tb_score.h"
#include "tb_tbm.h"
#include "tb_threads.h"

static const char description[] =
    "Score every element of the selected weights (default: every decoder-layer\n"
    "*proj.weight; embeddings, norms and lm_head are left out) and write F32\n"
    "tensors of the same names and shapes (safetensors) to OUT or stdout.\n"
    "\n"
    "methods (w_ok: output unit o, input channel k):\n"
    "  magnitude   |w_ok|\n"
    "  wanda       |w_ok| * sqrt(G_kk), G = sum of x x^T from STATS (Sun et al. 2023)\n"
    "  obd         w_ok^2 (F_ok + lambda) / 2, F the Fisher diagonal (LeCun et al. 1990)\n"
    "  obs         w_ok^2 / (2 [H^-1]_kk) (Hassibi & Stork 1992; Frantar & Alistarh 2023)\n"
    "              H = 2 G / n + lambda I when STATS has the weight's Gram matrix\n"
    "              (Cholesky in f64; lambda raised x10 up to 4 times, then an\n"
    "              eigen fallback); otherwise H = diag(F + lambda) and obs = obd\n"
    "  normalized  the --base score divided by its output unit's maximum: in [0, 1],\n"
    "              comparable across tensors for a per-layer threshold\n";

static const char *const method_names[] = {"magnitude", "wanda", "obd", "obs", "normalized", NULL};

typedef struct {
    const char *model, *stats, *out, *tensors;
    tb_score_opts so;
    char *command;
} options;

/* ---- tensor selection ---- */

typedef struct {
    int is_re;
    regex_t re;
    const char *glob;
} matcher;

static int matcher_init(matcher *m, const char *pat)
{
    memset(m, 0, sizeof *m);
    if (!pat) { m->glob = "*layers.*proj.weight"; return TB_OK; }
    if (strncmp(pat, "re:", 3) == 0) {
        int e = regcomp(&m->re, pat + 3, REG_EXTENDED | REG_NOSUB);
        if (e) {
            char buf[128];
            regerror(e, &m->re, buf, sizeof buf);
            return tb_fail(TB_EUSAGE, "--tensors: bad regex '%s': %s", pat + 3, buf);
        }
        m->is_re = 1;
        return TB_OK;
    }
    m->glob = pat;
    return TB_OK;
}
static int matcher_match(const matcher *m, const char *name)
{
    return m->is_re ? regexec(&m->re, name, 0, NULL, 0) == 0 : fnmatch(m->glob, name, 0) == 0;
}
static void matcher_free(matcher *m)
{
    if (m->is_re) regfree(&m->re);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* ---- per-tensor plan: which statistics serve it ---- */

typedef struct {
    const st_tensor *w;
    const st_tensor *fisher; /* or NULL */
    const st_tensor *gram;   /* or NULL */
    char module[512];        /* Gram module name */
} plan;

static int needs_gram(tb_score_method m) { return m == TB_SCORE_WANDA; }
static int needs_fisher(tb_score_method m) { return m == TB_SCORE_OBD; }

static int make_plan(const options *o, const st_file *stats, const st_tensor *w, plan *p)
{
    memset(p, 0, sizeof *p);
    p->w = w;
    tb_score_method m = o->so.method == TB_SCORE_NORMALIZED ? o->so.base : o->so.method;
    if (m == TB_SCORE_MAGNITUDE) return TB_OK;
    int64_t K = o->so.k_dim ? w->shape[1] : w->shape[0];
    char fname[600], gname[600];
    snprintf(fname, sizeof fname, "fisher.%s", w->name);
    if (tb_fisher_gram_module(w->name, p->module, sizeof p->module)) snprintf(p->module, sizeof p->module, "?");
    tb_fisher_gram_name(w->name, "input", gname, sizeof gname);
    const st_tensor *f = st_find(stats, fname), *g = st_find(stats, gname);
    if (f && (f->ndim != 2 || f->shape[0] != w->shape[0] || f->shape[1] != w->shape[1] || !tb_dtype_is_float(f->dtype)))
        return tb_fail(TB_EDATA, "%s: tensor '%s': shape or dtype does not match weight [%lld, %lld]", stats->path, fname,
                       (long long)w->shape[0], (long long)w->shape[1]);
    if (g && (g->ndim != 2 || g->shape[0] != K || g->shape[1] != K || !tb_dtype_is_float(g->dtype)))
        return tb_fail(TB_EDATA, "%s: tensor '%s': expected [%lld, %lld] float (input dim of '%s')", stats->path, gname,
                       (long long)K, (long long)K, w->name);
    const char *mn = tb_score_method_name(m);
    if (needs_gram(m) && !g) return tb_fail(TB_EDATA, "%s: no tensor '%s' (needed by %s for '%s')", stats->path, gname, mn, w->name);
    if (needs_fisher(m) && !f) return tb_fail(TB_EDATA, "%s: no tensor '%s' (needed by %s)", stats->path, fname, mn);
    if (m == TB_SCORE_OBS && !g && !f)
        return tb_fail(TB_EDATA, "%s: no tensor '%s' or '%s' (obs needs the Gram matrix or the Fisher diagonal)", stats->path,
                       gname, fname);
    p->fisher = needs_fisher(m) || (m == TB_SCORE_OBS && !g) ? f : NULL;
    p->gram = needs_gram(m) || m == TB_SCORE_OBS ? g : NULL;
    return TB_OK;
}

/* ---- Gram-derived per-channel vectors, cached by module (q/k/v share one) ---- */

typedef struct {
    char module[512];
    double *v;
} cache_entry;

typedef struct {
    cache_entry *e;
    int n;
} cache;

static double *cache_get(cache *c, const char *module)
{
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->e[i].module, module) == 0) return c->e[i].v;
    return NULL;
}
static int cache_put(cache *c, const char *module, double *v)
{
    cache_entry *e = tb_realloc(c->e, (size_t)(c->n + 1) * sizeof *e);
    if (!e) return TB_EIO;
    c->e = e;
    snprintf(e[c->n].module, sizeof e[c->n].module, "%s", module);
    e[c->n++].v = v;
    return TB_OK;
}
static void cache_free(cache *c)
{
    for (int i = 0; i < c->n; i++) free(c->e[i].v);
    free(c->e);
}

/* Token count n of a Gram: "gram.<module>.count" (I64 [1]), else the file's
 * "tokens" metadata, else 1 (then H's scale is relative; a warning says so). */
static double gram_count(const st_file *stats, const char *module, int *warned)
{
    char name[600];
    snprintf(name, sizeof name, "gram.%s.count", module);
    const st_tensor *t = st_find(stats, name);
    if (t && t->numel == 1) {
        double v;
        tb_to_f64(t->dtype, t->data, 0, 1, &v);
        if (v > 0) return v;
    }
    const char *tok = st_meta(stats, "tokens");
    if (tok && atof(tok) > 0) return atof(tok);
    if (!*warned) {
        tb_warn("%s: no '%s' tensor or 'tokens' metadata: using n = 1 in H = 2 G / n", stats->path, name);
        *warned = 1;
    }
    return 1;
}

static int channel_vector(const options *o, const st_file *stats, const plan *p, cache *c, int *warned, const double **out,
                          char *note, size_t note_n)
{
    note[0] = 0;
    double *v = cache_get(c, p->module);
    if (v) { *out = v; return TB_OK; }
    int64_t K = p->gram->shape[0];
    tb_score_method m = o->so.method == TB_SCORE_NORMALIZED ? o->so.base : o->so.method;
    v = tb_malloc((size_t)K * sizeof *v);
    if (!v) return TB_EIO;
    int rc = TB_OK;
    if (m == TB_SCORE_WANDA) {
        /* checked: a NaN/Inf or negative statistic is refused, naming the tensor */
        if ((rc = tb_fisher_gram_diag(p->gram, v))) tb_err_context("%s", stats->path);
    } else {
        double *g = tb_malloc((size_t)(K * K) * sizeof *g);
        if (!g) { free(v); return TB_EIO; }
        tb_to_f64(p->gram->dtype, p->gram->data, 0, (size_t)(K * K), g);
        tb_hinv_info info;
        /* checked: a NaN/Inf or negative statistic is refused, naming the tensor */
        if ((rc = tb_fisher_gram_check(p->gram->name, g, K))) tb_err_context("%s", stats->path);
        else if ((rc = tb_score_hinv_diag(g, K, 2.0 / gram_count(stats, p->module, warned), o->so.lambda, o->so.damp, v, &info)))
            tb_err_context("%s: tensor '%s'", stats->path, p->gram->name);
        free(g);
        if (!rc && (info.escalations || info.eigen))
            snprintf(note, note_n, "%s: Cholesky needed lambda raised %d time(s)%s, lambda %g", p->gram->name, info.escalations,
                     info.eigen ? " and the eigen fallback" : "", info.lambda);
    }
    if (!rc) rc = cache_put(c, p->module, v);
    if (rc) { free(v); return rc; }
    *out = v;
    return TB_OK;
}

/* ---- main work ---- */

static int score(const options *o)
{
    tb_ckpt ck;
    st_file stats;
    int have_stats = 0, rc = tb_ckpt_open(&ck, o->model);
    if (rc) return rc;
    matcher mt;
    plan *plans = NULL;
    char **names = NULL;
    int n = 0;
    st_writer *w = NULL;
    tb_outfile out = {0};
    int out_open = 0;
    cache gc = {0};
    if ((rc = matcher_init(&mt, o->tensors))) { tb_ckpt_close(&ck); return rc; }
    if (o->stats) {
        if ((rc = st_open(&stats, o->stats))) goto done;
        have_stats = 1;
        const char *kind = st_meta(&stats, "tensorbit.kind");
        if (kind && strcmp(kind, "fisher") != 0) {
            rc = tb_fail(TB_EDATA, "%s: not a statistics file (tensorbit.kind is '%s')", o->stats, kind);
            goto done;
        }
    }

    /* select: 2-D float tensors matching, in name order across shards */
    int total = tb_ckpt_count(&ck);
    names = tb_calloc((size_t)total + 1, sizeof *names);
    if (!names) { rc = TB_EIO; goto done; }
    for (int s = 0; s < ck.n_shards; s++)
        for (int i = 0; i < ck.shards[s].n_tensors; i++) {
            const st_tensor *t = &ck.shards[s].tensors[i];
            if (t->ndim == 2 && tb_dtype_is_float(t->dtype) && matcher_match(&mt, t->name)) names[n++] = t->name;
        }
    if (!n) {
        rc = tb_fail(TB_EUSAGE, "%s: no 2-D weight matches %s%s", o->model, o->tensors ? "--tensors " : "the default pattern ",
                     o->tensors ? o->tensors : "'*layers.*proj.weight'");
        goto done;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_str);

    /* plan everything before writing a byte: a missing statistic is one
     * error line and no output */
    plans = tb_calloc((size_t)n, sizeof *plans);
    if (!plans) { rc = TB_EIO; goto done; }
    for (int i = 0; i < n && !rc; i++) {
        const st_tensor *t = tb_ckpt_find(&ck, names[i]);
        rc = have_stats ? make_plan(o, &stats, t, &plans[i]) : (plans[i].w = t, TB_OK);
    }
    if (rc) goto done;

    w = st_writer_new();
    if (!w) { rc = TB_EIO; goto done; }
    char buf[256];
    tb_score_method base = o->so.method == TB_SCORE_NORMALIZED ? o->so.base : o->so.method;
    rc = st_writer_meta(w, "tensorbit.kind", "scores");
    if (!rc) rc = st_writer_meta(w, "tensorbit.version", TB_VERSION);
    if (!rc) rc = st_writer_meta(w, "method", tb_score_method_name(o->so.method));
    if (!rc && o->so.method == TB_SCORE_NORMALIZED) rc = st_writer_meta(w, "base", tb_score_method_name(base));
    if (o->so.lambda >= 0) snprintf(buf, sizeof buf, "%.17g", o->so.lambda);
    else snprintf(buf, sizeof buf, "%g * mean diagonal (per tensor)", o->so.damp);
    if (!rc && (base == TB_SCORE_OBD || base == TB_SCORE_OBS)) rc = st_writer_meta(w, "lambda", buf);
    if (!rc) rc = st_writer_meta(w, "k_dim", o->so.k_dim ? "1" : "0");
    snprintf(buf, sizeof buf, "model=%s%s%s", o->model, o->stats ? ";stats=" : "", o->stats ? o->stats : "");
    if (!rc) rc = st_writer_meta(w, "sources", buf);
    if (!rc) rc = st_writer_meta(w, "command", o->command);
    char *recipe = tb_recipe_of_inputs((const st_file *const[1]){have_stats ? &stats : NULL}, 1);
    if (!rc && recipe) rc = st_writer_meta(w, "tensorbit.recipe", recipe);
    free(recipe);
    for (int i = 0; i < n && !rc; i++) {
        const plan *p = &plans[i];
        if (p->gram || p->fisher) {
            char key[600];
            snprintf(key, sizeof key, "source.%s", p->w->name);
            rc = st_writer_meta(w, key, p->gram ? p->gram->name : p->fisher->name);
        }
        if (!rc) rc = st_writer_add(w, p->w->name, TB_F32, 2, p->w->shape);
    }
    if (rc) goto done;
    if ((rc = tb_out_open(&out, o->out))) goto done;
    out_open = 1;
    const char *label = strcmp(o->out, "-") ? o->out : "<stdout>";
    if ((rc = st_writer_begin(w, out.fp, label))) goto done;

    tb_progress prog;
    tb_progress_begin(&prog, "tensors", (uint64_t)n);
    double t0 = tb_now();
    int warned = 0;
    for (int i = 0; i < n && !rc; i++) {
        const plan *p = &plans[i];
        int64_t rows = p->w->shape[0], cols = p->w->shape[1], numel = rows * cols;
        float *wf = st_tensor_f32(p->w), *ff = NULL, *sc = tb_malloc((size_t)numel * sizeof(float) + 1);
        if (!wf || !sc) rc = TB_EIO;
        if (!rc && p->fisher && !(ff = st_tensor_f32(p->fisher))) rc = TB_EIO;
        tb_score_input in = {rows, cols, wf, ff, NULL, NULL};
        char note[256] = "";
        if (!rc && p->gram) {
            const double *v;
            rc = channel_vector(o, &stats, p, &gc, &warned, &v, note, sizeof note);
            if (!rc) {
                if (base == TB_SCORE_WANDA) in.gram_diag = v;
                else in.hinv_diag = v;
            }
        }
        if (note[0]) tb_info("%s", note);
        double lambda;
        if (!rc) {
            rc = tb_score_tensor(&o->so, &in, sc, &lambda);
            if (rc) tb_err_context("%s: tensor '%s'", o->model, p->w->name);
        }
        if (!rc) rc = st_writer_write(w, sc, (size_t)numel * sizeof(float));
        free(wf);
        free(ff);
        free(sc);
        tb_progress_set(&prog, (uint64_t)i + 1);
    }
    tb_progress_end(&prog);
    if (!rc) rc = st_writer_finish(w);
    if (!rc) rc = tb_out_commit(&out);
    if (!rc) tb_info("%d tensors scored (%s) in %.2f s", n, tb_score_method_name(o->so.method), tb_now() - t0);
done:
    if (rc && out_open) tb_out_abort(&out);
    st_writer_free(w);
    cache_free(&gc);
    free(plans);
    free(names);
    matcher_free(&mt);
    if (have_stats) st_close(&stats);
    tb_ckpt_close(&ck);
    return rc;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-score");
    options o = {0};
    o.out = "-";
    o.so.lambda = -1;
    o.so.damp = TB_SCORE_DEFAULT_DAMP;
    o.so.k_dim = 1;
    o.so.base = TB_SCORE_OBS;
    o.so.n_threads = tb_default_threads();
    int method = 0, base_method = TB_SCORE_OBS;
    const tb_option table[] = {
        TB_OPT_MODEL(&o.model, "HF model directory or safetensors file"),
        TB_OPT_INPUT('f', "stats", &o.stats, "FILE", TB_WANT_SAFETENSORS, ".fisher statistics (safetensors)", "make them with tb-fisher", ".fisher statistics (tb-fisher): fisher.<W>, gram.<module>.input"),
        {.type = TB_OPTT_CHOICE, .long_name = "method", .value = &method, .argh = "M", .choices = method_names,
         .flags = TB_OPTF_REQUIRED, .help = "magnitude, wanda, obd, obs or normalized"},
        TB_OPT_CHOICE(0, "base", &base_method, method_names, "the score 'normalized' normalises (default obs)"),
        {.type = TB_OPTT_STRING, .short_name = 'o', .long_name = "output", .value = &o.out, .argh = "FILE",
         .flags = TB_OPTF_FILE | TB_OPTF_BINARY, .what = "scores", .help = "output file (default -: stdout)"},
        TB_OPT_DOUBLE(0, "lambda", &o.so.lambda, "L", 0, 1e300, "absolute damping (obd, obs); default relative, see --damp"),
        TB_OPT_DOUBLE(0, "damp", &o.so.damp, "F", 0, 1e6, "relative damping: lambda = F * mean of the diagonal of F (obd)\n"
                                                          "or of 2G/n (obs), per tensor (default 0.01)"),
        TB_OPT_STRING(0, "tensors", &o.tensors, "PAT", "weights to score: a shell glob ('*.mlp.*proj.weight'), or\n"
                                                       "re:REGEX (POSIX extended, unanchored)"),
        TB_OPT_INT(0, "k-dim", &o.so.k_dim, "0|1", 0, 1, "reduction dimension of the stored weights (default 1: [out, in])"),
        TB_OPT_THREADS(&o.so.n_threads),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-score", .usage = "tb-score -m MODEL --method M [-f STATS] [options]",
                            .description = description, .options = table};
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, NULL, NULL);
    o.so.method = (tb_score_method)method;
    o.so.base = (tb_score_method)base_method;
    if (o.so.base == TB_SCORE_NORMALIZED) return tb_usage_error("--base: normalized cannot be its own base");
    tb_score_method base = o.so.method == TB_SCORE_NORMALIZED ? o.so.base : o.so.method;
    if (base != TB_SCORE_MAGNITUDE && !o.stats)
        return tb_usage_error("--method %s needs -f STATS (Fisher diagonal / Gram matrices from tb-fisher)",
                              tb_score_method_name(o.so.method));
    o.command = tb_join_args(argc, argv);
    if (!o.command) return tb_report_error();
    int rc = score(&o);
    free(o.command);
    return rc ? tb_report_error() : 0;
}
