/* Sampled windows (tb_generate.h) on tiny-llama-6m ($TB_TEST_DATA, default
 * tests/data): every window starts with its prompt's prefix; the same seed
 * gives the same windows at any thread count and another seed others; at a
 * temperature near 0 sampling equals greedy decoding computed independently
 * (the whole sequence re-run without the KV cache at every step, argmax of
 * the last row); at temperature 1 the first sampled token follows the
 * model's softmax (frequencies over many windows against the probabilities
 * from a separate forward). And tb_tokens_append's known result. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_generate.h"

static const char *data_dir(void)
{
    const char *d = getenv("TB_TEST_DATA");
    return d && *d ? d : "tests/data";
}

static void open_model(tb_model *m)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tiny-llama-6m", data_dir());
    if (tb_model_open(m, dir)) fail_msg("%s", tb_errmsg());
}

/* three prompt windows of 12 ids each (BOS = 0 first), arbitrary text ids */
static int32_t prompt_ids[3 * 12];
static tb_tokens prompts(void)
{
    for (int w = 0; w < 3; w++)
        for (int t = 0; t < 12; t++) prompt_ids[w * 12 + t] = t == 0 ? 0 : 17 + 97 * w + 31 * t;
    return (tb_tokens){.ids = prompt_ids, .windows = 3, .seq_len = 12};
}

static void test_prefix_and_determinism(void **state)
{
    (void)state;
    tb_model m;
    open_model(&m);
    tb_tokens p = prompts();
    tb_gen_opts o = {.windows = 7, .seq_len = 40, .prefix = 5,
                     .sampling = {.temp = 1.0, .top_p = 1.0, .repeat_penalty = 1.0}, .seed = 11, .n_threads = 1};
    tb_tokens a, b, c;
    if (tb_generate_windows(&m, &p, &o, NULL, NULL, &a)) fail_msg("%s", tb_errmsg());
    assert_int_equal(a.windows, 7);
    assert_int_equal(a.seq_len, 40);
    for (int i = 0; i < 7; i++) /* window i continues prompt i mod 3 */
        assert_memory_equal(a.ids + i * 40, prompt_ids + (i % 3) * 12, 5 * sizeof(int32_t));
    for (int64_t k = 0; k < 7 * 40; k++) assert_true(a.ids[k] >= 0 && a.ids[k] < m.cfg.vocab_size);
    /* windows 0 and 3 share a prompt; their own generators make them differ */
    assert_memory_not_equal(a.ids + 5, a.ids + 3 * 40 + 5, 35 * sizeof(int32_t));
    o.n_threads = 3; /* other split over threads: the same bytes */
    if (tb_generate_windows(&m, &p, &o, NULL, NULL, &b)) fail_msg("%s", tb_errmsg());
    assert_memory_equal(a.ids, b.ids, 7 * 40 * sizeof(int32_t));
    o.seed = 12; /* another seed: other continuations */
    if (tb_generate_windows(&m, &p, &o, NULL, NULL, &c)) fail_msg("%s", tb_errmsg());
    assert_memory_not_equal(a.ids + 5, c.ids + 5, 35 * sizeof(int32_t));
    tb_tokens_free(&a);
    tb_tokens_free(&b);
    tb_tokens_free(&c);
    /* a prefix longer than the prompts, or no room to sample: refused */
    o.prefix = 13;
    assert_int_equal(tb_generate_windows(&m, &p, &o, NULL, NULL, &a), TB_EUSAGE);
    o.prefix = 5;
    o.seq_len = 5;
    assert_int_equal(tb_generate_windows(&m, &p, &o, NULL, NULL, &a), TB_EUSAGE);
    tb_model_close(&m);
}

/* greedy continuation without the KV cache: the whole sequence each step */
static void greedy_reference(const tb_model *m, const int32_t *prefix, int P, int T, int32_t *out)
{
    tb_forward f;
    tb_forward_opts fo = {.max_seq = T, .max_tokens = T, .n_threads = 1};
    if (tb_forward_init(&f, m, &fo)) fail_msg("%s", tb_errmsg());
    float *row = malloc((size_t)m->cfg.vocab_size * sizeof *row);
    memcpy(out, prefix, (size_t)P * sizeof *out);
    for (int n = P; n < T; n++) {
        if (tb_forward_run(&f, out, n, 0) || tb_forward_get_logits(&f, n - 1, row)) fail_msg("%s", tb_errmsg());
        int best = 0;
        for (int v = 1; v < m->cfg.vocab_size; v++)
            if (row[v] > row[best]) best = v;
        out[n] = best;
    }
    free(row);
    tb_forward_free(&f);
}

