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
// Versions (one, so far):
//   1. one warp per row inside a block (the row's B weights in shared memory,
//      lanes update the columns right of c), cuBLAS DGEMM for the lazy update,
//      cuSOLVER potrf/potri/syevd for H^-1 and its factor. Cost per weight:
//      ~cols^3 (factorizations) + 2 rows cols^2 (the lazy updates), f64.
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

__global__ void add_diag(double *a, const double *g, int64_t n, double lambda)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n * n) a[i] = g[i] + ((i / n == i % n) ? lambda : 0.0);
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
    if (c->blas) cublasDestroy(c->blas);
    if (c->solver) cusolverDnDestroy(c->solver);
}

int run(ctx *c, float *w_host, uint8_t *keep_host, int64_t rows, int64_t cols, int n, int m, const double *gram_host,
        double damp, int bs, int reselect, double *lambda_out, int *raised, int *eigen)
{
    const int64_t nn = cols * cols;
    // dead inputs and the damping scale, on the host (O(cols))
    double *g = (double *)malloc((size_t)nn * sizeof(double));
    uint8_t *dead = (uint8_t *)calloc((size_t)cols + 1, 1);
    if (!g || !dead) {
        free(g);
        free(dead);
        snprintf(c->failed, sizeof c->failed, "out of memory: %lld bytes for a Gram matrix", (long long)(nn * 8));
        return -1;
    }
    memcpy(g, gram_host, (size_t)nn * sizeof(double));
    double s = 0;
    for (int64_t i = 0; i < cols; i++) {
        if (g[i * cols + i] == 0) { dead[i] = 1; g[i * cols + i] = 1; }
        s += g[i * cols + i];
    }
    const double lambda = damp * s / (double)(cols ? cols : 1);
    *lambda_out = lambda;
    double *g_d = nullptr;
    cudaError_t err = cudaMalloc(&g_d, (size_t)nn * sizeof(double));
    if (err == cudaSuccess) err = cudaMemcpy(g_d, g, (size_t)nn * sizeof(double), cudaMemcpyHostToDevice);
    double mean_abs = s / (double)(cols ? cols : 1);
    free(g);
    if (err != cudaSuccess) {
        free(dead);
        cudaFree(g_d);
        return cuda_fail(c, "the Gram matrix", err);
    }
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
        // 4. the weights in f64, dead columns 0, and the keep bytes
        double *wd = (double *)malloc((size_t)(rows * cols) * 8);
        if (!wd) {
            snprintf(c->failed, sizeof c->failed, "out of memory: %lld bytes", (long long)(rows * cols * 8));
            break;
        }
        for (int64_t i = 0; i < rows * cols; i++) wd[i] = dead[i % cols] ? 0.0 : (double)w_host[i];
        err = cudaMemcpy(c->w, wd, (size_t)(rows * cols) * 8, cudaMemcpyHostToDevice);
        if (err == cudaSuccess) err = cudaMemcpy(c->keep, keep_host, (size_t)(rows * cols), cudaMemcpyHostToDevice);
        if (err != cudaSuccess) {
            free(wd);
            cuda_fail(c, "weights to the GPU", err);
            break;
        }
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
        if (!failed) {
            err = cudaMemcpy(wd, c->w, (size_t)(rows * cols) * 8, cudaMemcpyDeviceToHost);
            if (err == cudaSuccess) err = cudaMemcpy(keep_host, c->keep, (size_t)(rows * cols), cudaMemcpyDeviceToHost);
            if (err != cudaSuccess) {
                cuda_fail(c, "weights back from the GPU", err);
                failed = 1;
            }
        }
        for (int64_t i = 0; !failed && i < rows * cols; i++) {
            if (!isfinite(wd[i])) {
                snprintf(c->failed, sizeof c->failed, "row %lld: non-finite SparseGPT update", (long long)(i / cols));
                failed = 1;
                break;
            }
            w_host[i] = (float)wd[i];
        }
        free(wd);
        if (!failed) rc = 0;
    } while (0);
    cudaFree(g_d);
    free(dead);
    return rc;
}

} // namespace

extern "C" int tb_cuda_sparsegpt(int gpu, float *w, uint8_t *keep, int64_t rows, int64_t cols, int n, int m,
                                 const double *gram, double damp, int block, int reselect, double *lambda,
                                 int *raised, int *eigen)
{
    if (block < 1 || block > MAX_BLOCK || (m && (block % m || cols % m)) || m > 16)
        return tb_fail(TB_EUSAGE, "sparsegpt (cuda): block %d must be in [1, %d] and, like the columns (%lld), a "
                                  "multiple of M=%d <= 16", block, MAX_BLOCK, (long long)cols, m);
    if (cudaSetDevice(gpu) != cudaSuccess) {
        cudaGetLastError();
        return tb_fail(TB_EIO, "sparsegpt (cuda): GPU %d cannot be used", gpu);
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

extern "C" double tb_cuda_output_error(int gpu, const float *w0, const float *w, int64_t rows, int64_t cols,
                                       const double *gram)
{
    if (cudaSetDevice(gpu) != cudaSuccess) {
        cudaGetLastError();
        return NAN;
    }
    const size_t ne = (size_t)(rows * cols), ng = (size_t)(cols * cols);
    double *e = (double *)malloc(ne * 8), *dev = nullptr, *partial = nullptr, result = NAN;
    cublasHandle_t h = nullptr;
    if (!e) return NAN;
    for (size_t i = 0; i < ne; i++) e[i] = (double)w0[i] - (w ? (double)w[i] : 0.0);
    const int blocks = 1024;
    if (cudaMalloc(&dev, (2 * ne + ng) * 8) == cudaSuccess && cudaMalloc(&partial, blocks * 8) == cudaSuccess &&
        cublasCreate(&h) == CUBLAS_STATUS_SUCCESS) {
        double *ed = dev, *gd = dev + ne, *yd = dev + ne + ng;
        const double one = 1, zero = 0;
        cudaMemcpy(ed, e, ne * 8, cudaMemcpyHostToDevice);
        cudaMemcpy(gd, gram, ng * 8, cudaMemcpyHostToDevice);
        // row-major Y = E G (G symmetric): column-major Y^T = G E^T
        if (cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)cols, (int)rows, (int)cols, &one, gd, (int)cols, ed,
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
    cudaFree(partial);
    cudaGetLastError();
    free(e);
    return result;
}
