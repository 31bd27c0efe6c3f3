/* tb_distill.c - masked distillation of a whole pruned model (tb_distill.h),
 * written once over the backend table: the same steps run on the CPU and on
 * CUDA. */
#include "tb_distill.h"
#include "tb_error.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_nvtx.h"
#include "tb_pack.h"
#include "tb_tbm.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- trainable copy of a model's decoder linears ---- */

int tb_trainable_init(tb_trainable *t, tb_model *m)
{
    memset(t, 0, sizeof *t);
    t->m = m;
    t->n = m->cfg.n_layers * TB_LIN_PER_LAYER;
    t->w = tb_calloc((size_t)t->n, sizeof *t->w);
    t->keep = tb_calloc((size_t)t->n, sizeof *t->keep);
    t->size = tb_calloc((size_t)t->n, sizeof *t->size);
    t->pn = tb_calloc((size_t)t->n, sizeof *t->pn);
    t->pm = tb_calloc((size_t)t->n, sizeof *t->pm);
    t->permuted = tb_calloc((size_t)t->n, 1);
    if (!t->w || !t->keep || !t->size || !t->pn || !t->pm || !t->permuted) {
        tb_trainable_free(t);
        return TB_EIO;
    }
    for (int i = 0; i < t->n; i++) {
        tb_linear *L = &m->layers[i / TB_LIN_PER_LAYER].lin[i % TB_LIN_PER_LAYER];
        const int64_t R = L->rows, C = L->cols, n = R * C;
        t->size[i] = n;
        float *rowbuf = tb_malloc((size_t)C * sizeof(float));
        t->w[i] = tb_malloc((size_t)n * sizeof(float));
        t->keep[i] = tb_malloc((size_t)n);
        if (!rowbuf || !t->w[i] || !t->keep[i]) {
            free(rowbuf);
            tb_trainable_free(t);
            return TB_EIO;
        }
        tb_linear_rows(L, 0, L->rows, t->w[i], rowbuf);
        t->permuted[i] = L->perm != NULL;
        if (L->format == TB_LINEAR_NM) { /* every slot of the format is trainable, padding included */
            t->pn[i] = L->n;
            t->pm[i] = L->m;
            tb_nm_keep(L->indices, R, C, L->n, L->m, L->perm, t->keep[i]);
        } else
            for (int64_t k = 0; k < n; k++) t->keep[i][k] = t->w[i][k] != 0.0f;
        for (int64_t k = 0; k < n; k++)
            if (!t->keep[i][k]) t->w[i][k] = 0.0f;
        free(rowbuf);
        L->format = TB_LINEAR_DENSE;
        L->dtype = TB_F32;
        L->data = t->w[i];
        L->perm = NULL;
        L->indices = NULL;
    }
    return TB_OK;
}

void tb_trainable_free(tb_trainable *t)
{
    for (int i = 0; i < t->n; i++) {
        if (t->w) free(t->w[i]);
        if (t->keep) free(t->keep[i]);
    }
    free(t->w);
    free(t->keep);
    free(t->size);
    free(t->pn);
    free(t->pm);
    free(t->permuted);
    memset(t, 0, sizeof *t);
}

/* the trainable index of "model.layers.L.<linear>.weight", or -1 */
static int trainable_index(const tb_trainable *t, const char *name)
{
    int l, off = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &off) != 1 || off == 0 || l < 0 || l >= t->m->cfg.n_layers) return -1;
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        const char *lin = tb_lin_name(k);
        size_t n = strlen(lin);
        if (!strncmp(name + off, lin, n) && !strcmp(name + off + n, ".weight")) return l * TB_LIN_PER_LAYER + k;
    }
    return -1;
}

static int write_one_shard(const tb_trainable *t, const tb_pack_file *p, const char *out, const char *stage,
                           const char *command, const char *const *meta, int n_meta)
{
    tb_pack_writer *pw = tb_pack_writer_new();
    if (!pw) return TB_EIO;
    int rc = TB_OK;
    static const char *const own[] = {"tensorbit.kind", "format_version", "tensorbit.tensors", "command",
                                      "packed_from"};
    for (int i = 0; i < p->f.n_meta && !rc; i++) {
        int skip = 0;
        for (size_t k = 0; k < sizeof own / sizeof own[0]; k++) skip |= !strcmp(p->f.meta_keys[i], own[k]);
        for (int k = 0; k < n_meta; k++) skip |= !strcmp(p->f.meta_keys[i], meta[2 * k]);
        if (!skip) rc = tb_pack_writer_meta(pw, p->f.meta_keys[i], p->f.meta_vals[i]);
    }
    if (!rc) rc = tb_pack_writer_meta(pw, "command", command);
    if (!rc) rc = tb_pack_writer_meta(pw, "packed_from", p->f.path); /* the recipe chain: this stage's input */
    for (int k = 0; k < n_meta && !rc; k++) rc = tb_pack_writer_meta(pw, meta[2 * k], meta[2 * k + 1]);
    int *idx = tb_malloc((size_t)(p->n_packed + 1) * sizeof(int));
    if (!idx) rc = TB_EIO;
    for (int i = 0; i < p->n_packed && !rc; i++) {
        const tb_packed *q = &p->packed[i];
        if ((idx[i] = trainable_index(t, q->name)) < 0) {
            rc = tb_fail(TB_EDATA, "%s: pruned tensor '%s' is not a decoder linear", p->f.path, q->name);
            break;
        }
        char comp[128];
        snprintf(comp, sizeof comp, "%s+%s", q->compensation ? q->compensation : "none", stage);
        rc = tb_pack_declare(pw, q->name, q->dtype, q->rows, q->cols, q->n, q->m, q->perm != NULL, comp,
                             t->masks_learned ? "learned" : "given");
    }
    for (int i = 0; i < p->f.n_tensors && !rc; i++)
        if (!tb_pack_is_part(p, &p->f.tensors[i]))
            rc = tb_pack_declare_copy(pw, p->f.tensors[i].name, p->f.tensors[i].dtype, p->f.tensors[i].ndim,
                                      p->f.tensors[i].shape);
    tb_outfile of;
    if (!rc) rc = tb_out_open(&of, out);
    if (rc) {
        free(idx);
        tb_pack_writer_free(pw);
        return rc;
    }
    rc = tb_pack_writer_begin(pw, of.fp, out);
    for (int i = 0; i < p->n_packed && !rc; i++)
        rc = tb_pack_write_model_order(pw, &p->packed[i], t->w[idx[i]], t->keep[idx[i]]);
    for (int i = 0; i < p->f.n_tensors && !rc; i++)
        if (!tb_pack_is_part(p, &p->f.tensors[i])) rc = tb_pack_write_copy(pw, p->f.tensors[i].data, p->f.tensors[i].nbytes);
    if (!rc) rc = tb_pack_writer_finish(pw);
    if (!rc) rc = tb_out_commit(&of);
    else tb_out_abort(&of);
    free(idx);
    tb_pack_writer_free(pw);
    return rc;
}

