/* Unit tests of kernels/cpu/tb_score: every formula on a hand-made tensor
 * with values worked out by hand (in the comments), the Hessian inverse with
 * its damping escalation and eigen fallback, the error paths, and Wanda on
 * the real Gram matrix of tiny-llama-6m (the bundled golden). */
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
#include "tb_io.h"
#include "tb_mask.h"
#include "tb_nm.h"
#include "tb_safetensors.h"
#include "tb_score.h"

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static tb_score_opts opts(tb_score_method m)
{
    tb_score_opts o = {m, TB_SCORE_OBS, 1, -1, TB_SCORE_DEFAULT_DAMP, 1};
    return o;
}

#define ASSERT_NEAR(a, b, rel)                                                                          \
    do {                                                                                               \
        double a_ = (a), b_ = (b);                                                                     \
        if (!(fabs(a_ - b_) <= (rel) * fabs(b_) + 1e-30)) fail_msg("%s = %.9g, expected %.9g", #a, a_, b_); \
    } while (0)

static void test_magnitude(void **state)
{
    (void)state;
    const float w[6] = {1, -2, 0.5f, -0.25f, 0, 3};
    float s[6];
    tb_score_opts o = opts(TB_SCORE_MAGNITUDE);
    tb_score_input in = {2, 3, w, NULL, NULL, NULL};
    assert_int_equal(tb_score_tensor(&o, &in, s, NULL), TB_OK);
    const float want[6] = {1, 2, 0.5f, 0.25f, 0, 3};
    for (int i = 0; i < 6; i++) assert_true(s[i] == want[i]);
}

static void test_wanda(void **state)
{
    (void)state;
    /* w = [[1, -2], [3, 4]], G_kk = [4, 9]: |w| * sqrt(G_kk) = [[2, 6], [6, 12]] */
    const float w[4] = {1, -2, 3, 4};
    const double gd[2] = {4, 9};
    float s[4];
    tb_score_opts o = opts(TB_SCORE_WANDA);
    tb_score_input in = {2, 2, w, NULL, gd, NULL};
    assert_int_equal(tb_score_tensor(&o, &in, s, NULL), TB_OK);
    const float want[4] = {2, 6, 6, 12};
    for (int i = 0; i < 4; i++) assert_true(s[i] == want[i]);
    /* stored [in, out]: the input channel is the row: [[1*2, 2*2], [3*3, 4*3]] */
    o.k_dim = 0;
    assert_int_equal(tb_score_tensor(&o, &in, s, NULL), TB_OK);
    const float want0[4] = {2, 4, 9, 12};
    for (int i = 0; i < 4; i++) assert_true(s[i] == want0[i]);
    /* no Gram: refused */
    in.gram_diag = NULL;
    assert_int_equal(tb_score_tensor(&o, &in, s, NULL), TB_EUSAGE);
}

static void test_obd(void **state)
{
    (void)state;
    /* w = [1, 2, 3, 4], F = [1, 2, 3, 4]; lambda 0.5:
     * w^2 (F + 0.5) / 2 = [1 * 1.5, 4 * 2.5, 9 * 3.5, 16 * 4.5] / 2 = [0.75, 5, 15.75, 36] */
    const float w[4] = {1, 2, 3, 4}, f[4] = {1, 2, 3, 4};
    float s[4];
    double lam;
    tb_score_opts o = opts(TB_SCORE_OBD);
    o.lambda = 0.5;
    tb_score_input in = {2, 2, w, f, NULL, NULL};
    assert_int_equal(tb_score_tensor(&o, &in, s, &lam), TB_OK);
    assert_true(lam == 0.5);
    const float want[4] = {0.75f, 5, 15.75f, 36};
    for (int i = 0; i < 4; i++) assert_true(s[i] == want[i]);
    /* default: lambda = 0.01 * mean(F) = 0.025 */
    o.lambda = -1;
    assert_int_equal(tb_score_tensor(&o, &in, s, &lam), TB_OK);
    ASSERT_NEAR(lam, 0.025, 1e-15);
    for (int i = 0; i < 4; i++) ASSERT_NEAR(s[i], (double)w[i] * w[i] * (f[i] + 0.025) / 2, 1e-7);
    /* obs with only the Fisher diagonal (H = diag(F + lambda)) is obd */
    float s2[4];
    o.method = TB_SCORE_OBS;
    assert_int_equal(tb_score_tensor(&o, &in, s2, &lam), TB_OK);
    assert_memory_equal(s, s2, sizeof s);
    in.fisher = NULL;
    assert_int_equal(tb_score_tensor(&o, &in, s2, NULL), TB_EUSAGE);
}

static void test_obs_gram(void **state)
{
    (void)state;
    /* G = [[2, 1], [1, 2]], n = 2: H = 2G/n + lambda I, lambda = 0.01 * mean diag = 0.02.
     * H^-1 = [[2.02, -1], [-1, 2.02]] / (2.02^2 - 1): diag 2.02 / 3.0804 for both.
     * score = w^2 / (2 * 0.655759...) */
    const double g[4] = {2, 1, 1, 2};
    double hd[2];
    tb_hinv_info info;
    assert_int_equal(tb_score_hinv_diag(g, 2, 2.0 / 2, -1, 0.01, hd, &info), TB_OK);
    ASSERT_NEAR(info.lambda, 0.02, 1e-15);
    assert_int_equal(info.escalations, 0);
    assert_int_equal(info.eigen, 0);
    ASSERT_NEAR(hd[0], 2.02 / 3.0804, 1e-12);
    ASSERT_NEAR(hd[1], 2.02 / 3.0804, 1e-12);
    const float w[4] = {1, -2, 0.5f, 3};
    float s[4];
    tb_score_opts o = opts(TB_SCORE_OBS);
    tb_score_input in = {2, 2, w, NULL, NULL, hd};
    assert_int_equal(tb_score_tensor(&o, &in, s, NULL), TB_OK);
    for (int i = 0; i < 4; i++) ASSERT_NEAR(s[i], (double)w[i] * w[i] / (2 * 2.02 / 3.0804), 1e-6);

    /* singular G with no damping: Cholesky fails, lambda goes to the relative
     * default 0.01 (one escalation): H = [[1.01, 1], [1, 1.01]],
     * [H^-1]_kk = 1.01 / (1.01^2 - 1) */
    const double sing[4] = {1, 1, 1, 1};
    assert_int_equal(tb_score_hinv_diag(sing, 2, 1.0, 0.0, 0.01, hd, &info), TB_OK);
    assert_int_equal(info.escalations, 1);
    ASSERT_NEAR(info.lambda, 0.01, 1e-15);
    ASSERT_NEAR(hd[0], 1.01 / (1.01 * 1.01 - 1), 1e-9);

    /* indefinite beyond any damping tried (lambda 1 .. 1e4): the eigen
     * fallback clamps mu = [-1e6, 1] to [0, 1] + 1, so diag H^-1 = [1, 0.5] */
    const double bad[4] = {-1e6, 0, 0, 1};
    assert_int_equal(tb_score_hinv_diag(bad, 2, 1.0, -1, 0.01, hd, &info), TB_OK);
    assert_int_equal(info.eigen, 1);
    assert_int_equal(info.escalations, 4);
    ASSERT_NEAR(hd[0], 1.0, 1e-12);
    ASSERT_NEAR(hd[1], 0.5, 1e-12);

    /* a NaN in G is named, never propagated */
    const double nan_g[4] = {1, 0, NAN, 1};
    tb_err_clear();
    assert_int_equal(tb_score_hinv_diag(nan_g, 2, 1.0, -1, 0.01, hd, &info), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "Gram entry [1, 0] is nan"));
}

