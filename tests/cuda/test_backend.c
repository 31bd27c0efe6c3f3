/* test_backend.c - parity of the CUDA backend against the CPU backend
 * (make test-cuda). Every op of tb_backend.h runs on both backends on fresh
 * random inputs; outputs are poisoned (NaN) first so an unwritten element
 * fails; results are compared by relative norm error ||gpu - cpu|| / ||cpu||
 * against the tolerance stated per op and precision below. The CPU backend is
 * the reference (f32 kernels, f64 where the header says).
 *
 * Tolerances (measured on an H200, 2026-12-02, in brackets the largest seen).
 * f32: elementwise and row ops 1e-6..1e-5 (rounding order only) [3.5e-8],
 * GEMMs 1e-5 (cuBLAS pedantic f32 vs OpenBLAS sgemm) [4.7e-7], attention 1e-5
 * [3.5e-7] and its gradients 2e-5 [1.4e-6] (online softmax and the flash
 * backward's D = dO.O reorder sums over up to 2048 keys), Gram 1e-9 (both f64
 * sums of exact products) [5.4e-15], f64 reductions 1e-12..1e-10. bf16
 * (weights and GEMM operands bf16, f32 accumulation): GEMMs and Gram 5e-3 (an
 * operand rounding is 2^-9 relative) [2.3e-3]; every other op is f32 in both
 * precisions and keeps its f32 tolerance, except attention without `saved`
 * (inference), which bf16 computes on tensor cores with bf16 operands: 5e-3
 * [2.6e-3]. Its versions (tb_attention_cuda.cu) are each forced by
 * TB_ATTN_FWD at every edge shape (test_attention_versions: rows
 * "... v1"/"... v2"/"... v3"; written 2026-12-03, compiled, NOT yet run on a GPU).
 *
 * Packed N:M weights (2:4, 4:8, 1:4; bf16 or f16 values; with and without a
 * column permutation) are decoded on the device; 2:4 bf16 ones run the sparse
 * tensor-core GEMM at 1-16 tokens in bf16 (test_sp24_linear): the GEMM
 * tolerance of the precision, the device reorder byte-exact against the
 * host's, the upload's bytes exact (written 2026-12-02, compiled; NOT yet
 * run on a GPU, so no largest-seen figures for them). In a CUSPARSELT=1 build,
 * bf16, 2:4 weights at prefill token counts run cuSPARSELt where the per-shape
 * rule sends them, small shapes on a second backend opened with
 * TB_SP24_PREFILL=cusparselt (test_sp24_prefill): the GEMM tolerance, and no
 * dense copy made; where the rule keeps a shape dense, no compressed form.
 *
 * Exit 0 with "skipped" when the build has no CUDA or no GPU is visible.
 * TB_TEST_QUICK=1 keeps the shapes small (for compute-sanitizer runs, with
 * TB_TEST_NO_OOM=1: the deliberate out-of-memory allocation is an API error
 * memcheck counts);
 * TB_TEST_PREC=f32|bf16 runs one precision; TB_TEST_ONLY=sp24 the 2:4
 * weights' tests alone (run_sp24); TB_TEST_TIME=1 times the heavy
 * ops at 7B layer shapes instead of checking, TB_TEST_TIME=prefill the 2:4
 * and dense linears at prefill token counts (time_prefill). The sanitizer runs (H200,
 * 2026-12-02: memcheck no access errors and no leaks, its only reports the
 * deliberate OOM's API errors, hence NO_OOM; racecheck 0 hazards):
 *   TB_TEST_QUICK=1 TB_TEST_NO_OOM=1 compute-sanitizer --tool memcheck --leak-check full build-cuda/tests/cuda/test_backend
 *   TB_TEST_QUICK=1 TB_TEST_PREC=f32 compute-sanitizer --tool racecheck build-cuda/tests/cuda/test_backend
 */
#include "tb_backend.h"
#include "tb_learnmask.h"
#include "tb_dtype.h"
#include "tb_error.h"
#include "tb_gemv_bf16.h" /* TB_GEMV_MAX_TOKENS: which linears the decode GEMV takes */
#include "tb_mask.h"
#include "tb_ops.h"
#include "tb_pack.h"
#ifdef TB_HAVE_CUDA
#include "tb_cuda.h"
#include "tb_sp24.h"
#include "tb_sp24_layout.h"
#include <cuda_runtime.h>
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef TB_HAVE_CUDA
/* ---- results table ---- */

static int n_fail, n_rows;
static const char *prec_name = "f32";

static void row(const char *op, const char *shape, double err, double tol)
{
    int ok = !isnan(err) && err <= tol;
    if (!ok) n_fail++;
    n_rows++;
    printf("%-20s %-5s %-34s %10.3e %8.1e  %s\n", op, prec_name, shape, err, tol, ok ? "ok" : "FAIL");
    fflush(stdout);
}

