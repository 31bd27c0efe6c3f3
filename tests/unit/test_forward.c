/* Unit tests of the CPU forward pass, in the spirit of llm.c's test_gpt2.c:
 * the model's logits and hidden states against transformers' fp32 goldens,
 * the KV-cache decode path against the prefill path, and the small kernels
 * (RMSNorm, RoPE, softmax, linear, sampling) against hand-computed values.
 *
 * Error measure for a tensor: max|ours - golden| / max|golden|, required
 * <= 1e-4; the max absolute difference is printed for every tensor.
 *
 * tiny-llama-6m comes from $TB_TEST_DATA (default tests/data), so a fresh
 * clone tests without ../shared; tiny-mistral-10m (GQA, untied lm_head,
 * sharded) from $TB_SHARED (default ../shared), skipped when absent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tb_error.h"
#include "tb_io.h"
#include "tb_model.h"
#include "tb_ops.h"
#include "tb_safetensors.h"

#define TOL 1e-4
#define THREADS 2

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

/* max|a-b| / max|b| over n values; prints the line that documents the check */
static double rel_err(const char *what, const float *a, const float *b, size_t n)
{
    double dmax = 0, bmax = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= dmax)) dmax = d; /* NaN propagates as a failure */
        if (fabs(b[i]) > bmax) bmax = fabs(b[i]);
    }
    double r = bmax > 0 ? dmax / bmax : dmax;
    printf("    %-34s max abs diff %.3e  rel %.3e\n", what, dmax, r);
    return r;
}

/* ---- goldens ---- */

typedef struct {
    const char *name, *model_dir, *golden;
} model_case;

static void check_model(const model_case *mc)
{
    if (!tb_is_dir(mc->model_dir) || !tb_file_exists(mc->golden)) {
        printf("    skipped %s: %s or %s not found\n", mc->name, mc->model_dir, mc->golden);
        skip();
    }
    printf("    %s (%s)\n", mc->name, mc->model_dir);
    tb_model m;
    if (tb_model_open(&m, mc->model_dir)) fail_msg("%s", tb_errmsg());
    st_file g;
    if (st_open(&g, mc->golden)) fail_msg("%s", tb_errmsg());
    const st_tensor *ids_t = st_find(&g, "input_ids"), *logits_t = st_find(&g, "logits"),
                    *hid_t = st_find(&g, "hidden_states");
    assert_non_null(ids_t);
    assert_non_null(logits_t);
    assert_non_null(hid_t);
    const tb_config *c = &m.cfg;
    int rows = (int)ids_t->shape[0], T = (int)ids_t->shape[1], V = c->vocab_size, D = c->hidden_size;
    assert_int_equal(logits_t->shape[2], V);
    assert_int_equal(hid_t->shape[0], c->n_layers + 1);

    assert_int_equal(ids_t->dtype, TB_I32);
    int32_t *ids = malloc(ids_t->nbytes);
    assert_non_null(ids);
    memcpy(ids, ids_t->data, ids_t->nbytes); /* little-endian I32, as on this host */
    float *logits = st_tensor_f32(logits_t), *hid = st_tensor_f32(hid_t);

    tb_forward f;
    tb_forward_opts o = {.max_seq = T, .max_tokens = T, .keep_acts = 1, .n_threads = THREADS};
    if (tb_forward_init(&f, &m, &o)) fail_msg("%s", tb_errmsg());
    char what[64];
    for (int r = 0; r < rows; r++) {
        assert_int_equal(tb_forward_run(&f, ids + (size_t)r * T, T, 0), TB_OK);
        snprintf(what, sizeof what, "logits row %d", r);
        assert_true(rel_err(what, f.logits, logits + (size_t)r * T * V, (size_t)T * V) <= TOL);
        if (r) continue;
        /* hidden_states: the embedding output, then each layer's output */
        for (int l = 0; l < c->n_layers; l++) {
            snprintf(what, sizeof what, "hidden_states[%d]", l);
            assert_true(rel_err(what, f.acts[l].x, hid + (size_t)l * T * D, (size_t)T * D) <= TOL);
        }
        /* transformers' last entry: the last layer's output before or after
         * model.norm; report both and require that one matches */
        const float *last = hid + (size_t)c->n_layers * T * D;
        snprintf(what, sizeof what, "hidden_states[%d] vs pre-norm", c->n_layers);
        double pre = rel_err(what, f.x_final, last, (size_t)T * D);
        snprintf(what, sizeof what, "hidden_states[%d] vs post-norm", c->n_layers);
        double post = rel_err(what, f.xn_final, last, (size_t)T * D);
        printf("    last hidden state is %s model.norm\n", post <= pre ? "after" : "before");
        assert_true(pre <= TOL || post <= TOL);
    }
    tb_forward_free(&f);
    free(ids);
    free(logits);
    free(hid);
    st_close(&g);
    tb_model_close(&m);
}

