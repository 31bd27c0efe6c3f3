#include "tb_linear.h"
#include "tb_error.h"
#include "tb_gemv.h"
#include "tb_pack.h"
#include "tb_threads.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A tile of 64K f32 values (256 KB) is large enough for sgemm to run near its
 * peak on hundreds of tokens and small enough to stay in L2 while it is used. */
#define TILE_FLOATS 65536

/* Up to this many tokens tb_gemv (weights read as stored, 4 x 4 tiles of
 * dot products) runs; past them tb_gemm's panels where the CPU has AVX2 or
 * AVX-512, else sgemm on decoded tiles (the x86-64-v2 floor). Crossovers
 * measured with bench/gemv_bench.c on tiny-llama-6m's shapes (BENCHMARKS.md):
 * dense, the panels win from 16-32 tokens with both ISAs; 2:4 needs no
 * decoding in tb_gemv, which with AVX-512 matches the panels up to a few
 * hundred tokens and with AVX2 up to ~64; against sgemm tiles (scalar ISA)
 * tb_gemv wins to 32 dense and 128 2:4 tokens. */
#define GEMV_MAX_DENSE 16
#define GEMV_MAX_DENSE_SCALAR 32
#define GEMV_MAX_NM 128
#define GEMV_MAX_NM_AVX2 64
/* rows per parallel unit of the gemv path: whole register tiles, and enough
 * units that threads balance */
#define GEMV_ROW_UNIT 16

int tb_scratch_init(tb_scratch *s, int n_threads, size_t per_thread_floats)
{
    s->n_threads = n_threads < 1 ? 1 : n_threads;
    /* round up to a cache line so threads never share one */
    s->per_thread = (per_thread_floats + 15) & ~(size_t)15;
    s->buf = tb_malloc((size_t)s->n_threads * s->per_thread * sizeof(float));
    return s->buf ? TB_OK : TB_EIO;
}

void tb_scratch_free(tb_scratch *s)
{
    free(s->buf);
    memset(s, 0, sizeof *s);
}

void tb_blas_single_thread(void) { openblas_set_num_threads(1); }

static int tile_rows_max(const tb_linear *L)
{
    int t = TILE_FLOATS / (L->cols > 0 ? L->cols : 1);
    if (t < 8) t = 8;
    return t < L->rows ? t : L->rows;
}

static int gemv_max_tokens(const tb_linear *L)
{
    const tb_isa isa = tb_gemv_isa();
    if (L->format == TB_LINEAR_NM) return isa == TB_ISA_AVX2 ? GEMV_MAX_NM_AVX2 : GEMV_MAX_NM;
    return isa >= TB_ISA_AVX2 ? GEMV_MAX_DENSE : GEMV_MAX_DENSE_SCALAR;
}

static int use_gemv(const tb_linear *L, int n) { return n <= gemv_max_tokens(L) && tb_gemv_supports(L); }

/* Past the gemv counts, tb_gemm's panels where the CPU has AVX2 or AVX-512;
 * sgemm on decoded tiles otherwise (the x86-64-v2 floor, other architectures). */
static int use_gemm(void) { return tb_gemv_isa() >= TB_ISA_AVX2; }

size_t tb_linear_scratch(const tb_linear *L)
{
    /* f32 weights are used in place; the others need a decoded tile, and a
     * permuted one a row to decode into before scattering it */
    size_t tiles = 0;
    if (!(L->format == TB_LINEAR_DENSE && L->dtype == TB_F32 && !L->perm))
        tiles = (size_t)tile_rows_max(L) * (size_t)L->cols + (L->perm ? (size_t)L->cols : 0);
    size_t gemv = tb_gemv_supports(L) ? tb_gemv_scratch(L, gemv_max_tokens(L)) : 0;
    size_t gemm = tb_gemm_scratch(L);
    size_t most = tiles > gemv ? tiles : gemv;
    return most > gemm ? most : gemm;
}

/* rows in stored column order */
static void decode_stored(const tb_linear *L, int r0, int nr, float *out)
{
    if (L->format == TB_LINEAR_NM)
        tb_nm_unpack_rows(L->dtype, L->data, L->indices, L->cols, L->n, L->m, r0, nr, out);
    else
        tb_to_f32(L->dtype, L->data, (size_t)r0 * L->cols, (size_t)nr * L->cols, out);
}

void tb_linear_rows(const tb_linear *L, int r0, int nr, float *out, float *row_buf)
{
    if (!L->perm) {
        decode_stored(L, r0, nr, out);
        return;
    }
    /* W_model[:, perm[j]] = W_stored[:, j]: decode a row, scatter it */
    for (int r = 0; r < nr; r++) {
        decode_stored(L, r0 + r, 1, row_buf);
        tb_unpermute_row(row_buf, out + (size_t)r * L->cols, L->cols, L->perm);
    }
}