/* ---- random inputs ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float frand(void) { return (float)((rnd() >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f; }
static float *hrand(size_t n, float scale)
{
    float *x = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) x[i] = scale * frand();
    return x;
}

static double rel_f32(const float *got, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return NAN; /* poison left, or a real NaN */
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double rel_f64(const double *got, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return NAN;
        double d = got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double rel_scalar(double got, double ref)
{
    if (!isfinite(got)) return NAN;
    return fabs(got - ref) / (fabs(ref) > 0 ? fabs(ref) : 1.0);
}

/* ---- the two backends ---- */

static tb_backend C, G; /* CPU reference, CUDA under test */

/* backend buffer holding host data */
static void *put(tb_backend *b, const void *h, size_t bytes)
{
    void *d = b->ops->alloc(b, bytes, "test buffer");
    if (!d) {
        fprintf(stderr, "test-cuda: %s\n", tb_errmsg());
        exit(1);
    }
    b->ops->upload(b, d, h, bytes);
    return d;
}

/* backend buffer of n floats poisoned with NaN */
static float *poison(tb_backend *b, size_t n)
{
    float *h = malloc(n * sizeof(float) + 1);
    if (!h) exit(1);
    memset(h, 0xff, n * sizeof(float) + 1); /* all ones: a NaN */
    float *d = put(b, h, n * sizeof(float));
    free(h);
    return d;
}

static float *get(tb_backend *b, const void *d, size_t n)
{
    float *h = malloc(n * sizeof(float) + 1);
    b->ops->download(b, h, d, n * sizeof(float));
    return h;
}

static void sync_both(void)
{
    if (C.ops->sync(&C) || G.ops->sync(&G)) {
        fprintf(stderr, "test-cuda: %s\n", tb_errmsg());
        exit(1);
    }
}

/* download both, compare, report, free the host copies */
static void cmp(const char *op, const char *shape, const float *dc, const float *dg, size_t n, double tol)
{
    sync_both();
    float *hc = get(&C, dc, n), *hg = get(&G, dg, n);
    row(op, shape, rel_f32(hg, hc, n), tol);
    free(hc);
    free(hg);
}

/* one input on both backends */
typedef struct {
    float *c, *g;
} pair;
static pair both(const float *h, size_t n)
{
    pair p = {put(&C, h, n * 4), put(&G, h, n * 4)};
    return p;
}
static pair both_poison(size_t n)
{
    pair p = {poison(&C, n), poison(&G, n)};
    return p;
}
static void pfree(pair p)
{
    C.ops->free(&C, p.c);
    G.ops->free(&G, p.g);
}

static int quick;
static double tol_gemm(void) { return G.o.precision == TB_PREC_BF16 ? 5e-3 : 1e-5; }

/* ---- ops ---- */

static void test_memory(void)
{
    size_t n = 100003;
    float *h = hrand(n, 1);
    float *d = put(&G, h, n * 4), *e = poison(&G, n);
    G.ops->copy(&G, e, d, n * 4);
    float *back = get(&G, e, n);
    row("upload/copy/download", "100003", rel_f32(back, h, n), 0);
    G.ops->zero(&G, e, n * 4);
    float *z = get(&G, e, n);
    double nz = 0;
    for (size_t i = 0; i < n; i++) nz += z[i] != 0.0f;
    row("zero", "100003", nz, 0);
    G.ops->free(&G, d);
    G.ops->free(&G, e);
    free(h), free(back), free(z);
    /* an impossible allocation: NULL and a message naming it and the bytes */
    if (getenv("TB_TEST_NO_OOM") && atoi(getenv("TB_TEST_NO_OOM"))) return;
    size_t huge = (size_t)1 << 50;
    void *p = G.ops->alloc(&G, huge, "the impossible tensor");
    const char *msg = tb_errmsg();
    int ok = !p && strstr(msg, "the impossible tensor") && strstr(msg, "1125899906842624");
    printf("  alloc 1 PiB -> %s\n", msg);
    row("alloc (out of memory)", "1 PiB", ok ? 0 : 1, 0);
    if (p) G.ops->free(&G, p);
}

/* embed: a bf16 or f32 table; above 16 tokens the CUDA backend copies plain
 * rows as stored and widens them on the device, at most 16 row by row: exact
 * either way. Two calls on one backend, so the second reuses the staging. */
static void test_embed(int vocab, int d, int n, tb_dtype dt)
{
    float *w = hrand((size_t)vocab * d, 1);
    uint16_t *wb = malloc((size_t)vocab * d * 2);
    for (size_t i = 0; i < (size_t)vocab * d; i++) wb[i] = tb_f32_to_bf16(w[i]);
    tb_linear T = {.name = "embed", .rows = vocab, .cols = d, .format = TB_LINEAR_DENSE, .dtype = dt,
                   .data = dt == TB_BF16 ? (void *)wb : (void *)w};
    int32_t *tok = malloc((size_t)n * 4);
    for (int t = 0; t < n; t++) tok[t] = (int32_t)(rnd() % (uint64_t)vocab);
    pair x = both_poison((size_t)n * d);
    C.ops->embed(&C, &T, tok, n, x.c);
    G.ops->embed(&G, &T, tok, n, x.g);
    char s[64];
    snprintf(s, sizeof s, "%s, vocab %d, d %d, n %d", tb_dtype_name(dt), vocab, d, n);
    cmp("embed", s, x.c, x.g, (size_t)n * d, 0);
    for (int t = 0; t < n; t++) tok[t] = (int32_t)(rnd() % (uint64_t)vocab);
    pair x2 = both_poison((size_t)n * d);
    C.ops->embed(&C, &T, tok, n, x2.c);
    G.ops->embed(&G, &T, tok, n, x2.g);
    cmp("embed 2nd", s, x2.c, x2.g, (size_t)n * d, 0);
    pfree(x), pfree(x2);
    free(w), free(wb), free(tok);
}

static void test_rmsnorm(int n, int d)
{
    float *x = hrand((size_t)n * d, 2), *w = hrand(d, 1), *dy = hrand((size_t)n * d, 1), *dx0 = hrand((size_t)n * d, 1);
    pair X = both(x, (size_t)n * d), W = both(w, d), Y = both_poison((size_t)n * d), R = both_poison(n);
    char s[64];
    snprintf(s, sizeof s, "n %d, d %d", n, d);
    C.ops->rmsnorm(&C, Y.c, R.c, X.c, W.c, n, d, 1e-5f);
    G.ops->rmsnorm(&G, Y.g, R.g, X.g, W.g, n, d, 1e-5f);
    cmp("rmsnorm", s, Y.c, Y.g, (size_t)n * d, 1e-5);
    cmp("rmsnorm inv_rms", s, R.c, R.g, n, 1e-5);
    /* in place (y == x), no inv_rms */
    pair X2 = both(x, (size_t)n * d);
    C.ops->rmsnorm(&C, X2.c, NULL, X2.c, W.c, n, d, 1e-6f);
    G.ops->rmsnorm(&G, X2.g, NULL, X2.g, W.g, n, d, 1e-6f);
    cmp("rmsnorm in place", s, X2.c, X2.g, (size_t)n * d, 1e-5);
    /* backward, overwrite and accumulate; inv_rms from the CPU so both see the same input */
    float *r = get(&C, R.c, n);
    pair RR = both(r, n), DY = both(dy, (size_t)n * d), DX = both_poison((size_t)n * d), DXA = both(dx0, (size_t)n * d);
    C.ops->rmsnorm_backward(&C, DX.c, DY.c, X.c, RR.c, W.c, n, d, 0);
    G.ops->rmsnorm_backward(&G, DX.g, DY.g, X.g, RR.g, W.g, n, d, 0);
    cmp("rmsnorm_backward", s, DX.c, DX.g, (size_t)n * d, 1e-5);
    C.ops->rmsnorm_backward(&C, DXA.c, DY.c, X.c, RR.c, W.c, n, d, 1);
    G.ops->rmsnorm_backward(&G, DXA.g, DY.g, X.g, RR.g, W.g, n, d, 1);
    cmp("rmsnorm_backward +=", s, DXA.c, DXA.g, (size_t)n * d, 1e-5);
    pfree(X), pfree(W), pfree(Y), pfree(R), pfree(X2), pfree(RR), pfree(DY), pfree(DX), pfree(DXA);
    free(x), free(w), free(dy), free(dx0), free(r);
}

static void test_rope(int n, int heads, int hd, int pos0)
{
    int half = hd / 2, npos = pos0 + n;
    float *inv = malloc((size_t)half * 4), *ct = malloc((size_t)npos * half * 4), *st = malloc((size_t)npos * half * 4);
    tb_rope_inv_freq(inv, hd, 10000.0);
    tb_rope_table(ct, st, npos, hd, inv);
    float *x = hrand((size_t)n * heads * hd, 1);
    pair X = both(x, (size_t)n * heads * hd), CT = both(ct, (size_t)npos * half), ST = both(st, (size_t)npos * half);
    C.ops->rope(&C, X.c, n, heads, hd, pos0, CT.c, ST.c);
    G.ops->rope(&G, X.g, n, heads, hd, pos0, CT.g, ST.g);
    char s[64];
    snprintf(s, sizeof s, "n %d, %d heads x %d, pos0 %d", n, heads, hd, pos0);
    cmp("rope", s, X.c, X.g, (size_t)n * heads * hd, 1e-6);
    pfree(X), pfree(CT), pfree(ST);
    free(inv), free(ct), free(st), free(x);
}

/* " v1", " v2", " v3" while TB_ATTN_FWD forces a version of the bf16 inference
 * attention (test_attention_versions); "" for the backend's own choice */
static const char *attn_ver = "";

static void test_attention(int H, int KVH, int hd, int n, int pos0, int window, int backward)
{
    tb_attn_shape a = {H, KVH, hd, window};
    int kv = pos0 + n;
    size_t nq = (size_t)n * H * hd, nk = (size_t)kv * KVH * hd;
    float *q = hrand(nq, 1), *k = hrand(nk, 1), *v = hrand(nk, 1), *dout = hrand(nq, 1);
    pair Q = both(q, nq), K = both(k, nk), V = both(v, nk), O = both_poison(nq);
    size_t sc = C.ops->attention_saved(&C, &a, n, kv), sg = G.ops->attention_saved(&G, &a, n, kv);
    float *Sc = backward ? poison(&C, sc) : NULL, *Sg = backward ? poison(&G, sg) : NULL;
    C.ops->attention(&C, &a, Q.c, K.c, V.c, n, pos0, O.c, Sc);
    G.ops->attention(&G, &a, Q.g, K.g, V.g, n, pos0, O.g, Sg);
    char s[80];
    snprintf(s, sizeof s, "%d/%d heads x %d, n %d, pos0 %d, win %d", H, KVH, hd, n, pos0, window);
    /* without saved (inference) the bf16 precision takes the tensor-core kernel: bf16 operands */
    if (backward) cmp("attention", s, O.c, O.g, nq, 1e-5);
    else {
        char op[32];
        snprintf(op, sizeof op, "attention no-save%s", attn_ver);
        cmp(op, s, O.c, O.g, nq, G.o.precision == TB_PREC_BF16 ? 5e-3 : 1e-5);
    }
    if (backward) {
        pair DO = both(dout, nq), DQ = both_poison(nq), DK = both_poison(nk), DV = both_poison(nk);
        C.ops->attention_backward(&C, &a, Q.c, K.c, V.c, O.c, Sc, DO.c, n, DQ.c, DK.c, DV.c);
        G.ops->attention_backward(&G, &a, Q.g, K.g, V.g, O.g, Sg, DO.g, n, DQ.g, DK.g, DV.g);
        cmp("attention_bwd d_q", s, DQ.c, DQ.g, nq, 2e-5);
        cmp("attention_bwd d_k", s, DK.c, DK.g, nk, 2e-5);
        cmp("attention_bwd d_v", s, DV.c, DV.g, nk, 2e-5);
        pfree(DO), pfree(DQ), pfree(DK), pfree(DV);
        C.ops->free(&C, Sc);
        G.ops->free(&G, Sg);
    }
    pfree(Q), pfree(K), pfree(V), pfree(O);
    free(q), free(k), free(v), free(dout);
}

/* GPU result a against GPU result b: tol 0, how many values differ (NaN
 * never equal; for one kernel against itself); else their relative error
 * (two kernels doing the same arithmetic, where the compiler may contract
 * a * c - b * s into an fma in one and not the other) */
static void same_gpu(const char *op, const char *shape, const float *a, const float *b, size_t n, double tol)
{
    sync_both();
    float *ha = get(&G, a, n), *hb = get(&G, b, n);
    double differ = 0;
    if (tol > 0) differ = rel_f32(ha, hb, n);
    else
        for (size_t i = 0; i < n; i++) differ += !(ha[i] == hb[i]);
    row(op, shape, differ, tol);
    free(ha), free(hb);
}

/* The decode step's ops at a position in backend memory: rope_append and
 * attention_at against the CPU; on the GPU, against rope and attention at the
 * same host position, exactly (the kernels differ only in where pos0 comes
 * from). The caches have rows past the written ones, which must not change. */
static void test_decode_ops(int H, int KVH, int hd, int n, int pos0, int window)
{
    const int half = hd / 2, npos = pos0 + n + 3;
    const size_t nq = (size_t)n * H * hd, kvd = (size_t)KVH * hd, nk = (size_t)n * kvd, nc = (size_t)npos * kvd;
    float *inv = malloc((size_t)half * 4), *ct = malloc((size_t)npos * half * 4), *st = malloc((size_t)npos * half * 4);
    tb_rope_inv_freq(inv, hd, 10000.0);
    tb_rope_table(ct, st, npos, hd, inv);
    float *q = hrand(nq, 1), *k = hrand(nk, 1), *v = hrand(nk, 1), *kc = hrand(nc, 1), *vc = hrand(nc, 1);
    const int32_t p = pos0;
    pair Q = both(q, nq), K = both(k, nk), V = both(v, nk), KC = both(kc, nc), VC = both(vc, nc);
    pair CT = both(ct, (size_t)npos * half), ST = both(st, (size_t)npos * half);
    int32_t *Pc = put(&C, &p, 4), *Pg = put(&G, &p, 4);
    char s[80];
    snprintf(s, sizeof s, "%d/%d heads x %d, n %d, pos %d, win %d", H, KVH, hd, n, pos0, window);
    C.ops->rope_append(&C, Q.c, K.c, V.c, n, H, KVH, hd, Pc, CT.c, ST.c, KC.c, VC.c);
    G.ops->rope_append(&G, Q.g, K.g, V.g, n, H, KVH, hd, Pg, CT.g, ST.g, KC.g, VC.g);
    cmp("rope_append q", s, Q.c, Q.g, nq, 1e-6);
    cmp("rope_append k_cache", s, KC.c, KC.g, nc, 1e-6);
    cmp("rope_append v_cache", s, VC.c, VC.g, nc, 0);
    cmp("rope_append k kept", s, K.c, K.g, nk, 0);
    pair Q2 = both(q, nq);
    G.ops->rope(&G, Q2.g, n, H, hd, pos0, CT.g, ST.g);
    same_gpu("rope_append = rope", s, Q.g, Q2.g, nq, 1e-7);
    tb_attn_shape a = {H, KVH, hd, window};
    pair O = both_poison(nq), O2 = both_poison(nq);
    C.ops->attention_at(&C, &a, Q.c, KC.c, VC.c, n, Pc, O.c);
    G.ops->attention_at(&G, &a, Q.g, KC.g, VC.g, n, Pg, O.g);
    char op[40];
    snprintf(op, sizeof op, "attention_at%s", attn_ver);
    cmp(op, s, O.c, O.g, nq, G.o.precision == TB_PREC_BF16 ? 5e-3 : 1e-5);
    G.ops->attention(&G, &a, Q.g, KC.g, VC.g, n, pos0, O2.g, NULL);
    snprintf(op, sizeof op, "attention_at = attention%s", attn_ver);
    same_gpu(op, s, O.g, O2.g, nq, 0);
    pfree(Q), pfree(K), pfree(V), pfree(KC), pfree(VC), pfree(CT), pfree(ST), pfree(Q2), pfree(O), pfree(O2);
    C.ops->free(&C, Pc);
    G.ops->free(&G, Pg);
    free(inv), free(ct), free(st), free(q), free(k), free(v), free(kc), free(vc);
}

/* The bf16 inference attention (no saved, tensor cores) in every version of
 * tb_attention_cuda.cu, forced by TB_ATTN_FWD: version 2 is the default,
 * version 1 the fallback for unaligned pointers, version 3 opt-in, so each
 * runs here at every shape.
 * decode: through attention_at (the position in device memory) as well. */
static void test_attention_versions(int H, int KVH, int hd, int n, int pos0, int window, int decode)
{
    if (G.o.precision != TB_PREC_BF16) return; /* f32 never takes them */
    const char *was = getenv("TB_ATTN_FWD");
    char keep[16];
    snprintf(keep, sizeof keep, "%s", was ? was : "");
    /* version 3 needs pos0 on the host: attention_at gets version 2 there, so decode checks 1 and 2 */
    static const char *const name[4] = {"", "1", "2", "3"}, *const tag[4] = {"", " v1", " v2", " v3"};
    for (int ver = 1; ver <= (decode ? 2 : 3); ver++) {
        setenv("TB_ATTN_FWD", name[ver], 1);
        attn_ver = tag[ver];
        if (decode) test_decode_ops(H, KVH, hd, n, pos0, window);
        else test_attention(H, KVH, hd, n, pos0, window, 0);
    }
    attn_ver = "";
    if (was) setenv("TB_ATTN_FWD", keep, 1);
    else unsetenv("TB_ATTN_FWD");
}

/* add_rmsnorm against the CPU, and on the GPU equal to add then rmsnorm */
static void test_add_rmsnorm(int n, int d)
{
    const size_t nd = (size_t)n * d;
    float *a = hrand(nd, 2), *c = hrand(nd, 1), *w = hrand(d, 1);
    pair A = both(a, nd), Cc = both(c, nd), W = both(w, d), Y = both_poison(nd), YN = both_poison(nd),
         R = both_poison(n), Y2 = both_poison(nd), YN2 = both_poison(nd);
    char s[64];
    snprintf(s, sizeof s, "n %d, d %d", n, d);
    C.ops->add_rmsnorm(&C, Y.c, YN.c, R.c, A.c, Cc.c, W.c, n, d, 1e-5f);
    G.ops->add_rmsnorm(&G, Y.g, YN.g, R.g, A.g, Cc.g, W.g, n, d, 1e-5f);
    cmp("add_rmsnorm y", s, Y.c, Y.g, nd, 0);
    cmp("add_rmsnorm yn", s, YN.c, YN.g, nd, 1e-5);
    cmp("add_rmsnorm inv_rms", s, R.c, R.g, n, 1e-5);
    G.ops->add(&G, Y2.g, A.g, Cc.g, nd);
    G.ops->rmsnorm(&G, YN2.g, NULL, Y2.g, W.g, n, d, 1e-5f);
    same_gpu("add_rmsnorm = add, rmsnorm", s, YN.g, YN2.g, nd, 1e-7);
    /* in place (y == a), no inv_rms */
    C.ops->add_rmsnorm(&C, A.c, YN.c, NULL, A.c, Cc.c, W.c, n, d, 1e-6f);
    G.ops->add_rmsnorm(&G, A.g, YN.g, NULL, A.g, Cc.g, W.g, n, d, 1e-6f);
    cmp("add_rmsnorm in place y", s, A.c, A.g, nd, 0);
    cmp("add_rmsnorm in place yn", s, YN.c, YN.g, nd, 1e-5);
    pfree(A), pfree(Cc), pfree(W), pfree(Y), pfree(YN), pfree(R), pfree(Y2), pfree(YN2);
    free(a), free(c), free(w);
}

static void test_elementwise(size_t n)
{
    float *g = hrand(n, 4), *u = hrand(n, 2), *d = hrand(n, 1), *F = hrand(n, 1);
    for (size_t i = 0; i < n; i++) F[i] = fabsf(F[i]);
    char s[64];
    snprintf(s, sizeof s, "%zu values", n);
    pair Gt = both(g, n), U = both(u, n), D = both(d, n), O = both_poison(n);
    C.ops->swiglu(&C, O.c, Gt.c, U.c, n);
    G.ops->swiglu(&G, O.g, Gt.g, U.g, n);
    cmp("swiglu", s, O.c, O.g, n, 1e-6);
    pair Gi = both(g, n); /* out == gate */
    C.ops->swiglu(&C, Gi.c, Gi.c, U.c, n);
    G.ops->swiglu(&G, Gi.g, Gi.g, U.g, n);
    cmp("swiglu in place", s, Gi.c, Gi.g, n, 1e-6);
    pair DG = both_poison(n), DU = both_poison(n);
    C.ops->swiglu_backward(&C, DG.c, DU.c, D.c, Gt.c, U.c, n);
    G.ops->swiglu_backward(&G, DG.g, DU.g, D.g, Gt.g, U.g, n);
    cmp("swiglu_backward gate", s, DG.c, DG.g, n, 1e-6);
    cmp("swiglu_backward up", s, DU.c, DU.g, n, 1e-6);
    pair D2 = both(d, n), DU2 = both_poison(n); /* d_gate == d_out */
    C.ops->swiglu_backward(&C, D2.c, DU2.c, D2.c, Gt.c, U.c, n);
    G.ops->swiglu_backward(&G, D2.g, DU2.g, D2.g, Gt.g, U.g, n);
    cmp("swiglu_backward alias", s, D2.c, D2.g, n, 1e-6);
    pair A = both_poison(n);
    C.ops->add(&C, A.c, Gt.c, U.c, n);
    G.ops->add(&G, A.g, Gt.g, U.g, n);
    cmp("add", s, A.c, A.g, n, 0);
    pair SD = both_poison(n);
    C.ops->scaled_diff(&C, SD.c, Gt.c, U.c, 0.37f, n);
    G.ops->scaled_diff(&G, SD.g, Gt.g, U.g, 0.37f, n);
    cmp("scaled_diff", s, SD.c, SD.g, n, 0);
    pair FF = both(F, n);
    C.ops->sq_acc(&C, FF.c, D.c, n);
    G.ops->sq_acc(&G, FF.g, D.g, n);
    cmp("sq_acc", s, FF.c, FF.g, n, 2e-7);
    sync_both();
    double a = C.ops->sum_sq_diff(&C, Gt.c, U.c, n), b = G.ops->sum_sq_diff(&G, Gt.g, U.g, n);
    row("sum_sq_diff", s, rel_scalar(b, a), 1e-12);
    a = C.ops->sum_sq_diff(&C, Gt.c, NULL, n), b = G.ops->sum_sq_diff(&G, Gt.g, NULL, n);
    row("sum_sq_diff (c NULL)", s, rel_scalar(b, a), 1e-12);
    /* first_nonfinite: none, then an inf and a later NaN */
    int64_t fc = C.ops->first_nonfinite(&C, Gt.c, n), fg = G.ops->first_nonfinite(&G, Gt.g, n);
    row("first_nonfinite none", s, (fg == fc && fg == -1) ? 0 : 1, 0);
    size_t at = (size_t)(rnd() % n);
    g[at] = INFINITY;
    if (at + 7 < n) g[at + 7] = NAN;
    pair Bad = both(g, n);
    fc = C.ops->first_nonfinite(&C, Bad.c, n), fg = G.ops->first_nonfinite(&G, Bad.g, n);
    row("first_nonfinite", s, (fg == fc && fg == (int64_t)at) ? 0 : 1, 0);
    pfree(Gt), pfree(U), pfree(D), pfree(O), pfree(Gi), pfree(DG), pfree(DU), pfree(D2), pfree(DU2), pfree(A), pfree(SD);
    pfree(FF), pfree(Bad);
    free(g), free(u), free(d), free(F);
}

/* ---- linears ---- */

typedef struct {
    tb_linear L;
    void *data;
    uint8_t *idx;
    int32_t *perm;
    float *bias;
    const char *kind;
} host_linear;

static void make_linear(host_linear *h, int rows, int cols, const char *kind, int with_bias)
{
    memset(h, 0, sizeof *h);
    h->kind = kind;
    size_t count = (size_t)rows * cols;
    float *w = hrand(count, 1.0f / sqrtf((float)cols) * 1.7f);
    tb_linear *L = &h->L;
    L->name = kind;
    L->rows = rows;
    L->cols = cols;
    if (with_bias) L->bias = h->bias = hrand(rows, 0.5f);
    if (!strcmp(kind, "f32")) {
        L->dtype = TB_F32;
        h->data = w;
        w = NULL;
    } else if (!strcmp(kind, "bf16") || !strcmp(kind, "f16")) {
        uint16_t *b = malloc(count * 2);
        int bf = !strcmp(kind, "bf16");
        for (size_t i = 0; i < count; i++) b[i] = bf ? tb_f32_to_bf16(w[i]) : tb_f32_to_f16(w[i]);
        L->dtype = bf ? TB_BF16 : TB_F16;
        h->data = b;
    } else { /* "N:M[ perm][ f16]": a packed N:M weight (bf16 values unless f16) with or without a column permutation */
        int n = 0, m = 0;
        if (sscanf(kind, "%d:%d", &n, &m) != 2) {
            fprintf(stderr, "test-cuda: unknown weight kind '%s'\n", kind);
            exit(1);
        }
        tb_dtype vdt = strstr(kind, "f16") ? TB_F16 : TB_BF16;
        tb_mask mk;
        tb_mask_alloc(&mk, rows, cols);
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < cols; g += m)
                for (int k = 0; k < n;) { /* n distinct random positions of the group */
                    int at = (int)(rnd() % (uint64_t)m);
                    if (!tb_mask_get(&mk, r, g + at)) tb_mask_set(&mk, r, g + at, 1), k++;
                }
        int64_t vpr = tb_nm_values_per_row(cols, n, m), ipr = tb_nm_index_row_bytes(cols, n, m);
        h->data = malloc((size_t)rows * vpr * tb_dtype_size(vdt));
        h->idx = malloc((size_t)rows * ipr);
        if (tb_nm_pack(TB_F32, w, &mk, n, m, vdt, h->data, h->idx)) {
            fprintf(stderr, "test-cuda: %s\n", tb_errmsg());
            exit(1);
        }
        tb_mask_free(&mk);
        if (strstr(kind, "perm")) {
            h->perm = malloc((size_t)cols * 4);
            for (int j = 0; j < cols; j++) h->perm[j] = j;
            for (int j = cols - 1; j > 0; j--) {
                int r = (int)(rnd() % (uint64_t)(j + 1));
                int32_t t = h->perm[j];
                h->perm[j] = h->perm[r];
                h->perm[r] = t;
            }
        }
        L->format = TB_LINEAR_NM;
        L->dtype = vdt;
        L->n = n;
        L->m = m;
        L->indices = h->idx;
        L->perm = h->perm;
    }
    L->data = h->data;
    free(w);
}