static void test_golden_llama(void **state)
{
    (void)state;
    const char *data = env_or("TB_TEST_DATA", "tests/data");
    char dir[512], golden[600];
    snprintf(dir, sizeof dir, "%s/tiny-llama-6m", data);
    snprintf(golden, sizeof golden, "%s/forward-fp32.safetensors", dir);
    model_case mc = {"tiny-llama-6m", dir, golden};
    check_model(&mc);
}

static void test_golden_mistral(void **state)
{
    (void)state;
    const char *shared = env_or("TB_SHARED", "../shared");
    char dir[512], golden[600];
    snprintf(dir, sizeof dir, "%s/models/tiny-mistral-10m", shared);
    snprintf(golden, sizeof golden, "%s/golden/tiny-mistral-10m/forward-fp32.safetensors", shared);
    model_case mc = {"tiny-mistral-10m", dir, golden};
    check_model(&mc);
}

/* ---- KV cache: greedy decoding step by step equals a full forward ---- */

static void check_decode(const char *model_dir)
{
    enum { PROMPT = 8, GEN = 24, N = PROMPT + GEN };
    tb_model m;
    if (tb_model_open(&m, model_dir)) fail_msg("%s", tb_errmsg());
    const int V = m.cfg.vocab_size;
    tb_forward dec, full;
    tb_forward_opts od = {.max_seq = N, .max_tokens = PROMPT, .n_threads = THREADS};
    tb_forward_opts of = {.max_seq = N, .max_tokens = N, .n_threads = THREADS};
    if (tb_forward_init(&dec, &m, &od) || tb_forward_init(&full, &m, &of)) fail_msg("%s", tb_errmsg());

    int32_t toks[N];
    for (int i = 0; i < PROMPT; i++) toks[i] = (int32_t)((i * 131 + 7) % V);
    toks[0] = m.cfg.bos_token_id >= 0 ? m.cfg.bos_token_id : 0;
    float *step_logits = malloc((size_t)GEN * V * sizeof(float));
    assert_non_null(step_logits);

    /* prefill the prompt, then one token per call */
    assert_int_equal(tb_forward_run(&dec, toks, PROMPT, 0), TB_OK);
    const float *last = dec.logits + (size_t)(PROMPT - 1) * V;
    for (int s = 0; s < GEN; s++) {
        memcpy(step_logits + (size_t)s * V, last, (size_t)V * sizeof(float));
        toks[PROMPT + s] = tb_sample(last, V, 0.0, 1.0, NULL, NULL);
        if (PROMPT + s + 1 == N) break;
        assert_int_equal(tb_forward_run(&dec, toks + PROMPT + s, 1, PROMPT + s), TB_OK);
        last = dec.logits;
    }

    assert_int_equal(tb_forward_run(&full, toks, N, 0), TB_OK);
    double worst = 0;
    for (int s = 0; s < GEN; s++) {
        const float *row = full.logits + (size_t)(PROMPT - 1 + s) * V;
        int am = tb_sample(row, V, 0.0, 1.0, NULL, NULL);
        if (am != toks[PROMPT + s]) fail_msg("step %d: decode chose %d, full forward's argmax is %d", s, toks[PROMPT + s], am);
        double dmax = 0, bmax = 0;
        for (int i = 0; i < V; i++) {
            dmax = fmax(dmax, fabs((double)step_logits[(size_t)s * V + i] - row[i]));
            bmax = fmax(bmax, fabs(row[i]));
        }
        worst = fmax(worst, dmax / bmax);
    }
    printf("    %s: %d greedy steps, KV-cache vs full forward logits: max rel %.3e\n", model_dir, GEN, worst);
    assert_true(worst <= TOL);
    free(step_logits);
    tb_forward_free(&dec);
    tb_forward_free(&full);
    tb_model_close(&m);
}

