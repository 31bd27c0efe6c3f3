/* tb_sp24.h - y = x W^T with W 2:4 sparse on the sparse tensor cores (CUDA=1
 * builds; kernels/cuda/tb_sp24_gemm.cu). The C face the CUDA backend calls
 * for a linear whose weight is N:M 2:4 along its input dimension.
 *
 *   tb_sp24_weight w;
 *   tb_cuda_sp24_prepare(&w, values, indices, rows, cols, perm); // once, at load
 *   switch (tb_cuda_sp24_choose(rows, cols, n, have_cusparselt)) {
 *   case TB_SP24_PATH_KERNEL: tb_cuda_sp24_linear(&w, x, TB_F32, n, y, TB_F32, bias, ws, stream, TB_SP24_AUTO); break;
 *   case TB_SP24_PATH_CSLT:   tb_cuda_cslt_linear(ctx, &w, comp, x, NULL, n, y, bias, stream); break; // CUSPARSELT=1
 *   case TB_SP24_PATH_DENSE:  ... cuBLAS on a dense copy (tb_cuda_sp24_to_dense) ...
 *   }
 *   tb_cuda_sp24_release(&w);
 *
 * values/indices are the host .tb arrays (formats/tb_pack.h: bf16 kept values
 * [rows, cols/2], 2-bit positions [rows, cols/8]); perm is the .tb "<W>.perm"
 * (NULL if none): x is gathered through it on the device, so callers pass x
 * in the model's channel order. The device copy is 0.5625x the bytes of the
 * dense bf16 weight (kernels/cpu/tb_sp24_layout.h has the layout).
 *
 * Errors: the library convention (tb_error.h): TB_EUSAGE for a shape the
 * kernel cannot take (rows % 32, cols % 64), TB_EDATA for bad indices, TB_EIO
 * for CUDA failures (allocation, launch), with a one-line message.
 */
#ifndef TB_SP24_H
#define TB_SP24_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "tb_dtype.h" /* a C header without its own extern "C" */

typedef struct {
    int64_t rows, cols;
    void *a;      /* device: kept values in fragment order (tb_sp24_layout.h) */
    void *e;      /* device: metadata */
    int32_t *perm; /* device [cols] or NULL */
} tb_sp24_weight;

typedef enum {
    TB_SP24_AUTO = 0,   /* the measured choice for (rows, cols, n) */
    TB_SP24_TILED = 1,  /* version 1: 128x128x64 tiles, mma.sp, cp.async 4-stage pipeline */
    TB_SP24_SKINNY = 2, /* version 2: 1-16 tokens, weights streamed to registers, split-K in a block */
} tb_sp24_kernel;

/* Reorder the host .tb arrays and upload (synchronous). */
int tb_cuda_sp24_prepare(tb_sp24_weight *w, const uint16_t *values, const uint8_t *indices, int64_t rows,
                         int64_t cols, const int32_t *perm);
/* The same from the .tb arrays already in device memory (values 4-byte
 * aligned; perm NULL if none), reordered on the device on `stream`: the CUDA
 * backend uploads a weight's packed bytes once and the host does no per-weight
 * work. The indices are trusted (tb_pack_open checked them with
 * tb_nm_check_indices: positions strictly ascending in each group); the
 * arrays must stay valid until the stream has run the reorder. */
int tb_cuda_sp24_prepare_device(tb_sp24_weight *w, const uint16_t *values, const uint8_t *indices, int64_t rows,
                                int64_t cols, const int32_t *perm, void *stream);
void tb_cuda_sp24_release(tb_sp24_weight *w);

/* W as dense [rows, cols] (dt TB_BF16 or TB_F32; device memory) in the
 * model's column order (the permutation undone, pruned entries 0), read from
 * the kernel layout on `stream`: the CUDA backend's dense copy for token
 * counts where cuBLAS wins, and the linear_download of a 2:4 weight. Exact
 * (the kept values are bf16). */
int tb_cuda_sp24_to_dense(const tb_sp24_weight *w, void *dense, tb_dtype dt, void *stream);

/* Device scratch bytes tb_cuda_sp24_linear needs for n tokens of x_dt. */
size_t tb_cuda_sp24_workspace_bytes(const tb_sp24_weight *w, int n, tb_dtype x_dt);

/* y[n, rows] (+)= x[n, cols] W^T (+ bias[rows], f32, may be NULL), on `stream`
 * (a cudaStream_t; NULL = default). x_dt and y_dt are TB_F32 or TB_BF16; x,
 * y, bias and workspace are device pointers; y is overwritten. Asynchronous:
 * returns TB_EIO if a launch fails. */
