// tb_sparsegpt.cu - SparseGPT (Frantar & Alistarh 2023) on the GPU.
//
// The same algorithm, arithmetic (f64) and results as the CPU reference
// tb_comp_sparsegpt in kernels/cpu/tb_compensate.c, which documents it:
//   H = G (dead inputs: H_ii = 1, weights 0) + lambda I, lambda = damp * mean(diag);
//   U = chol(H^-1) upper (H^-1 = U^T U), through tb_linalg's damping ladder
//       (Cholesky; x10 raises; eigen pseudo-inverse as the last resort);
//   columns swept left to right in lazy blocks of B: inside a block each row
//   prunes its column c (fixed mask, or N:M reselected from w^2 / U_cc^2 when
//   the sweep reaches the group), e = w_c / U_cc, w_right -= e U_c,right;
//   then W[:, right of block] -= E U[block, right of block] (one DGEMM).
//
// Versions:
//   1. one warp per row inside a block (the row's B weights in shared memory,
//      lanes update the columns right of c), cuBLAS DGEMM for the lazy update,
//      cuSOLVER potrf/potri/syevd for H^-1 and its factor. Cost per weight:
//      ~cols^3 (factorizations) + 2 rows cols^2 (the lazy updates), f64.
//   2. G moved once: version 1 copied each Gram into a host buffer to mark
//      dead inputs, uploaded it, and tb_solve_output_error uploaded it again
//      for each of tb-pack's three reports (1.6 GB each for a 7B down_proj,
//      most of the 23.6 s measured for a 7B layer). Now G goes up once
//      (tb_cuda_gram, kept across a weight's solve and reports when the
//      caller brackets them with tb_solve_gram_begin / _end; the host-Gram
//      entries upload it once per call), only its diagonal comes back (dead inputs, lambda
//      in the CPU's summation order), dead entries are set in the factorized
//      copy on the GPU, and weights cross as f32 (widened and narrowed on the
//      GPU). WRITTEN AND COMPILED, NOT YET RUN ON A GPU: test_sparsegpt_cuda
//      (now also with G resident and the output-error reports against the
//      CPU's) and bench_7b.sh's SparseGPT row check and time it.
//
// Checked against the CPU reference by tests/cuda/test_sparsegpt_cuda.c.
#include "tb_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "tb_error.h"
}

struct tb_cuda_gram {
    int gpu;
    int64_t cols;
    double *d; // [cols, cols] f64, full (symmetric)
};

#define WARPS_PER_CTA 8
#define MAX_BLOCK 1024 /* shared memory: WARPS_PER_CTA * (8 + 1) bytes per column */
#define DAMP_RAISES 3  /* as tb_linalg.h's TB_DAMP_RAISES */

namespace {

struct ctx {
    cublasHandle_t blas = nullptr;
    cusolverDnHandle_t solver = nullptr;
    double *a = nullptr, *work = nullptr, *w = nullptr, *e = nullptr, *ev = nullptr;
    uint8_t *keep = nullptr;
    int *info = nullptr;
    float *w32 = nullptr;      // the caller's weights, f32, on the way in and out
    uint8_t *dead = nullptr;   // host [cols]: G_ii == 0
    uint8_t *dead_d = nullptr; // its device copy
    int *flag = nullptr;       // the first non-finite result's index
    int lwork = 0;
    char failed[200] = "";
};

int cuda_fail(ctx *c, const char *what, cudaError_t err)
{
    snprintf(c->failed, sizeof c->failed, "sparsegpt (cuda): %s: %s", what, cudaGetErrorString(err));
    return -1;
}
#define CK(call)                                                                 \
    do {                                                                         \
        cudaError_t err_ = (call);                                               \
        if (err_ != cudaSuccess) return cuda_fail(c, #call, err_);               \
    } while (0)
#define CKB(call, what)                                                          \
    do {                                                                         \
        if ((call) != 0) {                                                       \
            snprintf(c->failed, sizeof c->failed, "sparsegpt (cuda): %s failed", what); \
            return -1;                                                           \
        }                                                                        \
    } while (0)

// a = H + lambda I with H = G, a dead input's diagonal (G_ii = 0) set to 1
__global__ void add_diag(double *a, const double *g, int64_t n, double lambda)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= n * n) return;
    const bool diag = i / n == i % n;
    a[i] = (diag && g[i] == 0 ? 1.0 : g[i]) + (diag ? lambda : 0.0);
}