int tb_trainable_write(const tb_trainable *t, const char *out_tbm, const char *model_dir, const char *stage,
                       const char *command, const char *const *meta, int n_meta)
{
    const tb_model *m = t->m;
    if (!m->is_tbm || m->tbm.base)
        return tb_fail(TB_EUSAGE, "%s: the student must be a complete pruned model (.tbm without a base)", m->path);
    /* "<dir>/<stem>.<shard name>": never the source shards, which are mapped */
    const char *slash = strrchr(out_tbm, '/');
    size_t dirlen = slash ? (size_t)(slash - out_tbm) + 1 : 0;
    const char *base = out_tbm + dirlen;
    size_t stemlen = strlen(base);
    if (stemlen > 4 && !strcmp(base + stemlen - 4, ".tbm")) stemlen -= 4;
    const int n = m->tbm.n_shards;
    char **paths = tb_calloc((size_t)n, sizeof(char *));
    if (!paths) return TB_EIO;
    int rc = TB_OK;
    for (int i = 0; i < n && !rc; i++) {
        const char *src = m->tbm.shards[i].f.path, *s = strrchr(src, '/');
        s = s ? s + 1 : src;
        size_t len = dirlen + stemlen + 1 + strlen(s) + 1;
        if (!(paths[i] = tb_malloc(len))) {
            rc = TB_EIO;
            break;
        }
        snprintf(paths[i], len, "%.*s%.*s.%s", (int)dirlen, out_tbm, (int)stemlen, base, s);
        if (!strcmp(paths[i], src)) rc = tb_fail(TB_EUSAGE, "%s: would overwrite its own shard %s", out_tbm, src);
        if (!rc) rc = write_one_shard(t, &m->tbm.shards[i], paths[i], stage, command, meta, n_meta);
    }
    if (!rc) rc = tb_tbm_merge(out_tbm, model_dir, (const char *const *)paths, n, command, 0, 0);
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    return rc;
}

/* ---- distillation, over the backend table ---- */

void tb_distill_defaults(tb_distill_opts *o)
{
    *o = (tb_distill_opts){.steps = 300, .batch = 1, .lr = 3e-4, .adam = {0.9, 0.999, 1e-8}, .seed = 0, .n_threads = 1,
                         .cache_bytes = 0};
    tb_learnmask_defaults(&o->mask);
}

/* bytes the teacher's decoder and head weights take in the backend's compute
 * dtype (what its forward would hold with every layer resident) */
static size_t teacher_bytes(const tb_model *t, const tb_backend *be)
{
    const size_t elt = be->o.precision == TB_PREC_BF16 ? 2 : 4;
    size_t n = (size_t)t->lm_head.rows * t->lm_head.cols;
    for (int l = 0; l < t->cfg.n_layers; l++)
        for (int k = 0; k < TB_LIN_PER_LAYER; k++) n += (size_t)t->layers[l].lin[k].rows * t->layers[l].lin[k].cols;
    return n * elt;
}

/* learned masks: latents (kept: the student's values, pruned: the teacher's
 * dense weights), full-size moments and gradient sums, zeroed channel
 * statistics (host memory: the CPU backend) */
static int learn_init(tb_distill *d)
{
    const tb_trainable *s = d->s;
    const int n = s->n;
    d->learn_steps = (int64_t)(d->o.mask.until * d->o.steps);
    d->lat = tb_calloc((size_t)n, sizeof(float *));
    d->lm1 = tb_calloc((size_t)n, sizeof(float *));
    d->lm2 = tb_calloc((size_t)n, sizeof(float *));
    d->lg = tb_calloc((size_t)n, sizeof(float *));
    d->colsq = tb_calloc((size_t)n, sizeof(double *));
    int widest = 0;
    for (int i = 0; i < n; i++) {
        int c = s->m->layers[i / TB_LIN_PER_LAYER].lin[i % TB_LIN_PER_LAYER].cols;
        widest = c > widest ? c : widest;
    }
    d->colscale = tb_malloc((size_t)widest * sizeof(float));
    if (!d->lat || !d->lm1 || !d->lm2 || !d->lg || !d->colsq || !d->colscale) return TB_EIO;
    for (int i = 0; i < n; i++) {
        const tb_linear *T = &d->teacher->layers[i / TB_LIN_PER_LAYER].lin[i % TB_LIN_PER_LAYER];
        const size_t sz = (size_t)s->size[i];
        if ((int64_t)T->rows * T->cols != s->size[i])
            return tb_fail(TB_EDATA, "distill: the teacher's layer %d %s is not the student's shape", i / TB_LIN_PER_LAYER,
                           tb_lin_name(i % TB_LIN_PER_LAYER));
        d->lat[i] = tb_malloc(sz * sizeof(float));
        d->lm1[i] = tb_calloc(sz, sizeof(float));
        d->lm2[i] = tb_calloc(sz, sizeof(float));
        d->lg[i] = tb_malloc(sz * sizeof(float));
        d->colsq[i] = tb_calloc((size_t)T->cols, sizeof(double));
        float *rowbuf = tb_malloc((size_t)T->cols * sizeof(float));
        if (!d->lat[i] || !d->lm1[i] || !d->lm2[i] || !d->lg[i] || !d->colsq[i] || !rowbuf) {
            free(rowbuf);
            return TB_EIO;
        }
        tb_linear_rows(T, 0, T->rows, d->lat[i], rowbuf); /* the dense model: no permutation */
        free(rowbuf);
        for (size_t k = 0; k < sz; k++)
            if (s->keep[i][k]) d->lat[i][k] = s->w[i][k];
    }
    return TB_OK;
}

