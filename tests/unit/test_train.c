/* The trainers of tb_train.h, tb_block_recon.h, tb_learnmask.h and
 * tb_distill.h on a tiny random decoder (GQA, untied lm_head, F32 weights so
 * perturbations are exact):
 *   - every gradient they use against central finite differences: the KL
 *     distillation loss through tb_backward_logits, and the two halves of a
 *     layer (tb_backward_half) for block reconstruction;
 *   - trained toward a reachable target (a teacher with the student's masks),
 *     a layer and a whole model recover it;
 *   - learned masks are exact N:M, with pruned weights exact zeros, after
 *     every step; a distillation resumed from a checkpoint equals an
 *     uninterrupted one bit for bit; the N:M re-selection on known values;
 *   - the engines' device bookkeeping (copies, full-size moments, streamed
 *     teacher, checkpoint conversion) on a CPU backend dressed as a device,
 *     bit for bit the plain CPU's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#define _USE_MATH_DEFINES
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tb_backward.h"
#include "tb_block_recon.h"
#include "tb_distill.h"
#include "tb_error.h"
#include "tb_learnmask.h"
#include "tb_model.h"
#include "tb_recon.h"
#include "tb_train.h"

#define HID 16
#define INTER 24
#define LAYERS 2
#define HEADS 4
#define KVH 2
#define HD 8
#define VOCAB 40
#define NTOK 9

static uint64_t rng;
static double uniform(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}
static float normal(void)
{
    double u = uniform() + 1e-12, v = uniform();
    return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}

/* A random model in a fresh directory. prune: every decoder linear 2:4 by
 * magnitude. perturb > 0: then every kept decoder weight w += perturb * |w| *
 * N(0,1) with a second stream (the same seed gives the same base model). */
