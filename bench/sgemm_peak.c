/* sgemm_peak - OpenBLAS cblas_sgemm GFLOP/s on this machine, the ceiling that
 * tb-run's throughput is compared with in BENCHMARKS.md.
 *
 *   sgemm_peak [THREADS]   (default 1)
 *
 * Runs C = A B^T for square 1024^3 (the machine's near-peak figure) and for
 * the shape tb-run's linear layers use on tiny-llama-6m (512 tokens x 128 rows
 * of a 256-wide weight per thread), reporting the best of several repeats.
 * THREADS copies run at once, each on its own matrices with OpenBLAS set to
 * one thread, which is how tb-run uses it. Built by bench/ppl_bench.sh with a
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

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 64) { fprintf(stderr, "sgemm_peak: THREADS must be 1..64\n"); return 1; }
    openblas_set_num_threads(1);
    printf("sgemm_square_1024_gflops %.1f\n", gflops(threads, 1024, 1024, 1024, 10));
    printf("sgemm_linear_512x128x256_gflops %.1f\n", gflops(threads, 512, 128, 256, 200));
    return 0;
}