// the weights to f64 for the sweep, a dead input's column 0
__global__ void widen_weights(double *wd, const float *w, const uint8_t *dead, int64_t rows, int64_t cols)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * cols; i += (int64_t)gridDim.x * blockDim.x)
        wd[i] = dead[i % cols] ? 0.0 : (double)w[i];
}

// the swept weights back to f32 (the caller's type); any non-finite one flagged
__global__ void narrow_weights(float *w, const double *wd, int64_t count, int *nonfinite)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = (float)wd[i];
        if (!isfinite(v)) atomicMin(nonfinite, (int)(i < 0x7fffffff ? i : 0x7fffffff));
        w[i] = v;
    }
}

unsigned grid_for(int64_t count)
{
    int64_t b = (count + 255) / 256;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

__global__ void scale_cols(double *out, const double *v, const double *p, int64_t n)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n * n) out[i] = v[i] * p[i / n]; // col-major: column i / n
}

// One warp per row: the block's sweep (see the file comment).
__global__ void sweep_block(double *w, uint8_t *keep, double *err, const double *u, int64_t rows, int64_t cols,
                            int64_t i1, int cnt, int bs, int n, int m, int reselect)
{
    extern __shared__ unsigned char smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    double *w1 = (double *)smem + (size_t)warp * bs;
    uint8_t *prune = (uint8_t *)((double *)smem + (size_t)WARPS_PER_CTA * bs) + (size_t)warp * bs;
    const int64_t r = (int64_t)blockIdx.x * WARPS_PER_CTA + warp;
    if (r >= rows) return;
    double *wr = w + r * cols + i1;
    uint8_t *kr = keep + r * cols + i1;
    for (int i = lane; i < cnt; i += 32) {
        w1[i] = wr[i];
        prune[i] = !kr[i];
    }
    __syncwarp();
    if (reselect && m == 0 && lane == 0) {
        // unstructured: as many pruned in this block of the row as the given
        // mask has, the smallest w^2 / U_cc^2 (ties: the lower column)
        int np = 0;
        for (int i = 0; i < cnt; i++) np += prune[i];
        for (int i = 0; i < cnt; i++) prune[i] = 0;
        for (int k = 0; k < np; k++) {
            int best = -1;
            double bs_ = 0;
            for (int i = 0; i < cnt; i++) {
                if (prune[i]) continue;
                double d = u[(i1 + i) * cols + i1 + i], s = w1[i] * w1[i] / (d * d);
                if (best < 0 || s < bs_) { best = i; bs_ = s; }
            }
            prune[best] = 1;
        }
    }
    __syncwarp();
    for (int i = 0; i < cnt; i++) {
        const int64_t col = i1 + i;
        if (reselect && m && i % m == 0) {
            if (lane == 0) { // N:M: the group is chosen when the sweep reaches it
                double score[16];
                for (int t = 0; t < m; t++) {
                    double d = u[(col + t) * cols + col + t];
                    score[t] = w1[i + t] * w1[i + t] / (d * d);
                    prune[i + t] = 0;
                }
                for (int k = 0; k < m - n; k++) {
                    int best = -1;
                    for (int t = 0; t < m; t++)
                        if (!prune[i + t] && (best < 0 || score[t] < score[best])) best = t;
                    prune[i + best] = 1;
                }
            }
            __syncwarp();
        }
        const double d = u[col * cols + col];
        const double e = prune[i] ? w1[i] / d : 0.0;
        if (e != 0) {
            const double *ur = u + col * cols + i1;
            for (int t = i + 1 + lane; t < cnt; t += 32) w1[t] -= e * ur[t];
        }
        __syncwarp();
        if (lane == 0) {
            err[r * bs + i] = e;
            if (prune[i]) w1[i] = 0;
        }
        __syncwarp();
    }
    for (int i = lane; i < cnt; i += 32) {
        wr[i] = w1[i];
        kr[i] = !prune[i];
    }
}

