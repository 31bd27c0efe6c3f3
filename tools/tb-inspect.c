/* tb-inspect - show what is in a safetensors file or an HF model directory.
 *
 * Human table by default, --json for machines; --stats, --nm N:M and
 * --tensor NAME add per-tensor detail. Later formats (.fisher, .tb, .tbm) are
 * all safetensors-compatible or JSON and are read through formats/.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_backend.h"
#include "tb_config.h"
#include "tb_error.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_safetensors.h"
#include "tb_stats.h"
#include "tb_pack.h"
#include "tb_report.h"
#include "tb_tbm.h"

#include <cblas.h>
#include <lapacke.h>
#ifdef TB_HAVE_CUDA
#include "tb_cuda.h"
#endif

static const char description[] =
    "Show the tensors of a safetensors file (or of every shard of an HF model\n"
    "directory, read through model.safetensors.index.json), the model config and\n"
    "parameter counts by kind. FILE may be - for a stream on stdin. A pruned\n"
    "model (.tbm index, or one .tb shard) is shown per weight: kind, pattern,\n"
    "sparsity, conformity, permutation, compensation, and the recipe.\n";

typedef struct {
    int json, stats, nm_n, nm_m;
    const char *tensor, *plot;
} options;

static const char *tensor_kind(const char *name)
{
    if (strstr(name, "embed_tokens")) return "embedding";
    if (strstr(name, "lm_head")) return "lm_head";
    if (strstr(name, "self_attn")) return "attention";
    if (strstr(name, "mlp")) return "mlp";
    if (strstr(name, "norm")) return "norm";
    return "other";
}

static const char *kinds[] = {"embedding", "attention", "mlp", "norm", "lm_head", "other"};
#define N_KINDS 6

static void shape_str(const st_tensor *t, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->ndim && k < n; d++) k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

static void group_thousands(long long v, char *buf, size_t n)
{
    char raw[32];
    snprintf(raw, sizeof raw, "%lld", v);
    size_t len = strlen(raw), k = 0;
    for (size_t i = 0; i < len && k + 2 < n; i++) {
        buf[k++] = raw[i];
        if ((len - i - 1) % 3 == 0 && i + 1 < len) buf[k++] = ',';
    }
    buf[k] = 0;
}

static cJSON *config_json(const tb_config *c)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model_type", c->model_type);
    cJSON_AddStringToObject(j, "architecture", c->architecture);
    cJSON_AddNumberToObject(j, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(j, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(j, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_position_embeddings);
    cJSON_AddNumberToObject(j, "rope_theta", c->rope_theta);
    cJSON_AddNumberToObject(j, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddNumberToObject(j, "sliding_window", c->sliding_window);
    cJSON_AddNumberToObject(j, "bos_token_id", c->bos_token_id);
    cJSON *eos = cJSON_AddArrayToObject(j, "eos_token_ids");
    for (int i = 0; i < c->n_eos; i++) cJSON_AddItemToArray(eos, cJSON_CreateNumber(c->eos_token_ids[i]));
    return j;
}

static void print_config(const tb_config *c)
{
    printf("model: %s%s%s\n", c->model_type, c->architecture[0] ? " / " : "", c->architecture);
    printf("  hidden %d, intermediate %d, layers %d, heads %d (kv %d), head_dim %d, vocab %d\n", c->hidden_size,
           c->intermediate_size, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size);
    printf("  rope_theta %g, rms_norm_eps %g, tied embeddings %s, max positions %d, sliding window %s\n", c->rope_theta,
           c->rms_norm_eps, c->tie_word_embeddings ? "yes" : "no", c->max_position_embeddings,
           c->sliding_window ? "yes" : "none");
}

static double nan_to_null_guard(double v) { return isfinite(v) ? v : 0.0; }

/* per-tensor extras; returns TB_OK or an error for --nm on a bad tensor */
static int tensor_detail(const options *o, const st_tensor *t, cJSON *jt, char *line, size_t n)
{
    line[0] = 0;
    size_t k = 0;
    const tb_array ta = st_array(t);
    if (o->stats) {
        tb_tensor_stats s;
        tb_stats_compute(&ta, &s);
        double zf = s.count ? (double)s.zeros / (double)s.count : 0;
        if (jt) {
            cJSON *js = cJSON_AddObjectToObject(jt, "stats");
            if (isfinite(s.min)) {
                cJSON_AddNumberToObject(js, "min", s.min);
                cJSON_AddNumberToObject(js, "max", s.max);
                cJSON_AddNumberToObject(js, "mean", nan_to_null_guard(s.mean));
                cJSON_AddNumberToObject(js, "std", nan_to_null_guard(s.std));
            } else {
                cJSON_AddNullToObject(js, "min");
                cJSON_AddNullToObject(js, "max");
                cJSON_AddNullToObject(js, "mean");
                cJSON_AddNullToObject(js, "std");
            }
            cJSON_AddNumberToObject(js, "zero_fraction", zf);
            cJSON_AddNumberToObject(js, "nan", (double)s.nans);
            cJSON_AddNumberToObject(js, "inf", (double)s.infs);
        } else {
            k += (size_t)snprintf(line + k, n - k, "  min %-11.4g max %-11.4g mean %-11.4g std %-10.4g zero %6.2f%%",
                                  s.min, s.max, s.mean, s.std, 100 * zf);
            if (s.nans || s.infs) k += (size_t)snprintf(line + k, n - k, "  NaN %lld Inf %lld", (long long)s.nans, (long long)s.infs);
        }
    }
    if (o->nm_m && t->ndim >= 2) {
        double frac;
        int64_t groups;
        int rc = tb_nm_conformity(&ta, o->nm_n, o->nm_m, &frac, &groups);
        if (rc) return rc;
        if (jt) {
            cJSON *jn = cJSON_AddObjectToObject(jt, "nm");
            cJSON_AddNumberToObject(jn, "n", o->nm_n);
            cJSON_AddNumberToObject(jn, "m", o->nm_m);
            cJSON_AddNumberToObject(jn, "groups", (double)groups);
            cJSON_AddNumberToObject(jn, "conforming_fraction", frac);
        } else if (k < n) {
            snprintf(line + k, n - k, "  %d:%d %6.2f%%", o->nm_n, o->nm_m, 100 * frac);
        }
    }
    return TB_OK;
}