static void test_decode_llama(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tiny-llama-6m", env_or("TB_TEST_DATA", "tests/data"));
    check_decode(dir);
}

static void test_decode_mistral(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/tiny-mistral-10m", env_or("TB_SHARED", "../shared"));
    if (!tb_is_dir(dir)) {
        printf("    skipped: %s not found\n", dir);
        skip();
    }
    check_decode(dir);
}

/* ---- kernels against hand-computed values ---- */

static void test_rmsnorm(void **state)
{
    (void)state;
    /* rms([1,2,3,4]) = sqrt(7.5) = 2.7386128 */
    const float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 2, 0.5f};
    const float want[4] = {0.36514837f, 0.73029674f, 2.19089023f, 0.73029674f};
    float y[4], r;
    tb_rmsnorm(y, &r, x, w, 1, 4, 0.0f);
    for (int i = 0; i < 4; i++) assert_float_equal(y[i], want[i], 1e-6);
    assert_float_equal(r, 0.36514837f, 1e-7);
    /* eps keeps a zero row finite */
    const float z[4] = {0};
    tb_rmsnorm(y, NULL, z, w, 1, 4, 1e-6f);
    for (int i = 0; i < 4; i++) assert_true(y[i] == 0.0f);
}

static void test_rope(void **state)
{
    (void)state;
    /* head_dim 4, theta 10000: inv_freq = [1, 1/100]; pairs (0,2) and (1,3) */
    float inv[2];
    tb_rope_inv_freq(inv, 4, 10000.0);
    assert_true(inv[0] == 1.0f);
    assert_float_equal(inv[1], 0.01f, 1e-9);
    float cs[2 * 2], sn[2 * 2];
    tb_rope_table(cs, sn, 2, 4, inv);
    /* position 1: (1,3) turn by 1 rad, (2,4) by 0.01 rad */
    float x[4] = {1, 2, 3, 4};
    tb_rope_apply(x, 1, 1, 4, 1, cs, sn);
    const float want[4] = {-1.98411065f, 1.95990067f, 2.46237790f, 4.01979967f};
    for (int i = 0; i < 4; i++) assert_float_equal(x[i], want[i], 1e-6);
    /* position 0 is the identity */
    float y[4] = {1, 2, 3, 4};
    tb_rope_apply(y, 1, 1, 4, 0, cs, sn);
    for (int i = 0; i < 4; i++) assert_true(y[i] == (float)(i + 1));
    /* the transformers f32 recipe: 1 / 500000^(2*16/64) in f32 */
    float inv64[32];
    tb_rope_inv_freq(inv64, 64, 500000.0);
    assert_true(inv64[16] == 1.0f / powf(500000.0f, 0.5f));
}

static void test_softmax(void **state)
{
    (void)state;
    float a[3] = {1, 2, 3}, b[3] = {1000, 1001, 1002};
    const float want[3] = {0.09003057f, 0.24472847f, 0.66524096f};
    tb_softmax(a, 3);
    tb_softmax(b, 3); /* without subtracting the max, exp(1000) = inf */
    for (int i = 0; i < 3; i++) {
        assert_float_equal(a[i], want[i], 1e-7);
        assert_float_equal(b[i], want[i], 1e-7);
    }
    const float c[2] = {1000, 1000};
    assert_float_equal(tb_logsumexp(c, 2), 1000.0 + log(2.0), 1e-9);
    /* silu(0) * u = 0, silu(large) ~ identity */
    float g[2] = {0, 20}, u[2] = {5, 2}, o[2];
    tb_swiglu(o, g, u, 2, 1);
    assert_true(o[0] == 0.0f);
    assert_float_equal(o[1], 40.0f, 1e-5);
}

static void test_attention_small(void **state)
{
    (void)state;
    /* one head, head_dim 2, 2 tokens: query 0 sees only key 0, so its output
     * is v0; query 1 mixes v0 and v1 with softmax(q1.k / sqrt 2) */
    const float q[4] = {1, 0, 0, 1}, k[4] = {1, 0, 0, 2}, v[4] = {10, 20, 30, 40};
    float out[4];
    tb_scratch s;
    assert_int_equal(tb_scratch_init(&s, 1, tb_attention_scratch(2)), TB_OK);
    tb_attn_shape a = {1, 1, 2, 0};
    tb_attention(&a, q, k, v, 2, 0, out, NULL, &s);
    assert_float_equal(out[0], 10, 1e-6);
    assert_float_equal(out[1], 20, 1e-6);
    double w1 = 1.0 / (1.0 + exp(-2.0 / sqrt(2.0))); /* weight of key 1 (score 2/sqrt2 vs 0) */
    assert_float_equal(out[2], 10 + 20 * w1, 1e-5);
    assert_float_equal(out[3], 20 + 20 * w1, 1e-5);
    /* sliding window 1: each query sees only itself */
    a.sliding_window = 1;
    tb_attention(&a, q, k, v, 2, 0, out, NULL, &s);
    assert_float_equal(out[2], 30, 1e-6);
    assert_float_equal(out[3], 40, 1e-6);
    tb_scratch_free(&s);
}