// Cholesky of (G + lambda I) into c->a, lower col-major (= row-major upper); 0 ok
int chol_at(ctx *c, const double *g, int64_t n, double lambda, int *ok)
{
    int64_t nn = n * n;
    add_diag<<<(unsigned)((nn + 255) / 256), 256>>>(c->a, g, n, lambda);
    CK(cudaGetLastError());
    CKB(cusolverDnDpotrf(c->solver, CUBLAS_FILL_MODE_LOWER, (int)n, c->a, (int)n, c->work, c->lwork, c->info),
        "potrf");
    int h = 0;
    CK(cudaMemcpy(&h, c->info, sizeof h, cudaMemcpyDeviceToHost));
    *ok = h == 0;
    return 0;
}

void release(ctx *c)
{
    cudaFree(c->a);
    cudaFree(c->work);
    cudaFree(c->w);
    cudaFree(c->e);
    cudaFree(c->ev);
    cudaFree(c->keep);
    cudaFree(c->info);
    cudaFree(c->w32);
    cudaFree(c->dead_d);
    cudaFree(c->flag);
    free(c->dead);
    if (c->blas) cublasDestroy(c->blas);
    if (c->solver) cusolverDnDestroy(c->solver);
}

// G's diagonal (cols values, one strided copy: the rest of G stays on the
// GPU), the dead inputs (G_ii = 0: H_ii = 1 and their weights 0, as the CPU)
// and lambda = damp * mean of H's diagonal, summed in the CPU's order
int gram_diag(ctx *c, const tb_cuda_gram *g, double damp, uint8_t *dead, double *lambda, double *mean_abs)
{
    const int64_t cols = g->cols;
    double *d = (double *)malloc((size_t)cols * sizeof(double) + 1);
    if (!d) {
        snprintf(c->failed, sizeof c->failed, "out of memory: the Gram diagonal");
        return -1;
    }
    cudaError_t err = cudaMemcpy2D(d, sizeof(double), g->d, (size_t)(cols + 1) * sizeof(double), sizeof(double),
                                   (size_t)cols, cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) {
        free(d);
        return cuda_fail(c, "the Gram diagonal", err);
    }
    double s = 0;
    for (int64_t i = 0; i < cols; i++) {
        dead[i] = d[i] == 0;
        s += dead[i] ? 1.0 : d[i];
    }
    free(d);
    *lambda = damp * s / (double)(cols ? cols : 1);
    *mean_abs = s / (double)(cols ? cols : 1);
    return 0;
}