static void write_model(char *dir, size_t dirlen, uint64_t seed, int prune, float perturb)
{
    snprintf(dir, dirlen, "/tmp/tb_train_XXXXXX");
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    fprintf(fp, "{\"model_type\":\"mistral\",\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":%d,"
                "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"head_dim\":%d,\"vocab_size\":%d,"
                "\"rope_theta\":10000.0,\"rms_norm_eps\":1e-5,\"tie_word_embeddings\":false,"
                "\"max_position_embeddings\":64}",
            HID, INTER, LAYERS, HEADS, KVH, HD, VOCAB);
    fclose(fp);
    rng = seed;
    st_entry e[64];
    char names[64][96];
    float *bufs[64];
    int n = 0;
    uint64_t saved;
#define ADD(NAME, R, C, SCALE, OFFSET, LIN)                                                              \
    do {                                                                                                 \
        snprintf(names[n], sizeof names[n], "%s", NAME);                                                 \
        bufs[n] = malloc(sizeof(float) * (R) * (C));                                                     \
        for (int i_ = 0; i_ < (R) * (C); i_++) bufs[n][i_] = (OFFSET) + (SCALE) * normal();              \
        if ((LIN) && prune)                                                                              \
            for (int g_ = 0; g_ < (R) * (C); g_ += 4) { /* drop the two smallest of each group */        \
                float *q_ = bufs[n] + g_;                                                                \
                for (int k_ = 0; k_ < 2; k_++) {                                                         \
                    int s_ = -1;                                                                         \
                    for (int j_ = 0; j_ < 4; j_++)                                                       \
                        if (q_[j_] != 0 && (s_ < 0 || fabsf(q_[j_]) < fabsf(q_[s_]))) s_ = j_;           \
                    q_[s_] = 0;                                                                          \
                }                                                                                        \
            }                                                                                            \
        if ((LIN) && perturb > 0) {                                                                      \
            saved = rng;                                                                                 \
            rng ^= 0xabcdef12345ull;                                                                     \
            for (int i_ = 0; i_ < (R) * (C); i_++) bufs[n][i_] += perturb * fabsf(bufs[n][i_]) * normal(); \
            rng = saved;                                                                                 \
        }                                                                                                \
        e[n] = (st_entry){names[n], TB_F32, (C) > 1 ? 2 : 1, {(R), (C)}, bufs[n]};                       \
        if ((C) == 1) e[n].shape[0] = (R);                                                               \
        n++;                                                                                             \
    } while (0)
    char nm[96];
    ADD("model.embed_tokens.weight", VOCAB, HID, 1.0f, 0.0f, 0);
    ADD("lm_head.weight", VOCAB, HID, 0.4f, 0.0f, 0);
    ADD("model.norm.weight", HID, 1, 0.2f, 1.0f, 0);
    for (int l = 0; l < LAYERS; l++) {
#define LADD(SUFFIX, R, C, SCALE, OFFSET, LIN)                \
    snprintf(nm, sizeof nm, "model.layers.%d.%s", l, SUFFIX); \
    ADD(nm, R, C, SCALE, OFFSET, LIN)
        LADD("input_layernorm.weight", HID, 1, 0.2f, 1.0f, 0);
        LADD("post_attention_layernorm.weight", HID, 1, 0.2f, 1.0f, 0);
        LADD("self_attn.q_proj.weight", HEADS * HD, HID, 0.5f, 0.0f, 1);
        LADD("self_attn.k_proj.weight", KVH * HD, HID, 0.5f, 0.0f, 1);
        LADD("self_attn.v_proj.weight", KVH * HD, HID, 0.4f, 0.0f, 1);
        LADD("self_attn.o_proj.weight", HID, HEADS * HD, 0.3f, 0.0f, 1);
        LADD("mlp.gate_proj.weight", INTER, HID, 0.4f, 0.0f, 1);
        LADD("mlp.up_proj.weight", INTER, HID, 0.4f, 0.0f, 1);
        LADD("mlp.down_proj.weight", HID, INTER, 0.3f, 0.0f, 1);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(st_save(path, e, n, NULL, 0), TB_OK);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

static void remove_dir(const char *dir)
{
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- gradients against finite differences ---- */

typedef struct {
    float *g[LAYERS][TB_LIN_PER_LAYER];
} grads;

static int keep_grad(void *ctx, int layer, tb_lin_id which, const float *dW, int rows, int cols)
{
    grads *g = ctx;
    if (layer >= LAYERS) return 0;
    free(g->g[layer][which]);
    g->g[layer][which] = malloc(sizeof(float) * rows * cols);
    memcpy(g->g[layer][which], dW, sizeof(float) * rows * cols);
    return 0;
}

static double kl_loss(tb_forward *fs, tb_forward *ft, const int32_t *tok)
{
    assert_int_equal(tb_forward_run(ft, tok, NTOK, 0), TB_OK);
    assert_int_equal(tb_forward_run(fs, tok, NTOK, 0), TB_OK);
    return tb_kl_rows(ft->logits, fs->logits, NTOK, VOCAB, 0, NULL, 1) / NTOK;
}

/* max over sampled entries of |FD - analytic| / max|analytic| for linear (l, k);
 * pruned != NULL: sample only entries with pruned[i] (a pruned weight's
 * gradient at 0: what the straight-through update of learned masks uses) */
static double fd_error_at(float *w, const float *g, size_t sz, const uint8_t *pruned, double (*loss)(void *), void *ctx)
{
    double gmax = 0, err = 0;
    for (size_t i = 0; i < sz; i++) gmax = fmax(gmax, fabs(g[i]));
    assert_true(gmax > 0);
    for (int trial = 0; trial < 10; trial++) {
        size_t i = (size_t)(uniform() * sz);
        while (pruned && !pruned[i]) i = (size_t)(uniform() * sz);
        float w0 = w[i];
        const float h = 1e-2f;
        w[i] = w0 + h;
        double lp = loss(ctx);
        w[i] = w0 - h;
        double lm = loss(ctx);
        w[i] = w0;
        double fd = (lp - lm) / (2.0 * ((double)(w0 + h) - (double)w0));
        err = fmax(err, fabs(fd - g[i]) / gmax);
    }
    return err;
}
static double fd_error(float *w, const float *g, size_t sz, double (*loss)(void *), void *ctx)
{
    return fd_error_at(w, g, sz, NULL, loss, ctx);
}

typedef struct {
    tb_forward *fs, *ft;
    const int32_t *tok;
} kl_ctx;
static double kl_loss_cb(void *c)
{
    kl_ctx *k = c;
    return kl_loss(k->fs, k->ft, k->tok);
}

static void test_kl_gradient(void **state)
{
    (void)state;
    char dt[64], ds[64];
    write_model(dt, sizeof dt, 0x1234, 0, 0);
    write_model(ds, sizeof ds, 0x1234, 1, 0.3f);
    tb_model t, s;
    assert_int_equal(tb_model_open(&t, dt), TB_OK);
    assert_int_equal(tb_model_open(&s, ds), TB_OK);
    tb_trainable tr;
    assert_int_equal(tb_trainable_init(&tr, &s), TB_OK);
    tb_forward fs, ft;
    tb_forward_opts o = {.max_seq = NTOK, .max_tokens = NTOK, .keep_acts = 1, .n_threads = 2};
    assert_int_equal(tb_forward_init(&fs, &s, &o), TB_OK);
    assert_int_equal(tb_forward_init(&ft, &t, &o), TB_OK);
    tb_backward b;
    assert_int_equal(tb_backward_init(&b, &fs), TB_OK);
    int32_t tok[NTOK];
    for (int i = 0; i < NTOK; i++) tok[i] = (int32_t)(uniform() * VOCAB);

    double loss = kl_loss(&fs, &ft, tok);
    assert_true(loss > 1e-3);
    /* the gradient of the mean KL, exactly as tb_distill_step forms it */
    double again = tb_kl_rows(ft.logits, fs.logits, NTOK, VOCAB, 1.0 / NTOK, NULL, 2) / NTOK;
    assert_true(fabs(again - loss) < 1e-12);
    grads g = {{{0}}};
    assert_int_equal(tb_backward_logits(&b, NTOK, 0, keep_grad, &g), TB_OK);
    kl_ctx c = {&fs, &ft, tok};
    double worst = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
            int i = l * TB_LIN_PER_LAYER + k;
            double e = fd_error(tr.w[i], g.g[l][k], (size_t)tr.size[i], kl_loss_cb, &c);
            /* and at pruned entries only (the student is 2:4: half of them) */
            uint8_t *pruned = malloc((size_t)tr.size[i]);
            for (int64_t j = 0; j < tr.size[i]; j++) pruned[j] = !tr.keep[i][j];
            double ep = fd_error_at(tr.w[i], g.g[l][k], (size_t)tr.size[i], pruned, kl_loss_cb, &c);
            free(pruned);
            printf("  KL  layer %d %-18s FD error / max|dW| %.2e, at pruned entries %.2e\n", l, tb_lin_name(k), e, ep);
            worst = fmax(worst, fmax(e, ep));
            free(g.g[l][k]);
        }
    assert_true(worst < 5e-3);
    tb_backward_free(&b);
    tb_forward_free(&fs);
    tb_forward_free(&ft);
    tb_trainable_free(&tr);
    tb_model_close(&s);
    tb_model_close(&t);
    remove_dir(dt);
    remove_dir(ds);
}

/* KL plus the hidden-state loss (tb_hidden_loss_grad) with weight HW */
#define HW 2.0
static double kl_hidden_loss_cb(void *c)
{
    kl_ctx *k = c;
    double loss = kl_loss(k->fs, k->ft, k->tok);
    for (int l = 0; l < LAYERS; l++) {
        const float *s = tb_forward_stream(k->fs, l + 1), *t = tb_forward_stream(k->ft, l + 1);
        double e = 0, p = 0;
        for (int i = 0; i < NTOK * HID; i++) e += ((double)s[i] - t[i]) * ((double)s[i] - t[i]), p += (double)t[i] * t[i];
        loss += HW / LAYERS * e / p;
    }
    return loss;
}

/* The hidden-state loss's gradient, entering the backward at each layer's
 * output through the stream hook, against finite differences of KL + loss. */
static void test_hidden_gradient(void **state)
{
    (void)state;
    char dt[64], ds[64];
    write_model(dt, sizeof dt, 0x2345, 0, 0);
    write_model(ds, sizeof ds, 0x2345, 1, 0.3f);
    tb_model t, s;
    assert_int_equal(tb_model_open(&t, dt), TB_OK);
    assert_int_equal(tb_model_open(&s, ds), TB_OK);
    tb_trainable tr;
    assert_int_equal(tb_trainable_init(&tr, &s), TB_OK);
    tb_forward fs, ft;
    tb_forward_opts o = {.max_seq = NTOK, .max_tokens = NTOK, .keep_acts = 1, .n_threads = 2};
    assert_int_equal(tb_forward_init(&fs, &s, &o), TB_OK);
    assert_int_equal(tb_forward_init(&ft, &t, &o), TB_OK);
    tb_backward b;
    assert_int_equal(tb_backward_init(&b, &fs), TB_OK);
    int32_t tok[NTOK];
    for (int i = 0; i < NTOK; i++) tok[i] = (int32_t)(uniform() * VOCAB);
    kl_ctx c = {&fs, &ft, tok};
    double total = kl_hidden_loss_cb(&c), kl = kl_loss(&fs, &ft, tok);
    tb_kl_rows(ft.logits, fs.logits, NTOK, VOCAB, 1.0 / NTOK, NULL, 2);
    tb_hidden_loss h = {.s = &fs, .t = &ft, .weight = HW, .scale = 1};
    b.stream_grad = tb_hidden_loss_grad;
    b.stream_ctx = &h;
    grads g = {{{0}}};
    assert_int_equal(tb_backward_logits(&b, NTOK, 0, keep_grad, &g), TB_OK);
    printf("  KL %.4e + hidden %.4e\n", kl, h.loss);
    assert_true(h.loss > 1e-3 && fabs(kl + h.loss - total) < 1e-9);
    double worst = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
            int i = l * TB_LIN_PER_LAYER + k;
            double e = fd_error(tr.w[i], g.g[l][k], (size_t)tr.size[i], kl_hidden_loss_cb, &c);
            printf("  KL+hidden layer %d %-18s FD error / max|dW| %.2e\n", l, tb_lin_name(k), e);
            worst = fmax(worst, e);
            free(g.g[l][k]);
        }
    assert_true(worst < 5e-3);
    tb_backward_free(&b);
    tb_forward_free(&fs);
    tb_forward_free(&ft);
    tb_trainable_free(&tr);
    tb_model_close(&s);
    tb_model_close(&t);
    remove_dir(dt);
    remove_dir(ds);
}

/* loss of one half: 0.5 * sum (out - target)^2 with out = h (attention) or
 * the layer output (MLP) of layer 1, fed a fixed input */
typedef struct {
    tb_forward *f;
    const float *in, *target;
    int at_h;
} half_ctx;
static double half_loss(void *c)
{
    half_ctx *h = c;
    memcpy(tb_forward_stream(h->f, 1), h->in, sizeof(float) * NTOK * HID);
    assert_int_equal(tb_forward_layers(h->f, NTOK, 1, 2), TB_OK);
    const float *out = h->at_h ? h->f->acts[1].h : tb_forward_stream(h->f, 2);
    double s = 0;
    for (int i = 0; i < NTOK * HID; i++) s += 0.5 * ((double)out[i] - h->target[i]) * ((double)out[i] - h->target[i]);
    return s;
}

static void test_half_gradients(void **state)
{
    (void)state;
    char ds[64];
    write_model(ds, sizeof ds, 0x777, 0, 0);
    tb_model s;
    assert_int_equal(tb_model_open(&s, ds), TB_OK);
    tb_trainable tr;
    assert_int_equal(tb_trainable_init(&tr, &s), TB_OK);
    tb_forward f;
    tb_forward_opts o = {.max_seq = NTOK, .max_tokens = NTOK, .keep_acts = 1, .n_threads = 1};
    assert_int_equal(tb_forward_init(&f, &s, &o), TB_OK);
    tb_backward b;
    assert_int_equal(tb_backward_init(&b, &f), TB_OK);
    float in[NTOK * HID], target[NTOK * HID];
    for (int i = 0; i < NTOK * HID; i++) in[i] = normal(), target[i] = normal();
    for (int at_h = 0; at_h <= 1; at_h++) {
        half_ctx c = {&f, in, target, at_h};
        half_loss(&c);
        const float *out = at_h ? f.acts[1].h : tb_forward_stream(&f, 2);
        for (int i = 0; i < NTOK * HID; i++) b.d_res[i] = out[i] - target[i];
        grads g = {{{0}}};
        assert_int_equal(tb_backward_half(&b, NTOK, 1, at_h ? TB_HALF_ATTN : TB_HALF_MLP, keep_grad, &g), TB_OK);
        for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
            int attn = k <= TB_LIN_O;
            if (attn != at_h) {
                assert_null(g.g[1][k]); /* the other half's weights get nothing */
                continue;
            }
            assert_non_null(g.g[1][k]);
            int i = TB_LIN_PER_LAYER + k;
            double e = fd_error(tr.w[i], g.g[1][k], (size_t)tr.size[i], half_loss, &c);
            printf("  %s half %-18s FD error / max|dW| %.2e\n", at_h ? "attn" : "mlp ", tb_lin_name(k), e);
            assert_true(e < 5e-3);
            free(g.g[1][k]);
        }
    }
    tb_backward_free(&b);
    tb_forward_free(&f);
    tb_trainable_free(&tr);
    tb_model_close(&s);
    remove_dir(ds);
}