static void free_linear(host_linear *h)
{
    free(h->data), free(h->idx), free(h->perm), free(h->bias);
}

static void test_linear(int rows, int cols, int n, const char *kind, int with_bias)
{
    host_linear h;
    make_linear(&h, rows, cols, kind, with_bias);
    tb_dlinear dc, dg;
    if (C.ops->linear_upload(&C, &dc, &h.L) || G.ops->linear_upload(&G, &dg, &h.L)) {
        fprintf(stderr, "test-cuda: linear_upload: %s\n", tb_errmsg());
        exit(1);
    }
    char s[80];
    snprintf(s, sizeof s, "%s%s %dx%d, n %d", kind, with_bias ? "+bias" : "", rows, cols, n);
    /* linear_download of an inference copy: the dense weights as the GPU holds them */
    float *wc = malloc((size_t)rows * cols * 4), *wg = malloc((size_t)rows * cols * 4), *rb = malloc((size_t)cols * 4);
    for (size_t i = 0; i < (size_t)rows * cols; i++) wg[i] = NAN;
    tb_linear_rows(&h.L, 0, rows, wc, rb); /* the reference: dense f32 rows in model column order */
    free(rb);
    G.ops->linear_download(&G, &dg, wg);
    sync_both();
    /* bf16 storage (dense bf16, packed N:M with bf16 values) is exact in either precision */
    int exact = G.o.precision == TB_PREC_F32 || !strcmp(kind, "bf16") || (strchr(kind, ':') && !strstr(kind, "f16"));
    row("linear_upload", s, rel_f32(wg, wc, (size_t)rows * cols), exact ? 0 : 4e-3);
    free(wc), free(wg);

    float *x = hrand((size_t)n * cols, 1), *dy = hrand((size_t)n * rows, 1), *dx0 = hrand((size_t)n * cols, 1);
    pair X = both(x, (size_t)n * cols), Y = both_poison((size_t)n * rows);
    C.ops->linear(&C, &dc, X.c, n, Y.c);
    G.ops->linear(&G, &dg, X.g, n, Y.g);
    /* a dense bf16 weight at 1 token runs kernels/cuda/tb_gemv_bf16.cu (x rounded to bf16 like cuBLAS's
     * operands: the bf16 GEMM tolerance) */
    const int gemv = G.o.precision == TB_PREC_BF16 && !strcmp(kind, "bf16") && n <= TB_GEMV_MAX_TOKENS && cols % 8 == 0;
    cmp(gemv ? "linear (gemv)" : "linear", s, Y.c, Y.g, (size_t)n * rows, tol_gemm());
    pair DY = both(dy, (size_t)n * rows), DX = both_poison((size_t)n * cols), DXA = both(dx0, (size_t)n * cols);
    C.ops->linear_dx(&C, &dc, DY.c, n, DX.c, 0);
    G.ops->linear_dx(&G, &dg, DY.g, n, DX.g, 0);
    cmp("linear_dx", s, DX.c, DX.g, (size_t)n * cols, tol_gemm());
    C.ops->linear_dx(&C, &dc, DY.c, n, DXA.c, 1);
    G.ops->linear_dx(&G, &dg, DY.g, n, DXA.g, 1);
    cmp("linear_dx +=", s, DXA.c, DXA.g, (size_t)n * cols, tol_gemm());
    pair DW = both_poison((size_t)rows * cols);
    C.ops->linear_dw(&C, DY.c, X.c, n, rows, cols, DW.c);
    G.ops->linear_dw(&G, DY.g, X.g, n, rows, cols, DW.g);
    cmp("linear_dw", s, DW.c, DW.g, (size_t)rows * cols, tol_gemm());
    pfree(X), pfree(Y), pfree(DY), pfree(DX), pfree(DXA), pfree(DW);
    C.ops->linear_release(&C, &dc);
    G.ops->linear_release(&G, &dg);
    free(x), free(dy), free(dx0);
    free_linear(&h);
}

/* linear_swiglu against the CPU's linear, linear, swiglu; on the GPU against
 * its own three ops (1 token of dense bf16: one fused launch, the same sums) */
static void test_linear_swiglu(int rows, int cols, int n, const char *kind, int with_bias)
{
    host_linear hg, hu;
    make_linear(&hg, rows, cols, kind, with_bias);
    make_linear(&hu, rows, cols, kind, with_bias);
    tb_dlinear cg, cu, gg, gu;
    if (C.ops->linear_upload(&C, &cg, &hg.L) || C.ops->linear_upload(&C, &cu, &hu.L) ||
        G.ops->linear_upload(&G, &gg, &hg.L) || G.ops->linear_upload(&G, &gu, &hu.L)) {
        fprintf(stderr, "test-cuda: linear_upload: %s\n", tb_errmsg());
        exit(1);
    }
    const size_t nr = (size_t)n * rows;
    float *x = hrand((size_t)n * cols, 1);
    pair X = both(x, (size_t)n * cols), Gt = both_poison(nr), Up = both_poison(nr), O = both_poison(nr),
         O2 = both_poison(nr);
    char s[80];
    snprintf(s, sizeof s, "%s%s %dx%d, n %d", kind, with_bias ? "+bias" : "", rows, cols, n);
    C.ops->linear_swiglu(&C, &cg, &cu, X.c, n, Gt.c, Up.c, O.c);
    G.ops->linear_swiglu(&G, &gg, &gu, X.g, n, Gt.g, Up.g, O.g);
    cmp("linear_swiglu", s, O.c, O.g, nr, tol_gemm());
    G.ops->linear(&G, &gg, X.g, n, Gt.g);
    G.ops->linear(&G, &gu, X.g, n, Up.g);
    G.ops->swiglu(&G, O2.g, Gt.g, Up.g, nr);
    same_gpu("linear_swiglu = 3 ops", s, O.g, O2.g, nr, 1e-7);
    pfree(X), pfree(Gt), pfree(Up), pfree(O), pfree(O2);
    C.ops->linear_release(&C, &cg), C.ops->linear_release(&C, &cu);
    G.ops->linear_release(&G, &gg), G.ops->linear_release(&G, &gu);
    free_linear(&hg), free_linear(&hu);
    free(x);
}

/* linears (q, k, v on one x) against the CPU, and on the GPU against one
 * linear per weight; rows[i] per weight, one column count */
static void test_linears(int count, const int *rows, int cols, int n, const char *kind, int with_bias)
{
    host_linear h[3];
    tb_dlinear dc[3], dg[3];
    const tb_dlinear *wc[3], *wg[3];
    pair Y[3], Y1[3];
    float *yc[3], *yg[3];
    char s[96];
    snprintf(s, sizeof s, "%d x %s%s %d/%d/%dx%d, n %d", count, kind, with_bias ? "+bias" : "", rows[0],
             count > 1 ? rows[1] : 0, count > 2 ? rows[2] : 0, cols, n);
    for (int i = 0; i < count; i++) {
        make_linear(&h[i], rows[i], cols, kind, with_bias);
        if (C.ops->linear_upload(&C, &dc[i], &h[i].L) || G.ops->linear_upload(&G, &dg[i], &h[i].L)) {
            fprintf(stderr, "test-cuda: linear_upload: %s\n", tb_errmsg());
            exit(1);
        }
        wc[i] = &dc[i], wg[i] = &dg[i];
        Y[i] = both_poison((size_t)n * rows[i]);
        Y1[i] = both_poison((size_t)n * rows[i]);
        yc[i] = Y[i].c, yg[i] = Y[i].g;
    }
    float *x = hrand((size_t)n * cols, 1);
    pair X = both(x, (size_t)n * cols);
    C.ops->linears(&C, count, wc, X.c, n, yc);
    G.ops->linears(&G, count, wg, X.g, n, yg);
    for (int i = 0; i < count; i++) {
        G.ops->linear(&G, wg[i], X.g, n, Y1[i].g);
        char si[112];
        snprintf(si, sizeof si, "%s [%d]", s, i);
        cmp("linears", si, Y[i].c, Y[i].g, (size_t)n * rows[i], tol_gemm());
        /* the fused launch splits K by the stacked rows: the same products, sums maybe in another order */
        same_gpu("linears = linear", si, Y[i].g, Y1[i].g, (size_t)n * rows[i], 1e-6);
    }
    for (int i = 0; i < count; i++) {
        pfree(Y[i]), pfree(Y1[i]);
        C.ops->linear_release(&C, &dc[i]);
        G.ops->linear_release(&G, &dg[i]);
        free_linear(&h[i]);
    }
    pfree(X);
    free(x);
}

