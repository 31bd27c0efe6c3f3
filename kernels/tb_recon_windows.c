/* tb_recon_windows.c - the windows a layer trains on (tb_recon.h): inputs,
 * the dense layer's outputs for them and, for block units, the dense
 * attention block's h, held where the backend computes.
 *
 * Why: at Mistral-7B's shape with 128 x 2048 calibration tokens each array is
 * 4.3 GB of f32. tb-recon used to copy the stream out of its mapping, compute
 * the targets a window at a time on the GPU and download them, then upload
 * inputs and targets again for training: four 4.3 GB host passes a layer. On
 * a device with room the inputs now go up once, straight from the mapping,
 * and the targets are computed into device memory where training reads them. */
#include "tb_recon.h"
#include "tb_block_recon.h"
#include "tb_dtype.h"
#include "tb_error.h"
#include "tb_log.h"
#include "tb_nvtx.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* bytes of `arrays` window arrays, and whether they fit the backend with room
 * to spare (a quarter of what is free: the layer's weights, their Adam state
 * and one window's activations must fit beside them). The CPU backend's
 * memory is the host's: never "resident" there, the host arrays are used as
 * they are. */
static int fits(tb_backend *be, int64_t windows, size_t nd, int arrays)
{
    if (!be || be->o.device == TB_DEVICE_CPU) return 0;
    size_t room = be->ops->mem_free(be), all = (size_t)arrays * (size_t)windows * nd * sizeof(float);
    return room != SIZE_MAX && all < room / 4;
}

void tb_recon_windows_host(tb_recon_windows *ws, const float *inputs, const float *targets, const float *attn,
                           int64_t windows, int seq_len, int hidden)
{
    memset(ws, 0, sizeof *ws);
    ws->windows = windows;
    ws->seq_len = seq_len;
    ws->nd = (size_t)seq_len * (size_t)hidden;
    ws->in = inputs;
    ws->tg = targets;
    ws->attn = attn;
}

/* the backend arrays of ws (attn: a third), or none: 0 when they do not
 * all fit after all (then nothing is held and no error is left) */
static int alloc_resident(tb_recon_windows *ws, tb_backend *be, int attn)
{
    const size_t n = (size_t)ws->windows * ws->nd;
    ws->in_d = tb_alloc_f32(be, n, "the input windows");
    ws->tg_d = ws->in_d ? tb_alloc_f32(be, n, "the target windows") : NULL;
    ws->attn_d = ws->tg_d && attn ? tb_alloc_f32(be, n, "the attention targets") : NULL;
    if (ws->tg_d && (!attn || ws->attn_d)) {
        ws->be = be;
        return 1;
    }
    for (float **d = &ws->in_d; d <= &ws->attn_d; d++)
        if (*d) be->ops->free(be, *d), *d = NULL;
    tb_err_clear();
    return 0;
}

int tb_recon_windows_upload(tb_recon_windows *ws, tb_backend *be)
{
    /* not that much room: each step uploads its window */
    if (ws->in_d || !fits(be, ws->windows, ws->nd, ws->attn ? 3 : 2) || !alloc_resident(ws, be, ws->attn != NULL))
        return TB_OK;
    const size_t bytes = (size_t)ws->windows * ws->nd * sizeof(float);
    be->ops->upload(be, ws->in_d, ws->in, bytes);
    be->ops->upload(be, ws->tg_d, ws->tg, bytes);
    if (ws->attn) be->ops->upload(be, ws->attn_d, ws->attn, bytes);
    return be->ops->sync(be);
}

int tb_recon_windows_inputs(tb_recon_windows *ws, tb_backend *be, int n_threads, const void *inputs, int64_t windows,
                            int seq_len, int hidden, int want_attn)
{
    tb_recon_windows_host(ws, NULL, NULL, NULL, windows, seq_len, hidden);
    const size_t n = (size_t)windows * ws->nd;
    if (fits(be, windows, ws->nd, want_attn ? 3 : 2) && alloc_resident(ws, be, want_attn)) {
        /* from wherever they are (a mapping need not be f32-aligned: a byte copy) */
        be->ops->upload(be, ws->in_d, inputs, n * sizeof(float));
        return be->ops->sync(be);
    }
    /* host arrays: an aligned copy of the inputs, room for the targets */
    float *in = tb_malloc(n * sizeof(float)), *tg = in ? tb_malloc(n * sizeof(float)) : NULL;
    float *attn = tg && want_attn ? tb_malloc(n * sizeof(float)) : NULL;
    ws->in = in;
    ws->tg = tg;
    ws->attn = attn;
    ws->owns_host = 1;
    if (!tg || (want_attn && !attn)) {
        tb_recon_windows_free(ws);
        return TB_EIO;
    }
    tb_to_f32_threads(TB_F32, inputs, 0, n, in, n_threads);
    return TB_OK;
}

/* window w's input into f's stream l: a device copy of a resident window,
 * else an upload */
static int set_input(const tb_recon_windows *ws, tb_forward *f, int l, int64_t w)
{
    if (!ws->in_d) return tb_forward_set_stream(f, l, ws->in + (size_t)w * ws->nd, ws->seq_len);
    f->be->ops->copy(f->be, tb_forward_stream(f, l), ws->in_d + (size_t)w * ws->nd, ws->nd * sizeof(float));
    return TB_OK;
}

/* The dense layer l on every window of ws, its outputs into tg and its
 * attention block's h into attn (NULL: not wanted): backend arrays for
 * resident windows (device copies), else host arrays (downloads). */
static int dense_targets(const tb_recon_windows *ws, const tb_model *m, int l, tb_backend *be, int n_threads,
                         float *tg, float *attn)
{
    tb_forward f;
    tb_forward_opts fo = {.max_seq = ws->seq_len, .max_tokens = ws->seq_len, .keep_acts = 0, .n_threads = n_threads,
                          .backend = be, .layer_begin = l, .layer_end = l + 1};
    int rc = tb_forward_init(&f, m, &fo);
    if (rc) return rc;
    be = f.be; /* NULL was the CPU: the forward opened it */
    const size_t bytes = ws->nd * sizeof(float);
    for (int64_t w = 0; !rc && w < ws->windows; w++) {
        const size_t off = (size_t)w * ws->nd;
        TB_RANGE_PUSH("dense target window");
        if (!(rc = set_input(ws, &f, l, w)) && !(rc = tb_forward_layers(&f, ws->seq_len, l, l + 1))) {
            if (ws->in_d) {
                be->ops->copy(be, tg + off, tb_forward_stream(&f, l + 1), bytes);
                if (attn) be->ops->copy(be, attn + off, f.acts[l].h, bytes);
            } else {
                rc = tb_forward_get_stream(&f, l + 1, tg + off, ws->seq_len);
                if (!rc && attn) {
                    be->ops->download(be, attn + off, f.acts[l].h, bytes);
                    rc = be->ops->sync(be);
                }
            }
        }
        TB_RANGE_POP();
    }
    if (!rc) rc = be->ops->sync(be);
    tb_forward_free(&f);
    return rc;
}

int tb_recon_windows_targets(tb_recon_windows *ws, const tb_model *m, int l, tb_backend *be, int n_threads)
{
    if (ws->in_d) return dense_targets(ws, m, l, ws->be, n_threads, ws->tg_d, ws->attn_d);
    if (!ws->owns_host) return tb_fail(TB_EUSAGE, "recon: the targets of wrapped windows are the caller's");
    /* our own arrays (tb_recon_windows_inputs allocated them writable) */
    return dense_targets(ws, m, l, be, n_threads, (float *)ws->tg, (float *)ws->attn);
}

int tb_dense_layer_targets(const tb_model *m, int l, const float *inputs, int64_t windows, int seq_len, int n_threads,
                           tb_backend *be, float *out, float *attn_out)
{
    tb_recon_windows ws;
    tb_recon_windows_host(&ws, inputs, NULL, NULL, windows, seq_len, m->cfg.hidden_size);
    return dense_targets(&ws, m, l, be, n_threads, out, attn_out);
}

void tb_recon_windows_free(tb_recon_windows *ws)
{
    if (ws->be) {
        if (ws->in_d) ws->be->ops->free(ws->be, ws->in_d);
        if (ws->tg_d) ws->be->ops->free(ws->be, ws->tg_d);
        if (ws->attn_d) ws->be->ops->free(ws->be, ws->attn_d);
    }
    if (ws->owns_host) {
        free((void *)ws->in);
        free((void *)ws->tg);
        free((void *)ws->attn);
    }
    memset(ws, 0, sizeof *ws);
}

int tb_recon_windows_load(const tb_recon_windows *ws, tb_forward *f, int l, int64_t win, int at_h, float *tgt_buf,
                          const float **tg)
{
    tb_backend *be = f->be;
    const size_t off = (size_t)win * ws->nd;
    const float *th = at_h ? ws->attn : ws->tg;
    const float *td = at_h ? ws->attn_d : ws->tg_d;
    if (at_h ? !(ws->attn || ws->attn_d) : !(ws->tg || ws->tg_d))
        return tb_fail(TB_EUSAGE, "recon: no %s targets", at_h ? "attention" : "layer");
    int rc = set_input(ws, f, l, win);
    if (td) {
        *tg = td + off;
    } else {
        be->ops->upload(be, tgt_buf, th + off, ws->nd * sizeof(float));
        *tg = tgt_buf;
    }
    return rc ? rc : tb_forward_layers(f, ws->seq_len, l, l + 1);
}

double tb_recon_windows_target_power(const tb_recon_windows *ws, tb_backend *be, int64_t n_eval)
{
    double p = 0;
    if (ws->in_d && ws->tg_d) {
        for (int64_t w = 0; w < n_eval; w++)
            p += be->ops->sum_sq_diff(be, ws->tg_d + (size_t)w * ws->nd, ws->in_d + (size_t)w * ws->nd, ws->nd);
    } else {
        for (size_t i = 0; i < (size_t)n_eval * ws->nd; i++) {
            double d = (double)ws->tg[i] - ws->in[i];
            p += d * d;
        }
    }
    return p / ((double)n_eval * (double)ws->nd);
}