/* ---- reachable targets ---- */

/* a layer's inputs and the teacher layer's outputs on random token windows */
static void layer_data(const tb_model *teacher, int windows, float *inputs, float *targets, float *attn_targets)
{
    tb_forward f;
    tb_forward_opts o = {.max_seq = NTOK, .max_tokens = NTOK, .keep_acts = 0, .n_threads = 1};
    assert_int_equal(tb_forward_init(&f, teacher, &o), TB_OK);
    for (int w = 0; w < windows; w++) {
        int32_t tok[NTOK];
        for (int i = 0; i < NTOK; i++) tok[i] = (int32_t)(uniform() * VOCAB);
        assert_int_equal(tb_forward_embed(&f, tok, NTOK), TB_OK);
        memcpy(inputs + (size_t)w * NTOK * HID, tb_forward_stream(&f, 0), sizeof(float) * NTOK * HID);
    }
    tb_forward_free(&f);
    assert_int_equal(tb_dense_layer_targets(teacher, 0, inputs, windows, NTOK, 1, NULL, targets, attn_targets), TB_OK);
}

typedef struct {
    float *const *w;
    uint8_t *const *keep;
    int steps_seen, bad;
} mask_watch;

static void watch_step(void *ctx, int64_t done, int64_t total)
{
    mask_watch *m = ctx;
    m->steps_seen++;
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        int rows = (k == TB_LIN_Q) ? HEADS * HD : (k == TB_LIN_K || k == TB_LIN_V) ? KVH * HD
                 : (k == TB_LIN_GATE || k == TB_LIN_UP) ? INTER : HID;
        int cols = k == TB_LIN_O ? HEADS * HD : k == TB_LIN_DOWN ? INTER : HID;
        if (!tb_nm_keep_valid(m->keep[k], rows, cols, 2, 4)) m->bad++;
        for (int i = 0; i < rows * cols; i++)
            if (!m->keep[k][i] && m->w[k][i] != 0.0f) m->bad++;
    }
}