/* A CUDA graph of the decode step's kinds of op, captured once and replayed
 * at two positions uploaded before each launch, equals the same ops run
 * plainly, bit for bit: q copied in, rope_append, attention_at, add_rmsnorm,
 * a linear of `kind` (bf16 precision: dense bf16 the GEMV, "2:4 perm" the 2:4
 * kernel after its x gather, launched with programmatic dependent launch; f32:
 * cuBLAS). The plain runs come first, so the capture finds its work space grown. */
static void test_graph(const char *kind)
{
    if (!G.ops->graph_begin) return;
    const int H = 8, KVH = 2, hd = 64, D = H * hd, KV = KVH * hd, npos = 16, half = hd / 2;
    const int pos[2] = {7, 12};
    float *inv = malloc((size_t)half * 4), *ct = malloc((size_t)npos * half * 4), *st = malloc((size_t)npos * half * 4);
    tb_rope_inv_freq(inv, hd, 10000.0);
    tb_rope_table(ct, st, npos, hd, inv);
    float *q0 = hrand(D, 1), *k = hrand(KV, 1), *v = hrand(KV, 1), *kc = hrand((size_t)npos * KV, 1),
          *vc = hrand((size_t)npos * KV, 1), *x = hrand(D, 1), *w = hrand(D, 1);
    host_linear h;
    make_linear(&h, D, D, kind, 1);
    tb_dlinear dg;
    if (G.ops->linear_upload(&G, &dg, &h.L)) {
        fprintf(stderr, "test-cuda: linear_upload: %s\n", tb_errmsg());
        exit(1);
    }
    float *Q0 = put(&G, q0, D * 4), *K = put(&G, k, KV * 4), *V = put(&G, v, KV * 4), *X = put(&G, x, D * 4),
          *Wn = put(&G, w, D * 4), *CT = put(&G, ct, (size_t)npos * half * 4), *ST = put(&G, st, (size_t)npos * half * 4);
    float *KC = poison(&G, (size_t)npos * KV), *VC = poison(&G, (size_t)npos * KV), *Q = poison(&G, D),
          *O = poison(&G, D), *Y = poison(&G, D), *YN = poison(&G, D), *Z = poison(&G, D);
    int32_t *P = put(&G, pos, 4);
    tb_attn_shape a = {H, KVH, hd, 0};
#define DECODE_OPS()                                                                   \
    do {                                                                               \
        G.ops->copy(&G, Q, Q0, D * 4);                                                 \
        G.ops->rope_append(&G, Q, K, V, 1, H, KVH, hd, P, CT, ST, KC, VC);             \
        G.ops->attention_at(&G, &a, Q, KC, VC, 1, P, O);                               \
        G.ops->add_rmsnorm(&G, Y, YN, NULL, X, O, Wn, 1, D, 1e-5f);                    \
        G.ops->linear(&G, &dg, YN, 1, Z);                                              \
    } while (0)
    /* plain launches at both positions */
    float *ref[2], *got[2] = {NULL, NULL};
    G.ops->upload(&G, KC, kc, (size_t)npos * KV * 4);
    G.ops->upload(&G, VC, vc, (size_t)npos * KV * 4);
    for (int i = 0; i < 2; i++) {
        G.ops->upload(&G, P, &pos[i], 4);
        DECODE_OPS();
        ref[i] = get(&G, Z, D);
    }
    float *refkc = get(&G, KC, (size_t)npos * KV), *gotkc = NULL;
    /* captured once (nothing runs), replayed at both positions from fresh caches */
    void *g = NULL;
    sync_both();
    if (G.ops->graph_begin(&G)) {
        printf("  graph_begin: %s\n", tb_errmsg());
    } else {
        DECODE_OPS();
        if (!(g = G.ops->graph_end(&G))) printf("  graph_end: %s\n", tb_errmsg());
    }
    row("graph capture", kind, g ? 0 : 1, 0);
    if (g) {
        G.ops->upload(&G, KC, kc, (size_t)npos * KV * 4);
        G.ops->upload(&G, VC, vc, (size_t)npos * KV * 4);
        for (int i = 0; i < 2; i++) {
            G.ops->upload(&G, P, &pos[i], 4);
            if (G.ops->graph_launch(&G, g)) row("graph stale", kind, 1, 0);
            got[i] = get(&G, Z, D);
        }
        gotkc = get(&G, KC, (size_t)npos * KV);
        G.ops->graph_free(&G, g);
        sync_both();
        /* our kernels replay exactly; cuBLAS (the f32 linear) may choose
         * another algorithm inside a capture, so there the GEMM tolerance */
        const int exact = G.o.precision == TB_PREC_BF16;
        for (int i = 0; i < 2; i++) {
            double differ = 0;
            if (exact)
                for (int j = 0; j < D; j++) differ += !(ref[i][j] == got[i][j]);
            else
                differ = rel_f32(got[i], ref[i], D);
            char s[64];
            snprintf(s, sizeof s, "%s, pos %d", kind, pos[i]);
            row("graph replay = plain", s, differ, exact ? 0 : tol_gemm());
        }
        double differ = 0;
        for (size_t j = 0; j < (size_t)npos * KV; j++) differ += !(refkc[j] == gotkc[j]);
        row("graph replay = plain: k_cache", kind, differ, 0);
    }
#undef DECODE_OPS
    for (int i = 0; i < 2; i++) free(ref[i]), free(got[i]);
    free(refkc), free(gotkc);
    float *bufs[] = {Q0, K, V, X, Wn, CT, ST, KC, VC, Q, O, Y, YN, Z};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) G.ops->free(&G, bufs[i]);
    G.ops->free(&G, P);
    G.ops->linear_release(&G, &dg);
    free_linear(&h);
    free(inv), free(ct), free(st), free(q0), free(k), free(v), free(kc), free(vc), free(x), free(w);
}

/* A packed 2:4 weight through the backend's linear at the token counts of
 * decode (1-16: the 2:4 GEMM in bf16) and prefill (17+: the dense copy), on
 * one upload, in that order: the dense copy is made on the first 17-token call,
 * so the bytes are checked before it (the 2:4 form only, 0.5625x of dense bf16
 * where the 2:4 GEMM takes the weight) and the dense path after it. Shapes
 * cover the 2:4 kernel's edges: one 32-row pair, an odd pair count, 2 pairs a
 * warp (>= 8192 rows at <= 8 tokens), one 64-column k-tile, a K that 8 or 16
 * warps split unevenly; x read in place (no permutation, <= 8 tokens) or
 * gathered (a permutation, or 9-16 tokens). Shapes the kernel cannot take
 * (rows % 32, cols % 64) go dense from the start. */
static void test_sp24_linear(int rows, int cols, const char *kind, int with_bias)
{
    host_linear h;
    make_linear(&h, rows, cols, kind, with_bias);
    tb_dlinear dc, dg;
    if (C.ops->linear_upload(&C, &dc, &h.L) || G.ops->linear_upload(&G, &dg, &h.L)) {
        fprintf(stderr, "test-cuda: linear_upload: %s\n", tb_errmsg());
        exit(1);
    }
    const int fits = G.o.precision == TB_PREC_BF16 && rows % 32 == 0 && cols % 64 == 0;
    char s[96];
    snprintf(s, sizeof s, "%s%s %dx%d", kind, with_bias ? "+bias" : "", rows, cols);
    size_t extra = (h.L.perm ? (size_t)cols * 4 : 0) + (with_bias ? (size_t)rows * 4 : 0);
    size_t want = fits ? (size_t)rows * cols * 9 / 8 + extra
                       : (size_t)rows * cols * (G.o.precision == TB_PREC_BF16 ? 2 : 4) + (with_bias ? (size_t)rows * 4 : 0);
    row("2:4 upload bytes", s, fabs((double)dg.bytes - (double)want), 0);
    row("2:4 form (kernel fits)", s, (dg.sparse != NULL) != fits, 0);
    const int ns[] = {1, 2, 7, 16, 17, 128};
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
        int n = ns[i];
        float *x = hrand((size_t)n * cols, 1);
        pair X = both(x, (size_t)n * cols), Y = both_poison((size_t)n * rows);
        C.ops->linear(&C, &dc, X.c, n, Y.c);
        G.ops->linear(&G, &dg, X.g, n, Y.g);
        char sn[120];
        snprintf(sn, sizeof sn, "%s, n %d", s, n);
        cmp(n <= 16 && fits ? "linear (2:4 GEMM)" : "linear (dense)", sn, Y.c, Y.g, (size_t)n * rows, tol_gemm());
        pfree(X), pfree(Y);
        free(x);
    }
    /* the backward through it: the dense copy (made above) */
    int n = 9;
    float *dy = hrand((size_t)n * rows, 1);
    pair DY = both(dy, (size_t)n * rows), DX = both_poison((size_t)n * cols);
    C.ops->linear_dx(&C, &dc, DY.c, n, DX.c, 0);
    G.ops->linear_dx(&G, &dg, DY.g, n, DX.g, 0);
    cmp("linear_dx", s, DX.c, DX.g, (size_t)n * cols, tol_gemm());
    pfree(DY), pfree(DX);
    free(dy);
    C.ops->linear_release(&C, &dc);
    G.ops->linear_release(&G, &dg);
    free_linear(&h);
}

/* The CUDA backend opened with TB_SP24_PREFILL=cusparselt (read at open):
 * cuSPARSELt at every count above 16 tokens, whatever the per-shape rule
 * says, so small shapes (which the rule keeps dense) still exercise it. Opened
 * on first use, in bf16, with the environment's TB_CSLT_OUT as it is then. */
static tb_backend Gf;
static int gf_open;
static tb_backend *forced_backend(void)
{
    if (gf_open) return &Gf;
    const char *was = getenv("TB_SP24_PREFILL");
    char keep[64];
    snprintf(keep, sizeof keep, "%s", was ? was : "");
    setenv("TB_SP24_PREFILL", "cusparselt", 1);
    tb_backend_opts og = {.device = TB_DEVICE_CUDA, .gpu = 0, .precision = TB_PREC_BF16, .n_threads = 4};
    int rc = tb_backend_open(&Gf, &og);
    if (was) setenv("TB_SP24_PREFILL", keep, 1);
    else unsetenv("TB_SP24_PREFILL");
    if (rc) {
        fprintf(stderr, "test-cuda: cuda backend (TB_SP24_PREFILL=cusparselt): %s\n", tb_errmsg());
        exit(1);
    }
    gf_open = 1;
    return &Gf;
}
static void forced_close(void)
{
    if (gf_open) tb_backend_close(&Gf);
    gf_open = 0;
}

/* A packed 2:4 weight at a prefill token count in a CUSPARSELT=1 build, bf16,
 * against the CPU backend, output poisoned first. The per-shape rule
 * (tb_cuda_sp24_choose) must give `rule` for the shape and count; force 1
 * runs it on the backend opened with TB_SP24_PREFILL=cusparselt instead (the
 * small shapes, which the rule keeps dense). Expect cuSPARSELt (rule CSLT or
 * force): afterwards the weight holds the 2:4 form and cuSPARSELt's compressed
 * one but no dense copy (what a prefill then costs in memory); must_cslt 0: a
 * token count the library may refuse (then the dense copy runs it; the row
 * says which ran). Expect dense: the dense copy runs it and no compressed form
 * is made (the rule is what the backend executes). The small shapes run twice
 * on the same upload: the first call compresses and searches the algorithm,
 * the second reuses both. */
static void test_sp24_prefill(int rows, int cols, const char *kind, int with_bias, int n, tb_sp24_path rule, int force,
                              int must_cslt)
{
    if (!tb_cuda_cslt_built() || G.o.precision != TB_PREC_BF16) return;
    tb_backend *g = force ? forced_backend() : &G;
    host_linear h;
    make_linear(&h, rows, cols, kind, with_bias);
    tb_dlinear dc, dg;
    if (C.ops->linear_upload(&C, &dc, &h.L) || g->ops->linear_upload(g, &dg, &h.L)) {
        fprintf(stderr, "test-cuda: linear_upload: %s\n", tb_errmsg());
        exit(1);
    }
    char s[120];
    snprintf(s, sizeof s, "%s%s %dx%d, n %d%s%s", kind, with_bias ? "+bias" : "", rows, cols, n,
             force ? ", forced" : "", getenv("TB_CSLT_OUT") ? ", bf16 out" : "");
    row("2:4 prefill rule", s, tb_cuda_sp24_choose(rows, cols, n, 1) != rule, 0);
    const int want_cslt = force || rule == TB_SP24_PATH_CSLT;
    const int reps = (size_t)rows * cols <= (size_t)768 * 4096 ? 2 : 1; /* the CPU reference's time */
    for (int rep = 0; rep < reps; rep++) {
        float *x = hrand((size_t)n * cols, 1);
        float *xc = put(&C, x, (size_t)n * cols * 4), *xg = put(g, x, (size_t)n * cols * 4);
        float *yc = poison(&C, (size_t)n * rows), *yg = poison(g, (size_t)n * rows);
        C.ops->linear(&C, &dc, xc, n, yc);
        g->ops->linear(g, &dg, xg, n, yg);
        if (C.ops->sync(&C) || g->ops->sync(g)) {
            fprintf(stderr, "test-cuda: %s\n", tb_errmsg());
            exit(1);
        }
        const int forms = tb_cuda_sp24_forms(dg.sparse);
        float *hc = get(&C, yc, (size_t)n * rows), *hg = get(g, yg, (size_t)n * rows);
        row(forms & TB_CUDA_FORM_CSLT ? (rep ? "linear cuSPARSELt 2nd" : "linear cuSPARSELt") : "linear (dense copy)", s,
            rel_f32(hg, hc, (size_t)n * rows), tol_gemm());
        free(hc), free(hg);
        if (want_cslt && must_cslt)
            row("2:4 forms: no dense", s, forms != (TB_CUDA_FORM_SP24 | TB_CUDA_FORM_CSLT), 0);
        if (!want_cslt)
            row("2:4 forms: no cuSPARSELt", s, forms != (TB_CUDA_FORM_SP24 | TB_CUDA_FORM_DENSE), 0);
        C.ops->free(&C, xc), C.ops->free(&C, yc);
        g->ops->free(g, xg), g->ops->free(g, yg);
        free(x);
    }
    C.ops->linear_release(&C, &dc);
    g->ops->linear_release(g, &dg);
    free_linear(&h);
}