/* tb_linear_forward against a plain double loop, for each dense dtype, with a
 * bias, and with a row count that does not divide into the threads' tiles */
static void test_linear_dtypes(void **state)
{
    (void)state;
    enum { R = 37, C = 19, N = 5 };
    float w[R * C], x[N * C], bias[R], y[N * R];
    uint16_t w16[R * C];
    for (int i = 0; i < R * C; i++) w[i] = (float)((i * 37 % 101) - 50) / 64.0f; /* exact in bf16 and f16 */
    for (int i = 0; i < N * C; i++) x[i] = (float)((i * 13 % 29) - 14) / 8.0f;
    for (int i = 0; i < R; i++) bias[i] = (float)i / 4.0f;
    const tb_dtype dts[3] = {TB_F32, TB_BF16, TB_F16};
    for (int d = 0; d < 3; d++) {
        const void *data = w;
        if (dts[d] != TB_F32) {
            for (int i = 0; i < R * C; i++) w16[i] = dts[d] == TB_BF16 ? tb_f32_to_bf16(w[i]) : tb_f32_to_f16(w[i]);
            data = w16;
        }
        tb_linear L = {.name = "w", .rows = R, .cols = C, .dtype = dts[d], .data = data, .bias = bias};
        tb_scratch s;
        assert_int_equal(tb_scratch_init(&s, 3, tb_linear_scratch(&L)), TB_OK);
        tb_linear_forward(&L, x, N, y, &s);
        for (int n = 0; n < N; n++)
            for (int r = 0; r < R; r++) {
                double ref = bias[r];
                for (int c = 0; c < C; c++) ref += (double)x[n * C + c] * w[r * C + c];
                assert_float_equal(y[n * R + r], ref, 1e-4);
            }
        float row[C];
        tb_linear_row(&L, 5, row);
        for (int c = 0; c < C; c++) assert_true(row[c] == w[5 * C + c]);
        tb_scratch_free(&s);
    }
}

static void test_sample(void **state)
{
    (void)state;
    const float logits[4] = {1.0f, 3.0f, 3.0f, 2.0f};
    tb_prob work[4];
    tb_rng rng;
    tb_rng_seed(&rng, 1);
    assert_int_equal(tb_sample(logits, 4, 0.0, 1.0, &rng, work), 1); /* first of the tied maxima */
    /* a nucleus this small holds one token: the most likely (lowest id on ties) */
    for (int i = 0; i < 20; i++) assert_int_equal(tb_sample(logits, 4, 1.0, 1e-6, &rng, work), 1);
    /* the same seed draws the same sequence, another seed another one */
    int a[64], b[64], c[64], differ = 0;
    tb_rng_seed(&rng, 7);
    for (int i = 0; i < 64; i++) a[i] = tb_sample(logits, 4, 100.0, 1.0, &rng, work);
    tb_rng_seed(&rng, 7);
    for (int i = 0; i < 64; i++) b[i] = tb_sample(logits, 4, 100.0, 1.0, &rng, work);
    tb_rng_seed(&rng, 8);
    for (int i = 0; i < 64; i++) differ += (c[i] = tb_sample(logits, 4, 100.0, 1.0, &rng, work)) != a[i];
    assert_memory_equal(a, b, sizeof a);
    assert_true(differ > 16);
    for (int i = 0; i < 1000; i++) {
        double u = tb_rng_uniform(&rng);
        assert_true(u >= 0 && u < 1);
    }
}

/* Draw n tokens and return their frequencies. */
static void frequencies(const float *logits, int v, const tb_sampling *s, int n, double *freq)
{
    tb_prob work[8];
    tb_rng rng;
    tb_rng_seed(&rng, 3);
    for (int i = 0; i < v; i++) freq[i] = 0;
    for (int i = 0; i < n; i++) freq[tb_sample_with(logits, v, s, NULL, 0, &rng, work)] += 1.0 / n;
}