static void recover_layer(tb_recon_unit unit, int learn)
{
    char dt[64], ds[64];
    write_model(dt, sizeof dt, 0x4242, 1, 0);    /* teacher: 2:4 itself, so the target is reachable */
    write_model(ds, sizeof ds, 0x4242, 1, 0.2f); /* student: same masks, kept values off by ~20% */
    tb_model t, s;
    assert_int_equal(tb_model_open(&t, dt), TB_OK);
    assert_int_equal(tb_model_open(&s, ds), TB_OK);
    tb_trainable tt, ts;
    assert_int_equal(tb_trainable_init(&tt, &t), TB_OK);
    assert_int_equal(tb_trainable_init(&ts, &s), TB_OK);
    enum { W = 8 };
    float *in = malloc(sizeof(float) * W * NTOK * HID), *tg = malloc(sizeof(float) * W * NTOK * HID),
          *ta = malloc(sizeof(float) * W * NTOK * HID);
    layer_data(&t, W, in, tg, ta);
    tb_block_opts o;
    tb_block_defaults(&o);
    o.r.steps = 1500;
    o.r.lr = 1e-2;
    o.r.eval_windows = W;
    o.unit = unit;
    o.n = 2;
    o.m = 4;
    float *dense[TB_LIN_PER_LAYER];
    if (learn) { /* learn from wrong masks: the student starts on the teacher's pruned-away weights' complement */
        o.mask.every = 5;
        o.mask.until = 0.5;
    }
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) dense[k] = tt.w[k];
    mask_watch mw = {ts.w, ts.keep, 0, 0};
    tb_block_report r;
    assert_int_equal(tb_recon_block(&s, 0, ts.w, ts.keep, (const float *const *)dense, in, tg, ta, W, NTOK, &o,
                                    watch_step, &mw, &r),
                     TB_OK);
    printf("  unit %s, masks %s: MSE %.3e -> %.3e (layer signal %.3e), %.2f%% keep bits changed\n",
           unit == TB_UNIT_LAYER ? "layer" : "blocks", learn ? "learned" : "fixed", r.r.mse_before, r.r.mse_after,
           r.r.target_power, 100.0 * r.mask_changed / r.mask_total);
    assert_int_equal(mw.steps_seen, o.r.steps * (unit == TB_UNIT_BLOCKS ? 2 : 1));
    assert_int_equal(mw.bad, 0);
    assert_true(r.r.mse_before > 1e-3 * r.r.target_power);
    /* fixed masks: the function comes back (the weights are not identifiable:
     * q/k, v/o and gate/up trade scales); learned masks may leave the
     * teacher's mask on the way (Wanda's score, not magnitude, re-selects) */
    assert_true(r.r.mse_after < (learn ? 1e-2 : 1e-3) * r.r.mse_before);
    free(in);
    free(tg);
    free(ta);
    tb_trainable_free(&ts);
    tb_trainable_free(&tt);
    tb_model_close(&s);
    tb_model_close(&t);
    remove_dir(dt);
    remove_dir(ds);
}

static void test_layer_recovers_target(void **state) { (void)state; recover_layer(TB_UNIT_LAYER, 0); }
static void test_blocks_recover_target(void **state) { (void)state; recover_layer(TB_UNIT_BLOCKS, 0); }
static void test_learned_masks_stay_nm(void **state) { (void)state; recover_layer(TB_UNIT_LAYER, 1); }

/* Learned masks find the teacher's mask: start from the wrong half of every
 * group, the teacher's weights as the dense latents. */
static void test_learned_masks_find_the_mask(void **state)
{
    (void)state;
    char dt[64], dd[64];
    write_model(dt, sizeof dt, 0x5151, 1, 0); /* the 2:4 teacher */
    write_model(dd, sizeof dd, 0x5151, 0, 0); /* the dense weights it came from */
    tb_model t, s;
    assert_int_equal(tb_model_open(&t, dt), TB_OK);
    assert_int_equal(tb_model_open(&s, dd), TB_OK);
    tb_trainable tt, ts;
    assert_int_equal(tb_trainable_init(&tt, &t), TB_OK);
    assert_int_equal(tb_trainable_init(&ts, &s), TB_OK);
    float *dense[TB_LIN_PER_LAYER];
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        dense[k] = malloc(sizeof(float) * ts.size[k]);
        memcpy(dense[k], ts.w[k], sizeof(float) * ts.size[k]);
        /* the student keeps the complement of the teacher's mask, those weights zeroed */
        for (int64_t i = 0; i < ts.size[k]; i++) {
            ts.keep[k][i] = !tt.keep[k][i];
            ts.w[k][i] = ts.keep[k][i] ? dense[k][i] * 0.1f : 0.0f;
        }
    }
    enum { W = 8 };
    float *in = malloc(sizeof(float) * W * NTOK * HID), *tg = malloc(sizeof(float) * W * NTOK * HID);
    layer_data(&t, W, in, tg, NULL);
    tb_block_opts o;
    tb_block_defaults(&o);
    o.r.steps = 400;
    o.r.lr = 1e-2;
    o.r.eval_windows = W;
    o.n = 2;
    o.m = 4;
    o.mask.every = 10;
    o.mask.until = 0.5;
    o.mask.decay = 5;
    tb_block_report r;
    assert_int_equal(tb_recon_block(&s, 0, ts.w, ts.keep, (const float *const *)dense, in, tg, NULL, W, NTOK, &o, NULL,
                                    NULL, &r),
                     TB_OK);
    int64_t agree = 0, total = 0;
    for (int k = 0; k < TB_LIN_PER_LAYER; k++)
        for (int64_t i = 0; i < ts.size[k]; i++) agree += ts.keep[k][i] == tt.keep[k][i], total++;
    printf("  from the complementary mask: %.1f%% of keep bits now equal the teacher's; MSE %.3e -> %.3e\n",
           100.0 * agree / total, r.r.mse_before, r.r.mse_after);
    assert_true(agree > 0.9 * total);
    assert_true(r.r.mse_after < 1e-2 * r.r.mse_before);
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) free(dense[k]);
    free(in);
    free(tg);
    tb_trainable_free(&ts);
    tb_trainable_free(&tt);
    tb_model_close(&s);
    tb_model_close(&t);
    remove_dir(dt);
    remove_dir(dd);
}

static void test_reselect_known_values(void **state)
{
    (void)state;
    /* 2 rows x 8 cols, 2:4; column 1 scaled down by 10 */
    const float w[16] = {0.5f, -0.9f, 0.1f, 0.2f, 1, 2, 3, 4, -4, 3, -2, 1, 0, 0, 0, 0};
    const float scale[8] = {1, 0.1f, 1, 1, 1, 1, 1, 1};
    uint8_t keep[16] = {0, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0};
    int64_t dropped = tb_nm_reselect(w, scale, 2, 8, 2, 4, keep);
    const uint8_t want[16] = {1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 0}; /* ties: lower column */
    assert_memory_equal(keep, want, 16);
    assert_int_equal(dropped, 4);
    assert_true(tb_nm_keep_valid(keep, 2, 8, 2, 4));
    keep[0] = 0;
    assert_false(tb_nm_keep_valid(keep, 2, 8, 2, 4));
}

/* ---- distillation ---- */

static void distill_fixture(char *dt, char *ds, tb_model *t, tb_model *s, tb_trainable *tr, tb_tokens *tk, int windows)
{
    write_model(dt, 64, 0x9999, 1, 0);
    write_model(ds, 64, 0x9999, 1, 0.4f);
    assert_int_equal(tb_model_open(t, dt), TB_OK);
    assert_int_equal(tb_model_open(s, ds), TB_OK);
    assert_int_equal(tb_trainable_init(tr, s), TB_OK);
    tk->windows = windows;
    tk->seq_len = NTOK;
    tk->ids = malloc(sizeof(int32_t) * windows * NTOK);
    for (int i = 0; i < windows * NTOK; i++) tk->ids[i] = (int32_t)(uniform() * VOCAB);
}