int run(ctx *c, float *w_host, uint8_t *keep_host, int64_t rows, int64_t cols, int n, int m, const tb_cuda_gram *gram,
        double damp, int bs, int reselect, double *lambda_out, int *raised, int *eigen)
{
    const int64_t nn = cols * cols;
    const double *g_d = gram->d;
    double lambda = 0, mean_abs = 0;
    if (!(c->dead = (uint8_t *)calloc((size_t)cols + 1, 1))) {
        snprintf(c->failed, sizeof c->failed, "out of memory: %lld bytes", (long long)cols);
        return -1;
    }
    if (gram_diag(c, gram, damp, c->dead, &lambda, &mean_abs)) return -1;
    *lambda_out = lambda;
    cudaError_t err = cudaSuccess;
    int rc = -1;
    do {
        if (cublasCreate(&c->blas) || cusolverDnCreate(&c->solver)) {
            snprintf(c->failed, sizeof c->failed, "sparsegpt (cuda): cuBLAS/cuSOLVER handles could not be created");
            break;
        }
        if ((err = cudaMalloc(&c->a, (size_t)nn * 8)) || (err = cudaMalloc(&c->info, sizeof(int))) ||
            (err = cudaMalloc(&c->w, (size_t)(rows * cols) * 8)) || (err = cudaMalloc(&c->e, (size_t)(rows * bs) * 8)) ||
            (err = cudaMalloc(&c->keep, (size_t)(rows * cols)))) {
            cuda_fail(c, "device memory for one weight's solve", err);
            break;
        }
        int lw1 = 0, lw2 = 0;
        cusolverDnDpotrf_bufferSize(c->solver, CUBLAS_FILL_MODE_LOWER, (int)cols, c->a, (int)cols, &lw1);
        cusolverDnDpotri_bufferSize(c->solver, CUBLAS_FILL_MODE_LOWER, (int)cols, c->a, (int)cols, &lw2);
        c->lwork = lw1 > lw2 ? lw1 : lw2;
        if ((err = cudaMalloc(&c->work, (size_t)c->lwork * 8 + 8))) {
            cuda_fail(c, "cuSOLVER work space", err);
            break;
        }
        // 1. the ladder for H = G + lambda I
        int ok = 0;
        if (chol_at(c, g_d, cols, lambda, &ok)) break;
        double l = lambda > 0 ? lambda : 1e-10 * mean_abs;
        if (!(l > 0)) l = 1e-10;
        *raised = 0;
        *eigen = 0;
        for (int k = 1; !ok && k <= DAMP_RAISES; k++) {
            l *= 10;
            if (chol_at(c, g_d, cols, l, &ok)) break;
            if (ok) *raised = 1;
        }
        if (ok) {
            // 2. H^-1 from the factor (lower col-major)
            CKB(cusolverDnDpotri(c->solver, CUBLAS_FILL_MODE_LOWER, (int)cols, c->a, (int)cols, c->work, c->lwork,
                                 c->info), "potri");
        } else {
            // 2'. eigen pseudo-inverse of G + lambda I (eigenvalues <= n eps max dropped)
            *eigen = 1;
            int lw = 0;
            double *vals = nullptr, *v = nullptr, *wk = nullptr;
            add_diag<<<(unsigned)((nn + 255) / 256), 256>>>(c->a, g_d, cols, lambda);
            cusolverDnDsyevd_bufferSize(c->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, (int)cols, c->a,
                                        (int)cols, vals, &lw);
            if ((err = cudaMalloc(&vals, (size_t)cols * 8)) || (err = cudaMalloc(&v, (size_t)nn * 8)) ||
                (err = cudaMalloc(&wk, (size_t)lw * 8 + 8))) {
                cudaFree(vals), cudaFree(v), cudaFree(wk);
                cuda_fail(c, "eigen work space", err);
                break;
            }
            int bad = cusolverDnDsyevd(c->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, (int)cols, c->a,
                                       (int)cols, vals, wk, lw, c->info);
            double *p = (double *)malloc((size_t)cols * 8);
            int h = 0;
            cudaMemcpy(&h, c->info, sizeof h, cudaMemcpyDeviceToHost);
            if (bad || h || !p) {
                cudaFree(vals), cudaFree(v), cudaFree(wk), free(p);
                snprintf(c->failed, sizeof c->failed, "eigen decomposition did not converge (n = %lld)", (long long)cols);
                break;
            }
            cudaMemcpy(p, vals, (size_t)cols * 8, cudaMemcpyDeviceToHost);
            double emax = cols ? p[cols - 1] : 0, tol = (double)cols * DBL_EPSILON * (emax > 0 ? emax : 0);
            for (int64_t i = 0; i < cols; i++) p[i] = p[i] > tol ? 1.0 / p[i] : 0.0;
            cudaMemcpy(vals, p, (size_t)cols * 8, cudaMemcpyHostToDevice);
            free(p);
            scale_cols<<<(unsigned)((nn + 255) / 256), 256>>>(v, c->a, vals, cols); // V diag(p)
            const double one = 1, zero = 0;
            double *t = nullptr;
            if ((err = cudaMalloc(&t, (size_t)nn * 8)) != cudaSuccess ||
                cublasDgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)cols, (int)cols, (int)cols, &one, v, (int)cols,
                            c->a, (int)cols, &zero, t, (int)cols) != CUBLAS_STATUS_SUCCESS) {
                cudaFree(t), cudaFree(vals), cudaFree(v), cudaFree(wk);
                snprintf(c->failed, sizeof c->failed, "sparsegpt (cuda): the eigen inverse failed (memory or DGEMM)");
                break;
            }
            cudaMemcpy(c->a, t, (size_t)nn * 8, cudaMemcpyDeviceToDevice);
            cudaFree(t);
            cudaFree(vals), cudaFree(v), cudaFree(wk);
        }
        // 3. U: Cholesky of H^-1 (lower col-major = row-major upper, H^-1 = U^T U)
        CKB(cusolverDnDpotrf(c->solver, CUBLAS_FILL_MODE_LOWER, (int)cols, c->a, (int)cols, c->work, c->lwork,
                             c->info), "potrf of H^-1");
        int h = 0;
        CK(cudaMemcpy(&h, c->info, sizeof h, cudaMemcpyDeviceToHost));
        if (h) {
            snprintf(c->failed, sizeof c->failed, "Cholesky factor of H^-1 failed (try a larger --damp)");
            break;
        }
        // 4. the weights: f32 up, widened to f64 on the GPU (dead columns 0); the keep bytes
        if ((err = cudaMalloc(&c->w32, (size_t)(rows * cols) * 4)) || (err = cudaMalloc(&c->dead_d, (size_t)cols)) ||
            (err = cudaMalloc(&c->flag, sizeof(int))) ||
            (err = cudaMemcpy(c->w32, w_host, (size_t)(rows * cols) * 4, cudaMemcpyHostToDevice)) ||
            (err = cudaMemcpy(c->dead_d, c->dead, (size_t)cols, cudaMemcpyHostToDevice)) ||
            (err = cudaMemcpy(c->keep, keep_host, (size_t)(rows * cols), cudaMemcpyHostToDevice))) {
            cuda_fail(c, "weights to the GPU", err);
            break;
        }
        widen_weights<<<grid_for(rows * cols), 256>>>(c->w, c->w32, c->dead_d, rows, cols);
        // 5. the sweep
        const size_t shared = (size_t)WARPS_PER_CTA * bs * 9;
        if (shared > 48 * 1024) cudaFuncSetAttribute(sweep_block, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared);
        const unsigned grid = (unsigned)((rows + WARPS_PER_CTA - 1) / WARPS_PER_CTA);
        int failed = 0;
        for (int64_t i1 = 0; i1 < cols && !failed; i1 += bs) {
            int cnt = (int)(cols - i1 < bs ? cols - i1 : bs);
            sweep_block<<<grid, WARPS_PER_CTA * 32, shared>>>(c->w, c->keep, c->e, c->a, rows, cols, i1, cnt, bs, n, m,
                                                              reselect);
            if ((err = cudaGetLastError()) != cudaSuccess) {
                cuda_fail(c, "sweep kernel", err);
                failed = 1;
                break;
            }
            int64_t rest = cols - i1 - cnt;
            if (rest > 0) {
                const double minus = -1, one = 1;
                // row-major W[:, i1+cnt:] -= E U[i1:i1+cnt, i1+cnt:], as column-major transposes
                if (cublasDgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)rest, (int)rows, cnt, &minus,
                                c->a + i1 * cols + i1 + cnt, (int)cols, c->e, bs, &one, c->w + i1 + cnt, (int)cols)) {
                    snprintf(c->failed, sizeof c->failed, "sparsegpt (cuda): DGEMM failed");
                    failed = 1;
                }
            }
        }
        int first_bad = 0x7fffffff;
        if (!failed) {
            const int none = 0x7fffffff;
            // flag starts at "none": written before the kernel, in the same (default) stream
            if ((err = cudaMemcpy(c->flag, &none, sizeof none, cudaMemcpyHostToDevice)) == cudaSuccess)
                narrow_weights<<<grid_for(rows * cols), 256>>>(c->w32, c->w, rows * cols, c->flag);
            if (err == cudaSuccess) err = cudaGetLastError();
            if (err == cudaSuccess) err = cudaMemcpy(&first_bad, c->flag, sizeof first_bad, cudaMemcpyDeviceToHost);
            if (err == cudaSuccess && first_bad == none)
                err = cudaMemcpy(w_host, c->w32, (size_t)(rows * cols) * 4, cudaMemcpyDeviceToHost);
            if (err == cudaSuccess && first_bad == none)
                err = cudaMemcpy(keep_host, c->keep, (size_t)(rows * cols), cudaMemcpyDeviceToHost);
            if (err != cudaSuccess) {
                cuda_fail(c, "weights back from the GPU", err);
                failed = 1;
            } else if (first_bad != none) {
                snprintf(c->failed, sizeof c->failed, "row %lld: non-finite SparseGPT update",
                         (long long)(first_bad / cols));
                failed = 1;
            }
        }
        if (!failed) rc = 0;
    } while (0);
    return rc;
}

} // namespace