static void test_normalized(void **state)
{
    (void)state;
    /* base magnitude, per output row: [[1, -2], [4, 0], [0, 0]] -> [[0.5, 1], [1, 0], [0, 0]] */
    const float w[6] = {1, -2, 4, 0, 0, 0};
    float s[6];
    tb_score_opts o = opts(TB_SCORE_NORMALIZED);
    o.base = TB_SCORE_MAGNITUDE;
    tb_score_input in = {3, 2, w, NULL, NULL, NULL};
    assert_int_equal(tb_score_tensor(&o, &in, s, NULL), TB_OK);
    const float want[6] = {0.5f, 1, 1, 0, 0, 0};
    for (int i = 0; i < 6; i++) assert_true(s[i] == want[i]);
    /* stored [in, out]: the output unit is a column: columns max 4 and 2 */
    o.k_dim = 0;
    assert_int_equal(tb_score_tensor(&o, &in, s, NULL), TB_OK);
    const float want0[6] = {0.25f, 1, 1, 0, 0, 0};
    for (int i = 0; i < 6; i++) assert_true(s[i] == want0[i]);
    /* base obd: every row's maximum is 1 whatever the Fisher scale */
    const float f[6] = {1e-9f, 2e-9f, 3, 4, 5, 6};
    const float w2[6] = {1, 2, 3, 4, 5, 6};
    o.k_dim = 1;
    o.base = TB_SCORE_OBD;
    tb_score_input in2 = {3, 2, w2, f, NULL, NULL};
    assert_int_equal(tb_score_tensor(&o, &in2, s, NULL), TB_OK);
    for (int r = 0; r < 3; r++) assert_true(fmaxf(s[2 * r], s[2 * r + 1]) == 1.0f);
    o.base = TB_SCORE_NORMALIZED;
    assert_int_equal(tb_score_tensor(&o, &in2, s, NULL), TB_EUSAGE);
}