static void test_distill_recovers_teacher(void **state)
{
    (void)state;
    char dt[64], ds[64];
    tb_model t, s;
    tb_trainable tr;
    tb_tokens tk;
    distill_fixture(dt, ds, &t, &s, &tr, &tk, 16);
    tb_distill_opts o;
    tb_distill_defaults(&o);
    o.steps = 1000;
    o.batch = 2;
    o.lr = 1e-2;
    tb_distill d;
    assert_int_equal(tb_distill_init(&d, &tr, &t, &tk, &o), TB_OK);
    double kl0, kl1, top0, top1;
    assert_int_equal(tb_distill_eval(&d, 16, &kl0, &top0), TB_OK);
    for (int i = 0; i < o.steps; i++) assert_int_equal(tb_distill_step(&d, NULL, NULL), TB_OK);
    assert_int_equal(tb_distill_eval(&d, 16, &kl1, &top1), TB_OK);
    printf("  distill: KL %.4e -> %.4e, top-1 %.3f -> %.3f\n", kl0, kl1, top0, top1);
    assert_true(kl0 > 1e-2);
    assert_true(kl1 < 2e-2 * kl0);
    assert_true(top1 >= top0);
    for (int i = 0; i < tr.n; i++)
        for (int64_t k = 0; k < tr.size[i]; k++)
            if (!tr.keep[i][k]) assert_true(tr.w[i][k] == 0.0f);
    tb_distill_free(&d);
    tb_tokens_free(&tk);
    tb_trainable_free(&tr);
    tb_model_close(&s);
    tb_model_close(&t);
    remove_dir(dt);
    remove_dir(ds);
}

static void test_distill_resume_is_exact(void **state)
{
    (void)state;
    char dt[64], ds[64], ckpt[96];
    tb_model t, s, s2;
    tb_trainable tr, tr2;
    tb_tokens tk;
    distill_fixture(dt, ds, &t, &s, &tr, &tk, 5); /* 5 windows, batch 2: epochs straddle steps */
    tb_distill_opts o;
    tb_distill_defaults(&o);
    o.steps = 8;
    o.batch = 2;
    o.lr = 3e-3;
    tb_distill d, d2;
    assert_int_equal(tb_distill_init(&d, &tr, &t, &tk, &o), TB_OK);
    for (int i = 0; i < 3; i++) assert_int_equal(tb_distill_step(&d, NULL, NULL), TB_OK);
    snprintf(ckpt, sizeof ckpt, "%s/run.ckpt", dt);
    assert_int_equal(tb_distill_save(&d, ckpt), TB_OK);
    for (int i = 3; i < o.steps; i++) assert_int_equal(tb_distill_step(&d, NULL, NULL), TB_OK);

    assert_int_equal(tb_model_open(&s2, ds), TB_OK);
    assert_int_equal(tb_trainable_init(&tr2, &s2), TB_OK);
    assert_int_equal(tb_distill_init(&d2, &tr2, &t, &tk, &o), TB_OK);
    assert_int_equal(tb_distill_load(&d2, ckpt), TB_OK);
    assert_int_equal(d2.step, 3);
    while (d2.step < o.steps) assert_int_equal(tb_distill_step(&d2, NULL, NULL), TB_OK);
    for (int i = 0; i < tr.n; i++) assert_memory_equal(tr.w[i], tr2.w[i], sizeof(float) * tr.size[i]);
    /* another run's settings are refused by name */
    tb_distill_free(&d2);
    o.lr = 1e-3;
    assert_int_equal(tb_distill_init(&d2, &tr2, &t, &tk, &o), TB_OK);
    tb_err_clear();
    assert_int_equal(tb_distill_load(&d2, ckpt), TB_EUSAGE);
    assert_non_null(strstr(tb_errmsg(), "made with lr"));
    tb_distill_free(&d2);
    tb_distill_free(&d);
    tb_tokens_free(&tk);
    tb_trainable_free(&tr2);
    tb_trainable_free(&tr);
    tb_model_close(&s2);
    tb_model_close(&s);
    tb_model_close(&t);
    remove_dir(dt);
    remove_dir(ds);
}

/* The teacher logits cache changes no number: a run that keeps some windows'
 * logits (a budget of 3 of 5 windows) and one that keeps all of them both end
 * bit-identical to one that recomputes the teacher every step. */
static void test_distill_cache_is_exact(void **state)
{
    (void)state;
    char dt[64], ds[64];
    tb_model t, s[3];
    tb_trainable tr[3];
    tb_tokens tk;
    distill_fixture(dt, ds, &t, &s[0], &tr[0], &tk, 5);
    for (int r = 1; r < 3; r++) {
        assert_int_equal(tb_model_open(&s[r], ds), TB_OK);
        assert_int_equal(tb_trainable_init(&tr[r], &s[r]), TB_OK);
    }
    const int64_t per_window = (int64_t)NTOK * VOCAB * (int64_t)sizeof(float);
    const int64_t budget[3] = {0, 3 * per_window + per_window / 2, 100 * per_window};
    const int64_t want_cached[3] = {0, 3, 5};
    double kl[3];
    for (int r = 0; r < 3; r++) {
        tb_distill_opts o;
        tb_distill_defaults(&o);
        o.steps = 8;
        o.batch = 2;
        o.lr = 3e-3;
        o.cache_bytes = budget[r];
        tb_distill d;
        assert_int_equal(tb_distill_init(&d, &tr[r], &t, &tk, &o), TB_OK);
        for (int i = 0; i < o.steps; i++) assert_int_equal(tb_distill_step(&d, &kl[r], NULL), TB_OK);
        assert_int_equal(d.cached, want_cached[r]);
        tb_distill_free(&d);
    }
    assert_true(kl[0] > 0);
    for (int r = 1; r < 3; r++) {
        assert_true(kl[r] == kl[0]);
        for (int i = 0; i < tr[0].n; i++) assert_memory_equal(tr[0].w[i], tr[r].w[i], sizeof(float) * tr[0].size[i]);
    }
    tb_tokens_free(&tk);
    for (int r = 0; r < 3; r++) {
        tb_trainable_free(&tr[r]);
        tb_model_close(&s[r]);
    }
    tb_model_close(&t);
    remove_dir(dt);
    remove_dir(ds);
}

/* ---- the engines' device paths, without a device ----
 *
 * A CPU backend dressed as a device for the engines: trainable weights are
 * copies (linear_upload_train copies, linear_download copies back), Adam's
 * moments are at every entry (adam_moments_kept 0, as CUDA), device is not
 * CPU (so keep masks are copies too), and its free memory is small enough
 * that the distillation teacher streams its layers and the logits cache is
 * capped. The arithmetic is the CPU's, so every result must equal the plain
 * CPU backend's bit for bit: what differs is only the bookkeeping a GPU run
 * depends on (uploads, downloads, moment layouts, checkpoint conversion). */
static tb_backend_ops devlike_ops;
static size_t devlike_room;

static int devlike_upload_train(tb_backend *b, tb_dlinear *d, const tb_linear *L)
{
    const size_t n = (size_t)L->rows * L->cols;
    tb_linear *c = malloc(sizeof *c);
    float *w = malloc(n * sizeof(float));
    if (!c || !w || L->format != TB_LINEAR_DENSE || L->dtype != TB_F32 || L->perm) {
        free(c);
        free(w);
        return tb_fail(TB_EUSAGE, "devlike: a trained weight must be dense f32");
    }
    *c = *L;
    memcpy(w, L->data, n * sizeof(float));
    c->data = w;
    memset(d, 0, sizeof *d);
    d->host = c; /* the CPU's linear ops compute from host->data: the copy */
    d->rows = L->rows;
    d->cols = L->cols;
    d->w32 = w;
    d->w = c; /* marks a copy to free */
    d->trainable = 1;
    return TB_OK;
}