typedef struct {
    const tb_linear *L;
    const float *x;
    float *y;
    int n, tile;
    const tb_scratch *s;
} lin_job;

static void lin_tiles(void *ctx, int64_t begin, int64_t end, int tid)
{
    const lin_job *j = ctx;
    const tb_linear *L = j->L;
    float *tmp = j->s->buf + (size_t)tid * j->s->per_thread;
    for (int64_t t = begin; t < end; t++) {
        int r0 = (int)t * j->tile;
        int nr = L->rows - r0 < j->tile ? L->rows - r0 : j->tile;
        if (nr <= 0) break;
        const float *w;
        if (L->format == TB_LINEAR_DENSE && L->dtype == TB_F32 && !L->perm) {
            w = (const float *)L->data + (size_t)r0 * L->cols;
        } else {
            tb_linear_rows(L, r0, nr, tmp, tmp + (size_t)j->tile * L->cols);
            w = tmp;
        }
        /* y[:, r0:r0+nr] = x @ w^T, written in place with ldc = rows */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, nr, L->cols, 1.0f, j->x, L->cols, w, L->cols,
                    0.0f, j->y + r0, L->rows);
        if (L->bias)
            for (int i = 0; i < j->n; i++)
                for (int r = 0; r < nr; r++) j->y[(size_t)i * L->rows + r0 + r] += L->bias[r0 + r];
    }
}

typedef struct {
    const tb_linear *L;
    const float *x;
    float *y;
    int n;
    const tb_scratch *s;
} gemv_job;

static void gemv_units(void *ctx, int64_t begin, int64_t end, int tid)
{
    const gemv_job *j = ctx;
    int r0 = (int)begin * GEMV_ROW_UNIT, r1 = (int)end * GEMV_ROW_UNIT;
    if (r1 > j->L->rows) r1 = j->L->rows;
    tb_gemv(j->L, j->x, j->n, j->y, r0, r1, j->s->buf ? j->s->buf + (size_t)tid * j->s->per_thread : NULL);
}

static void gemm_units(void *ctx, int64_t begin, int64_t end, int tid)
{
    const gemv_job *j = ctx;
    const int unit = tb_gemm_rows_unit();
    int r0 = (int)begin * unit, r1 = (int)end * unit;
    if (r1 > j->L->rows) r1 = j->L->rows;
    tb_gemm(j->L, j->x, j->n, j->y, r0, r1, j->s->buf + (size_t)tid * j->s->per_thread);
}

void tb_linear_forward(const tb_linear *L, const float *x, int n, float *y, const tb_scratch *s)
{
    if (n <= 0) return;
    if (use_gemv(L, n)) {
        gemv_job j = {L, x, y, n, s};
        tb_parallel_for(s->n_threads, (L->rows + GEMV_ROW_UNIT - 1) / GEMV_ROW_UNIT, gemv_units, &j);
        return;
    }
    if (use_gemm()) {
        gemv_job j = {L, x, y, n, s};
        const int unit = tb_gemm_rows_unit();
        tb_parallel_for(s->n_threads, (L->rows + unit - 1) / unit, gemm_units, &j);
        return;
    }
    tb_linear_forward_tiles(L, x, n, y, s);
}

void tb_linear_forward_tiles(const tb_linear *L, const float *x, int n, float *y, const tb_scratch *s)
{
    if (n <= 0) return;
    /* enough tiles that every thread gets the same number, none above the max */
    int nt = s->n_threads;
    int tmax = tile_rows_max(L);
    int n_tiles = (L->rows + tmax - 1) / tmax;
    n_tiles = (n_tiles + nt - 1) / nt * nt;
    if (n_tiles > L->rows) n_tiles = L->rows;
    int tile = (L->rows + n_tiles - 1) / n_tiles;
    n_tiles = (L->rows + tile - 1) / tile;
    lin_job j = {L, x, y, n, tile, s};
    tb_parallel_for(nt, n_tiles, lin_tiles, &j);
}

void tb_linear_row(const tb_linear *L, int r, float *out)
{
    if (!L->perm) {
        decode_stored(L, r, 1, out);
        return;
    }
    /* rare (tables are not pruned): hot paths use tb_linear_rows with scratch */
    float *buf = malloc((size_t)L->cols * sizeof(float));
    if (!buf) { /* NaN, not zeros: a failure must show in the loss, never pass silently */
        for (int j = 0; j < L->cols; j++) out[j] = NAN;
        return;
    }
    tb_linear_rows(L, r, 1, out, buf);
    free(buf);
}