int tb_distill_init(tb_distill *d, tb_trainable *s, const tb_model *teacher, const tb_tokens *tk,
                    const tb_distill_opts *o)
{
    memset(d, 0, sizeof *d);
    const tb_config *a = &s->m->cfg, *b = &teacher->cfg;
    if (a->vocab_size != b->vocab_size || a->n_layers != b->n_layers || a->hidden_size != b->hidden_size)
        return tb_fail(TB_EDATA, "the student (%d layers, hidden %d, vocab %d) is not the teacher's shape (%d, %d, %d)",
                       a->n_layers, a->hidden_size, a->vocab_size, b->n_layers, b->hidden_size, b->vocab_size);
    if (tk->windows < 1 || tk->seq_len < 2) return tb_fail(TB_EDATA, "distill: no calibration windows");
    if (o->steps < 0 || o->batch < 1) return tb_fail(TB_EUSAGE, "distill: steps >= 0 and batch >= 1");
    const int learn = o->mask.every > 0;
    for (int i = 0; learn && i < s->n; i++) {
        const tb_linear *L = &s->m->layers[i / TB_LIN_PER_LAYER].lin[i % TB_LIN_PER_LAYER];
        if (s->pn[i] < 1 || s->pm[i] > 16 || s->permuted[i] || L->cols % s->pm[i] ||
            !tb_nm_keep_valid(s->keep[i], L->rows, L->cols, s->pn[i], s->pm[i]))
            return tb_fail(TB_EUSAGE, "distill: learned masks need exact N:M weights without permutation "
                           "(layer %d %s is not)", i / TB_LIN_PER_LAYER, tb_lin_name(i % TB_LIN_PER_LAYER));
    }
    if ((learn || o->hidden > 0) && o->backend && o->backend->o.device != TB_DEVICE_CPU)
        return tb_fail(TB_EUSAGE, "distill: %s train%s on the cpu backend only: add --device cpu",
                       learn ? "learned masks" : "the hidden-state loss", learn ? "" : "s");
    int rc;
    if (o->backend) {
        d->be = o->backend;
    } else {
        d->own_be.o.n_threads = o->n_threads;
        if ((rc = tb_cpu_backend_open(&d->own_be))) return rc;
        d->be = &d->own_be;
    }
    tb_backend *be = d->be;
    d->s = s;
    d->teacher = teacher;
    d->tk = tk;
    d->o = *o;
    const int T = tk->seq_len, n = s->n;
    d->train = tb_calloc((size_t)n, sizeof *d->train);
    d->keep = tb_calloc((size_t)n, sizeof *d->keep);
    d->g = tb_calloc((size_t)n, sizeof *d->g);
    d->m1 = tb_calloc((size_t)n, sizeof *d->m1);
    d->m2 = tb_calloc((size_t)n, sizeof *d->m2);
    d->n_moments = tb_calloc((size_t)n, sizeof *d->n_moments);
    d->order = tb_malloc((size_t)tk->windows * sizeof(int64_t));
    if (!d->train || !d->keep || !d->g || !d->m1 || !d->m2 || !d->n_moments || !d->order) {
        tb_distill_free(d);
        return TB_EIO;
    }
    /* the student first: its training state must be resident */
    tb_forward_opts fs = {.max_seq = T, .max_tokens = T, .keep_acts = 1, .n_threads = o->n_threads, .backend = be};
    if ((rc = tb_forward_init(&d->fs, s->m, &fs)) || (rc = tb_backward_init(&d->b, &d->fs))) {
        tb_distill_free(d);
        return rc;
    }
    for (int i = 0; i < n && !rc; i++) {
        const int l = i / TB_LIN_PER_LAYER, k = i % TB_LIN_PER_LAYER;
        const size_t sz = (size_t)s->size[i];
        size_t nm = sz;
        if (be->ops->adam_moments_kept) {
            nm = 0;
            for (size_t j = 0; j < sz; j++) nm += s->keep[i][j] != 0;
        }
        d->n_moments[i] = (int64_t)nm;
        if ((rc = be->ops->linear_upload_train(be, &d->train[i], &s->m->layers[l].lin[k]))) {
            tb_err_context("layer %d %s", l, tb_lin_name(k));
            break;
        }
        tb_forward_use_linear(&d->fs, l, k, &d->train[i]);
        d->keep[i] = be->ops->alloc(be, sz, "a keep mask");
        d->m1[i] = tb_alloc_f32(be, nm ? nm : 1, "Adam's first moment");
        d->m2[i] = tb_alloc_f32(be, nm ? nm : 1, "Adam's second moment");
        if (o->batch > 1) d->g[i] = tb_alloc_f32(be, sz, "a gradient sum");
        if (!d->keep[i] || !d->m1[i] || !d->m2[i] || (o->batch > 1 && !d->g[i])) {
            rc = tb_err_context("layer %d %s", l, tb_lin_name(k));
            break;
        }
        be->ops->upload(be, d->keep[i], s->keep[i], sz);
        be->ops->zero(be, d->m1[i], nm * sizeof(float));
        be->ops->zero(be, d->m2[i], nm * sizeof(float));
    }
    /* then the teacher: every layer resident when its weights fit in half of
     * what is left, else streamed through that half layer by layer */
    size_t room = be->ops->mem_free(be);
    /* the hidden-state loss reads every layer's output of the teacher too */
    tb_forward_opts ft = {.max_seq = T, .max_tokens = T, .keep_acts = o->hidden > 0, .n_threads = o->n_threads,
                          .backend = be};
    if (room != SIZE_MAX && teacher_bytes(teacher, be) > room / 2) ft.weight_budget = room / 2;
    if (!rc) rc = tb_forward_init(&d->ft, teacher, &ft);
    if (!rc && ft.weight_budget)
        tb_info("the teacher streams its layers through %.2f GiB (%.2f GiB of weights)",
                (double)ft.weight_budget / (1 << 30), (double)teacher_bytes(teacher, be) / (1 << 30));
    /* the teacher logits cache: whole windows, as many as cache_bytes holds
     * (on a device, at most a quarter of what is free now) */
    const int64_t per_window = (int64_t)T * a->vocab_size * (int64_t)sizeof(float);
    int64_t budget = o->cache_bytes;
    room = rc ? 0 : be->ops->mem_free(be);
    if (room != SIZE_MAX && budget > (int64_t)(room / 4)) budget = (int64_t)(room / 4);
    d->cache_rows = budget > 0 && o->hidden <= 0 ? budget / per_window : 0;
    if (o->hidden > 0) {
        d->hid = (tb_hidden_loss){.s = &d->fs, .t = &d->ft, .weight = o->hidden, .scale = 1.0 / o->batch};
        d->b.stream_grad = tb_hidden_loss_grad;
        d->b.stream_ctx = &d->hid;
    }
    if (d->cache_rows > tk->windows) d->cache_rows = tk->windows;
    if (!rc && d->cache_rows > 0) {
        d->slot = tb_malloc((size_t)tk->windows * sizeof(int64_t));
        d->cache = tb_alloc_f32(be, (size_t)d->cache_rows * (size_t)(per_window / sizeof(float)),
                                "the teacher logits cache");
        if (!d->slot || !d->cache) rc = TB_EIO;
        for (int64_t w = 0; d->slot && w < tk->windows; w++) d->slot[w] = -1;
    }
    if (!rc && learn) rc = learn_init(d);
    if (!rc && learn) s->masks_learned = 1;
    if (!rc) rc = be->ops->sync(be);
    if (rc) tb_distill_free(d);
    return rc;
}