static void test_nonfinite(void **state)
{
    (void)state;
    const float w[4] = {1, 2, NAN, 4};
    float s[4];
    tb_score_opts o = opts(TB_SCORE_MAGNITUDE);
    tb_score_input in = {2, 2, w, NULL, NULL, NULL};
    tb_err_clear();
    assert_int_equal(tb_score_tensor(&o, &in, s, NULL), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "score at [1, 0] is nan"));
    /* overflow to Inf is named too: w^2 F / 2 past f32 */
    const float big[1] = {1e30f}, f[1] = {1e10f};
    tb_score_opts ob = opts(TB_SCORE_OBD);
    tb_score_input in2 = {1, 1, big, f, NULL, NULL};
    assert_int_equal(tb_score_tensor(&ob, &in2, s, NULL), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "score at [0, 0] is inf"));
    assert_int_equal(tb_score_first_nonfinite(w, 4), 2);
}

static void test_method_names(void **state)
{
    (void)state;
    tb_score_method m;
    for (int i = 0; i < TB_SCORE_COUNT; i++) {
        assert_int_equal(tb_score_method_parse(tb_score_method_name((tb_score_method)i), &m), TB_OK);
        assert_int_equal(m, i);
    }
    assert_int_equal(tb_score_method_parse("sparsegpt", &m), TB_EUSAGE);
}

/* Wanda on the real Gram of layer 0's q_proj input differs from magnitude:
 * its per-channel factor sqrt(G_kk) is far from constant, so 2:4 masks
 * chosen from the two scores disagree on many groups. */