// ---- the Gram on the device: uploaded once per weight by a caller that makes
// several calls on it (tb_solve_gram_begin), or once per call by the host-Gram
// entries below

extern "C" tb_cuda_gram *tb_cuda_gram_upload(int gpu, const double *gram, int64_t cols)
{
    if (cudaSetDevice(gpu) != cudaSuccess) {
        cudaGetLastError();
        tb_fail(TB_EIO, "cuda: GPU %d cannot be used", gpu);
        return NULL;
    }
    tb_cuda_gram *g = (tb_cuda_gram *)calloc(1, sizeof *g);
    if (!g) {
        tb_fail(TB_EIO, "out of memory");
        return NULL;
    }
    const size_t bytes = (size_t)cols * (size_t)cols * sizeof(double);
    cudaError_t err = cudaMalloc(&g->d, bytes);
    if (err == cudaSuccess) err = cudaMemcpy(g->d, gram, bytes, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) {
        cudaGetLastError();
        tb_fail(TB_EIO, "%s: a Gram matrix of %lld inputs (%zu bytes) on cuda:%d: %s",
                err == cudaErrorMemoryAllocation ? "out of GPU memory" : "cuda", (long long)cols, bytes, gpu,
                cudaGetErrorString(err));
        cudaFree(g->d);
        free(g);
        return NULL;
    }
    g->gpu = gpu;
    g->cols = cols;
    return g;
}