void tb_distill_free(tb_distill *d)
{
    if (!d->be) return;
    tb_backend *be = d->be;
    tb_backward_free(&d->b);
    tb_forward_free(&d->ft);
    tb_forward_free(&d->fs); /* leaves the borrowed training copies to us */
    for (int i = 0; d->s && i < d->s->n; i++) {
        if (d->train && d->train[i].host) be->ops->linear_release(be, &d->train[i]);
        if (d->keep && d->keep[i]) be->ops->free(be, d->keep[i]);
        if (d->g && d->g[i]) be->ops->free(be, d->g[i]);
        if (d->m1 && d->m1[i]) be->ops->free(be, d->m1[i]);
        if (d->m2 && d->m2[i]) be->ops->free(be, d->m2[i]);
    }
    if (d->cache) be->ops->free(be, d->cache);
    for (int i = 0; d->s && i < d->s->n; i++) {
        if (d->lat) free(d->lat[i]);
        if (d->lm1) free(d->lm1[i]);
        if (d->lm2) free(d->lm2[i]);
        if (d->lg) free(d->lg[i]);
        if (d->colsq) free(d->colsq[i]);
    }
    free(d->lat);
    free(d->lm1);
    free(d->lm2);
    free(d->lg);
    free(d->colsq);
    free(d->colscale);
    free(d->train);
    free(d->keep);
    free(d->g);
    free(d->m1);
    free(d->m2);
    free(d->n_moments);
    free(d->order);
    free(d->slot);
    if (be == &d->own_be) tb_backend_close(&d->own_be);
    memset(d, 0, sizeof *d);
}

int tb_hidden_loss_grad(void *ctx, int layer, float *d_res, int n)
{
    tb_hidden_loss *h = ctx;
    const int L = h->s->m->cfg.n_layers;
    const size_t N = (size_t)n * h->s->m->cfg.hidden_size;
    const float *s = tb_forward_stream(h->s, layer + 1), *t = tb_forward_stream(h->t, layer + 1);
    double err = 0, pow = 0;
    for (size_t i = 0; i < N; i++) {
        double e = (double)s[i] - t[i];
        err += e * e;
        pow += (double)t[i] * t[i];
    }
    if (!(pow > 0)) return tb_fail(TB_EDATA, "distill: the teacher's layer %d output is zero", layer);
    h->loss += h->weight / L * err / pow;
    const float c = (float)(2.0 * h->scale * h->weight / L / pow);
    for (size_t i = 0; i < N; i++) d_res[i] += c * (s[i] - t[i]);
    return TB_OK;
}

/* What the backward's gradient callback does with a weight's dW this step:
 * with one window per step, Adam at once (after the weight's last use in the
 * pass, tb_backward.h: no gradient buffer); with more, the sum over the batch,
 * stepped once the batch is done. */
typedef struct {
    tb_distill *d;
    int window;    /* of the batch, 0-based */
    int check;     /* look for a non-finite gradient (a device round trip) */
    int learning;  /* masks move: the dense gradient summed on the host (d->lg) */
    double lr, c1, c2;
} grad_ctx;