/* The per-shape rule itself at the measured counts (tb_sp24_gemm.cu's table):
 * the four 7B shapes at 128-2048 tokens, and decode's kernel at 16. */
static void test_sp24_rule(void)
{
    const struct {
        int rows, cols, from; /* cuSPARSELt from this count; 0 never */
    } sh[] = {{4096, 4096, 1024}, {1024, 4096, 0}, {14336, 4096, 256}, {4096, 14336, 512}, {256, 768, 0}};
    const int ns[] = {17, 128, 256, 512, 1024, 2048};
    for (size_t i = 0; i < sizeof sh / sizeof *sh; i++) {
        int bad = tb_cuda_sp24_choose(sh[i].rows, sh[i].cols, 16, 1) != TB_SP24_PATH_KERNEL;
        for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
            const int n = ns[k];
            tb_sp24_path want = sh[i].from && n >= sh[i].from ? TB_SP24_PATH_CSLT : TB_SP24_PATH_DENSE;
            bad += tb_cuda_sp24_choose(sh[i].rows, sh[i].cols, n, 1) != want;
            bad += tb_cuda_sp24_choose(sh[i].rows, sh[i].cols, n, 0) != TB_SP24_PATH_DENSE;
        }
        char s[64];
        snprintf(s, sizeof s, "%dx%d, n 16-2048", sh[i].rows, sh[i].cols);
        row("2:4 prefill rule", s, bad, 0);
    }
}

/* The device reorder (linear_upload's) against the host one (tb_sp24_reorder),
 * byte for byte, A and E, with and without a permutation. */
static void test_sp24_reorder(int rows, int cols, int permuted)
{
    host_linear h;
    make_linear(&h, rows, cols, permuted ? "2:4 perm" : "2:4", 0);
    size_t vb = (size_t)rows * cols, ib = (size_t)rows * cols / 8, ab = tb_sp24_a_bytes(rows, cols),
           eb = tb_sp24_e_bytes(rows, cols);
    void *dv = NULL, *di = NULL, *dp = NULL;
    tb_sp24_weight wh = {0}, wd = {0};
    int ok = cudaMalloc(&dv, vb) == cudaSuccess && cudaMalloc(&di, ib) == cudaSuccess &&
             cudaMalloc(&dp, (size_t)cols * 4) == cudaSuccess &&
             cudaMemcpy(dv, h.data, vb, cudaMemcpyHostToDevice) == cudaSuccess &&
             cudaMemcpy(di, h.idx, ib, cudaMemcpyHostToDevice) == cudaSuccess &&
             (!permuted || cudaMemcpy(dp, h.perm, (size_t)cols * 4, cudaMemcpyHostToDevice) == cudaSuccess);
    ok = ok && !tb_cuda_sp24_prepare(&wh, h.data, h.idx, rows, cols, h.perm) &&
         !tb_cuda_sp24_prepare_device(&wd, dv, di, rows, cols, permuted ? dp : NULL, NULL);
    uint8_t *a1 = malloc(ab), *a2 = malloc(ab), *e1 = malloc(eb), *e2 = malloc(eb);
    int32_t *p2 = malloc((size_t)cols * 4);
    ok = ok && cudaDeviceSynchronize() == cudaSuccess && cudaMemcpy(a1, wh.a, ab, cudaMemcpyDeviceToHost) == cudaSuccess &&
         cudaMemcpy(a2, wd.a, ab, cudaMemcpyDeviceToHost) == cudaSuccess &&
         cudaMemcpy(e1, wh.e, eb, cudaMemcpyDeviceToHost) == cudaSuccess &&
         cudaMemcpy(e2, wd.e, eb, cudaMemcpyDeviceToHost) == cudaSuccess &&
         (!permuted || cudaMemcpy(p2, wd.perm, (size_t)cols * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
    char s[64];
    snprintf(s, sizeof s, "%dx%d%s", rows, cols, permuted ? " perm" : "");
    if (!ok) printf("  sp24 reorder %s: %s\n", s, tb_errmsg());
    row("sp24 reorder A (device)", s, ok ? (double)(memcmp(a1, a2, ab) != 0) : NAN, 0);
    row("sp24 reorder E (device)", s, ok ? (double)(memcmp(e1, e2, eb) != 0) : NAN, 0);
    if (permuted) row("sp24 perm (device)", s, ok ? (double)(memcmp(p2, h.perm, (size_t)cols * 4) != 0) : NAN, 0);
    tb_cuda_sp24_release(&wh);
    tb_cuda_sp24_release(&wd);
    cudaFree(dv), cudaFree(di), cudaFree(dp);
    free(a1), free(a2), free(e1), free(e2), free(p2);
    free_linear(&h);
}

static void test_gram(int n, int cols)
{
    float *x = hrand((size_t)n * cols, 1);
    size_t cc = (size_t)cols * cols;
    double *g0 = malloc(cc * 8);
    for (int i = 0; i < cols; i++)
        for (int j = i; j < cols; j++) g0[(size_t)i * cols + j] = g0[(size_t)j * cols + i] = 3.0 * frand();
    pair X = both(x, (size_t)n * cols);
    double *Gc = put(&C, g0, cc * 8), *Gg = put(&G, g0, cc * 8);
    /* two calls: accumulation across calls */
    C.ops->gram_acc(&C, X.c, n, cols, Gc);
    G.ops->gram_acc(&G, X.g, n, cols, Gg);
    C.ops->gram_acc(&C, X.c, n / 2 + 1, cols, Gc);
    G.ops->gram_acc(&G, X.g, n / 2 + 1, cols, Gg);
    sync_both();
    double *hc = malloc(cc * 8), *hg = malloc(cc * 8);
    C.ops->download(&C, hc, Gc, cc * 8);
    G.ops->download(&G, hg, Gg, cc * 8);
    /* the defined part: the upper triangle of row-major G, minus the random start */
    size_t m = 0;
    for (int i = 0; i < cols; i++)
        for (int j = i; j < cols; j++, m++) {
            size_t at = (size_t)i * cols + j;
            hc[m] = hc[at] - g0[at];
            hg[m] = hg[at] - g0[at];
        }
    char s[64];
    snprintf(s, sizeof s, "n %d (+%d), cols %d", n, n / 2 + 1, cols);
    row("gram_acc", s, rel_f64(hg, hc, m), G.o.precision == TB_PREC_BF16 ? 5e-3 : 1e-9);
    pfree(X);
    C.ops->free(&C, Gc);
    G.ops->free(&G, Gg);
    free(x), free(g0), free(hc), free(hg);
}

static void test_losses(int n, int vocab)
{
    size_t c = (size_t)n * vocab;
    float *ref = hrand(c, 4), *cur = malloc(c * 4);
    for (size_t i = 0; i < c; i++) cur[i] = ref[i] + 0.5f * frand();
    int32_t *tok = malloc((size_t)n * 4);
    for (int t = 0; t < n; t++) tok[t] = (int32_t)(rnd() % (uint64_t)vocab);
    char s[64];
    snprintf(s, sizeof s, "n %d, vocab %d", n, vocab);
    pair R = both(ref, c), U = both(cur, c);
    sync_both();
    double a = C.ops->nll(&C, R.c, tok, n, vocab), b = G.ops->nll(&G, R.g, tok, n, vocab);
    row("nll", s, rel_scalar(b, a), 1e-12);
    int64_t tc = -1, tg = -2;
    a = C.ops->kl(&C, R.c, U.c, n, vocab, &tc);
    b = G.ops->kl(&G, R.g, U.g, n, vocab, &tg);
    row("kl", s, rel_scalar(b, a), 1e-10);
    row("kl top1 agreement", s, tc == tg ? 0 : 1, 0);
    /* kl_grad: the same sum with scale 0 (cur untouched), then the distillation gradient in place */
    tc = -1, tg = -2;
    a = C.ops->kl_grad(&C, R.c, U.c, n, vocab, 0, &tc);
    b = G.ops->kl_grad(&G, R.g, U.g, n, vocab, 0, &tg);
    row("kl_grad 0: sum", s, rel_scalar(b, a), 1e-10);
    row("kl_grad 0: top1", s, tc == tg ? 0 : 1, 0);
    cmp("kl_grad 0: cur kept", s, U.c, U.g, c, 0);
    tc = -1, tg = -2;
    a = C.ops->kl_grad(&C, R.c, U.c, n, vocab, 1.0 / n, &tc);
    b = G.ops->kl_grad(&G, R.g, U.g, n, vocab, 1.0 / n, &tg);
    row("kl_grad sum", s, rel_scalar(b, a), 1e-10);
    row("kl_grad top1", s, tc == tg ? 0 : 1, 0);
    cmp("kl_grad grad", s, U.c, U.g, c, 1e-6);
    a = C.ops->xent_backward(&C, R.c, tok, n, vocab);
    b = G.ops->xent_backward(&G, R.g, tok, n, vocab);
    row("xent_backward loss", s, rel_scalar(b, a), 1e-12);
    cmp("xent_backward grad", s, R.c, R.g, c, 1e-6);
    pfree(R), pfree(U);
    free(ref), free(cur), free(tok);
}

/* Adam's moments in backend b's layout (tb_backend.h, adam_moments_kept) */
static float *moments_put(tb_backend *b, const float *full, const uint8_t *keep, size_t count)
{
    float *h = malloc(count * 4 + 1);
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        if (!b->ops->adam_moments_kept || keep[i]) h[n++] = full[i];
    float *d = put(b, h, n * 4 + 4);
    free(h);
    return d;
}

/* the kept entries' moments, in order, whichever layout b keeps them in */
static float *moments_get(tb_backend *b, const float *d, const uint8_t *keep, size_t count, size_t *kept)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++) n += keep[i] != 0;
    float *h = get(b, d, b->ops->adam_moments_kept ? n : count);
    if (!b->ops->adam_moments_kept)
        for (size_t i = 0, j = 0; i < count; i++)
            if (keep[i]) h[j++] = h[i];
    *kept = n;
    return h;
}

static void test_adam(int rows, int cols, int steps)
{
    size_t count = (size_t)rows * cols;
    float *w = hrand(count, 0.1f), *m1 = hrand(count, 0.01f), *m2 = hrand(count, 1e-4f);
    uint8_t *keep = malloc(count);
    for (size_t i = 0; i < count; i++) {
        keep[i] = (uint8_t)(rnd() % 2);
        if (!keep[i]) w[i] = 0.0f; /* pruned: exact zeros that must stay so */
        m2[i] = fabsf(m2[i]);
    }
    float *wc = malloc(count * 4);
    memcpy(wc, w, count * 4); /* the CPU backend trains the caller's array in place */
    tb_linear Lc = {.name = "trained", .rows = rows, .cols = cols, .dtype = TB_F32, .data = wc};
    tb_linear Lg = Lc;
    Lg.data = w;
    tb_dlinear dc, dg;
    if (C.ops->linear_upload_train(&C, &dc, &Lc) || G.ops->linear_upload_train(&G, &dg, &Lg)) {
        fprintf(stderr, "test-cuda: linear_upload_train: %s\n", tb_errmsg());
        exit(1);
    }
    pair M1 = {moments_put(&C, m1, keep, count), moments_put(&G, m1, keep, count)};
    pair M2 = {moments_put(&C, m2, keep, count), moments_put(&G, m2, keep, count)};
    uint8_t *kc = put(&C, keep, count), *kg = put(&G, keep, count);
    for (int t = 1; t <= steps; t++) {
        float *g = hrand(count, 0.05f);
        pair Gr = both(g, count);
        double lr = 1e-3 * (1.0 - 0.1 * t), c1 = 1 - pow(0.9, t), c2 = 1 - pow(0.999, t);
        C.ops->adam(&C, &dc, Gr.c, kc, M1.c, M2.c, lr, 0.9, 0.999, c1, c2, 1e-8);
        G.ops->adam(&G, &dg, Gr.g, kg, M1.g, M2.g, lr, 0.9, 0.999, c1, c2, 1e-8);
        sync_both();
        pfree(Gr);
        free(g);
    }
    char s[64];
    snprintf(s, sizeof s, "%dx%d, %d steps", rows, cols, steps);
    float *oc = malloc(count * 4), *og = malloc(count * 4);
    for (size_t i = 0; i < count; i++) og[i] = NAN;
    C.ops->linear_download(&C, &dc, oc);
    G.ops->linear_download(&G, &dg, og);
    sync_both();
    size_t moved = 0;
    for (size_t i = 0; i < count; i++)
        if (!keep[i] && og[i] != 0.0f) moved++;
    row("adam w", s, rel_f32(og, oc, count), 1e-6);
    row("adam pruned stay 0", s, (double)moved, 0);
    for (int k = 0; k < 2; k++) {
        pair M = k ? M2 : M1;
        size_t kept;
        float *hc = moments_get(&C, M.c, keep, count, &kept), *hg = moments_get(&G, M.g, keep, count, &kept);
        row(k ? "adam m2" : "adam m1", s, rel_f32(hg, hc, kept), 1e-6);
        free(hc);
        free(hg);
    }
    /* the trained weight computes in the compute dtype: its refreshed copy must follow the master */
    int n = 9;
    float *x = hrand((size_t)n * cols, 1);
    pair X = both(x, (size_t)n * cols), Y = both_poison((size_t)n * rows);
    C.ops->linear(&C, &dc, X.c, n, Y.c);
    G.ops->linear(&G, &dg, X.g, n, Y.g);
    cmp("linear (trained)", s, Y.c, Y.g, (size_t)n * rows, tol_gemm());
    pfree(X), pfree(Y), pfree(M1), pfree(M2);
    C.ops->free(&C, kc);
    G.ops->free(&G, kg);
    C.ops->linear_release(&C, &dc);
    G.ops->linear_release(&G, &dg);
    free(w), free(wc), free(m1), free(m2), free(keep), free(oc), free(og), free(x);
}