static int dump_tensor(const options *o, const st_tensor *t)
{
    float *v = st_tensor_f32(t);
    if (!v) return TB_EIO;
    int64_t row = t->ndim ? t->shape[t->ndim - 1] : 1;
    if (o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", t->name);
        cJSON_AddStringToObject(j, "dtype", tb_dtype_name(t->dtype));
        cJSON *sh = cJSON_AddArrayToObject(j, "shape");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *vals = cJSON_AddArrayToObject(j, "values");
        /* %.9g round-trips every f32 exactly; cJSON's own number printing
         * only promises a near round trip */
        for (int64_t i = 0; i < t->numel; i++) {
            char num[32];
            snprintf(num, sizeof num, "%.9g", v[i]);
            cJSON_AddItemToArray(vals, isfinite(v[i]) ? cJSON_CreateRaw(num) : cJSON_CreateNull());
        }
        char *s = cJSON_PrintUnformatted(j);
        if (s) puts(s);
        free(s);
        cJSON_Delete(j);
    } else {
        char sh[128];
        shape_str(t, sh, sizeof sh);
        printf("# %s %s %s\n", t->name, tb_dtype_name(t->dtype), sh);
        for (int64_t i = 0; i < t->numel; i++) printf("%.9g%c", v[i], (i + 1) % row == 0 ? '\n' : ' ');
    }
    free(v);
    return TB_OK;
}

static int inspect_pruned(const options *o, const char *path);
static int is_tb_shard(const char *path);