/* The samplers against their definitions: softmax(l / T) probabilities, top-k,
 * min-p, the repetition penalty; frequencies of 40000 draws within 0.01
 * (binomial standard deviation <= 0.0025). */
static void test_samplers(void **state)
{
    (void)state;
    const float logits[4] = {1.0f, 3.0f, 3.0f, 2.0f};
    double f[4], e[4], z = 0;
    for (int i = 0; i < 4; i++) z += e[i] = exp(logits[i] / 2.0);
    tb_sampling s = {.temp = 2.0, .top_p = 1.0, .repeat_penalty = 1.0};
    frequencies(logits, 4, &s, 40000, f);
    for (int i = 0; i < 4; i++) assert_true(fabs(f[i] - e[i] / z) < 0.01);
    /* top-k 2: the two most likely, renormalised (here equal) */
    s.top_k = 2;
    frequencies(logits, 4, &s, 40000, f);
    assert_true(f[0] == 0 && f[3] == 0 && fabs(f[1] - 0.5) < 0.01);
    /* min-p: p / p_max at T = 1 is e^-2 = 0.135, 1, 1, e^-1 = 0.368 */
    s = (tb_sampling){.temp = 1.0, .top_p = 1.0, .min_p = 0.2, .repeat_penalty = 1.0};
    frequencies(logits, 4, &s, 40000, f);
    z = 2 * exp(3.0) + exp(2.0);
    assert_true(f[0] == 0 && fabs(f[3] - exp(2.0) / z) < 0.01 && fabs(f[1] - exp(3.0) / z) < 0.01);
    s.min_p = 0.5;
    frequencies(logits, 4, &s, 40000, f);
    assert_true(f[0] == 0 && f[3] == 0);
    /* top-p after top-k: the nucleus of {1, 2} at P = 0.4 is token 1 alone */
    s = (tb_sampling){.temp = 1.0, .top_k = 2, .top_p = 0.4, .repeat_penalty = 1.0};
    frequencies(logits, 4, &s, 1000, f);
    assert_true(f[0] == 0 && f[2] == 0 && f[3] == 0 && fabs(f[1] - 1.0) < 1e-9);

    /* the repetition penalty divides positive logits, multiplies negative ones, once per token */
    tb_prob work[4];
    s = (tb_sampling){.temp = 0, .top_p = 1.0, .repeat_penalty = 2.0};
    const int32_t recent1[] = {1, 1, 1};
    assert_int_equal(tb_sample_with(logits, 4, &s, recent1, 3, NULL, work), 2); /* 3 -> 1.5 */
    const int32_t recent12[] = {1, 2};
    assert_int_equal(tb_sample_with(logits, 4, &s, recent12, 2, NULL, work), 3); /* 2 beats 1.5, 1.5 */
    const float neg[2] = {-1.0f, -1.5f};
    const int32_t recent0[] = {0};
    assert_int_equal(tb_sample_with(neg, 2, &s, recent0, 1, NULL, work), 1); /* -1 -> -2 */
    s.repeat_penalty = 1.0;
    assert_int_equal(tb_sample_with(logits, 4, &s, recent12, 2, NULL, work), 1);
}

static void test_model_errors(void **state)
{
    (void)state;
    tb_model m;
    assert_int_equal(tb_model_open(&m, "/nonexistent/model"), TB_EIO);
    assert_non_null(strstr(tb_errmsg(), "/nonexistent/model"));
    char path[512];
    snprintf(path, sizeof path, "%s/tiny-llama-6m/config.json", env_or("TB_TEST_DATA", "tests/data"));
    assert_int_equal(tb_model_open(&m, path), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "not a model directory"));
}

/* qwen2-style q/k/v biases: a copy of tiny-llama-6m declared qwen2 with
 * attention_bias. Zero biases must give tiny-llama's logits exactly, a
 * nonzero one must change them, and a missing one is an error naming it. */
