/* sgemm_peak - OpenBLAS cblas_sgemm GFLOP/s on this machine, the ceiling that
 * tb-run's throughput is compared with in BENCHMARKS.md, and the FMA units'
 * own peak: independent register-only fused multiply-adds, as wide as the
 * CPU has (AVX-512, else AVX2+FMA), no memory traffic.
 *
 *   sgemm_peak [THREADS]   (default 1)
 *
 * Runs C = A B^T for square 1024^3 (the machine's near-peak figure) and for
 * the shape tb-run's linear layers use on tiny-llama-6m (512 tokens x 128 rows
 * of a 256-wide weight per thread), reporting the best of several repeats.
 * THREADS copies run at once, each on its own matrices with OpenBLAS set to
 * one thread, which is how tb-run uses it; the FMA loop runs in THREADS
 * threads as well. OpenBLAS picks its kernel from the CPU model
 * (OPENBLAS_CORETYPE overrides; the line sgemm_core names it). Built by bench/ppl_bench.sh with a
 * plain cc line (no Makefile rule: it is a measurement, not part of the toolkit). */
#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
    int m, n, k, reps;
    double best; /* seconds per call */
} job;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *run(void *arg)
{
    job *j = arg;
    float *a = malloc(sizeof(float) * (size_t)j->m * j->k), *b = malloc(sizeof(float) * (size_t)j->n * j->k),
          *c = malloc(sizeof(float) * (size_t)j->m * j->n);
    if (!a || !b || !c) { fprintf(stderr, "sgemm_peak: out of memory\n"); exit(3); }
    for (size_t i = 0; i < (size_t)j->m * j->k; i++) a[i] = (float)(i % 7) * 0.25f;
    for (size_t i = 0; i < (size_t)j->n * j->k; i++) b[i] = (float)(i % 5) * 0.5f;
    j->best = 1e30;
    for (int r = 0; r < j->reps; r++) {
        double t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->m, j->n, j->k, 1.0f, a, j->k, b, j->k, 0.0f, c, j->n);
        t = now() - t;
        if (t < j->best) j->best = t;
    }
    free(a);
    free(b);
    free(c);
    return NULL;
}

static double gflops(int threads, int m, int n, int k, int reps)
{
    pthread_t th[64];
    job jobs[64];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job){m, n, k, reps, 0};
        pthread_create(&th[t], NULL, run, &jobs[t]);
    }
    double total = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        total += 2.0 * m * n * k / jobs[t].best;
    }
    return total / 1e9;
}

/* 12 independent chains of fused multiply-adds (latency 4 x 2 FMA units x
 * 1.5 to spare; a loop of 192 FMAs ran at half this rate on a Zen 5), summed
 * at the end so that nothing is dead code. Returns FLOPs done. */
#if defined(__x86_64__)
#include <immintrin.h>
#define FMA_LOOP(VEC, SET1, FMA, ADD, TOF)                                                                             \
    VEC acc[12], m = SET1(0.999999f), a = SET1(1e-7f);                                                             \
    for (int i = 0; i < 12; i++) acc[i] = SET1((float)i);                                                              \
    for (long it = 0; it < iters; it++) {                                                                              \
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) acc[i] = FMA(acc[i], m, a);                              \
    }                                                                                                                  \
    for (int i = 1; i < 12; i++) acc[0] = ADD(acc[0], acc[i]);                                                         \
    sink = TOF(acc[0]);
static volatile float sink;
__attribute__((target("avx512f"))) static double fma512(long iters)
{
    FMA_LOOP(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_reduce_add_ps)
    return 2.0 * 16 * 12 * (double)iters;
}
__attribute__((target("avx2,fma"))) static float first256(__m256 v) { return _mm256_cvtss_f32(v); }
__attribute__((target("avx2,fma"))) static double fma256(long iters)
{
    FMA_LOOP(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, first256)
    return 2.0 * 8 * 12 * (double)iters;
}
static const char *fma_isa(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return "avx512";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
    return NULL;
}
static void *fma_run(void *arg)
{
    double *best = arg; /* out: GFLOP/s, the best of 300 runs of ~1 ms (a loaded machine preempts longer ones) */
    const char *isa = fma_isa();
    *best = 0;
    for (int r = 0; r < 300; r++) {
        double t = now();
        double f = isa[3] == '5' ? fma512(200000) : fma256(200000); /* "avx512" or "avx2" */
        t = now() - t;
        if (f / t / 1e9 > *best) *best = f / t / 1e9;
    }
    return NULL;
}
static void fma_peak(int threads)
{
    if (!fma_isa()) return;
    pthread_t th[64];
    double g[64], total = 0;
    for (int t = 0; t < threads; t++) pthread_create(&th[t], NULL, fma_run, &g[t]);
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        total += g[t];
    }
    printf("fma_peak_%s_gflops %.1f\n", fma_isa(), total);
}
#else
static void fma_peak(int threads) { (void)threads; }
#endif

char *openblas_get_corename(void);

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 64) { fprintf(stderr, "sgemm_peak: THREADS must be 1..64\n"); return 1; }
    openblas_set_num_threads(1);
    printf("sgemm_square_1024_gflops %.1f\n", gflops(threads, 1024, 1024, 1024, 10));
    printf("sgemm_linear_512x128x256_gflops %.1f\n", gflops(threads, 512, 128, 256, 200));
    printf("sgemm_core %s\n", openblas_get_corename());
    fma_peak(threads);
    return 0;
}