/* Learned N:M masks (tb_learnmask.h): the channel statistics, the
 * straight-through latent step, the re-selection and the masked apply.
 * Outputs poisoned first where the op overwrites them; the masks must agree
 * bit for bit (the CUDA kernels round as the CPU does), since one flipped
 * keep bit is a different model. */
static void test_learnmask(int rows, int cols, int T, int n, int m, int steps)
{
    char s[64];
    snprintf(s, sizeof s, "%dx%d %d:%d, T %d", rows, cols, n, m, T);
    const size_t count = (size_t)rows * cols;
    /* col_sq_acc: f64 sums of squares per input channel, rows in order */
    double *cs0 = malloc((size_t)cols * 8);
    for (int c = 0; c < cols; c++) cs0[c] = fabs((double)frand()) * 10;
    cs0[1] = cs0[0]; /* with x's and w's columns 0 and 1 equal: a tie of scores in every row's first group */
    float *x = hrand((size_t)T * cols, 2);
    for (int t = 0; t < T; t++) x[(size_t)t * cols + 1] = x[(size_t)t * cols];
    pair X = both(x, (size_t)T * cols);
    double *csc = put(&C, cs0, (size_t)cols * 8), *csg = put(&G, cs0, (size_t)cols * 8);
    C.ops->col_sq_acc(&C, X.c, T, cols, csc);
    G.ops->col_sq_acc(&G, X.g, T, cols, csg);
    C.ops->col_sq_acc(&C, X.c, T / 2 + 1, cols, csc); /* accumulates */
    G.ops->col_sq_acc(&G, X.g, T / 2 + 1, cols, csg);
    sync_both();
    double *hcc = malloc((size_t)cols * 8), *hcg = malloc((size_t)cols * 8);
    C.ops->download(&C, hcc, csc, (size_t)cols * 8);
    G.ops->download(&G, hcg, csg, (size_t)cols * 8);
    sync_both();
    row("col_sq_acc", s, rel_f64(hcg, hcc, (size_t)cols), 0);
    /* nm_reselect into poisoned masks (0xff is no valid keep byte) */
    float *w = hrand(count, 1);
    for (int r = 0; r < rows; r++) w[(size_t)r * cols] = w[(size_t)r * cols + 1]; /* ties: the lower column wins */
    pair W = both(w, count);
    uint8_t *ff = malloc(count);
    memset(ff, 0xff, count);
    uint8_t *kc = put(&C, ff, count), *kg = put(&G, ff, count);
    const double tokens = T + T / 2 + 1;
    C.ops->nm_reselect(&C, W.c, csc, tokens, rows, cols, n, m, kc);
    G.ops->nm_reselect(&G, W.g, csg, tokens, rows, cols, n, m, kg);
    sync_both();
    uint8_t *hkc = malloc(count), *hkg = malloc(count);
    C.ops->download(&C, hkc, kc, count);
    G.ops->download(&G, hkg, kg, count);
    sync_both();
    size_t differ = 0;
    for (size_t i = 0; i < count; i++) differ += hkc[i] != hkg[i];
    row("nm_reselect keep", s, (double)differ, 0);
    row("nm_reselect exact N:M", s, tb_nm_keep_valid(hkg, rows, cols, n, m) ? 0 : 1, 0);
    /* latent_step: Adam on every entry (full moments on both), pruned latents decay */
    float *m1 = hrand(count, 0.01f), *m2 = hrand(count, 1e-4f);
    for (size_t i = 0; i < count; i++) m2[i] = fabsf(m2[i]);
    pair M1 = both(m1, count), M2 = both(m2, count);
    for (int t = 1; t <= steps; t++) {
        float *g = hrand(count, 0.05f);
        pair Gr = both(g, count);
        double lr = 1e-3 * (1.0 - 0.1 * t);
        C.ops->latent_step(&C, W.c, Gr.c, M1.c, M2.c, kc, count, lr, 0.9, 0.999, 1e-8, t, t == steps ? 0 : 20);
        G.ops->latent_step(&G, W.g, Gr.g, M1.g, M2.g, kg, count, lr, 0.9, 0.999, 1e-8, t, t == steps ? 0 : 20);
        sync_both();
        pfree(Gr);
        free(g);
    }
    cmp("latent_step latent", s, W.c, W.g, count, 1e-6);
    cmp("latent_step m1", s, M1.c, M1.g, count, 1e-6);
    cmp("latent_step m2", s, M2.c, M2.g, count, 1e-6);
    /* mask_apply into a training copy poisoned with NaN, read back and through the compute copy */
    float *wc = malloc(count * 4), *wg = malloc(count * 4);
    for (size_t i = 0; i < count; i++) wc[i] = wg[i] = NAN;
    tb_linear Lc = {.name = "masked", .rows = rows, .cols = cols, .dtype = TB_F32, .data = wc};
    tb_linear Lg = Lc;
    Lg.data = wg;
    tb_dlinear dc, dg;
    if (C.ops->linear_upload_train(&C, &dc, &Lc) || G.ops->linear_upload_train(&G, &dg, &Lg)) {
        fprintf(stderr, "test-cuda: linear_upload_train: %s\n", tb_errmsg());
        exit(1);
    }
    C.ops->mask_apply(&C, &dc, W.c, kc);
    G.ops->mask_apply(&G, &dg, W.g, kg);
    float *oc = malloc(count * 4), *og = malloc(count * 4);
    C.ops->linear_download(&C, &dc, oc);
    G.ops->linear_download(&G, &dg, og);
    sync_both();
    size_t nonzero = 0;
    for (size_t i = 0; i < count; i++)
        if (!hkc[i] && og[i] != 0.0f) nonzero++;
    row("mask_apply w", s, rel_f32(og, oc, count), 1e-6);
    row("mask_apply pruned 0", s, (double)nonzero, 0);
    int nt = 5;
    float *xin = hrand((size_t)nt * cols, 1);
    pair XI = both(xin, (size_t)nt * cols), Y = both_poison((size_t)nt * rows);
    C.ops->linear(&C, &dc, XI.c, nt, Y.c);
    G.ops->linear(&G, &dg, XI.g, nt, Y.g);
    cmp("linear (mask_apply)", s, Y.c, Y.g, (size_t)nt * rows, tol_gemm());
    pfree(XI), pfree(Y), pfree(X), pfree(W), pfree(M1), pfree(M2);
    C.ops->linear_release(&C, &dc);
    G.ops->linear_release(&G, &dg);
    C.ops->free(&C, kc), G.ops->free(&G, kg), C.ops->free(&C, csc), G.ops->free(&G, csg);
    free(cs0), free(x), free(hcc), free(hcg), free(w), free(ff), free(hkc), free(hkg), free(m1), free(m2);
    free(wc), free(wg), free(oc), free(og), free(xin);
}

/* bf16 operands (tb_backend_cuda.cu): at prefill counts in bf16, rmsnorm,
 * add_rmsnorm and swiglu also write their output as bf16 for the linears that
 * read it next,
 * which then skip their own conversion. The CPU backend runs the same
 * sequence: the f32 outputs as before (rmsnorm's and swiglu's tolerances),
 * linears on the copy (q, k, v-like in a row, one with a bias), a linear after
 * another op changed the array (a stale copy would be off by far more than the
 * GEMM tolerance), swiglu in place, and a linear on only a prefix of the rows.
 * In f32 no copy is made: the same sequence is plain parity. */
static void test_bf16_operands(int n, int d, int F)
{
    char s[80];
    snprintf(s, sizeof s, "n %d, d %d, F %d", n, d, F);
    const size_t nd = (size_t)n * d, nf = (size_t)n * F;
    float *x = hrand(nd, 2), *w = hrand(d, 1), *z = hrand(nd, 1), *g = hrand(nf, 4), *u = hrand(nf, 2);
    host_linear hq, hk, hdn;
    make_linear(&hq, 256, d, "bf16", 1);
    make_linear(&hk, 128, d, "bf16", 0);
    make_linear(&hdn, d, F, "bf16", 0);
    tb_dlinear qc, qg, kc, kg, dc, dg;
    if (C.ops->linear_upload(&C, &qc, &hq.L) || G.ops->linear_upload(&G, &qg, &hq.L) ||
        C.ops->linear_upload(&C, &kc, &hk.L) || G.ops->linear_upload(&G, &kg, &hk.L) ||
        C.ops->linear_upload(&C, &dc, &hdn.L) || G.ops->linear_upload(&G, &dg, &hdn.L)) {
        fprintf(stderr, "test-cuda: linear_upload: %s\n", tb_errmsg());
        exit(1);
    }
    pair X = both(x, nd), W = both(w, d), Z = both(z, nd), Y = both_poison(nd), R = both_poison(n);
    pair Q = both_poison((size_t)n * 256), K = both_poison((size_t)n * 128), Q2 = both_poison((size_t)n * 256);
    C.ops->rmsnorm(&C, Y.c, R.c, X.c, W.c, n, d, 1e-5f);
    G.ops->rmsnorm(&G, Y.g, R.g, X.g, W.g, n, d, 1e-5f);
    C.ops->linear(&C, &qc, Y.c, n, Q.c);
    G.ops->linear(&G, &qg, Y.g, n, Q.g);
    C.ops->linear(&C, &kc, Y.c, n, K.c);
    G.ops->linear(&G, &kg, Y.g, n, K.g);
    cmp("rmsnorm -> bf16 op", s, Y.c, Y.g, nd, 1e-5);
    cmp("linear on rmsnorm's", s, Q.c, Q.g, (size_t)n * 256, tol_gemm());
    cmp("2nd linear on it", s, K.c, K.g, (size_t)n * 128, tol_gemm());
    /* y changed by another op: the linear must read the new values */
    C.ops->rmsnorm(&C, Y.c, NULL, X.c, W.c, n, d, 1e-5f);
    G.ops->rmsnorm(&G, Y.g, NULL, X.g, W.g, n, d, 1e-5f);
    C.ops->add(&C, Y.c, Y.c, Z.c, nd);
    G.ops->add(&G, Y.g, Y.g, Z.g, nd);
    C.ops->linear(&C, &qc, Y.c, n, Q2.c);
    G.ops->linear(&G, &qg, Y.g, n, Q2.g);
    cmp("linear after an add", s, Q2.c, Q2.g, (size_t)n * 256, tol_gemm());
    /* a linear on the first 17 rows of rmsnorm's output */
    C.ops->rmsnorm(&C, Y.c, NULL, X.c, W.c, n, d, 1e-5f);
    G.ops->rmsnorm(&G, Y.g, NULL, X.g, W.g, n, d, 1e-5f);
    pair K17 = both_poison((size_t)17 * 128);
    C.ops->linear(&C, &kc, Y.c, 17, K17.c);
    G.ops->linear(&G, &kg, Y.g, 17, K17.g);
    cmp("linear on 17 rows", s, K17.c, K17.g, (size_t)17 * 128, tol_gemm());
    pfree(K17);
    /* add_rmsnorm (a residual add and the next norm in one op) -> a linear */
    pair H = both_poison(nd), YN = both_poison(nd), Q3 = both_poison((size_t)n * 256);
    C.ops->add_rmsnorm(&C, H.c, YN.c, NULL, X.c, Z.c, W.c, n, d, 1e-5f);
    G.ops->add_rmsnorm(&G, H.g, YN.g, NULL, X.g, Z.g, W.g, n, d, 1e-5f);
    C.ops->linear(&C, &qc, YN.c, n, Q3.c);
    G.ops->linear(&G, &qg, YN.g, n, Q3.g);
    cmp("add_rmsnorm -> bf16 op", s, YN.c, YN.g, nd, 1e-5);
    cmp("linear on add_rmsnorm's", s, Q3.c, Q3.g, (size_t)n * 256, tol_gemm());
    pfree(H), pfree(YN), pfree(Q3);
    /* swiglu -> down_proj, out of place and in place */
    pair Gt = both(g, nf), U = both(u, nf), A = both_poison(nf), O = both_poison(nd), O2 = both_poison(nd);
    C.ops->swiglu(&C, A.c, Gt.c, U.c, nf);
    G.ops->swiglu(&G, A.g, Gt.g, U.g, nf);
    C.ops->linear(&C, &dc, A.c, n, O.c);
    G.ops->linear(&G, &dg, A.g, n, O.g);
    cmp("swiglu -> bf16 op", s, A.c, A.g, nf, 1e-6);
    cmp("linear on swiglu's", s, O.c, O.g, nd, tol_gemm());
    C.ops->swiglu(&C, Gt.c, Gt.c, U.c, nf);
    G.ops->swiglu(&G, Gt.g, Gt.g, U.g, nf);
    C.ops->linear(&C, &dc, Gt.c, n, O2.c);
    G.ops->linear(&G, &dg, Gt.g, n, O2.g);
    cmp("linear on swiglu's (in place)", s, O2.c, O2.g, nd, tol_gemm());
    pfree(X), pfree(W), pfree(Z), pfree(Y), pfree(R), pfree(Q), pfree(K), pfree(Q2);
    pfree(Gt), pfree(U), pfree(A), pfree(O), pfree(O2);
    C.ops->linear_release(&C, &qc), G.ops->linear_release(&G, &qg);
    C.ops->linear_release(&C, &kc), G.ops->linear_release(&G, &kg);
    C.ops->linear_release(&C, &dc), G.ops->linear_release(&G, &dg);
    free_linear(&hq), free_linear(&hk), free_linear(&hdn);
    free(x), free(w), free(z), free(g), free(u);
}