static int inspect(const options *o, const char *path)
{
    if (!o->tensor && (tb_is_tbm(path) || is_tb_shard(path))) return inspect_pruned(o, path);
    if (o->plot) return tb_fail(TB_EUSAGE, "--plot needs a pruned model (.tb or .tbm)");
    tb_ckpt ck;
    int rc = tb_ckpt_open(&ck, path);
    if (rc) return rc;

    if (o->tensor) {
        const st_tensor *t = tb_ckpt_find(&ck, o->tensor);
        rc = t ? dump_tensor(o, t) : tb_fail(TB_EDATA, "%s: no tensor '%s'", path, o->tensor);
        tb_ckpt_close(&ck);
        return rc;
    }

    tb_config cfg;
    int have_cfg = 0;
    if (tb_is_dir(path)) {
        char *cfg_path = tb_path_join(path, "config.json");
        if (cfg_path && tb_file_exists(cfg_path)) {
            rc = tb_config_load(&cfg, cfg_path);
            have_cfg = rc == TB_OK;
        }
        free(cfg_path);
        if (rc) { tb_ckpt_close(&ck); return rc; }
    }

    /* refuse a bad --nm before printing anything, so a failure is one line */
    for (int s = 0; o->nm_m && s < ck.n_shards; s++)
        for (int i = 0; i < ck.shards[s].n_tensors; i++) {
            const st_tensor *t = &ck.shards[s].tensors[i];
            if (t->ndim >= 2 && t->shape[t->ndim - 1] % o->nm_m) {
                tb_fail(TB_EDATA, "%s: tensor '%s': dim %d (%lld) not divisible by M=%d", ck.shards[s].path, t->name,
                        t->ndim - 1, (long long)t->shape[t->ndim - 1], o->nm_m);
                tb_ckpt_close(&ck);
                return TB_EDATA;
            }
        }

    long long by_kind[N_KINDS] = {0}, total = 0;
    int n_tensors = tb_ckpt_count(&ck);
    cJSON *root = o->json ? cJSON_CreateObject() : NULL, *jtensors = NULL;
    if (root) {
        cJSON_AddStringToObject(root, "path", path);
        cJSON *sh = cJSON_AddArrayToObject(root, "shards");
        for (int s = 0; s < ck.n_shards; s++) cJSON_AddItemToArray(sh, cJSON_CreateString(ck.shards[s].path));
        if (have_cfg) cJSON_AddItemToObject(root, "config", config_json(&cfg));
        jtensors = cJSON_AddArrayToObject(root, "tensors");
    } else {
        printf("%-56s %-7s %-16s %10s\n", "tensor", "dtype", "shape", "MiB");
    }
    tb_progress prog;
    tb_progress_begin(&prog, "tensors", (uint64_t)n_tensors);
    int done = 0;
    for (int s = 0; s < ck.n_shards && !rc; s++) {
        const st_file *f = &ck.shards[s];
        for (int i = 0; i < f->n_tensors && !rc; i++) {
            const st_tensor *t = &f->tensors[f->by_name[i]];
            const char *kind = tensor_kind(t->name);
            for (int k = 0; k < N_KINDS; k++)
                if (!strcmp(kind, kinds[k])) by_kind[k] += t->numel;
            total += t->numel;
            char sh[128], detail[256];
            shape_str(t, sh, sizeof sh);
            cJSON *jt = NULL;
            if (root) {
                jt = cJSON_CreateObject();
                cJSON_AddItemToArray(jtensors, jt);
                cJSON_AddStringToObject(jt, "name", t->name);
                cJSON_AddStringToObject(jt, "dtype", tb_dtype_name(t->dtype));
                cJSON *js = cJSON_AddArrayToObject(jt, "shape");
                for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(js, cJSON_CreateNumber((double)t->shape[d]));
                cJSON_AddNumberToObject(jt, "bytes", (double)t->nbytes);
                cJSON_AddNumberToObject(jt, "shard", s);
            }
            rc = tensor_detail(o, t, jt, detail, sizeof detail);
            if (rc) tb_err_context("%s", f->path);
            else if (!root) printf("%-56s %-7s %-16s %10.3f%s\n", t->name, tb_dtype_name(t->dtype), sh, t->nbytes / 1048576.0, detail);
            tb_progress_set(&prog, (uint64_t)++done);
        }
    }
    tb_progress_end(&prog);

    if (!rc && root) {
        cJSON_AddNumberToObject(root, "n_tensors", n_tensors);
        cJSON_AddNumberToObject(root, "n_parameters", (double)total);
        cJSON *jk = cJSON_AddObjectToObject(root, "parameters_by_kind");
        for (int k = 0; k < N_KINDS; k++) cJSON_AddNumberToObject(jk, kinds[k], (double)by_kind[k]);
        cJSON *jm = cJSON_AddObjectToObject(root, "metadata");
        for (int s = 0; s < ck.n_shards; s++)
            for (int i = 0; i < ck.shards[s].n_meta; i++)
                cJSON_AddStringToObject(jm, ck.shards[s].meta_keys[i], ck.shards[s].meta_vals[i]);
        char *out = cJSON_Print(root);
        if (out) puts(out);
        else rc = tb_fail(TB_EIO, "out of memory printing JSON");
        free(out);
    } else if (!rc) {
        printf("\n");
        if (have_cfg) print_config(&cfg);
        for (int s = 0; s < ck.n_shards; s++)
            for (int i = 0; i < ck.shards[s].n_meta; i++)
                printf("metadata: %s = %s\n", ck.shards[s].meta_keys[i], ck.shards[s].meta_vals[i]);
        char num[32];
        printf("shards: %d\n", ck.n_shards);
        printf("tensors: %d\n", n_tensors);
        group_thousands(total, num, sizeof num);
        printf("parameters: %s\n", num);
        for (int k = 0; k < N_KINDS; k++) {
            if (!by_kind[k]) continue;
            group_thousands(by_kind[k], num, sizeof num);
            printf("  %-10s %s\n", kinds[k], num);
        }
    }
    cJSON_Delete(root);
    tb_ckpt_close(&ck);
    return rc;
}