static void adam_one(tb_distill *d, int i, const float *g, const grad_ctx *c)
{
    tb_backend *be = d->be;
    be->ops->adam(be, &d->train[i], g, d->keep[i], d->m1[i], d->m2[i], c->lr, d->o.adam.beta1, d->o.adam.beta2, c->c1,
                  c->c2, d->o.adam.eps);
}

static int nonfinite(tb_distill *d, int i, const float *g)
{
    if (d->be->ops->first_nonfinite(d->be, g, (size_t)d->s->size[i]) < 0) return TB_OK;
    return tb_fail(TB_EDATA, "distill: step %" PRId64 ": gradient of layer %d %s is not finite", d->step + 1,
                   i / TB_LIN_PER_LAYER, tb_lin_name(i % TB_LIN_PER_LAYER));
}

static int take_grad(void *ctx, int layer, tb_lin_id which, const float *dW, int rows, int cols)
{
    grad_ctx *c = ctx;
    tb_distill *d = c->d;
    tb_backend *be = d->be;
    if (layer >= d->s->m->cfg.n_layers || which >= TB_LIN_PER_LAYER) return TB_OK; /* lm_head: not trained */
    int i = layer * TB_LIN_PER_LAYER + which;
    if ((int64_t)rows * cols != d->s->size[i])
        return tb_fail(TB_EUSAGE, "distill: gradient of layer %d %s has the wrong size", layer, tb_lin_name(which));
    if (c->learning) { /* straight-through: every entry's gradient (host memory: the CPU backend) */
        float *g = d->lg[i];
        if (c->window == 0) memcpy(g, dW, (size_t)d->s->size[i] * sizeof(float));
        else
            for (int64_t k = 0; k < d->s->size[i]; k++) g[k] += dW[k];
    } else if (d->o.batch == 1) {
        if (c->check && nonfinite(d, i, dW)) return TB_EDATA;
        adam_one(d, i, dW, c);
    } else if (c->window == 0) {
        be->ops->copy(be, d->g[i], dW, (size_t)d->s->size[i] * sizeof(float));
    } else {
        be->ops->add(be, d->g[i], d->g[i], dW, (size_t)d->s->size[i]);
    }
    return TB_OK;
}

/* teacher and student on window w; grad_scale != 0: the student's logits
 * become the KL gradient */
static int kl_window(tb_distill *d, int64_t w, double grad_scale, double *kl, int64_t *same)
{
    tb_backend *be = d->be;
    const int T = d->tk->seq_len, V = d->s->m->cfg.vocab_size;
    const int32_t *ids = d->tk->ids + (size_t)w * T;
    const size_t nlog = (size_t)T * V;
    const float *teacher = d->ft.logits;
    int rc;
    if (d->slot && d->slot[w] >= 0)
        teacher = d->cache + (size_t)d->slot[w] * nlog;
    else {
        if ((rc = tb_forward_run(&d->ft, ids, T, 0))) return rc;
        if (d->slot && d->cached < d->cache_rows) {
            d->slot[w] = d->cached++;
            be->ops->copy(be, d->cache + (size_t)d->slot[w] * nlog, d->ft.logits, nlog * sizeof(float));
        }
    }
    if ((rc = tb_forward_run(&d->fs, ids, T, 0))) return rc;
    int64_t s = 0;
    double k = be->ops->kl_grad(be, teacher, d->fs.logits, T, V, grad_scale, &s);
    if ((rc = be->ops->sync(be))) return rc;
    if (!isfinite(k))
        return tb_fail(TB_EDATA, "distill: step %" PRId64 ": the KL of window %" PRId64 " is not finite", d->step + 1, w);
    *kl += k;
    *same += s;
    return TB_OK;
}

static void moments_up(tb_distill *d, int i, float *dev, const float *host, float *tmp);
static int64_t largest(const tb_distill *d);

/* learned masks, once they stop moving: the backend's moments (kept entries)
 * from the full-size ones of the learning phase */
static int fix_masks(tb_distill *d)
{
    float *tmp = tb_malloc((size_t)largest(d) * sizeof(float));
    if (!tmp) return TB_EIO;
    for (int i = 0; i < d->s->n; i++) {
        moments_up(d, i, d->m1[i], d->lm1[i], tmp);
        moments_up(d, i, d->m2[i], d->lm2[i], tmp);
    }
    free(tmp);
    d->masks_fixed = 1;
    return d->be->ops->sync(d->be);
}

/* learned masks, after a step's gradients: SR-STE on the latents, the masks
 * re-selected every mask.every steps, the weights = latents under the masks */
static int learn_step(tb_distill *d, const grad_ctx *c)
{
    tb_trainable *s = d->s;
    tb_backend *be = d->be;
    const int T = d->tk->seq_len;
    d->tokens_seen += (int64_t)T * d->o.batch;
    const int reselect = (d->step + 1) % d->o.mask.every == 0 || d->step + 1 == d->learn_steps;
    for (int i = 0; i < s->n; i++) {
        int rc;
        if (c->check && (rc = nonfinite(d, i, d->lg[i]))) return rc;
        const tb_linear *L = &s->m->layers[i / TB_LIN_PER_LAYER].lin[i % TB_LIN_PER_LAYER];
        tb_learnmask_update(d->lat[i], d->lg[i], d->lm1[i], d->lm2[i], s->keep[i], s->size[i], c->lr, &d->o.adam,
                            d->step + 1, d->o.mask.decay);
        if (reselect) {
            for (int k = 0; k < L->cols; k++) d->colscale[k] = (float)sqrt(d->colsq[i][k] / (double)d->tokens_seen);
            tb_nm_reselect(d->lat[i], d->colscale, L->rows, L->cols, s->pn[i], s->pm[i], s->keep[i]);
            be->ops->upload(be, d->keep[i], s->keep[i], (size_t)s->size[i]);
        }
        tb_learnmask_apply(s->w[i], d->lat[i], s->keep[i], s->size[i]); /* on the CPU the trained array itself */
    }
    return TB_OK;
}