/* rmsnorm's bf16 copy read by a 2:4 weight at a prefill count (bf16): through
 * cuSPARSELt on the forced backend (read in place without a permutation,
 * gathered from bf16 with one) in a CUSPARSELT=1 build, and through the dense
 * copy on G (the rule keeps 256 rows dense). The row names the path that ran. */
static void test_bf16_operands_sp24(int n, int rows, int d, const char *kind, int force)
{
    if (G.o.precision != TB_PREC_BF16 || (force && !tb_cuda_cslt_built())) return;
    tb_backend *g = force ? forced_backend() : &G;
    char s[96];
    snprintf(s, sizeof s, "%s %dx%d, n %d%s", kind, rows, d, n, force ? ", forced" : "");
    float *x = hrand((size_t)n * d, 2), *w = hrand(d, 1);
    host_linear h;
    make_linear(&h, rows, d, kind, 0);
    tb_dlinear lc, lg;
    if (C.ops->linear_upload(&C, &lc, &h.L) || g->ops->linear_upload(g, &lg, &h.L)) {
        fprintf(stderr, "test-cuda: linear_upload: %s\n", tb_errmsg());
        exit(1);
    }
    float *xc = put(&C, x, (size_t)n * d * 4), *xg = put(g, x, (size_t)n * d * 4);
    float *wc = put(&C, w, (size_t)d * 4), *wg = put(g, w, (size_t)d * 4);
    float *yc = poison(&C, (size_t)n * d), *yg = poison(g, (size_t)n * d);
    float *oc = poison(&C, (size_t)n * rows), *og = poison(g, (size_t)n * rows);
    C.ops->rmsnorm(&C, yc, NULL, xc, wc, n, d, 1e-5f);
    g->ops->rmsnorm(g, yg, NULL, xg, wg, n, d, 1e-5f);
    C.ops->linear(&C, &lc, yc, n, oc);
    g->ops->linear(g, &lg, yg, n, og);
    if (C.ops->sync(&C) || g->ops->sync(g)) {
        fprintf(stderr, "test-cuda: %s\n", tb_errmsg());
        exit(1);
    }
    const int forms = tb_cuda_sp24_forms(lg.sparse);
    float *hc = get(&C, oc, (size_t)n * rows), *hg = get(g, og, (size_t)n * rows);
    row(forms & TB_CUDA_FORM_CSLT ? "rmsnorm -> cuSPARSELt" : "rmsnorm -> 2:4 dense", s, rel_f32(hg, hc, (size_t)n * rows),
        tol_gemm());
    free(hc), free(hg);
    C.ops->free(&C, xc), C.ops->free(&C, wc), C.ops->free(&C, yc), C.ops->free(&C, oc);
    g->ops->free(g, xg), g->ops->free(g, wg), g->ops->free(g, yg), g->ops->free(g, og);
    C.ops->linear_release(&C, &lc);
    g->ops->linear_release(g, &lg);
    free_linear(&h);
    free(x), free(w);
}

/* The 2:4 weights at decode and prefill token counts (test_sp24_linear's and
 * test_sp24_prefill's comments); alone with TB_TEST_ONLY=sp24. */
static void run_sp24(void)
{
    test_sp24_reorder(64, 128, 0);
    test_sp24_reorder(96, 320, 1);
    test_sp24_linear(32, 64, "2:4", 0);
    test_sp24_linear(96, 320, "2:4 perm", 1);
    test_sp24_linear(256, 768, "2:4", 1);
    test_sp24_linear(40, 64, "2:4 perm", 0); /* rows % 32: dense from the start */
    if (!quick) {
        test_sp24_reorder(1024, 4096, 1);
        test_sp24_linear(8224, 128, "2:4", 0); /* 2 pairs a warp, an odd pair count */
        test_sp24_linear(768, 4096, "2:4 perm", 1);
        test_sp24_linear(4096, 14336, "2:4", 0); /* a 7B down_proj */
    }
    /* 2:4 weights at prefill through cuSPARSELt (CUSPARSELT=1 builds, bf16):
     * the rule at the 7B shapes; small shapes forced through cuSPARSELt */
    const tb_sp24_path D = TB_SP24_PATH_DENSE, S = TB_SP24_PATH_CSLT;
    test_sp24_rule();
    test_bf16_operands_sp24(256, 256, 768, "2:4", 0);
    test_bf16_operands_sp24(256, 256, 768, "2:4", 1);
    test_bf16_operands_sp24(256, 256, 768, "2:4 perm", 1);
    test_sp24_prefill(256, 768, "2:4", 1, 1024, D, 1, 1);
    if (!quick) {
        test_sp24_prefill(768, 4096, "2:4 perm", 1, 1024, D, 1, 1);
        test_sp24_prefill(4096, 4096, "2:4", 0, 1031, S, 0, 0); /* an odd token count */
        test_sp24_prefill(4096, 4096, "2:4", 0, 2048, S, 0, 1);  /* q/o_proj */
        test_sp24_prefill(1024, 4096, "2:4", 0, 2048, D, 0, 0);  /* k/v_proj: the rule keeps it dense */
        test_sp24_prefill(14336, 4096, "2:4", 0, 256, S, 0, 1);  /* gate/up_proj at its threshold */
        test_sp24_prefill(14336, 4096, "2:4", 0, 2048, S, 0, 1); /* gate/up_proj */
        test_sp24_prefill(4096, 14336, "2:4", 0, 256, D, 0, 0);  /* down_proj below its threshold */
        test_sp24_prefill(4096, 14336, "2:4", 0, 2048, S, 0, 1); /* down_proj */
    }
    forced_close();
}

static void run_all(void)
{
    test_memory();
    test_embed(1000, 256, 37, TB_BF16);
    test_embed(1000, 256, 37, TB_F32);
    test_embed(1000, 256, 5, TB_BF16); /* decode: row by row */
    test_rmsnorm(1, 64);
    test_rmsnorm(37, 256);
    test_rmsnorm(quick ? 9 : 129, quick ? 1000 : 4096);
    test_rope(37, 4, 64, 0);
    test_rope(5, 8, 128, 300);
    /* the decode step's ops (position in backend memory) and a captured step */
    test_decode_ops(8, 2, 128, 1, 100, 0);
    test_decode_ops(4, 2, 64, 1, 0, 0);
    test_decode_ops(4, 2, 64, 3, 70, 50);
    test_decode_ops(4, 4, 80, 1, 33, 0);
    test_add_rmsnorm(1, 4096);
    test_add_rmsnorm(7, 300);
    test_linear_swiglu(100, 72, 1, "bf16", 1);   /* fused in bf16: K split 8 ways, a partial last block, biases */
    test_linear_swiglu(2048, 64, 1, "bf16", 0);  /* split 4 ways */
    test_linear_swiglu(4096, 128, 1, "bf16", 0); /* split 2 ways */
    test_linear_swiglu(8192, 64, 1, "bf16", 1);  /* no split */
    test_linear_swiglu(64, 68, 1, "bf16", 0);    /* cols % 8: the three ops */
    test_linear_swiglu(96, 64, 3, "bf16", 1);    /* 3 tokens: the three ops */
    test_linear_swiglu(128, 256, 1, "2:4", 0);   /* 2:4: the three ops */
    {
        const int qkv[3] = {256, 64, 64}, odd[3] = {100, 40, 8}, two[2] = {96, 32}, one[1] = {8200};
        test_linears(3, qkv, 256, 1, "bf16", 0); /* fused in bf16 */
        test_linears(3, odd, 72, 1, "bf16", 1);  /* rows straddling blocks, biases */
        test_linears(2, two, 128, 1, "bf16", 1);
        test_linears(1, one, 64, 1, "bf16", 0);  /* no split */
        test_linears(3, qkv, 68, 1, "bf16", 0);  /* cols % 8: one linear each */
        test_linears(3, qkv, 256, 2, "bf16", 1); /* 2 tokens: one linear each */
        test_linears(3, qkv, 256, 1, "2:4", 0);  /* 2:4: one linear each */
    }
    test_graph("bf16");
    test_graph("2:4");
    test_graph("2:4 perm");
    /* attention: MHA, GQA, odd token counts, decode at pos0 > 0, sliding window, head_dim 32/64/80/128, T 512 and 2048 */
    test_attention(4, 4, 64, 37, 0, 0, 1);
    test_attention(8, 2, 64, 130, 0, 0, 1);
    test_attention(4, 2, 32, 67, 0, 0, 1);
    test_attention(4, 1, 80, 45, 0, 0, 1);
    test_attention(8, 2, 128, 7, 100, 0, 0);
    test_attention(4, 2, 64, 1, 200, 0, 0);
    test_attention(4, 2, 64, 300, 0, 64, 1);
    test_attention(4, 2, 64, 9, 120, 50, 0);
    test_attention(4, 2, 128, 70, 0, 0, 0);
    test_attention(8, 8, 64, 200, 0, 0, 0);
    if (!quick) {
        test_attention(8, 2, 128, 512, 0, 0, 0);
        test_attention(4, 2, 64, 2048, 0, 0, 0);
        test_attention(4, 2, 128, 2048, 0, 512, 0);
        test_attention(8, 2, 128, 512, 0, 0, 1);
        test_attention(4, 2, 64, 2048, 0, 0, 1);
        test_attention(4, 2, 64, 2048, 0, 512, 1);
    }
    /* the bf16 inference versions at every edge: n 1..3 and not a multiple
     * of 64/128 rows, pos0 > 0, windows smaller than n, GQA 32/8 (a block of
     * version 2 holds 32 queries x 4 heads), 12/4 (3 heads: blocks straddle
     * queries), 32/1, MHA, head_dim 64 and 128, one 7B-shaped prefill */
    test_attention_versions(32, 8, 128, 1, 0, 0, 0);
    test_attention_versions(32, 8, 128, 2, 0, 0, 0);
    test_attention_versions(32, 8, 128, 3, 100, 0, 0);
    test_attention_versions(4, 4, 64, 1, 5, 0, 0);
    test_attention_versions(4, 4, 128, 3, 0, 0, 0);
    test_attention_versions(32, 8, 128, 200, 0, 0, 0);
    test_attention_versions(32, 8, 128, 333, 17, 0, 0);
    test_attention_versions(32, 8, 128, 300, 0, 64, 0);
    test_attention_versions(32, 8, 128, 257, 40, 100, 0);
    test_attention_versions(4, 4, 64, 130, 0, 0, 0);
    test_attention_versions(4, 4, 128, 257, 0, 100, 0);
    test_attention_versions(12, 4, 128, 150, 0, 0, 0);
    test_attention_versions(32, 1, 64, 70, 0, 0, 0);
    test_attention_versions(8, 2, 64, 9, 120, 50, 0);
    test_attention_versions(32, 8, 128, 1, 300, 0, 1); /* decode through attention_at */
    test_attention_versions(4, 2, 64, 3, 70, 50, 1);
    test_attention_versions(4, 4, 128, 20, 33, 0, 1);
    if (!quick) test_attention_versions(32, 8, 128, 2048, 0, 0, 0);
    test_elementwise(quick ? 4099 : 1000003);
    test_bf16_operands(129, 768, 1024);
    const char *kinds[] = {"f32", "bf16", "f16", "2:4 perm", "2:4", "4:8 perm", "2:4 f16", "1:4"};
    for (int i = 0; i < 8; i++) test_linear(96, 64, 17, kinds[i], i == 0);
    test_linear(96, 64, 5, "2:4 perm", 1);
    test_linear(256, 768, 1, "bf16", 1);
    /* the decode GEMV (1 token; its 2-16-token templates are checked by bench/gpu/gemv_bench.sh) */
    test_linear(100, 72, 1, "bf16", 1); /* split K 8 ways, a partial last block */
    test_linear(40, 200, 1, "bf16", 0); /* 25 chunks a row (a ragged stripe) */
    test_linear(64, 68, 1, "bf16", 1);  /* cols % 8: cuBLAS */
    test_linear(64, 72, 2, "bf16", 1);  /* 2 tokens: cuBLAS */
    if (!quick) {
        test_linear(1000, 4096, 1, "bf16", 1);
        test_linear(4096, 14336, 1, "bf16", 0); /* a 7B down_proj */
        test_linear(768, 256, 257, "2:4 perm", 0);
        test_linear(1024, 4096, 512, "bf16", 0);
    }
    run_sp24();
    test_gram(37, 64);
    test_gram(quick ? 100 : 1000, quick ? 96 : 768);
    test_losses(17, 4096);
    if (!quick) test_losses(257, 32000);
    test_adam(64, 96, 3);
    if (!quick) test_adam(768, 256, 5);
    test_learnmask(48, 64, 37, 2, 4, 3);
    test_learnmask(40, 96, 9, 4, 8, 2);
    if (!quick) test_learnmask(1024, 4096, 512, 2, 4, 3);
}