/* ------------------------------------------------ pruned models (.tb, .tbm) */

static void report_progress(void *ctx, int64_t done, int64_t total)
{
    tb_progress *p = ctx;
    p->total = (uint64_t)total;
    tb_progress_set(p, (uint64_t)done);
}

static int inspect_pruned(const options *o, const char *path)
{
    tb_tbm tbm = {0};
    tb_pack_file single;
    const tb_pack_file *shards;
    int n_shards, rc, is_tbm = tb_is_tbm(path);
    if (is_tbm) {
        if ((rc = tb_tbm_open(&tbm, path, 1))) return rc;
        shards = tbm.shards;
        n_shards = tbm.n_shards;
    } else {
        if ((rc = tb_pack_open(&single, path))) return rc;
        shards = &single;
        n_shards = 1;
    }
    tb_pruned_row *rows = NULL;
    int n = 0;
    long long kept = 0, total = 0;
    tb_progress prog;
    tb_progress_begin(&prog, "pruned weights", 0);
    rc = tb_report_pruned(shards, n_shards, o->nm_n, o->nm_m, o->plot != NULL || o->json, report_progress, &prog,
                          &rows, &n);
    tb_progress_end(&prog);
    for (int i = 0; !rc && i < n; i++) {
        total += rows[i].numel;
        kept += rows[i].numel - rows[i].zeros;
    }
    if (!rc && o->plot) {
        /* the subtitle names the model the shards were pruned from */
        const char *src = n_shards ? st_meta(&shards[0].f, "model") : NULL, *slash = src ? strrchr(src, '/') : NULL;
        char model[256];
        snprintf(model, sizeof model, "%s", slash && slash[1] ? slash + 1 : src ? src : path);
        rc = tb_report_plot_svg(o->plot, rows, n, model);
    }
    if (!rc && o->json) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "path", path);
        cJSON_AddStringToObject(root, "kind", is_tbm ? "tbm" : "tb");
        cJSON *jt = cJSON_AddArrayToObject(root, "pruned");
        for (int i = 0; i < n; i++) {
            cJSON *e = cJSON_CreateObject();
            char pat[16] = "unstructured";
            if (rows[i].p->m) snprintf(pat, sizeof pat, "%d:%d", rows[i].p->n, rows[i].p->m);
            cJSON_AddStringToObject(e, "name", rows[i].name);
            cJSON_AddStringToObject(e, "kind", rows[i].p->kind == TB_PACKED_NM ? "nm" : "masked");
            cJSON_AddStringToObject(e, "pattern", pat);
            cJSON_AddNumberToObject(e, "sparsity", rows[i].sparsity);
            if (rows[i].conform >= 0) cJSON_AddNumberToObject(e, "conforming_fraction", rows[i].conform);
            cJSON_AddBoolToObject(e, "permuted", rows[i].p->perm != NULL);
            cJSON_AddStringToObject(e, "compensation", rows[i].p->compensation ? rows[i].p->compensation : "");
            if (rows[i].rel_err >= 0) cJSON_AddNumberToObject(e, "relative_output_error", rows[i].rel_err);
            cJSON_AddItemToArray(jt, e);
        }
        if (o->plot) cJSON_AddStringToObject(root, "plot", o->plot);
        cJSON_AddNumberToObject(root, "pruned_parameters", (double)total);
        cJSON_AddNumberToObject(root, "kept_parameters", (double)kept);
        if (is_tbm) {
            cJSON *recipe = cJSON_GetObjectItemCaseSensitive((cJSON *)tbm.json, "recipe");
            if (recipe) cJSON_AddItemToObject(root, "recipe", cJSON_Duplicate(recipe, 1));
        }
        char *txt = cJSON_Print(root);
        if (txt) puts(txt);
        free(txt);
        cJSON_Delete(root);
    } else if (!rc) {
        printf("%-48s %-6s %-12s %-9s %-9s %-5s %s\n", "pruned weight", "kind", "pattern", "sparsity", "conform", "perm",
               "compensation");
        for (int i = 0; i < n; i++) {
            char pat[16] = "unstructured", conf[16] = "-";
            if (rows[i].p->m) snprintf(pat, sizeof pat, "%d:%d", rows[i].p->n, rows[i].p->m);
            if (rows[i].conform >= 0) snprintf(conf, sizeof conf, "%.2f%%", 100 * rows[i].conform);
            printf("%-48s %-6s %-12s %7.2f%%  %-9s %-5s %s\n", rows[i].name, rows[i].p->kind == TB_PACKED_NM ? "nm" : "masked",
                   pat, 100 * rows[i].sparsity, conf, rows[i].p->perm ? "yes" : "no",
                   rows[i].p->compensation ? rows[i].p->compensation : "");
        }
        printf("\n");
        if (is_tbm) {
            print_config(&tbm.cfg);
            printf("shards: %d\n", tbm.n_shards);
            const cJSON *recipe = cJSON_GetObjectItemCaseSensitive((cJSON *)tbm.json, "recipe");
            const cJSON *stages = cJSON_GetObjectItemCaseSensitive(recipe, "stages");
            for (const cJSON *st = stages ? stages->child : NULL; st; st = st->next) {
                const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st, "metadata"), "command");
                printf("recipe: %-8s %s\n", cJSON_GetObjectItemCaseSensitive(st, "kind")->valuestring,
                       cJSON_IsString(cmd) ? cmd->valuestring : cJSON_GetObjectItemCaseSensitive(st, "file")->valuestring);
            }
        }
        printf("pruned weights: %d, %lld parameters, %.2f%% zeros\n", n, total, total ? 100.0 * (double)(total - kept) / (double)total : 0);
    }
    if (!rc && o->plot && !o->json) printf("plot: %s (per-layer sparsity and relative output error)\n", o->plot);
    free(rows);
    if (is_tbm) tb_tbm_close(&tbm);
    else tb_pack_close(&single);
    return rc;
}