int tb_distill_step(tb_distill *d, double *kl_out, double *top1_out)
{
    const int T = d->tk->seq_len;
    const int64_t W = d->tk->windows;
    const double scale = 1.0 / ((double)T * d->o.batch);
    double kl = 0;
    int64_t same = 0;
    int rc = TB_OK;
    const int learning = d->step < d->learn_steps;
    if (d->lat && !learning && !d->masks_fixed && (rc = fix_masks(d))) return rc;
    /* Adam with bias correction (t = step + 1) and the cosine schedule */
    const double t = (double)(d->step + 1);
    grad_ctx c = {.d = d, .lr = tb_cosine_lr(d->o.lr, d->step, d->o.steps), .c1 = 1.0 - pow(d->o.adam.beta1, t),
                  .c2 = 1.0 - pow(d->o.adam.beta2, t),
                  /* a non-finite gradient would poison the weights: look every 32 steps and at the end */
                  .check = d->step % 32 == 31 || d->step + 1 >= d->o.steps, .learning = learning};
    TB_RANGE_PUSH("distill step");
    for (int j = 0; j < d->o.batch && !rc; j++) {
        int64_t k = d->step * d->o.batch + j; /* the k-th window drawn: epoch k / W, position k % W */
        tb_window_order(d->order, W, d->o.seed, k / W);
        if ((rc = kl_window(d, d->order[k % W], scale, &kl, &same))) break;
        for (int i = 0; learning && i < d->s->n; i++) { /* the re-selection's channel statistics */
            const int l = i / TB_LIN_PER_LAYER, lk = i % TB_LIN_PER_LAYER;
            tb_learnmask_colsq(d->colsq[i], tb_lin_input(&d->fs.acts[l], lk), T, d->s->m->layers[l].lin[lk].cols);
        }
        c.window = j;
        rc = tb_backward_logits(&d->b, T, 0, take_grad, &c);
    }
    if (!rc && learning) rc = learn_step(d, &c);
    for (int i = 0; i < d->s->n && !rc && d->o.batch > 1 && !learning; i++) {
        if (c.check && (rc = nonfinite(d, i, d->g[i]))) break;
        adam_one(d, i, d->g[i], &c);
    }
    if (!rc) rc = d->be->ops->sync(d->be);
    TB_RANGE_POP();
    if (rc) return rc;
    d->step++;
    if (kl_out) *kl_out = kl * scale;
    if (top1_out) *top1_out = (double)same / ((double)T * d->o.batch);
    return TB_OK;
}

int tb_distill_eval(tb_distill *d, int64_t windows, double *kl_out, double *top1_out)
{
    if (windows > d->tk->windows) windows = d->tk->windows;
    double kl = 0;
    int64_t same = 0;
    for (int64_t w = 0; w < windows; w++) {
        int rc = kl_window(d, w, 0, &kl, &same);
        if (rc) return rc;
    }
    double pos = (double)windows * d->tk->seq_len;
    *kl_out = kl / pos;
    if (top1_out) *top1_out = (double)same / pos;
    return TB_OK;
}

int tb_distill_download(tb_distill *d)
{
    for (int i = 0; i < d->s->n; i++) d->be->ops->linear_download(d->be, &d->train[i], d->s->w[i]);
    return d->be->ops->sync(d->be);
}

/* ---- checkpoints ---- */

static const char *lin_tensor_name(int i, char *buf, size_t n)
{
    snprintf(buf, n, "model.layers.%d.%s.weight", i / TB_LIN_PER_LAYER, tb_lin_name(i % TB_LIN_PER_LAYER));
    return buf;
}

/* A moment array between the backend's layout and the checkpoint's full
 * [rows, cols] (zero at pruned entries): host is full-size. */
static void moments_down(tb_distill *d, int i, const float *dev, float *host, float *tmp)
{
    tb_backend *be = d->be;
    const int64_t n = d->s->size[i];
    if (!be->ops->adam_moments_kept) {
        be->ops->download(be, host, dev, (size_t)n * sizeof(float));
        return;
    }
    be->ops->download(be, tmp, dev, (size_t)d->n_moments[i] * sizeof(float));
    be->ops->sync(be);
    for (int64_t k = 0, j = 0; k < n; k++) host[k] = d->s->keep[i][k] ? tmp[j++] : 0.0f;
}

static void moments_up(tb_distill *d, int i, float *dev, const float *host, float *tmp)
{
    tb_backend *be = d->be;
    const int64_t n = d->s->size[i];
    if (!be->ops->adam_moments_kept) {
        be->ops->upload(be, dev, host, (size_t)n * sizeof(float));
        return;
    }
    int64_t j = 0;
    for (int64_t k = 0; k < n; k++)
        if (d->s->keep[i][k]) tmp[j++] = host[k];
    be->ops->upload(be, dev, tmp, (size_t)j * sizeof(float));
    be->ops->sync(be); /* tmp is reused for the next weight */
}

static int64_t largest(const tb_distill *d)
{
    int64_t m = 1;
    for (int i = 0; i < d->s->n; i++) m = d->s->size[i] > m ? d->s->size[i] : m;
    return m;
}

/* with learned masks, a checkpoint's further tensors per weight */
enum { CK_KEEP, CK_LAT, CK_COLSQ, CK_LEARN };
static const char *const ck_suffix[CK_LEARN] = {".keep", ".latent", ".colsq"};

static void ck_learn_tensor(const tb_distill *d, int i, int k, const void **data, tb_dtype *dt, int *ndim,
                            int64_t *shape)
{
    const tb_linear *L = &d->s->m->layers[i / TB_LIN_PER_LAYER].lin[i % TB_LIN_PER_LAYER];
    const void *p[CK_LEARN] = {d->s->keep[i], d->lat[i], d->colsq[i]};
    *data = p[k];
    *dt = k == CK_KEEP ? TB_U8 : k == CK_COLSQ ? TB_F64 : TB_F32;
    *ndim = k == CK_COLSQ ? 1 : 2;
    shape[0] = k == CK_COLSQ ? L->cols : L->rows;
    shape[1] = L->cols;
}