extern "C" void tb_cuda_gram_free(tb_cuda_gram *g)
{
    if (!g) return;
    cudaSetDevice(g->gpu);
    cudaFree(g->d);
    free(g);
}

extern "C" int tb_cuda_sparsegpt_dev(float *w, uint8_t *keep, int64_t rows, int64_t cols, int n, int m,
                                     const tb_cuda_gram *gram, double damp, int block, int reselect, double *lambda,
                                     int *raised, int *eigen)
{
    if (block < 1 || block > MAX_BLOCK || (m && (block % m || cols % m)) || m > 16)
        return tb_fail(TB_EUSAGE, "sparsegpt (cuda): block %d must be in [1, %d] and, like the columns (%lld), a "
                                  "multiple of M=%d <= 16", block, MAX_BLOCK, (long long)cols, m);
    if (gram->cols != cols)
        return tb_fail(TB_EUSAGE, "sparsegpt (cuda): a Gram of %lld inputs for a weight of %lld columns",
                       (long long)gram->cols, (long long)cols);
    if (cudaSetDevice(gram->gpu) != cudaSuccess) {
        cudaGetLastError();
        return tb_fail(TB_EIO, "sparsegpt (cuda): GPU %d cannot be used", gram->gpu);
    }
    ctx c;
    int rc = run(&c, w, keep, rows, cols, n, m, gram, damp, block, reselect, lambda, raised, eigen);
    release(&c);
    if (rc) {
        cudaGetLastError();
        return tb_fail(strstr(c.failed, "memory") ? TB_EIO : TB_EDATA, "%s", c.failed);
    }
    return TB_OK;
}

