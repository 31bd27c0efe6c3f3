/* gemv_bench - the linear kernels of kernels/cpu/tb_gemv.c (tb_gemv for a
 * few tokens, tb_gemm's panels for many) against the tile path (decode to
 * f32 + sgemm) on decoder shapes, one thread.
 *
 *   gemv_bench [SHAPES] [TOKENS]
 *
 * SHAPES: "tiny" (tiny-llama-6m: 256x256, 768x256, 256x768, 4096x256), "1b"
 * (Llama-3.2-1B: 2048x2048, 512x2048, 8192x2048, 2048x8192), "head" (its
 * 128256-token lm_head, 525 MB in bf16), default all three.
 * TOKENS: comma list, default 1,2,4,8,16. For each shape, weight format
 * (dense bf16, 2:4 bf16) and token count it prints the best-of-N seconds per
 * call of tb_gemv with every ISA this CPU has, of tb_gemm with the vector
 * ISAs, and of tb_linear_forward's tile path, as GB/s of weight bytes read
 * and GFLOP/s (2 x rows x cols x tokens, the dense product's count, for 2:4
 * too). The weights of one call are larger
 * than L2 on the 1B shapes, so those figures are memory/L3 bound; tiny ones
 * run from L2. BUDGET (seconds, default 1) bounds each measurement's
 * repeats; the best repeat is printed. Built and run by bench/gemv_bench.sh (a plain cc line against
 * build/libtensorbit.a; a measurement, not part of the toolkit).
 */
#include "tb_dtype.h"
#include "tb_gemv.h"
#include "tb_linear.h"
#include "tb_pack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static double best_of(double budget, void (*fn)(void *), void *ctx)
{
    double best = 1e30, t_end = now() + budget;
    int reps = 0;
    while (reps < 3 || (now() < t_end && reps < 2000)) {
        double t0 = now();
        fn(ctx);
        double dt = now() - t0;
        if (dt < best) best = dt;
        reps++;
    }
    return best;
}

typedef struct {
    const tb_linear *L;
    const float *x;
    float *y, *work;
    int n;
    tb_scratch *s;
} call;

static void run_gemv(void *p)
{
    call *c = p;
    tb_gemv(c->L, c->x, c->n, c->y, 0, c->L->rows, c->work);
}

static void run_gemm(void *p)
{
    call *c = p;
    tb_gemm(c->L, c->x, c->n, c->y, 0, c->L->rows, c->work);
}

static void run_tiles(void *p)
{
    call *c = p;
    tb_linear_forward_tiles(c->L, c->x, c->n, c->y, c->s);
}

int main(int argc, char **argv)
{
    const char *which = argc > 1 ? argv[1] : "all";
    const char *toks = argc > 2 ? argv[2] : "1,2,4,8,16";
    int tokens[16], nt = 0;
    for (const char *p = toks; *p && nt < 16;) {
        tokens[nt++] = atoi(p);
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    struct { const char *set; int rows, cols; } shapes[] = {
        {"tiny", 256, 256}, {"tiny", 768, 256}, {"tiny", 256, 768}, {"tiny", 4096, 256},
        {"1b", 2048, 2048}, {"1b", 512, 2048}, {"1b", 8192, 2048}, {"1b", 2048, 8192}, {"head", 128256, 2048},
    };
    /* seconds per measurement: the best call of as many as fit (at least 3) */
    const double budget = getenv("BUDGET") ? atof(getenv("BUDGET")) : 1.0;
    tb_blas_single_thread();
    printf("# gemv_bench: best-of seconds per call, 1 thread; GB/s = weight bytes / time\n");
    printf("%-6s %-11s %-7s %3s %-12s %10s %8s %8s\n", "set", "shape", "format", "n", "kernel", "us", "GB/s",
           "GFLOP/s");
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        if (strcmp(which, "all") && strcmp(which, shapes[si].set)) continue;
        int R = shapes[si].rows, C = shapes[si].cols;
        size_t RC = (size_t)R * C;
        uint16_t *wd = malloc(RC * 2), *wv = malloc(RC);
        uint8_t *ix = malloc((size_t)R * (size_t)tb_nm_index_row_bytes(C, 2, 4));
        float *x = malloc(sizeof(float) * 512 * C), *y = malloc(sizeof(float) * 512 * R);
        for (size_t i = 0; i < RC; i++) wd[i] = tb_f32_to_bf16(frand());
        for (size_t i = 0; i < RC / 2; i++) wv[i] = tb_f32_to_bf16(frand());
        for (size_t i = 0; i < (size_t)R * (size_t)tb_nm_index_row_bytes(C, 2, 4); i++) {
            static const uint8_t nib[6] = {0x4, 0x8, 0xc, 0x9, 0xd, 0xe}; /* the six 2-of-4 position pairs */
            ix[i] = (uint8_t)(nib[rng % 6] | nib[(rng >> 8) % 6] << 4);
            frand();
        }
        for (int i = 0; i < 512 * C; i++) x[i] = frand();
        tb_linear dense = {.name = "d", .rows = R, .cols = C, .format = TB_LINEAR_DENSE, .dtype = TB_BF16, .data = wd};
        tb_linear nm = {.name = "s", .rows = R, .cols = C, .format = TB_LINEAR_NM, .dtype = TB_BF16, .data = wv,
                        .n = 2, .m = 4, .indices = ix};
        const tb_linear *Ls[2] = {&dense, &nm};
        for (int f = 0; f < 2; f++) {
            const tb_linear *L = Ls[f];
            double bytes = f == 0 ? 2.0 * RC : 1.0 * RC + RC / 8.0;
            tb_scratch s;
            tb_scratch_init(&s, 1, tb_linear_scratch(L));
            float *work = malloc(tb_gemm_scratch(L) * sizeof *work);
            for (int k = 0; k < nt; k++) {
                int n = tokens[k];
                if (n > 512) continue;
                call c = {L, x, y, work, n, &s};
                char shape[32], kernel[32];
                snprintf(shape, sizeof shape, "%dx%d", R, C);
                const double flops = 2.0 * (double)RC * n;
#define ROW(name, t)                                                                                                   \
    printf("%-6s %-11s %-7s %3d %-12s %10.1f %8.2f %8.1f\n", shapes[si].set, shape, f ? "2:4" : "dense", n, name,      \
           (t) * 1e6, bytes / (t) / 1e9, flops / (t) / 1e9)
                for (int isa = 0; isa < TB_ISA_COUNT; isa++) {
                    if (!tb_isa_available((tb_isa)isa)) continue;
                    tb_gemv_set_isa((tb_isa)isa);
                    double t = best_of(budget, run_gemv, &c);
                    snprintf(kernel, sizeof kernel, "gemv-%s", tb_isa_name((tb_isa)isa));
                    ROW(kernel, t);
                    if (isa == TB_ISA_SCALAR) continue;
                    t = best_of(budget, run_gemm, &c);
                    snprintf(kernel, sizeof kernel, "gemm-%s", tb_isa_name((tb_isa)isa));
                    ROW(kernel, t);
                }
                double t = best_of(budget, run_tiles, &c);
                ROW("tiles", t);
#undef ROW
                fflush(stdout);
            }
            tb_scratch_free(&s);
            free(work);
        }
        free(wd), free(wv), free(ix), free(x), free(y);
    }
    return 0;
}