static void test_wanda_golden(void **state)
{
    (void)state;
    char model[512], gpath[600];
    snprintf(model, sizeof model, "%s/tiny-llama-6m", env_or("TB_TEST_DATA", "tests/data"));
    /* the bundled copy of transformers' golden (tests/data/GOLDENS.md): a fresh clone runs this */
    snprintf(gpath, sizeof gpath, "%s/fisher-gram-16win.safetensors", model);
    tb_ckpt ck;
    st_file gf;
    assert_int_equal(tb_ckpt_open(&ck, model), TB_OK);
    assert_int_equal(st_open(&gf, gpath), TB_OK);
    const st_tensor *wt = tb_ckpt_find(&ck, "model.layers.0.self_attn.q_proj.weight");
    const st_tensor *gt = st_find(&gf, "gram.model.layers.0.self_attn.q_proj.input");
    assert_non_null(wt);
    assert_non_null(gt);
    int64_t rows = wt->shape[0], cols = wt->shape[1];
    assert_true(gt->shape[0] == cols);
    float *w = st_tensor_f32(wt), *sm = malloc((size_t)(rows * cols) * sizeof(float)), *sw = malloc((size_t)(rows * cols) * sizeof(float));
    double *gd = malloc((size_t)cols * sizeof(double)), *g = malloc((size_t)(cols * cols) * sizeof(double));
    tb_to_f64(gt->dtype, gt->data, 0, (size_t)(cols * cols), g); /* F32 here; tb-fisher writes F64 */
    double dmin = INFINITY, dmax = 0;
    for (int64_t k = 0; k < cols; k++) {
        gd[k] = g[k * cols + k];
        dmin = fmin(dmin, gd[k]);
        dmax = fmax(dmax, gd[k]);
    }
    printf("    Gram diagonal of q_proj's input: min %.4g max %.4g\n", dmin, dmax);
    assert_true(dmax > 4 * dmin);
    tb_score_opts o = opts(TB_SCORE_MAGNITUDE);
    tb_score_input in = {rows, cols, w, NULL, gd, NULL};
    assert_int_equal(tb_score_tensor(&o, &in, sm, NULL), TB_OK);
    o.method = TB_SCORE_WANDA;
    assert_int_equal(tb_score_tensor(&o, &in, sw, NULL), TB_OK);
    for (int64_t k = 0; k < cols; k++) ASSERT_NEAR(sw[k], fabs(w[k]) * sqrt(gd[k]), 1e-6);
    tb_mask mm, mw;
    tb_nm_opts no = {2, 4, 1, TB_NM_TOPN, 2, 0, NULL, NULL};
    assert_int_equal(tb_mask_alloc(&mm, rows, cols), TB_OK);
    assert_int_equal(tb_mask_alloc(&mw, rows, cols), TB_OK);
    assert_int_equal(tb_nm_solve(&no, sm, rows, cols, &mm, NULL), TB_OK);
    assert_int_equal(tb_nm_solve(&no, sw, rows, cols, &mw, NULL), TB_OK);
    int64_t differ = 0, groups = rows * cols / 4;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c += 4) {
            int d = 0;
            for (int t = 0; t < 4; t++) d |= tb_mask_get(&mm, r, c + t) != tb_mask_get(&mw, r, c + t);
            differ += d;
        }
    printf("    2:4 groups where wanda and magnitude disagree: %lld of %lld (%.1f%%)\n", (long long)differ, (long long)groups,
           100.0 * (double)differ / (double)groups);
    assert_true(differ > groups / 20);
    /* obs from the same Gram: finite, positive, no escalation needed */
    double *hd = malloc((size_t)cols * sizeof(double));
    tb_hinv_info info;
    assert_int_equal(tb_score_hinv_diag(g, cols, 2.0 / 8192, -1, 0.01, hd, &info), TB_OK);
    assert_int_equal(info.escalations + info.eigen, 0);
    for (int64_t k = 0; k < cols; k++) assert_true(hd[k] > 0 && isfinite(hd[k]));
    tb_mask_free(&mm);
    tb_mask_free(&mw);
    free(w);
    free(sm);
    free(sw);
    free(gd);
    free(g);
    free(hd);
    st_close(&gf);
    tb_ckpt_close(&ck);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_magnitude),  cmocka_unit_test(test_wanda),      cmocka_unit_test(test_obd),
        cmocka_unit_test(test_obs_gram),   cmocka_unit_test(test_normalized), cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_method_names), cmocka_unit_test(test_wanda_golden),
    };
    return cmocka_run_group_tests_name("score", tests, NULL, NULL);
}