static void test_cold_equals_greedy(void **state)
{
    (void)state;
    tb_model m;
    open_model(&m);
    tb_tokens p = prompts();
    const int P = 6, T = 30;
    tb_gen_opts o = {.windows = 3, .seq_len = T, .prefix = P,
                     .sampling = {.temp = 1e-3, .top_p = 1.0, .repeat_penalty = 1.0}, .seed = 5, .n_threads = 2};
    tb_tokens cold, greedy;
    if (tb_generate_windows(&m, &p, &o, NULL, NULL, &cold)) fail_msg("%s", tb_errmsg());
    o.sampling.temp = 0;
    if (tb_generate_windows(&m, &p, &o, NULL, NULL, &greedy)) fail_msg("%s", tb_errmsg());
    int32_t want[30];
    for (int w = 0; w < 3; w++) {
        greedy_reference(&m, prompt_ids + w * 12, P, T, want);
        assert_memory_equal(greedy.ids + w * T, want, sizeof want);
        assert_memory_equal(cold.ids + w * T, want, sizeof want);
    }
    tb_tokens_free(&cold);
    tb_tokens_free(&greedy);
    tb_model_close(&m);
}

/* At temperature 1 the token after the prefix is a draw from softmax(logits):
 * over N windows with one prompt, each of the 5 likeliest tokens' frequency
 * is within 5 standard errors of its probability (a failure by chance: < 1e-5). */
static void test_first_token_distribution(void **state)
{
    (void)state;
    tb_model m;
    open_model(&m);
    const int P = 4, N = 3000, V = m.cfg.vocab_size;
    tb_tokens p = prompts();
    p.windows = 1;
    tb_gen_opts o = {.windows = N, .seq_len = P + 1, .prefix = P,
                     .sampling = {.temp = 1.0, .top_p = 1.0, .repeat_penalty = 1.0}, .seed = 3, .n_threads = 2};
    tb_tokens g;
    if (tb_generate_windows(&m, &p, &o, NULL, NULL, &g)) fail_msg("%s", tb_errmsg());
    tb_forward f;
    tb_forward_opts fo = {.max_seq = P, .max_tokens = P, .n_threads = 1};
    if (tb_forward_init(&f, &m, &fo)) fail_msg("%s", tb_errmsg());
    float *row = malloc((size_t)V * sizeof *row);
    double *prob = malloc((size_t)V * sizeof *prob);
    int *count = calloc((size_t)V, sizeof *count);
    if (tb_forward_run(&f, prompt_ids, P, 0) || tb_forward_get_logits(&f, P - 1, row)) fail_msg("%s", tb_errmsg());
    double mx = row[0], sum = 0;
    for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
    for (int v = 0; v < V; v++) sum += prob[v] = exp(row[v] - mx);
    for (int v = 0; v < V; v++) prob[v] /= sum;
    for (int i = 0; i < N; i++) count[g.ids[i * (P + 1) + P]]++;
    for (int k = 0; k < 5; k++) {
        int best = -1;
        for (int v = 0; v < V; v++)
            if (prob[v] >= 0 && (best < 0 || prob[v] > prob[best])) best = v;
        double q = (double)count[best] / N, se = sqrt(prob[best] * (1 - prob[best]) / N);
        print_message("token %d: p %.4f, frequency %.4f (%d of %d)\n", best, prob[best], q, count[best], N);
        assert_true(fabs(q - prob[best]) <= 5 * se + 1e-12);
        prob[best] = -1; /* next likeliest */
    }
    free(row);
    free(prob);
    free(count);
    tb_forward_free(&f);
    tb_tokens_free(&g);
    tb_model_close(&m);
}

static void test_tokens_append(void **state)
{
    (void)state;
    tb_tokens a = {.ids = malloc(4 * sizeof(int32_t)), .windows = 2, .seq_len = 2};
    int32_t more_ids[6] = {5, 6, 7, 8, 9, 10}, odd_ids[3] = {1, 2, 3};
    for (int i = 0; i < 4; i++) a.ids[i] = i + 1;
    tb_tokens more = {.ids = more_ids, .windows = 3, .seq_len = 2}, odd = {.ids = odd_ids, .windows = 1, .seq_len = 3};
    assert_int_equal(tb_tokens_append(&a, &more, "more"), TB_OK);
    int32_t want[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    assert_int_equal(a.windows, 5);
    assert_memory_equal(a.ids, want, sizeof want);
    assert_int_equal(tb_tokens_append(&a, &odd, "odd.st"), TB_EDATA);
    assert_string_equal(tb_errmsg(), "odd.st: windows of 3 tokens, the others have 2");
    assert_int_equal(a.windows, 5);
    tb_tokens_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_and_determinism),
        cmocka_unit_test(test_cold_equals_greedy),
        cmocka_unit_test(test_first_token_distribution),
        cmocka_unit_test(test_tokens_append),
    };
    return cmocka_run_group_tests_name("generate", tests, NULL, NULL);
}
