/* The backward pass against central finite differences on a tiny random
 * decoder (GQA, head_dim != hidden/heads, untied lm_head, F32 weights so a
 * perturbation is exact): every linear weight kind of every layer, sampled
 * entries, relative to the tensor's largest gradient. */
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
#include "tb_calib.h"
#include "tb_error.h"
#include "tb_model.h"

#define HID 16
#define INTER 24
#define LAYERS 2
#define HEADS 4
#define KVH 2
#define HD 8
#define VOCAB 40
#define NTOK 9

static uint64_t rng = 0x9e3779b97f4a7c15ull;
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

static char dir[64];

static void write_model(void)
{
    snprintf(dir, sizeof dir, "/tmp/tb_bwd_XXXXXX");
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

    st_entry e[64];
    char names[64][96];
    float *bufs[64];
    int n = 0;
#define ADD(NAME, R, C, SCALE, OFFSET)                                                        \
    do {                                                                                      \
        snprintf(names[n], sizeof names[n], "%s", NAME);                                      \
        bufs[n] = malloc(sizeof(float) * (R) * (C));                                          \
        for (int i_ = 0; i_ < (R) * (C); i_++) bufs[n][i_] = (OFFSET) + (SCALE) * normal();   \
        e[n] = (st_entry){names[n], TB_F32, (C) > 1 ? 2 : 1, {(R), (C)}, bufs[n]};            \
        if ((C) == 1) e[n].shape[0] = (R);                                                    \
        n++;                                                                                  \
    } while (0)
    char nm[96];
    ADD("model.embed_tokens.weight", VOCAB, HID, 1.0f, 0.0f);
    ADD("lm_head.weight", VOCAB, HID, 0.4f, 0.0f);
    ADD("model.norm.weight", HID, 1, 0.2f, 1.0f);
    for (int l = 0; l < LAYERS; l++) {
#define LADD(SUFFIX, R, C, SCALE, OFFSET)                                  \
    snprintf(nm, sizeof nm, "model.layers.%d.%s", l, SUFFIX);              \
    ADD(nm, R, C, SCALE, OFFSET)
        LADD("input_layernorm.weight", HID, 1, 0.2f, 1.0f);
        LADD("post_attention_layernorm.weight", HID, 1, 0.2f, 1.0f);
        LADD("self_attn.q_proj.weight", HEADS * HD, HID, 0.5f, 0.0f);
        LADD("self_attn.k_proj.weight", KVH * HD, HID, 0.5f, 0.0f);
        LADD("self_attn.v_proj.weight", KVH * HD, HID, 0.4f, 0.0f);
        LADD("self_attn.o_proj.weight", HID, HEADS * HD, 0.3f, 0.0f);
        LADD("mlp.gate_proj.weight", INTER, HID, 0.4f, 0.0f);
        LADD("mlp.up_proj.weight", INTER, HID, 0.4f, 0.0f);
        LADD("mlp.down_proj.weight", HID, INTER, 0.3f, 0.0f);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(st_save(path, e, n, NULL, 0), TB_OK);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

typedef struct {
    float *g[LAYERS + 1][TB_LIN_PER_LAYER];
} grads;

static int keep_grad(void *ctx, int layer, tb_lin_id which, const float *dW, int rows, int cols)
{
    grads *g = ctx;
    int slot = layer == LAYERS ? 0 : which;
    g->g[layer][slot] = malloc(sizeof(float) * rows * cols);
    memcpy(g->g[layer][slot], dW, sizeof(float) * rows * cols);
    return 0;
}

static double loss_of(tb_forward *f, const int32_t *tok)
{
    assert_int_equal(tb_forward_run(f, tok, NTOK, 0), TB_OK);
    return tb_eval_window_nll(f->logits, tok, NTOK, VOCAB);
}

static void test_finite_differences(void **state)
{
    (void)state;
    write_model();
    tb_model m;
    assert_int_equal(tb_model_open(&m, dir), TB_OK);
    /* mutable f32 copies of every linear weight, so entries can be nudged */
    float *copies[LAYERS + 1][TB_LIN_PER_LAYER] = {{0}};
    for (int l = 0; l <= LAYERS; l++)
        for (int i = 0; i < (l == LAYERS ? 1 : TB_LIN_PER_LAYER); i++) {
            tb_linear *L = l == LAYERS ? &m.lm_head : &m.layers[l].lin[i];
            size_t sz = (size_t)L->rows * L->cols;
            copies[l][i] = malloc(sizeof(float) * sz);
            memcpy(copies[l][i], L->data, sizeof(float) * sz);
            L->data = copies[l][i];
        }
    tb_forward f;
    tb_forward_opts o = {.max_seq = NTOK, .max_tokens = NTOK, .keep_acts = 1, .n_threads = 2};
    assert_int_equal(tb_forward_init(&f, &m, &o), TB_OK);
    tb_backward b;
    assert_int_equal(tb_backward_init(&b, &f), TB_OK);

    int32_t tok[NTOK];
    for (int t = 0; t < NTOK; t++) tok[t] = (int32_t)(uniform() * VOCAB);
    double loss0 = loss_of(&f, tok), loss;
    grads g = {{{0}}};
    assert_int_equal(tb_backward_run(&b, tok, NTOK, 1, keep_grad, &g, &loss), TB_OK);
    assert_true(fabs(loss - loss0) < 1e-6);

    double worst = 0;
    for (int l = 0; l <= LAYERS; l++)
        for (int i = 0; i < (l == LAYERS ? 1 : TB_LIN_PER_LAYER); i++) {
            tb_linear *L = l == LAYERS ? &m.lm_head : &m.layers[l].lin[i];
            size_t sz = (size_t)L->rows * L->cols;
            assert_non_null(g.g[l][i]);
            double gmax = 0, err = 0;
            for (size_t k = 0; k < sz; k++) gmax = fmax(gmax, fabs(g.g[l][i][k]));
            for (int trial = 0; trial < 12; trial++) {
                size_t k = (size_t)(uniform() * sz);
                float w0 = copies[l][i][k];
                const float h = 1e-2f;
                copies[l][i][k] = w0 + h;
                double lp = loss_of(&f, tok);
                copies[l][i][k] = w0 - h;
                double lm = loss_of(&f, tok);
                copies[l][i][k] = w0;
                double fd = (lp - lm) / (2.0 * ((double)(w0 + h) - (double)w0));
                err = fmax(err, fabs(fd - g.g[l][i][k]) / gmax);
            }
            printf("  %-8d %-18s max|dW| %.3e  max FD error / max|dW| %.2e\n", l, l == LAYERS ? "lm_head" : tb_lin_name(i),
                   gmax, err);
            assert_true(gmax > 0);
            worst = fmax(worst, err);
        }
    /* f32 forward: the FD quotient carries ~1e-6/2e-2 rounding noise */
    assert_true(worst < 5e-3);

    for (int l = 0; l <= LAYERS; l++)
        for (int i = 0; i < TB_LIN_PER_LAYER; i++) {
            free(g.g[l][i]);
            free(copies[l][i]);
        }
    tb_backward_free(&b);
    tb_forward_free(&f);
    tb_model_close(&m);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A non-finite gradient is an error naming the tensor and the window. */
static void test_nan_gradient_is_an_error(void **state)
{
    (void)state;
    write_model();
    tb_model m;
    assert_int_equal(tb_model_open(&m, dir), TB_OK);
    tb_linear *up = &m.layers[1].lin[TB_LIN_UP];
    float *w = malloc(sizeof(float) * up->rows * up->cols);
    memcpy(w, up->data, sizeof(float) * up->rows * up->cols);
    w[5] = INFINITY; /* inf * 0-free activations -> inf/NaN downstream */
    up->data = w;
    tb_forward f;
    tb_forward_opts o = {.max_seq = NTOK, .max_tokens = NTOK, .keep_acts = 1, .n_threads = 1};
    assert_int_equal(tb_forward_init(&f, &m, &o), TB_OK);
    tb_backward b;
    assert_int_equal(tb_backward_init(&b, &f), TB_OK);
    tb_calib c;
    tb_calib_opts co = {.fisher = 1, .total_windows = 3};
    assert_int_equal(tb_calib_init(&c, &m, NTOK, &co), TB_OK);
    int32_t tok[NTOK] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    double loss;
    tb_err_clear();
    assert_int_equal(tb_calib_window(&c, &f, &b, tok, NTOK, &loss), TB_EDATA);
    printf("  %s\n", tb_errmsg());
    assert_non_null(strstr(tb_errmsg(), "window 0: gradient of '"));
    assert_true(strstr(tb_errmsg(), "NaN") || strstr(tb_errmsg(), "Inf"));
    tb_calib_free(&c);
    tb_backward_free(&b);
    tb_forward_free(&f);
    tb_model_close(&m);
    free(w);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finite_differences),
        cmocka_unit_test(test_nan_gradient_is_an_error),
    };
    return cmocka_run_group_tests_name("backward", tests, NULL, NULL);
}