/* the options a resumed run must share with the checkpoint's */
enum { CK_OPTS = 9, CK_OPTS_FIXED = 7 };
static int ck_options(const tb_distill *d, char want[][40], const char **keys)
{
    static const char *const names[CK_OPTS] = {"steps", "batch", "lr", "seed", "windows", "mask_every", "hidden",
                                               "mask_until", "mask_decay"};
    snprintf(want[0], 40, "%d", d->o.steps);
    snprintf(want[1], 40, "%d", d->o.batch);
    snprintf(want[2], 40, "%.17g", d->o.lr);
    snprintf(want[3], 40, "%" PRIu64, d->o.seed);
    snprintf(want[4], 40, "%" PRId64, d->tk->windows);
    snprintf(want[5], 40, "%d", d->o.mask.every);
    snprintf(want[6], 40, "%.17g", d->o.hidden);
    snprintf(want[7], 40, "%.17g", d->o.mask.until);
    snprintf(want[8], 40, "%.17g", d->o.mask.decay);
    for (int k = 0; k < CK_OPTS; k++) keys[k] = names[k];
    return d->o.mask.every > 0 ? CK_OPTS : CK_OPTS_FIXED; /* fixed masks: until and decay do not matter */
}

int tb_distill_save(tb_distill *d, const char *path)
{
    const int n = d->s->n, per = d->lat ? 3 + CK_LEARN : 3;
    int rc = tb_distill_download(d);
    if (rc) return rc;
    st_entry *e = tb_calloc((size_t)n * per, sizeof *e);
    char (*names)[128] = tb_calloc((size_t)n * per, sizeof *names);
    float **mom = tb_calloc((size_t)n * 2, sizeof *mom);
    float *tmp = tb_malloc((size_t)largest(d) * sizeof(float));
    if (!e || !names || !mom || !tmp) rc = TB_EIO;
    for (int i = 0; i < n && !rc; i++) {
        const tb_linear *L = &d->s->m->layers[i / TB_LIN_PER_LAYER].lin[i % TB_LIN_PER_LAYER];
        char base[96];
        lin_tensor_name(i, base, sizeof base);
        const float *data[3] = {d->s->w[i], NULL, NULL};
        if (d->lat && !d->masks_fixed) { /* masks still move: the full-size moments are the state */
            data[1] = d->lm1[i];
            data[2] = d->lm2[i];
        } else {
            if (!(mom[2 * i] = tb_malloc((size_t)d->s->size[i] * sizeof(float))) ||
                !(mom[2 * i + 1] = tb_malloc((size_t)d->s->size[i] * sizeof(float)))) {
                rc = TB_EIO;
                break;
            }
            moments_down(d, i, d->m1[i], mom[2 * i], tmp);
            moments_down(d, i, d->m2[i], mom[2 * i + 1], tmp);
            data[1] = mom[2 * i];
            data[2] = mom[2 * i + 1];
        }
        static const char *const suffix[3] = {"", ".adam_m", ".adam_v"};
        for (int k = 0; k < 3; k++) {
            snprintf(names[per * i + k], sizeof names[0], "%s%s", base, suffix[k]);
            e[per * i + k] = (st_entry){names[per * i + k], TB_F32, 2, {L->rows, L->cols}, data[k]};
        }
        for (int k = 0; d->lat && k < CK_LEARN; k++) {
            st_entry *x = &e[per * i + 3 + k];
            snprintf(names[per * i + 3 + k], sizeof names[0], "%s%s", base, ck_suffix[k]);
            x->name = names[per * i + 3 + k];
            ck_learn_tensor(d, i, k, &x->data, &x->dtype, &x->ndim, x->shape);
        }
    }
    if (!rc) rc = d->be->ops->sync(d->be);
    if (!rc) {
        char want[CK_OPTS][40], step[32], seen[32];
        const char *keys[CK_OPTS], *meta[2 * (CK_OPTS + 3)];
        int nk = ck_options(d, want, keys), nm = 0;
        snprintf(step, sizeof step, "%" PRId64, d->step);
        snprintf(seen, sizeof seen, "%" PRId64, d->tokens_seen);
        meta[nm++] = "tensorbit.kind";
        meta[nm++] = "distill-checkpoint";
        meta[nm++] = "step";
        meta[nm++] = step;
        for (int k = 0; k < nk; k++) {
            meta[nm++] = keys[k];
            meta[nm++] = want[k];
        }
        if (d->lat) {
            meta[nm++] = "tokens_seen";
            meta[nm++] = seen;
        }
        rc = st_save(path, e, n * per, meta, nm / 2);
    }
    for (int i = 0; mom && i < 2 * n; i++) free(mom[i]);
    free(mom);
    free(tmp);
    free(e);
    free(names);
    return rc;
}

