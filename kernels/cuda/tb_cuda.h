/* tb_cuda.h - the C-callable face of kernels/cuda/ (built only with CUDA=1).
 *
 * Every CUDA kernel of tensorbit sits in kernels/cuda/ beside its CPU
 * reference in kernels/cpu/, is reached through a C function declared here,
 * and has a parity test against that reference. Tools test TB_HAVE_CUDA. */
#ifndef TB_CUDA_H
#define TB_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no driver or no GPU (this
 * is not an error: the CPU path is always available). */
int tb_cuda_device_count(void);
/* One-line description of device i ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB"),
 * written into buf; returns 0 on success, -1 if the device cannot be queried. */
int tb_cuda_device_describe(int i, char *buf, int n);
/* CUDA runtime and driver versions as "runtime 13.0, driver 13.0"; "-" if absent. */
void tb_cuda_versions(char *buf, int n);

/* SparseGPT on GPU `gpu`, the CUDA twin of tb_comp_sparsegpt
 * (kernels/cpu/tb_compensate.h): w [rows, cols] f32 in place; keep [rows,
 * cols] bytes (1 = kept) in, and out when reselect; gram [cols, cols] f64
 * full; n, m the pattern (0, 0 unstructured). lambda, raised, eigen report the
 * damping as tb_comp_stats does. TB_OK, or a one-line error (tb_fail). */
#include <stdint.h>
int tb_cuda_sparsegpt(int gpu, float *w, uint8_t *keep, int64_t rows, int64_t cols, int n, int m, const double *gram,
                      double damp, int block, int reselect, double *lambda, int *raised, int *eigen);

/* tb_comp_output_error on GPU `gpu` (NaN when the GPU cannot run it). */
double tb_cuda_output_error(int gpu, const float *w0, const float *w, int64_t rows, int64_t cols, const double *gram);

/* A Gram matrix [cols, cols] f64 kept on GPU `gpu` (the GPU solve and error
 * read only its upper triangle, row-major G[i*cols + j], j >= i), so that a solve
 * and the output-error reports of one weight move it once (1.6 GB for a 7B
 * down_proj): the two calls above upload their own per call. NULL and a
 * one-line error (out of GPU memory naming the bytes) when it cannot. Only
 * G's diagonal ever comes back (dead inputs and the damping scale). */
typedef struct tb_cuda_gram tb_cuda_gram;
tb_cuda_gram *tb_cuda_gram_upload(int gpu, const double *gram, int64_t cols);
void tb_cuda_gram_free(tb_cuda_gram *g);
/* tb_cuda_sparsegpt and tb_cuda_output_error on a resident Gram (its GPU) */
int tb_cuda_sparsegpt_dev(float *w, uint8_t *keep, int64_t rows, int64_t cols, int n, int m, const tb_cuda_gram *gram,
                          double damp, int block, int reselect, double *lambda, int *raised, int *eigen);
double tb_cuda_output_error_dev(const float *w0, const float *w, int64_t rows, int64_t cols, const tb_cuda_gram *gram);

/* What a 2:4 weight's device copy (the CUDA backend's tb_dlinear.sparse)
 * holds now, as bits: the 2:4 kernel form (always), cuSPARSELt's compressed
 * form, the dense copy (each made on first need; tb_backend_cuda.cu's "N:M
 * weights" has the policy). For tests: a prefill must not make the dense copy
 * where cuSPARSELt runs it. */
enum { TB_CUDA_FORM_SP24 = 1, TB_CUDA_FORM_CSLT = 2, TB_CUDA_FORM_DENSE = 4 };
int tb_cuda_sp24_forms(const void *sparse);

#ifdef __cplusplus
}
#endif
#endif