static void devlike_release(tb_backend *b, tb_dlinear *d)
{
    if (d->trainable && d->w) {
        free(d->w32);
        free(d->w);
    }
    memset(d, 0, sizeof *d);
}

static void devlike_adam(tb_backend *b, tb_dlinear *W, const float *g, const uint8_t *keep, float *m1, float *m2,
                         double lr, double beta1, double beta2, double c1, double c2, double eps)
{
    float *w = W->w32;
    const float b1 = (float)beta1, b2 = (float)beta2;
    for (size_t i = 0; i < (size_t)W->rows * W->cols; i++) { /* moments by position */
        if (!keep[i]) continue;
        m1[i] = b1 * m1[i] + (1 - b1) * g[i];
        m2[i] = b2 * m2[i] + (1 - b2) * g[i] * g[i];
        w[i] -= (float)(lr * (m1[i] / c1) / (sqrt(m2[i] / c2) + eps));
    }
}

static size_t devlike_mem_free(tb_backend *b) { return devlike_room; }

static void devlike_open(tb_backend *b, size_t room)
{
    tb_backend_opts o = {.device = TB_DEVICE_CPU, .n_threads = 1};
    assert_int_equal(tb_backend_open(b, &o), TB_OK);
    devlike_ops = *b->ops;
    devlike_ops.name = "devlike";
    devlike_ops.linear_upload_train = devlike_upload_train;
    devlike_ops.linear_release = devlike_release;
    devlike_ops.adam = devlike_adam;
    devlike_ops.adam_moments_kept = 0;
    devlike_ops.mem_free = devlike_mem_free;
    devlike_room = room;
    b->ops = &devlike_ops;
    b->o.device = TB_DEVICE_CUDA;
}

/* two checkpoints hold the same tensors, byte for byte */
static void same_checkpoint(const char *a, const char *b)
{
    st_file fa, fb;
    assert_int_equal(st_open(&fa, a), TB_OK);
    assert_int_equal(st_open(&fb, b), TB_OK);
    assert_int_equal(fa.n_tensors, fb.n_tensors);
    for (int i = 0; i < fa.n_tensors; i++) {
        const st_tensor *y = st_find(&fb, fa.tensors[i].name);
        assert_non_null(y);
        assert_int_equal(y->nbytes, fa.tensors[i].nbytes);
        assert_memory_equal(y->data, fa.tensors[i].data, y->nbytes);
    }
    assert_string_equal(st_meta(&fa, "step"), st_meta(&fb, "step"));
    st_close(&fa);
    st_close(&fb);
}

static void test_distill_device_paths(void **state)
{
    (void)state;
    char dt[64], ds[64], ck[2][96];
    tb_model t, s[3];
    tb_trainable tr[3];
    tb_tokens tk;
    distill_fixture(dt, ds, &t, &s[0], &tr[0], &tk, 5);
    for (int r = 1; r < 3; r++) {
        assert_int_equal(tb_model_open(&s[r], ds), TB_OK);
        assert_int_equal(tb_trainable_init(&tr[r], &s[r]), TB_OK);
    }
    /* the teacher's decoder weights are ~18 KB in f32: a room of 12 KB streams them */
    tb_backend dev;
    devlike_open(&dev, 12 << 10);
    tb_distill_opts o;
    tb_distill_defaults(&o);
    o.steps = 8;
    o.batch = 2;
    o.lr = 3e-3;
    o.cache_bytes = 1 << 20;
    tb_distill d[2];
    for (int r = 0; r < 2; r++) {
        tb_distill_opts q = o;
        q.backend = r ? &dev : NULL;
        assert_int_equal(tb_distill_init(&d[r], &tr[r], &t, &tk, &q), TB_OK);
        for (int i = 0; i < 5; i++) assert_int_equal(tb_distill_step(&d[r], NULL, NULL), TB_OK);
        snprintf(ck[r], sizeof ck[r], "%s/%d.ckpt", dt, r);
        assert_int_equal(tb_distill_save(&d[r], ck[r]), TB_OK);
        while (d[r].step < o.steps) assert_int_equal(tb_distill_step(&d[r], NULL, NULL), TB_OK);
        assert_int_equal(tb_distill_download(&d[r]), TB_OK);
    }
    assert_true(d[1].ft.o.weight_budget > 0); /* the teacher streamed */
    for (int i = 0; i < tr[0].n; i++) assert_memory_equal(tr[0].w[i], tr[1].w[i], sizeof(float) * tr[0].size[i]);
    same_checkpoint(ck[0], ck[1]);
    /* the device run's checkpoint resumes on the plain CPU to the same end */
    tb_distill d2;
    assert_int_equal(tb_distill_init(&d2, &tr[2], &t, &tk, &o), TB_OK);
    assert_int_equal(tb_distill_load(&d2, ck[1]), TB_OK);
    while (d2.step < o.steps) assert_int_equal(tb_distill_step(&d2, NULL, NULL), TB_OK);
    for (int i = 0; i < tr[0].n; i++) assert_memory_equal(tr[0].w[i], tr[2].w[i], sizeof(float) * tr[0].size[i]);
    tb_distill_free(&d2);
    for (int r = 0; r < 2; r++) tb_distill_free(&d[r]);
    tb_backend_close(&dev);
    tb_tokens_free(&tk);
    for (int r = 0; r < 3; r++) {
        tb_trainable_free(&tr[r]);
        tb_model_close(&s[r]);
    }
    tb_model_close(&t);
    remove_dir(dt);
    remove_dir(ds);
}

/* learned masks and both units on the device-like backend: weights and masks
 * equal the CPU run's bit for bit */