static int is_tb_shard(const char *path)
{
    if (tb_is_dir(path) || !strcmp(path, "-")) return 0;
    st_file f;
    if (st_open(&f, path)) { tb_err_clear(); return 0; }
    const char *kind = st_meta(&f, "tensorbit.kind");
    int yes = kind && !strcmp(kind, "tb");
    st_close(&f);
    return yes;
}

/* What this build can use here; exit 0 even without a GPU (CPU path works). */
/* The environment check, as text or (--json) one object a CI step can gate on. */
static int doctor(const char *out_dir, int json)
{
    double a = 4.0; /* a 1x1 Cholesky proves LAPACKE links and runs */
    int lapacke_ok = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', 1, &a, 1) == 0 && a == 2.0;
    int64_t free_b = tb_free_bytes(out_dir);
    if (free_b < 0) return tb_fail(TB_EIO, "%s: cannot stat its filesystem", out_dir);
    char buf[256];
    cJSON *j = cJSON_CreateObject(), *gpus = NULL;
    cJSON_AddStringToObject(j, "version", TB_VERSION);
    cJSON_AddStringToObject(j, "compiler", __VERSION__);
    cJSON_AddStringToObject(j, "cjson", cJSON_Version());
    cJSON_AddStringToObject(j, "openblas", openblas_get_config());
    cJSON_AddNumberToObject(j, "openblas_threads", openblas_get_num_threads());
    cJSON_AddBoolToObject(j, "lapacke_ok", lapacke_ok);
#ifdef TB_HAVE_CUDA
    tb_cuda_versions(buf, sizeof buf);
    int n = tb_cuda_device_count();
    cJSON_AddBoolToObject(j, "cuda", 1);
    cJSON_AddStringToObject(j, "cuda_versions", buf);
#ifdef TB_CUDA_ARCHS
    cJSON_AddStringToObject(j, "cuda_archs", TB_CUDA_ARCHS);
#endif
    gpus = cJSON_AddArrayToObject(j, "gpus");
    for (int i = 0; i < n; i++) {
        cJSON *g = cJSON_CreateObject();
        if (tb_cuda_device_describe(i, buf, sizeof buf) == 0) cJSON_AddStringToObject(g, "device", buf);
        /* opening the backend runs a kernel: it proves the build has code for this GPU */
        tb_backend be;
        tb_backend_opts bo = {.device = TB_DEVICE_CUDA, .gpu = i, .n_threads = 1};
        if (tb_backend_open(&be, &bo) == TB_OK) {
            cJSON_AddStringToObject(g, "backend", be.desc);
            tb_backend_close(&be);
        } else {
            cJSON_AddStringToObject(g, "unusable", tb_errmsg());
        }
        cJSON_AddItemToArray(gpus, g);
    }
#else
    cJSON_AddBoolToObject(j, "cuda", 0);
#endif
    {
        tb_backend be;
        tb_backend_opts bo = {.device = TB_DEVICE_AUTO};
        if (tb_backend_open(&be, &bo) == TB_OK) {
            cJSON_AddStringToObject(j, "device_auto", be.desc);
            tb_backend_close(&be);
        } else {
            snprintf(buf, sizeof buf, "FAILED: %s", tb_errmsg());
            cJSON_AddStringToObject(j, "device_auto", buf);
        }
    }
    cJSON_AddStringToObject(j, "free_dir", out_dir);
    cJSON_AddNumberToObject(j, "free_bytes", (double)free_b);
    if (json) return tb_json_print(j);
    printf("tensorbit %s\n", TB_VERSION);
    printf("compiler:  %s\n", __VERSION__);
    printf("cJSON:     %s\n", cJSON_Version());
    printf("OpenBLAS:  %s (%d threads)\n", openblas_get_config(), openblas_get_num_threads());
    printf("LAPACKE:   %s\n", lapacke_ok ? "ok" : "FAILED");
    if (!gpus) {
        printf("CUDA:      not compiled in (rebuild with make CUDA=1)\n");
    } else {
        int ng = cJSON_GetArraySize(gpus);
        const cJSON *archs = cJSON_GetObjectItem(j, "cuda_archs");
        printf("CUDA:      compiled in%s%s (%s), %d GPU%s\n", archs ? " for sm " : "", archs ? archs->valuestring : "",
               cJSON_GetObjectItem(j, "cuda_versions")->valuestring, ng, ng == 1 ? "" : "s");
        for (int i = 0; i < ng; i++) {
            const cJSON *g = cJSON_GetArrayItem(gpus, i), *d = cJSON_GetObjectItem(g, "device"),
                        *be = cJSON_GetObjectItem(g, "backend"), *bad = cJSON_GetObjectItem(g, "unusable");
            if (d) printf("  gpu %d:   %s\n", i, d->valuestring);
            if (be) printf("  backend: %s\n", be->valuestring);
            if (bad) printf("  backend: UNUSABLE: %s\n", bad->valuestring);
        }
    }
    printf("--device auto: %s\n", cJSON_GetObjectItem(j, "device_auto")->valuestring);
    printf("free:      %.1f GiB on the filesystem of %s\n", free_b / 1073741824.0, out_dir);
    cJSON_Delete(j);
    return TB_OK;
}

