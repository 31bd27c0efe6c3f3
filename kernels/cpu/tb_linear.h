/* tb_linear.h - a linear layer y = x W^T (+ b) whose weights stay as stored.
 *
 * W has nn.Linear's layout: [rows = out_features, cols = in_features], row
 * major. A dense W keeps its file dtype (F32, F16 or BF16) and usually points
 * into the checkpoint's mmap; the forward reads it as stored (tb_gemv) or
 * converts a panel or tile of rows at a time to f32 in a per-thread scratch
 * buffer (tb_gemm, or cblas_sgemm without AVX2), so a run costs the mapping
 * plus n_threads panels, never an f32 copy of the model.
 *
 * Every consumer (the model, tests, future tools) goes through the functions
 * below and never reads `data` itself. A new storage format (the pruned .tb
 * format: N of every M values kept + 2-bit indices, optional input-channel
 * permutation) is a new tb_linear_format value, its fields, and a case in each
 * function here; the model code does not change.
 */
#ifndef TB_LINEAR_H
#define TB_LINEAR_H

#include <stddef.h>
#include <stdint.h>

#include "tb_dtype.h"

typedef enum {
    TB_LINEAR_DENSE = 0, /* rows x cols elements of `dtype` at `data` */
    TB_LINEAR_NM = 1,    /* N of every M along cols: `data` holds the kept values
                          * [rows, cols/M*N] of `dtype`, `indices` their in-group
                          * positions, in the .tb layout (formats/tb_pack.h) */
} tb_linear_format;

typedef struct {
    const char *name;        /* tensor name for messages; not owned */
    int rows, cols;          /* out_features, in_features */
    tb_linear_format format;
    tb_dtype dtype;          /* dense: F32, F16 or BF16 */
    const void *data;        /* not owned (mmapped checkpoint) */
    const float *bias;       /* [rows] f32, or NULL; not owned */
    int n, m;                /* TB_LINEAR_NM: the pattern */
    const uint8_t *indices;  /* TB_LINEAR_NM; not owned */
    const int32_t *perm;     /* NULL, or [cols]: stored column j is input channel
                              * perm[j] (N:M channel permutation); not owned */
} tb_linear;

/* Per-thread f32 work space shared by all kernels of a run: thread t owns
 * buf[t * per_thread ...]. Allocated once; sized with the *_scratch() functions. */
typedef struct {
    int n_threads;
    size_t per_thread; /* floats */
    float *buf;
} tb_scratch;

int tb_scratch_init(tb_scratch *s, int n_threads, size_t per_thread_floats);
void tb_scratch_free(tb_scratch *s);

/* Our threads split the work; OpenBLAS must then run each call on the calling
 * thread, or 2 threads x N BLAS threads oversubscribe the cores. Idempotent. */
void tb_blas_single_thread(void);

/* Floats of per-thread scratch tb_linear_forward needs for this layer. */
size_t tb_linear_scratch(const tb_linear *L);

/* y[n, rows] = x[n, cols] W^T (+ bias). x and y must not overlap. Threads over
 * tiles of output rows (s->n_threads). A few tokens (decode) go through
 * tb_gemv, which reads W as stored; more through tb_gemm's panels of W
 * decoded to f32 (tb_gemv.h) where the CPU has AVX2 or AVX-512, else tiles
 * of W decoded to f32 and sgemm. Each output is computed by one thread:
 * results do not depend on the thread count. */
void tb_linear_forward(const tb_linear *L, const float *x, int n, float *y, const tb_scratch *s);
/* The tile path whatever n (tests and benchmarks compare the two). */
void tb_linear_forward_tiles(const tb_linear *L, const float *x, int n, float *y, const tb_scratch *s);

/* Rows r0 .. r0+nr-1 of W as dense f32 [nr, cols] in the model's column order
 * (a stored permutation undone, pruned entries 0). row_buf: cols floats of
 * work space, used only when W is permuted (NULL otherwise is fine). */
void tb_linear_rows(const tb_linear *L, int r0, int nr, float *out, float *row_buf);

/* Row r of W as f32 (cols values): an embedding lookup when W is a table. */
void tb_linear_row(const tb_linear *L, int r, float *out);

#endif