int tb_distill_load(tb_distill *d, const char *path)
{
    tb_backend *be = d->be;
    st_file f;
    int rc = st_open(&f, path);
    if (rc) return rc;
    const char *kind = st_meta(&f, "tensorbit.kind");
    if (!kind || strcmp(kind, "distill-checkpoint")) {
        st_close(&f);
        return tb_fail(TB_EDATA, "%s: not a tb-distill checkpoint", path);
    }
    char want[CK_OPTS][40];
    const char *keys[CK_OPTS];
    int nk = ck_options(d, want, keys);
    for (int k = 0; k < nk && !rc; k++) {
        const char *v = st_meta(&f, keys[k]);
        if ((k == 5 || k == 6) && !v && !strcmp(want[k], "0")) continue; /* a checkpoint from before the option */
        if (!v || strcmp(v, want[k]))
            rc = tb_fail(TB_EUSAGE, "%s: made with %s %s, this run has %s", path, keys[k], v ? v : "(none)", want[k]);
    }
    long long step = -1, seen = 0;
    const char *sv = st_meta(&f, "step"), *tv = st_meta(&f, "tokens_seen");
    if (!rc && (!sv || sscanf(sv, "%lld", &step) != 1 || step < 0 || step > d->o.steps))
        rc = tb_fail(TB_EDATA, "%s: bad step '%s'", path, sv ? sv : "(none)");
    if (!rc && d->lat && (!tv || sscanf(tv, "%lld", &seen) != 1 || seen < 0))
        rc = tb_fail(TB_EDATA, "%s: bad tokens_seen '%s'", path, tv ? tv : "(none)");
    /* every tensor checked before anything is overwritten */
    static const char *const suffix[3] = {"", ".adam_m", ".adam_v"};
    for (int i = 0; i < d->s->n && !rc; i++) {
        const tb_linear *L = &d->s->m->layers[i / TB_LIN_PER_LAYER].lin[i % TB_LIN_PER_LAYER];
        char base[96], name[128];
        lin_tensor_name(i, base, sizeof base);
        const uint8_t *keep = d->s->keep[i]; /* learned masks: the checkpoint's */
        for (int k = 0; d->lat && k < CK_LEARN && !rc; k++) {
            const void *data;
            tb_dtype dt;
            int ndim;
            int64_t shape[2];
            ck_learn_tensor(d, i, k, &data, &dt, &ndim, shape);
            snprintf(name, sizeof name, "%s%s", base, ck_suffix[k]);
            const st_tensor *t = st_find(&f, name);
            if (!t || t->dtype != dt || t->ndim != ndim || t->shape[0] != shape[0] || (ndim == 2 && t->shape[1] != shape[1]))
                rc = tb_fail(TB_EDATA, "%s: tensor '%s' missing or not %s [%" PRId64 "%s", path, name, tb_dtype_name(dt),
                             shape[0], ndim == 2 ? ", ..]" : "]");
            else if (k == CK_KEEP) {
                keep = (const uint8_t *)t->data;
                if (!tb_nm_keep_valid(keep, L->rows, L->cols, d->s->pn[i], d->s->pm[i]))
                    rc = tb_fail(TB_EDATA, "%s: '%s' is not an exact %d:%d mask", path, name, d->s->pn[i], d->s->pm[i]);
            }
        }
        for (int k = 0; k < 3 && !rc; k++) {
            snprintf(name, sizeof name, "%s%s", base, suffix[k]);
            const st_tensor *t = st_find(&f, name);
            if (!t || t->dtype != TB_F32 || t->ndim != 2 || t->shape[0] != L->rows || t->shape[1] != L->cols) {
                rc = tb_fail(TB_EDATA, "%s: tensor '%s' missing or not F32 [%d, %d]", path, name, L->rows, L->cols);
                break;
            }
            if (k == 0) {
                const float *w = (const float *)t->data;
                for (int64_t j = 0; j < d->s->size[i] && !rc; j++)
                    if (!keep[j] && w[j] != 0.0f)
                        rc = tb_fail(TB_EDATA, "%s: '%s' is nonzero at a pruned entry (another student?)", path, base);
            }
        }
    }
    /* learned masks: moments stay full-size while the masks move */
    const int full = d->lat && step < d->learn_steps;
    float *tmp = rc ? NULL : tb_malloc((size_t)largest(d) * sizeof(float));
    if (!rc && !tmp) rc = TB_EIO;
    for (int i = 0; i < d->s->n && !rc; i++) {
        const int l = i / TB_LIN_PER_LAYER, k = i % TB_LIN_PER_LAYER;
        char base[96], name[128];
        lin_tensor_name(i, base, sizeof base);
        for (int j = 0; d->lat && j < CK_LEARN; j++) {
            const void *data;
            tb_dtype dt;
            int ndim;
            int64_t shape[2];
            ck_learn_tensor(d, i, j, &data, &dt, &ndim, shape);
            snprintf(name, sizeof name, "%s%s", base, ck_suffix[j]);
            const st_tensor *t = st_find(&f, name);
            memcpy((void *)data, t->data, t->nbytes);
        }
        if (d->lat) be->ops->upload(be, d->keep[i], d->s->keep[i], (size_t)d->s->size[i]);
        snprintf(name, sizeof name, "%s%s", base, suffix[0]);
        memcpy(d->s->w[i], st_find(&f, name)->data, (size_t)d->s->size[i] * sizeof(float));
        /* the weight onto the backend again (on the CPU it trains in s->w itself) */
        if (be->o.device != TB_DEVICE_CPU) {
            be->ops->linear_release(be, &d->train[i]);
            if ((rc = be->ops->linear_upload_train(be, &d->train[i], &d->s->m->layers[l].lin[k]))) break;
            tb_forward_use_linear(&d->fs, l, k, &d->train[i]);
        }
        const float *mh[2];
        for (int j = 0; j < 2; j++) {
            snprintf(name, sizeof name, "%s%s", base, suffix[1 + j]);
            mh[j] = (const float *)st_find(&f, name)->data;
        }
        if (full) {
            memcpy(d->lm1[i], mh[0], (size_t)d->s->size[i] * sizeof(float));
            memcpy(d->lm2[i], mh[1], (size_t)d->s->size[i] * sizeof(float));
        } else {
            moments_up(d, i, d->m1[i], mh[0], tmp);
            moments_up(d, i, d->m2[i], mh[1], tmp);
        }
    }
    if (!rc) rc = be->ops->sync(be);
    if (!rc) {
        d->step = step;
        d->tokens_seen = seen;
        d->masks_fixed = d->lat && !full;
    }
    free(tmp);
    st_close(&f);
    return rc;
}