static void test_block_device_paths(void **state)
{
    (void)state;
    char dt[64], ds[64];
    write_model(dt, sizeof dt, 0x4242, 1, 0);
    write_model(ds, sizeof ds, 0x4242, 1, 0.2f);
    enum { W = 4 };
    tb_model t;
    assert_int_equal(tb_model_open(&t, dt), TB_OK);
    float *in = malloc(sizeof(float) * W * NTOK * HID), *tg = malloc(sizeof(float) * W * NTOK * HID),
          *ta = malloc(sizeof(float) * W * NTOK * HID);
    layer_data(&t, W, in, tg, ta);
    tb_backend dev;
    devlike_open(&dev, SIZE_MAX);
    tb_trainable tt; /* the teacher's weights as the dense latents (once: t points at them from here on) */
    assert_int_equal(tb_trainable_init(&tt, &t), TB_OK);
    float *dense[TB_LIN_PER_LAYER];
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) dense[k] = tt.w[k];
    for (int unit = 0; unit < 2; unit++) {
        tb_model s[2];
        tb_trainable ts[2];
        tb_block_report rep[2];
        for (int r = 0; r < 2; r++) {
            assert_int_equal(tb_model_open(&s[r], ds), TB_OK);
            assert_int_equal(tb_trainable_init(&ts[r], &s[r]), TB_OK);
            tb_block_opts o;
            tb_block_defaults(&o);
            o.r.steps = 40;
            o.r.lr = 1e-2;
            o.r.eval_windows = W;
            o.r.backend = r ? &dev : NULL;
            o.unit = unit ? TB_UNIT_BLOCKS : TB_UNIT_LAYER;
            o.n = 2;
            o.m = 4;
            o.mask.every = 5;
            assert_int_equal(tb_recon_block(&s[r], 0, ts[r].w, ts[r].keep, (const float *const *)dense, in, tg, ta, W,
                                            NTOK, &o, NULL, NULL, &rep[r]),
                             TB_OK);
        }
        assert_true(rep[0].mask_changed > 0);
        assert_int_equal(rep[0].mask_changed, rep[1].mask_changed);
        assert_true(rep[0].r.mse_after == rep[1].r.mse_after);
        for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
            assert_memory_equal(ts[0].w[k], ts[1].w[k], sizeof(float) * ts[0].size[k]);
            assert_memory_equal(ts[0].keep[k], ts[1].keep[k], (size_t)ts[0].size[k]);
        }
        for (int r = 0; r < 2; r++) {
            tb_trainable_free(&ts[r]);
            tb_model_close(&s[r]);
        }
    }
    tb_trainable_free(&tt);
    tb_backend_close(&dev);
    free(in);
    free(tg);
    free(ta);
    tb_model_close(&t);
    remove_dir(dt);
    remove_dir(ds);
}

/* Learned masks in distillation: the student keeps the complement of the
 * teacher's 2:4 mask (its dense weights there, halved); with masks learned
 * from the KL it finds the teacher's mask and function, with fixed masks it
 * cannot; the masks are exact 2:4 and pruned weights exact zeros after every
 * step. */
static void distill_wrong_masks(tb_model *t, tb_model *s, tb_trainable *tt, tb_trainable *ts, char *dt, char *dd)
{
    write_model(dt, 64, 0x5151, 1, 0); /* the 2:4 teacher */
    write_model(dd, 64, 0x5151, 0, 0); /* the dense weights it came from */
    assert_int_equal(tb_model_open(t, dt), TB_OK);
    assert_int_equal(tb_model_open(s, dd), TB_OK);
    assert_int_equal(tb_trainable_init(tt, t), TB_OK);
    assert_int_equal(tb_trainable_init(ts, s), TB_OK);
    for (int i = 0; i < ts->n; i++) {
        ts->pn[i] = 2;
        ts->pm[i] = 4;
        for (int64_t k = 0; k < ts->size[i]; k++) {
            ts->keep[i][k] = !tt->keep[i][k];
            ts->w[i][k] = ts->keep[i][k] ? 0.5f * ts->w[i][k] : 0.0f;
        }
    }
}

static void test_distill_learned_masks(void **state)
{
    (void)state;
    double kl_end[2];
    for (int learn = 0; learn < 2; learn++) {
        char dt[64], dd[64];
        tb_model t, s;
        tb_trainable tt, ts;
        distill_wrong_masks(&t, &s, &tt, &ts, dt, dd);
        tb_tokens tk = {.windows = 16, .seq_len = NTOK, .ids = malloc(sizeof(int32_t) * 16 * NTOK)};
        for (int i = 0; i < 16 * NTOK; i++) tk.ids[i] = (int32_t)(uniform() * VOCAB);
        tb_distill_opts o;
        tb_distill_defaults(&o);
        o.steps = 600;
        o.batch = 2;
        o.lr = 1e-2;
        o.mask.every = learn ? 10 : 0;
        o.mask.decay = 5;
        tb_distill d;
        assert_int_equal(tb_distill_init(&d, &ts, &t, &tk, &o), TB_OK);
        double kl0, kl1, top0, top1;
        assert_int_equal(tb_distill_eval(&d, 16, &kl0, &top0), TB_OK);
        int64_t bad = 0;
        for (int i = 0; i < o.steps; i++) {
            assert_int_equal(tb_distill_step(&d, NULL, NULL), TB_OK);
            for (int j = 0; j < ts.n; j++) {
                const tb_linear *L = &s.layers[j / TB_LIN_PER_LAYER].lin[j % TB_LIN_PER_LAYER];
                bad += !tb_nm_keep_valid(ts.keep[j], L->rows, L->cols, 2, 4);
                for (int64_t k = 0; k < ts.size[j]; k++) bad += !ts.keep[j][k] && ts.w[j][k] != 0.0f;
            }
        }
        assert_int_equal(tb_distill_eval(&d, 16, &kl1, &top1), TB_OK);
        int64_t agree = 0, total = 0;
        for (int j = 0; j < ts.n; j++)
            for (int64_t k = 0; k < ts.size[j]; k++) agree += ts.keep[j][k] == tt.keep[j][k], total++;
        printf("  distill, masks %s: KL %.4e -> %.4e, top-1 %.3f -> %.3f, %.1f%% of keep bits equal the teacher's\n",
               learn ? "learned" : "fixed", kl0, kl1, top0, top1, 100.0 * agree / total);
        assert_int_equal(bad, 0);
        assert_int_equal(ts.masks_learned, learn);
        if (learn) { /* most of the teacher's mask (a whole model's weights are not identifiable) */
            assert_true(agree > 0.75 * total);
            assert_true(kl1 < 2e-2 * kl0);
        } else
            assert_int_equal(agree, 0);
        kl_end[learn] = kl1;
        tb_distill_free(&d);
        tb_tokens_free(&tk);
        tb_trainable_free(&ts);
        tb_trainable_free(&tt);
        tb_model_close(&s);
        tb_model_close(&t);
        remove_dir(dt);
        remove_dir(dd);
    }
    assert_true(kl_end[1] < 0.5 * kl_end[0]);
}

/* A learned-mask distillation resumed mid-learning (masks still moving) or
 * after (masks fixed) ends bit-identical, masks included, to an uninterrupted
 * one; a checkpoint made
 * with other mask options is refused by name; learned masks refuse a weight
 * that is not N:M. */