/* ---- TB_TEST_TIME=1: rough speed of the heavy ops at Mistral-7B layer shapes
 * (hidden 4096, 32/8 heads of 128, T 2048), GPU only; figures for notes, not a
 * benchmark (bench/ owns those): median of 5 after a warm-up, host clock after sync. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
#define TIME_OP(label, flops, stmt)                                                                                   \
    do {                                                                                                              \
        double t_[5];                                                                                                 \
        stmt;                                                                                                         \
        G.ops->sync(&G);                                                                                              \
        for (int r_ = 0; r_ < 5; r_++) {                                                                              \
            double t0_ = now_s();                                                                                     \
            stmt;                                                                                                     \
            G.ops->sync(&G);                                                                                          \
            t_[r_] = now_s() - t0_;                                                                                   \
        }                                                                                                             \
        qsort(t_, 5, sizeof(double), cmp_d);                                                                          \
        printf("time %-5s %-44s %9.3f ms %8.1f TFLOP/s\n", prec_name, label, t_[2] * 1e3, (flops) / t_[2] * 1e-12);  \
    } while (0)

static void time_ops(void)
{
    const int T = 2048, D = 4096, H = 32, KVH = 8, hd = 128, F = 14336;
    tb_attn_shape a = {H, KVH, hd, 0};
    size_t nq = (size_t)T * H * hd, nk = (size_t)T * KVH * hd;
    float *h = hrand((size_t)T * F, 1);
    float *q = put(&G, h, nq * 4), *k = put(&G, h, nk * 4), *v = put(&G, h + nk, nk * 4), *o = poison(&G, nq);
    float *dq = poison(&G, nq), *dk = poison(&G, nk), *dv = poison(&G, nk), *dO = put(&G, h + 7, nq * 4);
    float *lse = poison(&G, G.ops->attention_saved(&G, &a, T, T));
    double af = 4.0 * T * T / 2 * hd * H; /* causal: half of QK^T and PV */
    TIME_OP("attention fwd 32/8x128, T 2048", af, G.ops->attention(&G, &a, q, k, v, T, 0, o, lse));
    TIME_OP("attention fwd no-save 32/8x128, T 2048", af, G.ops->attention(&G, &a, q, k, v, T, 0, o, NULL));
    if (G.o.precision == TB_PREC_BF16) { /* the bf16 kernel's versions 1 and 3 beside the default (tb_attention_cuda.cu) */
        const char *was = getenv("TB_ATTN_FWD");
        char keep[16];
        snprintf(keep, sizeof keep, "%s", was ? was : "");
        setenv("TB_ATTN_FWD", "1", 1);
        TIME_OP("attention fwd no-save v1 32/8x128, T 2048", af, G.ops->attention(&G, &a, q, k, v, T, 0, o, NULL));
        setenv("TB_ATTN_FWD", "3", 1);
        TIME_OP("attention fwd no-save v3 32/8x128, T 2048", af, G.ops->attention(&G, &a, q, k, v, T, 0, o, NULL));
        if (was) setenv("TB_ATTN_FWD", keep, 1);
        else unsetenv("TB_ATTN_FWD");
    }
    TIME_OP("attention bwd 32/8x128, T 2048", 2.5 * af,
            G.ops->attention_backward(&G, &a, q, k, v, o, lse, dO, T, dq, dk, dv));
    host_linear hl;
    make_linear(&hl, F, D, "bf16", 0);
    tb_dlinear W;
    if (G.ops->linear_upload(&G, &W, &hl.L)) printf("upload failed: %s\n", tb_errmsg());
    float *x = put(&G, h, (size_t)T * D * 4), *y = poison(&G, (size_t)T * F);
    double lf = 2.0 * T * D * F;
    TIME_OP("linear 14336x4096, n 2048", lf, G.ops->linear(&G, &W, x, T, y));
    TIME_OP("linear_dx 14336x4096, n 2048", lf, G.ops->linear_dx(&G, &W, y, T, x, 0));
    float *dW = poison(&G, (size_t)F * D);
    TIME_OP("linear_dw 14336x4096, n 2048", lf, G.ops->linear_dw(&G, y, x, T, F, D, dW));
    double *Gm = G.ops->alloc(&G, (size_t)D * D * 8, "gram");
    G.ops->zero(&G, Gm, (size_t)D * D * 8);
    TIME_OP("gram_acc cols 4096, n 2048", 2.0 * T * D * D / 2, G.ops->gram_acc(&G, x, T, D, Gm));
    G.ops->linear_release(&G, &W);
    float *ptrs[] = {q, k, v, o, dq, dk, dv, dO, lse, x, y, dW};
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) G.ops->free(&G, ptrs[i]);
    G.ops->free(&G, Gm);
    free_linear(&hl);
    free(h);
}

/* ---- TB_TEST_TIME=prefill: the backend's linear at prefill token counts on
 * the four Mistral-7B linear shapes, a 2:4 weight (the path its table, or
 * TB_SP24_PREFILL, picks: the forms it then holds are printed) against a
 * dense bf16 weight (cuBLAS) and against the same 2:4 weight as a dense bf16
 * one with its zeros (cuBLAS: what the 2:4 weight's dense copy runs; cuBLAS
 * was faster on half-zero weights in the 2026-12-02 prefill row), each with
 * the backend's own x and y handling (f32 activations): where cuSPARSELt's
 * threshold belongs (tb_cuda_sp24_choose).
 * Per call: median of 5 trials of enough queued calls for ~20 ms, after a
 * first call that pays the one-time work (compression, algorithm search). */
static double time_linear(const tb_dlinear *W, const float *x, int n, float *y)
{
    G.ops->linear(&G, W, x, n, y);
    G.ops->sync(&G);
    double t0 = now_s();
    G.ops->linear(&G, W, x, n, y);
    G.ops->sync(&G);
    double one = now_s() - t0, t[5];
    int reps = one > 0 ? (int)(0.02 / one) : 100;
    reps = reps < 3 ? 3 : reps > 500 ? 500 : reps;
    for (int r = 0; r < 5; r++) {
        t0 = now_s();
        for (int i = 0; i < reps; i++) G.ops->linear(&G, W, x, n, y);
        G.ops->sync(&G);
        t[r] = (now_s() - t0) / reps;
    }
    qsort(t, 5, sizeof(double), cmp_d);
    return t[2] * 1e6;
}

static void time_prefill(void)
{
    const int shapes[][2] = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}};
    const int ns[] = {128, 256, 512, 1024, 2048};
    printf("prefill linears (%s): time per call, us\n", G.desc);
    for (int si = 0; si < 4; si++) {
        const int rows = shapes[si][0], cols = shapes[si][1];
        host_linear hs, hd;
        make_linear(&hs, rows, cols, "2:4", 0);
        make_linear(&hd, rows, cols, "bf16", 0);
        tb_dlinear S, D, Z;
        if (G.ops->linear_upload(&G, &S, &hs.L) || G.ops->linear_upload(&G, &D, &hd.L)) {
            printf("upload failed: %s\n", tb_errmsg());
            exit(1);
        }
        /* the 2:4 weight dense with its zeros, as bf16 (exact: its values are bf16) */
        host_linear hz = hd;
        {
            float *wz = malloc((size_t)rows * cols * 4), *rb = malloc((size_t)cols * 4);
            uint16_t *bz = malloc((size_t)rows * cols * 2);
            tb_linear_rows(&hs.L, 0, rows, wz, rb);
            for (size_t i = 0; i < (size_t)rows * cols; i++) bz[i] = tb_f32_to_bf16(wz[i]);
            free(wz), free(rb);
            hz.data = bz;
            hz.L.data = bz;
        }
        if (G.ops->linear_upload(&G, &Z, &hz.L)) {
            printf("upload failed: %s\n", tb_errmsg());
            exit(1);
        }
        float *h = hrand((size_t)2048 * cols, 1);
        float *x = put(&G, h, (size_t)2048 * cols * 4), *y = poison(&G, (size_t)2048 * rows);
        for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
            const int n = ns[i];
            double td = time_linear(&D, x, n, y), tz = time_linear(&Z, x, n, y), ts = time_linear(&S, x, n, y);
            const int f = tb_cuda_sp24_forms(S.sparse);
            printf("time prefill %5dx%-5d n %4d: dense bf16 %8.1f us, with zeros %8.1f us, 2:4 %8.1f us (forms%s%s%s), "
                   "dense/2:4 %.2fx, zeros/2:4 %.2fx\n",
                   rows, cols, n, td, tz, ts, f & TB_CUDA_FORM_SP24 ? " sp24" : "", f & TB_CUDA_FORM_CSLT ? " cuSPARSELt" : "",
                   f & TB_CUDA_FORM_DENSE ? " dense" : "", td / ts, tz / ts);
            fflush(stdout);
        }
        if (G.ops->sync(&G)) printf("error: %s\n", tb_errmsg());
        G.ops->free(&G, x), G.ops->free(&G, y);
        G.ops->linear_release(&G, &S), G.ops->linear_release(&G, &D), G.ops->linear_release(&G, &Z);
        free_linear(&hs), free_linear(&hd);
        free(hz.data);
        free(h);
    }
}

#endif /* TB_HAVE_CUDA */

int main(void)
{
#ifndef TB_HAVE_CUDA
    printf("test-cuda: skipped: this build has no CUDA (make CUDA=1 test-cuda)\n");
    return 0;
#else
    int count = tb_cuda_device_count();
    if (count == 0) {
        printf("test-cuda: skipped: no CUDA GPU visible\n");
        return 0;
    }
    quick = getenv("TB_TEST_QUICK") && atoi(getenv("TB_TEST_QUICK"));
    const int sp24_only = getenv("TB_TEST_ONLY") && !strcmp(getenv("TB_TEST_ONLY"), "sp24");
    tb_backend_opts oc = {.device = TB_DEVICE_CPU, .n_threads = 4, .precision = TB_PREC_F32};
    if (tb_backend_open(&C, &oc)) {
        fprintf(stderr, "test-cuda: cpu backend: %s\n", tb_errmsg());
        return 1;
    }
    /* --gpu past the count: a one-line error */
    tb_backend bad;
    tb_backend_opts ob = {.device = TB_DEVICE_CUDA, .gpu = count, .precision = TB_PREC_F32};
    int rc = tb_backend_open(&bad, &ob);
    printf("  --gpu %d -> %s\n", count, rc ? tb_errmsg() : "(opened!)");
    if (!rc) tb_backend_close(&bad);
    prec_name = "-";
    row("open --gpu past count", "", rc && strstr(tb_errmsg(), "--gpu") ? 0 : 1, 0);

    printf("%-20s %-5s %-34s %10s %8s\n", "op", "prec", "shape", "rel err", "tol");
    const tb_precision precs[2] = {TB_PREC_F32, TB_PREC_BF16};
    const char *only = getenv("TB_TEST_PREC"); /* "f32" or "bf16": one precision (sanitizer runs) */
    for (int p = 0; p < 2; p++) {
        if (only && strcmp(only, p ? "bf16" : "f32")) continue;
        tb_backend_opts og = {.device = TB_DEVICE_CUDA, .gpu = 0, .precision = precs[p], .n_threads = 4};
        if (tb_backend_open(&G, &og)) {
            fprintf(stderr, "test-cuda: cuda backend: %s\n", tb_errmsg());
            return 1;
        }
        prec_name = precs[p] == TB_PREC_F32 ? "f32" : "bf16";
        printf("== %s (reference: %s)\n", G.desc, C.desc);
        const char *tt = getenv("TB_TEST_TIME");
        if (tt && !strcmp(tt, "prefill")) {
            if (G.o.precision == TB_PREC_BF16) time_prefill();
        } else if (tt && atoi(tt)) {
            time_ops();
        } else if (sp24_only) {
            run_sp24();
        } else {
            run_all();
        }
        if (G.ops->sync(&G)) {
            fprintf(stderr, "test-cuda: %s\n", tb_errmsg());
            n_fail++;
        }
        tb_backend_close(&G);
    }
    /* cuSPARSELt's other output path (bf16 y, widened with the bias by our
     * pass), forced: the library takes f32 y where it can, so a GPU where it
     * does would never run this one */
    if (tb_cuda_cslt_built() && !(only && strcmp(only, "bf16")) && !getenv("TB_TEST_TIME")) {
        setenv("TB_CSLT_OUT", "bf16", 1);
        tb_backend_opts og = {.device = TB_DEVICE_CUDA, .gpu = 0, .precision = TB_PREC_BF16, .n_threads = 4};
        if (tb_backend_open(&G, &og)) {
            fprintf(stderr, "test-cuda: cuda backend: %s\n", tb_errmsg());
            return 1;
        }
        prec_name = "bf16";
        printf("== %s, TB_CSLT_OUT=bf16\n", G.desc);
        test_sp24_prefill(256, 768, "2:4", 1, 1024, TB_SP24_PATH_DENSE, 1, 1);
        if (!quick) test_sp24_prefill(768, 4096, "2:4 perm", 1, 1024, TB_SP24_PATH_DENSE, 1, 1);
        forced_close();
        if (G.ops->sync(&G)) {
            fprintf(stderr, "test-cuda: %s\n", tb_errmsg());
            n_fail++;
        }
        tb_backend_close(&G);
        unsetenv("TB_CSLT_OUT");
    }
    tb_backend_close(&C);
    printf("test-cuda: %d checks, %d failed\n", n_rows, n_fail);
    return n_fail ? 1 : 0;
#endif
}