extern "C" int tb_cuda_sparsegpt(int gpu, float *w, uint8_t *keep, int64_t rows, int64_t cols, int n, int m,
                                 const double *gram, double damp, int block, int reselect, double *lambda,
                                 int *raised, int *eigen)
{
    tb_cuda_gram *g = tb_cuda_gram_upload(gpu, gram, cols);
    if (!g) return tb_errcode() ? tb_errcode() : TB_EIO;
    int rc = tb_cuda_sparsegpt_dev(w, keep, rows, cols, n, m, g, damp, block, reselect, lambda, raised, eigen);
    tb_cuda_gram_free(g);
    return rc;
}

// ||(W0 - W) X||^2 = sum_r e_r^T G e_r (W = NULL: ||W0 X||^2), the measure of
// every solver (tb_comp_output_error), in f64: E G by DGEMM, then the dot.
__global__ void rowdot(const double *a, const double *b, int64_t n, double *partial)
{
    __shared__ double s[256];
    double acc = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        acc += a[i] * b[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int k = 128; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// e = w0 - w in f64 (w NULL: w0), from the f32 weights
__global__ void weight_diff(double *e, const float *w0, const float *w, int64_t count)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        e[i] = (double)w0[i] - (w ? (double)w[i] : 0.0);
}

extern "C" double tb_cuda_output_error_dev(const float *w0, const float *w, int64_t rows, int64_t cols,
                                           const tb_cuda_gram *gram)
{
    if (gram->cols != cols || cudaSetDevice(gram->gpu) != cudaSuccess) {
        cudaGetLastError();
        return NAN;
    }
    const size_t ne = (size_t)(rows * cols);
    double *dev = nullptr, *partial = nullptr, result = NAN;
    float *wf = nullptr;
    cublasHandle_t h = nullptr;
    const int blocks = 1024;
    // the weights cross as f32 (the caller's type), the difference is taken on the GPU
    if (cudaMalloc(&dev, 2 * ne * 8) == cudaSuccess && cudaMalloc(&wf, (w ? 2 : 1) * ne * 4) == cudaSuccess &&
        cudaMalloc(&partial, blocks * 8) == cudaSuccess && cublasCreate(&h) == CUBLAS_STATUS_SUCCESS &&
        cudaMemcpy(wf, w0, ne * 4, cudaMemcpyHostToDevice) == cudaSuccess &&
        (!w || cudaMemcpy(wf + ne, w, ne * 4, cudaMemcpyHostToDevice) == cudaSuccess)) {
        double *ed = dev, *yd = dev + ne;
        const double one = 1, zero = 0;
        weight_diff<<<grid_for((int64_t)ne), 256>>>(ed, wf, w ? wf + ne : nullptr, (int64_t)ne);
        // row-major Y = E G from G's upper triangle, as the CPU's DSYMM (the rest of
        // the solve reads only that triangle too): column-major Y^T = G E^T, lower
        if (cudaGetLastError() == cudaSuccess &&
            cublasDsymm(h, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, (int)cols, (int)rows, &one, gram->d, (int)cols, ed,
                        (int)cols, &zero, yd, (int)cols) == CUBLAS_STATUS_SUCCESS) {
            rowdot<<<blocks, 256>>>(ed, yd, (int64_t)ne, partial);
            double p[1024];
            if (cudaMemcpy(p, partial, sizeof p, cudaMemcpyDeviceToHost) == cudaSuccess) {
                result = 0;
                for (int i = 0; i < blocks; i++) result += p[i];
            }
        }
    }
    if (h) cublasDestroy(h);
    cudaFree(dev);
    cudaFree(wf);
    cudaFree(partial);
    cudaGetLastError();
    return result;
}

extern "C" double tb_cuda_output_error(int gpu, const float *w0, const float *w, int64_t rows, int64_t cols,
                                       const double *gram)
{
    tb_cuda_gram *g = tb_cuda_gram_upload(gpu, gram, cols);
    if (!g) {
        tb_err_clear(); // not an error: the caller computes it on the CPU
        return NAN;
    }
    double e = tb_cuda_output_error_dev(w0, w, rows, cols, g);
    tb_cuda_gram_free(g);
    return e;
}