static void test_distill_learned_resume_is_exact(void **state)
{
    (void)state;
    char dt[64], dd[64], dt2[64], dd2[64], ckpt[96];
    tb_model t, s, t2, s2;
    tb_trainable tt, ts, tt2, ts2;
    distill_wrong_masks(&t, &s, &tt, &ts, dt, dd);
    distill_wrong_masks(&t2, &s2, &tt2, &ts2, dt2, dd2);
    tb_tokens tk = {.windows = 5, .seq_len = NTOK, .ids = malloc(sizeof(int32_t) * 5 * NTOK)};
    for (int i = 0; i < 5 * NTOK; i++) tk.ids[i] = (int32_t)(uniform() * VOCAB);
    tb_distill_opts o;
    tb_distill_defaults(&o);
    o.steps = 12;
    o.batch = 2;
    o.lr = 1e-2;
    o.mask.every = 2;
    o.mask.decay = 5;
    tb_distill d, d2;
    assert_int_equal(tb_distill_init(&d, &ts, &t, &tk, &o), TB_OK);
    for (int i = 0; i < 3; i++) assert_int_equal(tb_distill_step(&d, NULL, NULL), TB_OK);
    snprintf(ckpt, sizeof ckpt, "%s/run.ckpt", dt);
    assert_int_equal(tb_distill_save(&d, ckpt), TB_OK);
    char ckpt8[96]; /* and one after the masks stopped moving (step 6): the kept-entry moments */
    snprintf(ckpt8, sizeof ckpt8, "%s/run8.ckpt", dt);
    for (int i = 3; i < o.steps; i++) {
        assert_int_equal(tb_distill_step(&d, NULL, NULL), TB_OK);
        if (d.step == 8) assert_int_equal(tb_distill_save(&d, ckpt8), TB_OK);
    }
    assert_int_equal(tb_distill_init(&d2, &ts2, &t2, &tk, &o), TB_OK);
    assert_int_equal(tb_distill_load(&d2, ckpt), TB_OK);
    assert_int_equal(d2.step, 3);
    while (d2.step < o.steps) assert_int_equal(tb_distill_step(&d2, NULL, NULL), TB_OK);
    int64_t moved = 0;
    for (int i = 0; i < ts.n; i++) {
        assert_memory_equal(ts.w[i], ts2.w[i], sizeof(float) * ts.size[i]);
        assert_memory_equal(ts.keep[i], ts2.keep[i], (size_t)ts.size[i]);
        for (int64_t k = 0; k < ts.size[i]; k++) moved += ts.keep[i][k] == tt.keep[i][k];
    }
    assert_true(moved > 0); /* the masks did move across the checkpoint */
    tb_distill_free(&d2);
    assert_int_equal(tb_distill_init(&d2, &ts2, &t2, &tk, &o), TB_OK);
    assert_int_equal(tb_distill_load(&d2, ckpt8), TB_OK);
    assert_int_equal(d2.step, 8);
    while (d2.step < o.steps) assert_int_equal(tb_distill_step(&d2, NULL, NULL), TB_OK);
    for (int i = 0; i < ts.n; i++) {
        assert_memory_equal(ts.w[i], ts2.w[i], sizeof(float) * ts.size[i]);
        assert_memory_equal(ts.keep[i], ts2.keep[i], (size_t)ts.size[i]);
    }
    tb_distill_free(&d2);
    o.mask.decay = 20;
    assert_int_equal(tb_distill_init(&d2, &ts2, &t2, &tk, &o), TB_OK);
    tb_err_clear();
    assert_int_equal(tb_distill_load(&d2, ckpt), TB_EUSAGE);
    assert_non_null(strstr(tb_errmsg(), "made with mask_decay"));
    tb_distill_free(&d2);
    ts2.keep[0][0] = !ts2.keep[0][0]; /* no longer 2:4 */
    tb_err_clear();
    assert_int_equal(tb_distill_init(&d2, &ts2, &t2, &tk, &o), TB_EUSAGE);
    assert_non_null(strstr(tb_errmsg(), "exact N:M"));
    tb_distill_free(&d);
    tb_tokens_free(&tk);
    tb_trainable_free(&ts);
    tb_trainable_free(&tt);
    tb_trainable_free(&ts2);
    tb_trainable_free(&tt2);
    tb_model_close(&s);
    tb_model_close(&t);
    tb_model_close(&s2);
    tb_model_close(&t2);
    remove_dir(dt);
    remove_dir(dd);
    remove_dir(dt2);
    remove_dir(dd2);
}

/* tb_recon_peak_lr: --lr as given, or lr_rel x RMS of the kept entries / cols */
static void test_recon_peak_lr(void **state)
{
    (void)state;
    tb_recon_opts o;
    tb_recon_defaults(&o);
    const float w[8] = {3, 0, 4, 0, -1, 100, 0, 7}; /* the 100 is pruned: it must not count */
    const uint8_t keep[8] = {1, 0, 1, 0, 1, 0, 1, 1};
    assert_true(tb_recon_peak_lr(&o, w, keep, 2, 4) == 1e-3);
    o.lr_rel = 2.0;
    /* kept 3, 4, -1, 0, 7: mean square (9 + 16 + 1 + 0 + 49) / 5 = 15 */
    assert_true(fabs(tb_recon_peak_lr(&o, w, keep, 2, 4) - 2.0 * sqrt(15.0) / 4.0) < 1e-15);
    const uint8_t none[8] = {0};
    assert_true(tb_recon_peak_lr(&o, w, none, 2, 4) == 0.0);

    /* a random 2:4 keep over 37 x 1001 (rows split across threads, columns
     * not a multiple of 4): the same bits for 1 and 3 threads, and the
     * RMS of a plain long double sum */
    enum { R = 37, C = 1001 };
    float *big = malloc(sizeof(float) * R * C);
    uint8_t *bk = malloc(R * C);
    assert_non_null(big);
    assert_non_null(bk);
    uint64_t s = 0x1234;
    long double ref = 0;
    int64_t kept = 0;
    for (int i = 0; i < R * C; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        big[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5) * 0.04f;
        bk[i] = (s >> 7 & 3) < 2;
        if (bk[i]) ref += (long double)big[i] * big[i], kept++;
    }
    o.lr_rel = 10.0;
    o.n_threads = 1;
    const double one = tb_recon_peak_lr(&o, big, bk, R, C);
    o.n_threads = 3;
    const double three = tb_recon_peak_lr(&o, big, bk, R, C);
    assert_true(one == three);
    const double want = 10.0 * sqrt((double)(ref / kept)) / C;
    assert_true(fabs(one - want) <= 1e-13 * want);
    free(big);
    free(bk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reselect_known_values),
        cmocka_unit_test(test_recon_peak_lr),
        cmocka_unit_test(test_kl_gradient),
        cmocka_unit_test(test_hidden_gradient),
        cmocka_unit_test(test_half_gradients),
        cmocka_unit_test(test_layer_recovers_target),
        cmocka_unit_test(test_blocks_recover_target),
        cmocka_unit_test(test_learned_masks_stay_nm),
        cmocka_unit_test(test_learned_masks_find_the_mask),
        cmocka_unit_test(test_distill_recovers_teacher),
        cmocka_unit_test(test_distill_resume_is_exact),
        cmocka_unit_test(test_distill_cache_is_exact),
        cmocka_unit_test(test_distill_device_paths),
        cmocka_unit_test(test_block_device_paths),
        cmocka_unit_test(test_distill_learned_masks),
        cmocka_unit_test(test_distill_learned_resume_is_exact),
    };
    return cmocka_run_group_tests_name("train", tests, NULL, NULL);
}