static int parse_nm(const char *opt, const char *arg, void *value)
{
    options *o = value;
    return tb_parse_nm(opt, arg, 16, &o->nm_n, &o->nm_m);
}

int main(int argc, char **argv)
{
    tb_log_init("tb-inspect");
    options o = {0};
    int want_doctor = 0;
    const char *model = NULL;
    const tb_option table[] = {
        TB_OPT_MODEL_OPTIONAL(&model, "the file or directory to show; or give it as the argument"),
        TB_OPT_JSON(&o.json, "one JSON object on stdout instead of the table (also with\n"
                             "--doctor)"),
        TB_OPT_FLAG(0, "stats", &o.stats, "per tensor: min, max, mean, std, zero fraction, NaN/Inf count"),
        {.type = TB_OPTT_CALLBACK, .long_name = "nm", .value = &o, .argh = "N:M", .callback = parse_nm,
         .help = "per 2-D+ tensor: fraction of groups of M along the last\n"
                 "(input) dimension with at most N nonzeros"},
        TB_OPT_STRING(0, "tensor", &o.tensor, "NAME", "dump the values of one tensor (one row of the last dim per line)"),
        {.type = TB_OPTT_STRING, .long_name = "plot", .value = &o.plot, .argh = "FILE.svg",
         .flags = TB_OPTF_FILE | TB_OPTF_NO_DASH,
         .help = "(.tb/.tbm) draw per-layer sparsity and, when the recipe's\n"
                 "source model and Gram statistics are at hand, the relative\n"
                 "output error ||(W - W_hat) X|| / ||W X|| of every layer"},
        TB_OPT_FLAG(0, "doctor", &want_doctor, "environment check: build, libraries, CUDA and GPUs, and the\n"
                                               "free space of the filesystem holding DIR (default .)"),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-inspect", .usage = "tb-inspect [options] FILE|DIR\ntb-inspect --doctor [--json] [DIR]",
                            .description = description, .options = table, .args = "FILE|DIR", .max_args = 1};
    char **args;
    int n_args;
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, &args, &n_args);
    if (model && n_args) return tb_usage_error("give the file once: -m FILE or FILE");
    if (model) args[n_args++] = (char *)model;
    if (want_doctor) return doctor(n_args ? args[0] : ".", o.json) ? tb_report_error() : 0;
    if (n_args != 1) return tb_usage_error("missing FILE|DIR");
    if (inspect(&o, args[0])) return tb_report_error();
    return 0;
}