static int write_biased_model(const char *dir, const char *src, float qbias, int drop_v_bias)
{
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", src);
    char *cfg;
    if (tb_read_text(path, &cfg, NULL)) return -1;
    char *mt = strstr(cfg, "\"model_type\": \"llama\"");
    char *ab = strstr(cfg, "\"attention_bias\": false");
    if (!mt || !ab || ab > mt) return -1; /* keys in the order transformers writes them */
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    if (!fp) return -1;
    /* the two edits, each keeping the rest of the text as it is */
    fprintf(fp, "%.*s\"attention_bias\": true%.*s\"model_type\": \"qwen2\"%s", (int)(ab - cfg), cfg,
            (int)(mt - ab - strlen("\"attention_bias\": false")), ab + strlen("\"attention_bias\": false"),
            mt + strlen("\"model_type\": \"llama\""));
    fclose(fp);
    free(cfg);

    snprintf(path, sizeof path, "%s/model.safetensors", src);
    st_file f;
    if (st_open(&f, path)) return -1;
    int n_layers = 6, n = 0;
    st_entry *e = calloc((size_t)f.n_tensors + 3 * n_layers, sizeof *e);
    static float bias[6][3][256];
    static char names[6][3][80];
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        e[n] = (st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(e[n].shape, t->shape, sizeof t->shape);
        n++;
    }
    static const char *const proj[3] = {"q_proj", "k_proj", "v_proj"};
    for (int l = 0; l < n_layers; l++)
        for (int p = 0; p < 3; p++) {
            if (p == 2 && drop_v_bias) continue;
            for (int i = 0; i < 256; i++) bias[l][p][i] = p == 0 ? qbias : 0.0f;
            snprintf(names[l][p], sizeof names[l][p], "model.layers.%d.self_attn.%s.bias", l, proj[p]);
            e[n++] = (st_entry){.name = names[l][p], .dtype = TB_F32, .ndim = 1, .shape = {256}, .data = bias[l][p]};
        }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_save(path, e, n, NULL, 0);
    free(e);
    st_close(&f);
    return rc;
}

static void logits_of(const char *dir, const int32_t *ids, int T, float *out)
{
    tb_model m;
    if (tb_model_open(&m, dir)) fail_msg("%s", tb_errmsg());
    tb_forward f;
    tb_forward_opts o = {.max_seq = T, .max_tokens = T, .n_threads = THREADS};
    if (tb_forward_init(&f, &m, &o)) fail_msg("%s", tb_errmsg());
    assert_int_equal(tb_forward_run(&f, ids, T, 0), TB_OK);
    memcpy(out, f.logits, (size_t)T * m.cfg.vocab_size * sizeof(float));
    tb_forward_free(&f);
    tb_model_close(&m);
}

static void test_qkv_bias(void **state)
{
    (void)state;
    enum { T = 16, V = 4096 };
    char src[512], dir[] = "/tmp/tb_test_bias_XXXXXX", path[600];
    snprintf(src, sizeof src, "%s/tiny-llama-6m", env_or("TB_TEST_DATA", "tests/data"));
    assert_non_null(mkdtemp(dir));
    int32_t ids[T];
    for (int i = 0; i < T; i++) ids[i] = (int32_t)((i * 977 + 3) % V);
    float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
    assert_non_null(a);
    assert_non_null(b);
    logits_of(src, ids, T, a);

    assert_int_equal(write_biased_model(dir, src, 0.0f, 0), 0);
    logits_of(dir, ids, T, b);
    assert_memory_equal(a, b, sizeof(float) * T * V); /* + 0.0f changes no bit */

    assert_int_equal(write_biased_model(dir, src, 0.5f, 0), 0);
    logits_of(dir, ids, T, b);
    assert_true(rel_err("logits, q bias 0.5 vs none", b, a, (size_t)T * V) > 1e-3);

    assert_int_equal(write_biased_model(dir, src, 0.0f, 1), 0);
    tb_model m;
    assert_int_equal(tb_model_open(&m, dir), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "missing tensor 'model.layers.0.self_attn.v_proj.bias'"));

    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),       cmocka_unit_test(test_rope),
        cmocka_unit_test(test_softmax),       cmocka_unit_test(test_attention_small),
        cmocka_unit_test(test_linear_dtypes), cmocka_unit_test(test_sample), cmocka_unit_test(test_samplers),
        cmocka_unit_test(test_model_errors),  cmocka_unit_test(test_golden_llama),
        cmocka_unit_test(test_golden_mistral), cmocka_unit_test(test_decode_llama),
        cmocka_unit_test(test_decode_mistral), cmocka_unit_test(test_qkv_bias),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
