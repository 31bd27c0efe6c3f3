/* tb_report.c - per-weight analysis of pruned shards and its SVG plot. */
#include "tb_report.h"
#include "tb_compensate.h"
#include "tb_error.h"
#include "tb_fisher.h"
#include "tb_io.h"
#include "tb_opts.h" /* tb_layer_of */
#include "tb_stats.h"
#include "tb_threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The relative output error needs the dense source weight and its Gram: both
 * are named by the recipe (tb-pack's "model" and "stats" metadata). The files
 * stay open from one weight to the next and are reopened only when a shard
 * names others (a sequential recipe has one stats file per layer; the model
 * is the same for all), so a report maps each file once, not once a weight. */
typedef struct {
    char *model_path, *stats_path; /* what is open, NULL: nothing */
    tb_ckpt ck;
    st_file sf;
    int ck_ok, sf_ok; /* opened successfully */
} error_sources;

static int same_path(const char *open_path, const char *want) { return open_path && !strcmp(open_path, want); }

static void sources_close(error_sources *e)
{
    if (e->model_path && e->ck_ok) tb_ckpt_close(&e->ck);
    if (e->stats_path && e->sf_ok) st_close(&e->sf);
    free(e->model_path);
    free(e->stats_path);
    memset(e, 0, sizeof *e);
}

/* Makes e hold the shard's model and stats; 0 when both could be opened.
 * Errors are silenced: the report prints no error for such weights. */
static int sources_for(error_sources *e, const tb_pack_file *shard)
{
    const char *model = st_meta(&shard->f, "model"), *stats = st_meta(&shard->f, "stats");
    if (!model || !*model || !stats || !*stats) return -1;
    if (!same_path(e->model_path, model)) {
        if (e->model_path && e->ck_ok) tb_ckpt_close(&e->ck);
        free(e->model_path);
        e->model_path = tb_strdup(model);
        e->ck_ok = e->model_path && !tb_ckpt_open(&e->ck, model);
        if (!e->ck_ok) tb_err_clear();
    }
    if (!same_path(e->stats_path, stats)) {
        if (e->stats_path && e->sf_ok) st_close(&e->sf);
        free(e->stats_path);
        e->stats_path = tb_strdup(stats);
        e->sf_ok = e->stats_path && !st_open(&e->sf, stats);
        if (!e->sf_ok) tb_err_clear();
    }
    return e->ck_ok && e->sf_ok ? 0 : -1;
}

/* ||(W - W_hat) X|| / ||W X|| through the Gram G = X X^T: -1 when unknown */
static double output_error(error_sources *e, const tb_pack_file *shard, const tb_packed *p, const float *w_hat)
{
    char gname[256];
    if (tb_fisher_gram_name(p->name, "input", gname, sizeof gname) || sources_for(e, shard)) return -1;
    const st_tensor *w = tb_ckpt_find(&e->ck, p->name), *g = st_find(&e->sf, gname);
    double err = -1;
    if (w && g && w->numel == p->rows * p->cols && g->numel == p->cols * p->cols) {
        float *w0 = st_tensor_f32(w);
        double *gd = tb_malloc((size_t)g->numel * sizeof(double));
        if (w0 && gd) {
            tb_to_f64(g->dtype, g->data, 0, (size_t)g->numel, gd);
            double base = tb_comp_output_error(w0, NULL, p->rows, p->cols, gd, tb_default_threads());
            double d = tb_comp_output_error(w0, w_hat, p->rows, p->cols, gd, tb_default_threads());
            err = base > 0 ? sqrt(d / base) : -1;
        } else {
            tb_err_clear();
        }
        free(w0);
        free(gd);
    }
    return err;
}

/* A round axis top at or above v: 1, 2 or 5 times a power of ten. */
static double nice_ceiling(double v)
{
    if (!(v > 0)) return 1.0;
    double p = pow(10.0, floor(log10(v)));
    for (int i = 0; i < 3; i++) {
        double c = (double[]){1, 2, 5}[i] * p;
        if (c >= v * (1 - 1e-12)) return c;
    }
    return 10 * p;
}

int tb_report_plot_svg(const char *path, const tb_pruned_row *rows, int n, const char *model)
{
    int n_layers = 0;
    for (int i = 0; i < n; i++) n_layers = rows[i].layer + 1 > n_layers ? rows[i].layer + 1 : n_layers;
    if (n_layers == 0) return tb_fail(TB_EDATA, "%s: no decoder-layer weights to plot", path);
    double sp[1024] = {0}, er[1024] = {0}, cnt[1024] = {0}, ecnt[1024] = {0}, emax = 0;
    if (n_layers > 1024) n_layers = 1024;
    char pattern[32] = "";
    for (int i = 0; i < n; i++) {
        char pat[32] = "unstructured";
        if (rows[i].p->m) snprintf(pat, sizeof pat, "%d:%d", rows[i].p->n, rows[i].p->m);
        if (!pattern[0]) snprintf(pattern, sizeof pattern, "%s", pat);
        else if (strcmp(pattern, pat)) snprintf(pattern, sizeof pattern, "mixed patterns");
        int l = rows[i].layer;
        if (l < 0 || l >= n_layers) continue;
        double numel = (double)rows[i].p->rows * rows[i].p->cols;
        sp[l] += rows[i].sparsity * numel;
        cnt[l] += numel;
        if (rows[i].rel_err >= 0) { er[l] += rows[i].rel_err; ecnt[l] += 1; }
    }
    for (int l = 0; l < n_layers; l++) {
        sp[l] = cnt[l] ? sp[l] / cnt[l] : 0;
        er[l] = ecnt[l] ? er[l] / ecnt[l] : -1;
        if (er[l] > emax) emax = er[l];
    }
    const int W = 800, H = 400, L = 70, R = 80, T = 64, B = 56;
    const int ph = H - T - B; /* plot height */
    double bw = (double)(W - L - R) / n_layers;
    double ytop = nice_ceiling(emax * 1.05); /* the error axis fits the data, not a fixed 0-1 */
    tb_outfile o;
    int rc = tb_out_open(&o, path);
    if (rc) return rc;
    FILE *fp = o.fp;
    fprintf(fp, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' font-family='sans-serif' font-size='12'>\n", W, H);
    fprintf(fp, "<rect width='100%%' height='100%%' fill='white'/>\n");
    fprintf(fp, "<text x='%d' y='22' font-size='15'>Per-layer sparsity and relative output error</text>\n", L);
    fprintf(fp, "<text x='%d' y='40' fill='#555'>%s%s%s, %d pruned weights in %d layers</text>\n", L, model ? model : "",
            model ? ", " : "", pattern, n, n_layers);
    /* legend */
    fprintf(fp, "<rect x='%d' y='48' width='12' height='10' fill='#5b8def' class='legend'/>", W - R - 250);
    fprintf(fp, "<text x='%d' y='57'>sparsity (bars, left)</text>\n", W - R - 234);
    fprintf(fp, "<line x1='%d' y1='53' x2='%d' y2='53' stroke='#c0392b' stroke-width='2'/>", W - R - 110, W - R - 96);
    fprintf(fp, "<text x='%d' y='57'>output error (line, right)</text>\n", W - R - 92);
    /* axes and their titles */
    fprintf(fp, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='black'/>\n", L, H - B, W - R, H - B);
    fprintf(fp, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='black'/>\n", L, T, L, H - B);
    fprintf(fp, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='#c0392b'/>\n", W - R, T, W - R, H - B);
    fprintf(fp, "<text transform='translate(18,%d) rotate(-90)' text-anchor='middle'>sparsity (%% of weights zero)</text>\n",
            T + ph / 2);
    fprintf(fp, "<text transform='translate(%d,%d) rotate(90)' text-anchor='middle' fill='#c0392b'>relative output error "
                "||(W-W&#770;)X|| / ||WX||</text>\n", W - 14, T + ph / 2);
    for (int k = 0; k <= 4; k++) {
        double f = k / 4.0;
        int y = (int)(H - B - f * ph);
        fprintf(fp, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='#ddd'/>\n", L, y, W - R, y);
        fprintf(fp, "<text x='%d' y='%d' text-anchor='end'>%.0f%%</text>\n", L - 6, y + 4, 100 * f);
        fprintf(fp, "<text x='%d' y='%d' fill='#c0392b'>%.3g</text>\n", W - R + 6, y + 4, f * ytop);
    }
    for (int l = 0; l < n_layers; l++) {
        double x = L + l * bw, h = sp[l] * ph;
        fprintf(fp, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='#5b8def' class='bar'><title>layer %d: %.2f%% zeros</title></rect>\n",
                x + bw * 0.15, H - B - h, bw * 0.7, h, l, 100 * sp[l]);
        if (n_layers <= 40 || l % (n_layers / 20 + 1) == 0)
            fprintf(fp, "<text x='%.1f' y='%d' text-anchor='middle'>%d</text>\n", x + bw / 2, H - B + 16, l);
    }
    fprintf(fp, "<text x='%d' y='%d' text-anchor='middle'>decoder layer</text>\n", (W + L - R) / 2, H - 14);
    int have = 0;
    for (int l = 0; l < n_layers; l++) have |= er[l] >= 0;
    if (have) {
        fprintf(fp, "<polyline fill='none' stroke='#c0392b' stroke-width='2' points='");
        for (int l = 0; l < n_layers; l++)
            if (er[l] >= 0) fprintf(fp, "%.1f,%.1f ", L + (l + 0.5) * bw, H - B - er[l] / ytop * ph);
        fprintf(fp, "'/>\n");
        for (int l = 0; l < n_layers; l++)
            if (er[l] >= 0)
                fprintf(fp, "<circle cx='%.1f' cy='%.1f' r='3' fill='#c0392b'><title>layer %d: mean relative output error %.4f</title></circle>\n",
                        L + (l + 0.5) * bw, H - B - er[l] / ytop * ph, l, er[l]);
    } else {
        fprintf(fp, "<text x='%d' y='%d' fill='#c0392b'>output error unknown: source model or Gram statistics not found</text>\n", L + 10, T + 16);
    }
    fprintf(fp, "</svg>\n");
    return tb_out_commit(&o);
}

int tb_report_pruned(const tb_pack_file *shards, int n_shards, int nm_n, int nm_m, int with_error,
                     tb_progress_fn progress, void *ctx, tb_pruned_row **rows_out, int *n_out)
{
    int n = 0, rc = TB_OK, k = 0;
    for (int s = 0; s < n_shards; s++) n += shards[s].n_packed;
    tb_pruned_row *rows = tb_calloc((size_t)(n ? n : 1), sizeof *rows);
    if (!rows) return TB_EIO;
    error_sources src = {0};
    if (progress) progress(ctx, 0, n);
    for (int s = 0; s < n_shards && !rc; s++)
        for (int i = 0; i < shards[s].n_packed && !rc; i++, k++) {
            const tb_packed *p = &shards[s].packed[i];
            tb_pruned_row *r = &rows[k];
            snprintf(r->name, sizeof r->name, "%s", p->name);
            r->layer = tb_layer_of(p->name);
            r->p = p;
            float *w = tb_pack_tensor_f32(&shards[s], p->name, 1, &r->numel);
            if (!w) { rc = TB_EIO; break; }
            for (int64_t q = 0; q < r->numel; q++) r->zeros += w[q] == 0.0f;
            int64_t groups = 0, ok = 0;
            int gn = nm_m ? nm_n : p->n, gm = nm_m ? nm_m : p->m;
            if (gm > 0 && p->cols % gm == 0) {
                /* groups in stored column order: a permutation reorders whole
                 * groups' members, and the pattern holds where the kernel reads */
                float *ws = tb_pack_tensor_f32(&shards[s], p->name, 0, NULL);
                if (!ws) { free(w); rc = TB_EIO; break; }
                groups = r->numel / gm;
                ok = tb_nm_groups_within(ws, groups, gn, gm);
                free(ws);
            }
            r->sparsity = r->numel ? (double)r->zeros / (double)r->numel : 0;
            r->conform = groups ? (double)ok / (double)groups : -1;
            r->rel_err = with_error ? output_error(&src, &shards[s], p, w) : -1;
            free(w);
            if (progress) progress(ctx, k + 1, n);
        }
    sources_close(&src);
    if (rc) {
        free(rows);
        return rc;
    }
    *rows_out = rows;
    *n_out = n;
    return TB_OK;
}