int tb_cuda_sp24_linear(const tb_sp24_weight *w, const void *x, tb_dtype x_dt, int n, void *y, tb_dtype y_dt,
                        const float *bias, void *workspace, void *stream, tb_sp24_kernel kernel);

/* x [n, cols] (TB_F32 or TB_BF16, model channel order) as bf16 rows [n, cols]
 * in W's stored column order (gathered through w->perm), into xr (device,
 * n * cols * 2 bytes), on `stream`: the operand cuSPARSELt reads. */
int tb_cuda_sp24_x_bf16(const tb_sp24_weight *w, const void *x, tb_dtype x_dt, int n, void *xr, void *stream);

/* Which implementation runs y = x W^T for this shape: the fastest measured
 * (the table and its source are in tb_sp24_gemm.cu above the definition).
 * have_cslt: the caller has a cuSPARSELt context (tb_cuda_cslt_open). */
typedef enum {
    TB_SP24_PATH_KERNEL = 0, /* tb_cuda_sp24_linear (1-16 tokens, decode) */
    TB_SP24_PATH_CSLT = 1,   /* tb_cuda_cslt_linear (prefill, where cuSPARSELt beats cuBLAS) */
    TB_SP24_PATH_DENSE = 2,  /* cuBLAS on the dense weight */
} tb_sp24_path;
tb_sp24_path tb_cuda_sp24_choose(int64_t rows, int64_t cols, int n, int have_cslt);
/* The token count from which prefill runs cuSPARSELt for a W of rows x cols
 * (the per-shape rule above tb_cuda_sp24_choose), or 0: never (dense). */
int tb_cuda_sp24_cslt_min_tokens(int64_t rows, int64_t cols);

/* ---- cuSPARSELt: the second implementation (kernels/cuda/tb_sp24_cslt.cu;
 * make CUDA=1 CUSPARSELT=1, never required) ----
 * A context holds the library handle (one device: the current one at open),
 * one plan per (rows, cols, tokens) with the algorithm cusparseLtMatmulSearch
 * picked for it (searched once, on the plan's first run), and its own device
 * scratch (x in bf16; y in bf16 where the library will not write f32; the
 * library's workspace), grown on demand. The weight is compressed once into
 * the library's own form (0.5625x the bytes of dense bf16 plus its padding).
 * Without CUSPARSELT=1: tb_cuda_cslt_built() is 0 and open fails. */
typedef struct tb_cslt tb_cslt;
int tb_cuda_cslt_built(void);
/* NULL and a one-line error when the library cannot start (no build support,
 * a GPU older than sm_80, no memory). */
tb_cslt *tb_cuda_cslt_open(void);
void tb_cuda_cslt_close(tb_cslt *c);
/* "cuSPARSELt 0.8.0" (the library's version, from the library) */
const char *tb_cuda_cslt_describe(const tb_cslt *c);
/* W (the 2:4 kernel form) in cuSPARSELt's compressed form: *comp device memory
 * of *bytes, freed with cudaFree by the caller. Synchronous on `stream`; needs
 * a transient dense bf16 copy (rows * cols * 2 bytes) while it runs. */
int tb_cuda_cslt_compress(tb_cslt *c, const tb_sp24_weight *w, void **comp, size_t *bytes, void *stream);
/* 1 if the library has a plan for y[n, rows] = x[n, cols] W^T (made on the
 * first ask and kept), 0 if not (not an error: the caller runs another path). */
int tb_cuda_cslt_supports(tb_cslt *c, int64_t rows, int64_t cols, int n);
/* y[n, rows] (f32, overwritten) = x[n, cols] (f32, model channel order) W^T
 * (+ bias[rows], f32, may be NULL), on `stream`; comp from tb_cuda_cslt_compress.
 * x_bf16: NULL, or x already rounded to bf16 (same layout, 16-byte aligned):
 * read in place when W has no permutation, else gathered from it, so x is not
 * read. The shape must be one tb_cuda_cslt_supports accepted. Asynchronous,
 * except for a plan's first run (the algorithm search) and scratch growth. */
int tb_cuda_cslt_linear(tb_cslt *c, const tb_sp24_weight *w, const void *comp, const float *x, const void *x_bf16,
                        int n, float *y, const float *bias, void *stream);

#ifdef __cplusplus
}
#endif
#endif
