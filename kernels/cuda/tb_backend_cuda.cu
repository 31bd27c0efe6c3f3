// tb_backend_cuda.cu - the CUDA implementation of the compute seam
// (kernels/tb_backend.h): memory, weights, cuBLAS GEMMs, the elementwise and
// row kernels, f64 reductions and Adam. Attention is in tb_attention_cuda.cu.
//
// CPU references: kernels/cpu/tb_backend_cpu.c and the kernels it wraps
// (tb_ops.c, tb_linear.c, tb_backward.c, tb_eval.c, tb_calib.c, tb_recon.c).
// tests/cuda/test_backend.c runs every op on both backends (make test-cuda).
//
// Weights. Dense ones as a dense copy in the compute dtype; packed N:M ones
// uploaded as stored and decoded on the device, 2:4 bf16 ones kept in the
// sparse tensor-core form of tb_sp24.h for decode, and in cuSPARSELt's form
// for prefill where the build has it ("N:M weights" below has the choice and
// the memory policy). The 2:4 paths are compiled but have not yet run on a GPU.
//
// Precision. TB_PREC_F32: weights f32, cuBLAS with CUBLAS_COMPUTE_32F_PEDANTIC
// (no TF32, no reduced-precision tricks), Gram in f64 (DSYRK). TB_PREC_BF16:
// weights bf16 on the device, activations cast to bf16 for each GEMM, f32
// accumulation and output; Gram from bf16 operand tiles of a bounded token
// count, f32 accumulated and summed into the f64 G. Everything else is f32
// with f64 where the header says (nll, kl, sum_sq_diff).
#include "tb_cuda_backend.h"
#include "tb_cuda.h"
#include "tb_nvtx.h"
#include "tb_gemv_bf16.h"
#include "tb_sp24.h"

extern "C" {
#include "tb_pack.h" /* the N:M index layout */
#include "tb_sp24_layout.h"
}

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------- errors

int tb_cuda_check(tb_cuda *cu, cudaError_t e, const char *what, const char *file, int line)
{
    if (e == cudaSuccess) return 0;
    if (!cu->err) {
        cu->err = TB_EIO;
        snprintf(cu->msg, sizeof cu->msg, "cuda: %s: %s (%s:%d)", what, cudaGetErrorString(e), file, line);
    }
    return 1;
}

void tb_cuda_set_error(tb_cuda *cu, int code, const char *fmt, ...)
{
    if (cu->err) return;
    cu->err = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cu->msg, sizeof cu->msg, fmt, ap);
    va_end(ap);
}

static int blas_check(tb_cuda *cu, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    tb_cuda_set_error(cu, TB_EIO, "cuda: %s: cuBLAS %s", what,
                      s == CUBLAS_STATUS_ALLOC_FAILED ? "out of GPU memory" : cublasGetStatusString(s));
    return 1;
}

static double gib(size_t bytes) { return (double)bytes / (1024.0 * 1024.0 * 1024.0); }

static size_t device_free(void)
{
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return fr;
}

// device memory, or NULL and a one-line error naming `what` and the bytes asked
static void *dev_alloc(tb_cuda *cu, size_t bytes, const char *what)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaSuccess) return p;
    cudaGetLastError(); // an allocation failure is not sticky for CUDA: keep it that way for us
    if (e == cudaErrorMemoryAllocation)
        tb_fail(TB_EIO, "out of GPU memory: %s: %zu bytes asked (%.2f GiB), %.2f GiB free on cuda:%d", what, bytes,
                gib(bytes), gib(device_free()), cu->dev);
    else
        tb_fail(TB_EIO, "cuda: allocating %s (%zu bytes): %s", what, bytes, cudaGetErrorString(e));
    return NULL;
}

void *tb_cuda_ws(tb_cuda *cu, size_t bytes, const char *what)
{
    if (cu->err) return NULL;
    if (bytes <= cu->ws_bytes) return cu->ws;
    // the old space may still be in use by issued work
    if (TB_CU_CHECK(cu, cudaStreamSynchronize(cu->stream), "work space")) return NULL;
    cudaFree(cu->ws);
    cu->ws = NULL;
    cu->ws_bytes = 0;
    size_t want = bytes + bytes / 4; // grow with headroom so a slowly growing need does not reallocate each call
    cu->ws = dev_alloc(cu, want, what);
    if (!cu->ws) {
        tb_cuda_set_error(cu, TB_EIO, "%s", tb_errmsg());
        return NULL;
    }
    cu->ws_bytes = want;
    return cu->ws;
}

static void *host_ws(tb_cuda *cu, size_t bytes)
{
    if (bytes <= cu->host_bytes) return cu->host;
    free(cu->host);
    cu->host = malloc(bytes);
    cu->host_bytes = cu->host ? bytes : 0;
    if (!cu->host) tb_cuda_set_error(cu, TB_EIO, "cuda: out of host memory (%zu bytes of staging)", bytes);
    return cu->host;
}

static unsigned blocks_for(size_t count, int threads, unsigned cap = 65535u * 8u)
{
    size_t b = (count + threads - 1) / threads;
    if (b < 1) b = 1;
    return b > cap ? cap : (unsigned)b;
}

// ---------------------------------------------------------------- kernels

__global__ void k_f32_to_bf16(__nv_bfloat16 *dst, const float *src, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void k_bf16_to_f32(float *dst, const __nv_bfloat16 *src, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

__global__ void k_f32_to_f64(double *dst, const float *src, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = (double)src[i];
}

// y[t, r] = bias[r] (the GEMM then adds x W^T with beta = 1)
__global__ void k_bias_rows(float *y, const float *bias, int n, int rows)
{
    size_t count = (size_t)n * rows;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        y[i] = bias[i % rows];
}

// column-major G (leading dimension ldg) += C [m, nb] (leading dimension m), in f64
__global__ void k_add_block(double *G, int ldg, const float *C, int m, int nb)
{
    const size_t count = (size_t)m * nb;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        const size_t c = i / m, r = i - c * m;
        G[c * ldg + r] += (double)C[i];
    }
}

__global__ void k_sq_acc(float *F, const float *g, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        F[i] += g[i] * g[i];
}

__global__ void k_add(float *y, const float *a, const float *c, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        y[i] = a[i] + c[i];
}

__global__ void k_scaled_diff(float *d, const float *a, const float *c, float scale, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        d[i] = scale * (a[i] - c[i]);
}

// ob: NULL, or also out rounded to bf16 (the next linear's operand; "bf16 operands")
__global__ void k_swiglu(float *out, const float *gate, const float *up, size_t count, __nv_bfloat16 *ob)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        const float o = g / (1.0f + expf(-g)) * up[i];
        out[i] = o;
        if (ob) ob[i] = __float2bfloat16_rn(o);
    }
}

__global__ void k_swiglu_backward(float *d_gate, float *d_up, const float *d_out, const float *gate, const float *up,
                                  size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i], u = up[i], d = d_out[i];
        float s = 1.0f / (1.0f + expf(-g));
        d_up[i] = d * g * s;
        d_gate[i] = d * u * s * (1.0f + g * (1.0f - s));
    }
}

// one block reduction of a double (blockDim a multiple of 32, <= 1024); result valid in every thread
__device__ double block_sum(double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads(); // sh may still be read by a previous call
    if (lane == 0) sh[w] = v;
    __syncthreads();
    double s = 0;
    for (int i = 0; i < nw; i++) s += sh[i]; // fixed order: reproducible
    return s;
}

__device__ float block_max(float v, float *sh)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float m = sh[0];
    for (int i = 1; i < nw; i++) m = fmaxf(m, sh[i]);
    return m;
}

// argmax with the CPU's tie rule (the first index of the maximum wins)
__device__ void block_argmax(float &v, int &idx, float *shv, int *shi)
{
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
        if (v2 > v || (v2 == v && i2 < idx)) {
            v = v2;
            idx = i2;
        }
    }
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) {
        shv[w] = v;
        shi[w] = idx;
    }
    __syncthreads();
    v = shv[0];
    idx = shi[0];
    for (int i = 1; i < nw; i++)
        if (shv[i] > v || (shv[i] == v && shi[i] < idx)) {
            v = shv[i];
            idx = shi[i];
        }
}

constexpr int kRowThreads = 256;

// threads of k_rmsnorm and k_add_rmsnorm for rows of d: about 4 values a
// thread, 128 to 1024. A decode step runs them on one block (one row), whose
// time is each thread's chain of dependent loads and f64 adds: at 256 threads
// and d = 4096 (16 values a thread) a call took ~15 us under Nsight Compute
// (cold caches) on the H200; the change gave +3.6% dense decode tokens/s (4
// Mistral-7B layers, BENCHMARKS.md). Both kernels take the same count, so
// add_rmsnorm's sums stay those of add then rmsnorm (same order, same bits).
static int norm_threads(int d)
{
    int t = (d + 3) / 4;
    t = (t + 31) / 32 * 32;
    return t < 128 ? 128 : t > 1024 ? 1024 : t;
}

// yb: NULL, or also y rounded to bf16 (the next linears' operand; "bf16 operands")
__global__ void k_rmsnorm(float *y, float *inv_rms, const float *x, const float *w, int d, float eps,
                          __nv_bfloat16 *yb)
{
    __shared__ double sh[32];
    const size_t row = blockIdx.x;
    const float *xr = x + row * d;
    float *yr = y + row * d;
    double ss = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += (double)xr[j] * xr[j];
    ss = block_sum(ss, sh);
    const float r = 1.0f / sqrtf((float)(ss / d) + eps);
    if (inv_rms && threadIdx.x == 0) inv_rms[row] = r;
    // each j read, then written, by one thread (y may be x)
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float v = w[j] * (xr[j] * r);
        yr[j] = v;
        if (yb) yb[row * d + j] = __float2bfloat16_rn(v);
    }
}

__global__ void k_rmsnorm_backward(float *dx, const float *dy, const float *x, const float *inv_rms, const float *w,
                                   int d, int accumulate)
{
    __shared__ double sh[32];
    const size_t row = blockIdx.x;
    const float *yr = dy + row * d, *xr = x + row * d;
    float *dr = dx + row * d;
    double s = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += (double)w[j] * yr[j] * xr[j];
    s = block_sum(s, sh);
    const double r = inv_rms[row], c = r * r * r * s / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float g = (float)(r * w[j] * yr[j] - xr[j] * c);
        dr[j] = accumulate ? dr[j] + g : g;
    }
}

__global__ void k_rope(float *x, int n, int heads, int head_dim, int pos0, const float *cos_t, const float *sin_t)
{
    const int half = head_dim / 2;
    const size_t count = (size_t)n * heads * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < count;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        const size_t th = idx / half; // t * heads + h
        const int t = (int)(th / heads);
        float *v = x + th * head_dim;
        const float c = cos_t[(size_t)(pos0 + t) * half + i], s = sin_t[(size_t)(pos0 + t) * half + i];
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

// The decode step's ropes and cache writes in one launch, the position read
// from the device (*pos), so a captured step replays for every token: q
// rotated in place, k rotated into k_cache rows *pos.., v copied into v_cache.
// The arithmetic of k_rope, so the values are those of the unfused ops.
__global__ void k_rope_append(float *q, const float *k, const float *v, int n, int qh, int kvh, int hd,
                              const int32_t *pos, const float *cos_t, const float *sin_t, float *kc, float *vc)
{
    const int half = hd / 2;
    const int p0 = *pos;
    const size_t kvd = (size_t)kvh * hd;
    const size_t nq = (size_t)n * qh * half, nk = (size_t)n * kvh * half, nv = (size_t)n * kvd;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < nq + nk + nv;
         idx += (size_t)gridDim.x * blockDim.x) {
        if (idx >= nq + nk) { // v: token t's row lands in cache row p0 + t, and t * kvd + e = j
            const size_t j = idx - nq - nk;
            vc[(size_t)p0 * kvd + j] = v[j];
            continue;
        }
        const bool isq = idx < nq;
        const size_t j = isq ? idx : idx - nq;
        const int heads = isq ? qh : kvh;
        const int i = (int)(j % half);
        const size_t th = j / half; // t * heads + h
        const int t = (int)(th / heads);
        const float *src = (isq ? (const float *)q : k) + th * hd;
        float *dst = isq ? q + th * hd : kc + (size_t)p0 * kvd + th * hd;
        const float c = cos_t[(size_t)(p0 + t) * half + i], s = sin_t[(size_t)(p0 + t) * half + i];
        const float a = src[i], b = src[i + half];
        dst[i] = a * c - b * s;
        dst[i + half] = b * c + a * s;
    }
}

// y = a + c, then yn = rmsnorm(y): k_add and k_rmsnorm in one pass, one block
// a row, each value rounded and summed as those two do (the same results)
// nb: NULL, or also yn rounded to bf16 (the next linears' operand; "bf16 operands")
__global__ void k_add_rmsnorm(float *y, float *yn, float *inv_rms, const float *a, const float *c, const float *w,
                              int d, float eps, __nv_bfloat16 *nb)
{
    __shared__ double sh[32];
    const size_t row = blockIdx.x;
    const float *ar = a + row * d, *cr = c + row * d;
    float *yr = y + row * d, *nr = yn + row * d;
    double ss = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float v = ar[j] + cr[j];
        yr[j] = v; // y may be a or c: each j read, then written, by one thread
        ss += (double)v * v;
    }
    ss = block_sum(ss, sh);
    const float r = 1.0f / sqrtf((float)(ss / d) + eps);
    if (inv_rms && threadIdx.x == 0) inv_rms[row] = r;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float v = w[j] * (yr[j] * r);
        nr[j] = v;
        if (nb) nb[row * d + j] = __float2bfloat16_rn(v);
    }
}

// row t < n-1: lse(logits[t]) - logits[t][tokens[t+1]] in f64; grad: also the xent gradient in place
__global__ void k_nll_rows(float *logits, const int32_t *tokens, int n, int vocab, double *row_nll, int grad)
{
    __shared__ double shd[32];
    __shared__ float shf[32];
    const int t = blockIdx.x;
    float *row = logits + (size_t)t * vocab;
    if (t == n - 1) { // the last position predicts nothing
        if (grad)
            for (int v = threadIdx.x; v < vocab; v += blockDim.x) row[v] = 0.0f;
        return;
    }
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) mx = fmaxf(mx, row[v]);
    mx = block_max(mx, shf);
    double s = 0;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) s += exp((double)row[v] - mx);
    s = block_sum(s, shd);
    const double lse = mx + log(s);
    const int target = tokens[t + 1];
    const double tv = (double)row[target];
    __syncthreads(); // every thread has read row[target] before anyone overwrites it
    if (threadIdx.x == 0) row_nll[t] = lse - tv;
    if (grad) {
        const double inv = 1.0 / (n - 1);
        for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
            double p = exp((double)row[v] - lse);
            row[v] = (float)((p - (v == target ? 1.0 : 0.0)) * inv);
        }
    }
}

// per row: KL(softmax(ref) || softmax(cur)) clamped at 0 (as the CPU), and whether the argmaxes agree;
// scale != 0: cur becomes scale * (softmax(cur) - softmax(ref)) (kl_grad). Each thread reads and writes
// only its own entries v = threadIdx.x + k * blockDim.x, so the overwrite needs no barrier.
__global__ void k_kl_rows(const float *ref, float *cur, int vocab, double *row_kl, int *row_same, double scale)
{
    __shared__ double shd[32];
    __shared__ float shf[32];
    __shared__ int shi[32];
    const size_t t = blockIdx.x;
    const float *a = ref + t * vocab;
    float *b = cur + t * vocab;
    float ma = -INFINITY, mb = -INFINITY;
    int ia = 0x7fffffff, ib = 0x7fffffff;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        if (a[v] > ma || (a[v] == ma && v < ia)) {
            ma = a[v];
            ia = v;
        }
        if (b[v] > mb || (b[v] == mb && v < ib)) {
            mb = b[v];
            ib = v;
        }
    }
    block_argmax(ma, ia, shf, shi);
    block_argmax(mb, ib, shf, shi);
    double sa = 0, sb = 0;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        sa += exp((double)a[v] - ma);
        sb += exp((double)b[v] - mb);
    }
    sa = block_sum(sa, shd);
    sb = block_sum(sb, shd);
    const double lp = ma + log(sa), lq = mb + log(sb);
    double kl = 0;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        double x = (double)a[v] - lp, y = (double)b[v] - lq;
        kl += exp(x) * (x - y);
    }
    kl = block_sum(kl, shd);
    if (threadIdx.x == 0) {
        row_kl[t] = kl > 0 ? kl : 0;
        row_same[t] = ia == ib;
    }
    if (scale != 0)
        for (int v = threadIdx.x; v < vocab; v += blockDim.x)
            b[v] = (float)(scale * (exp((double)b[v] - lq) - exp((double)a[v] - lp)));
}

// per-block partial sums of (a - c)^2 (c NULL: a^2) in f64
__global__ void k_sum_sq_diff(const float *a, const float *c, size_t count, double *partial)
{
    __shared__ double sh[32];
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        double d = c ? (double)a[i] - c[i] : (double)a[i];
        s += d * d;
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void k_first_nonfinite(const float *x, size_t count, unsigned long long *first)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        if (!isfinite(x[i])) atomicMin(first, (unsigned long long)i);
}

// Adam on kept entries, as tb_recon.c: f32 moments, the step in f64, the f32
// master updated and the compute copy (bf16) refreshed from it
__global__ void k_adam(float *w32, __nv_bfloat16 *wb, const float *g, const uint8_t *keep, float *m1, float *m2,
                       size_t count, double lr, float b1, float b2, double c1, double c2, double eps)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        if (!keep[i]) continue; // pruned entries never move
        const float gi = g[i];
        const float a = __fadd_rn(__fmul_rn(b1, m1[i]), __fmul_rn(1.0f - b1, gi));
        const float v = __fadd_rn(__fmul_rn(b2, m2[i]), __fmul_rn(__fmul_rn(1.0f - b2, gi), gi));
        m1[i] = a;
        m2[i] = v;
        const float w = w32[i] - (float)(lr * (a / c1) / (sqrt(v / c2) + eps));
        w32[i] = w;
        if (wb) wb[i] = __float2bfloat16_rn(w);
    }
}

// ---------------------------------------------------------------- learned N:M masks
//
// The CPU twins are tb_learnmask.c's functions; these compute the same
// numbers: every product and sum rounded as the CPU's (no FMA contraction:
// the CPU build targets x86-64-v2, which has none), so masks re-select
// identically on both backends (test_backend checks it bit for bit).

// colsq[c] += x[t, c]^2 over the rows in order, f64: a thread per column
__global__ void k_col_sq_acc(const float *x, int n, int cols, double *colsq)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    double s = colsq[c];
    for (int t = 0; t < n; t++) {
        const double v = x[(size_t)t * cols + c];
        s = __dadd_rn(s, __dmul_rn(v, v));
    }
    colsq[c] = s;
}

// Adam on every latent entry (full-size moments), then the pruned ones decay
__global__ void k_latent_step(float *lat, const float *g, float *m1, float *m2, const uint8_t *keep, size_t count,
                              double lr, float b1, float b2, double c1, double c2, double eps, float shrink, int decay)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        const float gi = g[i];
        const float a = __fadd_rn(__fmul_rn(b1, m1[i]), __fmul_rn(1.0f - b1, gi));
        const float v = __fadd_rn(__fmul_rn(b2, m2[i]), __fmul_rn(__fmul_rn(1.0f - b2, gi), gi));
        m1[i] = a;
        m2[i] = v;
        float w = lat[i] - (float)(lr * (a / c1) / (sqrt(v / c2) + eps));
        if (decay && !keep[i]) w = __fmul_rn(w, shrink);
        lat[i] = w;
    }
}

// each group of m columns of a row keeps its n largest |w| * (float)sqrt(colsq / tokens); ties to the lower column
__global__ void k_nm_reselect(const float *w, const double *colsq, double tokens, int64_t rows, int64_t cols, int n,
                              int m, uint8_t *keep)
{
    const int64_t groups = cols / m, total = rows * groups;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = idx / groups, g = (idx % groups) * m;
        const float *wr = w + r * cols + g;
        double s[16];
        int now[16];
        for (int j = 0; j < m; j++) {
            const float cs = (float)sqrt(colsq[g + j] / tokens);
            s[j] = __dmul_rn(fabs((double)wr[j]), (double)cs);
            now[j] = 0;
        }
        for (int k = 0; k < n; k++) {
            int best = -1;
            for (int j = 0; j < m; j++)
                if (!now[j] && (best < 0 || s[j] > s[best])) best = j;
            now[best] = 1;
        }
        for (int j = 0; j < m; j++) keep[r * cols + g + j] = (uint8_t)now[j];
    }
}

// the trained weight (f32 master, and its bf16 compute copy) = lat on keep, zeros elsewhere
__global__ void k_mask_apply(float *w32, __nv_bfloat16 *wb, const float *lat, const uint8_t *keep, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        const float w = keep[i] ? lat[i] : 0.0f;
        w32[i] = w;
        if (wb) wb[i] = __float2bfloat16_rn(w);
    }
}

// ---------------------------------------------------------------- memory ops

static void *cu_alloc(tb_backend *b, size_t bytes, const char *what)
{
    return dev_alloc(tb_cu(b), bytes, what);
}

static void cu_free(tb_backend *b, void *p)
{
    if (p) TB_CU_CHECK(tb_cu(b), cudaFree(p), "free");
}

static void cu_upload(tb_backend *b, void *dst, const void *src, size_t bytes)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !bytes) return;
    // from pageable memory the call returns once src has been staged, so the caller may reuse it
    TB_CU_CHECK(cu, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu->stream), "upload");
}

static void cu_download(tb_backend *b, void *dst, const void *src, size_t bytes)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !bytes) return;
    if (!TB_CU_CHECK(cu, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu->stream), "download"))
        TB_CU_CHECK(cu, cudaStreamSynchronize(cu->stream), "download");
}

static void cu_copy(tb_backend *b, void *dst, const void *src, size_t bytes)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !bytes) return;
    TB_CU_CHECK(cu, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cu->stream), "copy");
}

static void cu_zero(tb_backend *b, void *p, size_t bytes)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !bytes) return;
    TB_CU_CHECK(cu, cudaMemsetAsync(p, 0, bytes, cu->stream), "zero");
}

static int cu_sync(tb_backend *b)
{
    tb_cuda *cu = tb_cu(b);
    if (!cu->err) TB_CU_CHECK(cu, cudaStreamSynchronize(cu->stream), "sync");
    if (!cu->err) return TB_OK;
    // reported once, as the CPU backend does (a broken CUDA context fails the next op again)
    const int rc = cu->err;
    cu->err = TB_OK;
    return tb_fail(rc, "%s", cu->msg);
}

static size_t cu_mem_free(tb_backend *b)
{
    (void)b;
    return device_free();
}

// ---------------------------------------------------------------- weights

static size_t elt(const tb_cuda *cu) { return cu->bf16 ? 2 : 4; }

// f32 [count] on the device into dst in the compute dtype
static void to_compute(tb_cuda *cu, void *dst, const float *src, size_t count)
{
    if (cu->err || !count) return;
    if (cu->bf16) {
        k_f32_to_bf16<<<blocks_for(count, 256), 256, 0, cu->stream>>>((__nv_bfloat16 *)dst, src, count);
        TB_CU_LAUNCHED(cu, "bf16 conversion");
    } else {
        TB_CU_CHECK(cu, cudaMemcpyAsync(dst, src, count * 4, cudaMemcpyDeviceToDevice, cu->stream), "copy");
    }
}

static int upload_bias(tb_cuda *cu, tb_dlinear *d, const tb_linear *L)
{
    d->bias = NULL;
    if (!L->bias) return TB_OK;
    d->bias = (float *)dev_alloc(cu, (size_t)L->rows * 4, L->name ? L->name : "bias");
    if (!d->bias) return TB_EIO;
    if (TB_CU_CHECK(cu, cudaMemcpyAsync(d->bias, L->bias, (size_t)L->rows * 4, cudaMemcpyHostToDevice, cu->stream),
                    "bias upload"))
        return tb_fail(cu->err, "%s", cu->msg);
    return TB_OK;
}

// ---- N:M weights: decoded on the device
//
// A packed N:M weight (TB_LINEAR_NM: kept values + b-bit in-group positions +
// optional column permutation, formats/tb_pack.h) crosses the bus as it is
// stored, once, into the work space, and becomes one of two device forms:
//
// - 2:4 with bf16 values in the bf16 precision, shape rows % 32 == 0 and
//   cols % 64 == 0, on sm_80+: the sparse tensor-core form of
//   kernels/cuda/tb_sp24.h (0.5625x the bytes of dense bf16), reordered on the
//   device. cu_linear runs the implementation tb_cuda_sp24_choose names for
//   the token count (its decision table, measured): our 2:4 GEMM at 1-16
//   tokens (decode); cuSPARSELt in a CUSPARSELT=1 build from the count its
//   per-shape rule gives (tb_cuda_sp24_cslt_min_tokens: 256, 512 or 1024
//   tokens, never for fewer than 2048 rows); the dense copy through cuBLAS
//   elsewhere (below that count, every prefill without cuSPARSELt, shapes
//   cuSPARSELt has no plan for; linear_dx).
// - anything else: the dense copy in the compute dtype, expanded on the device
//   (k_nm_decode), as a dense weight has.
//
// Memory policy for the 2:4 form: the dense copy and cuSPARSELt's compressed
// form are each made from it on the device the first time an op needs them,
// and kept with the weight. A run that only decodes (tb-run generation with a
// prompt of at most 16 tokens) holds 0.5625x of dense bf16; one that prefills
// through cuSPARSELt adds its form, ~0.5625x more (1.125x in all, and no
// dense copy of the weights that rule sends there: a 7B model's k/v_proj at
// 2048 tokens, and every weight at counts below its threshold, hold the dense
// copy too, +1x), the price of the faster
// implementation at each token count (expanding the dense copy per call
// instead would add, by a count not a measurement, ~23 GB of traffic, ~5 ms
// at the copy rate, to each ~40 ms 2048-token window of a 7B prefill). The
// compressed form is made lazily, not at upload, so that a decode-only run
// does not hold it. d->bytes counts what linear_upload made (the 2:4 form);
// forms made later are not in it (tb_cuda_sp24_forms tells which exist).
// TB_SP24_PREFILL (read at backend open; benchmarks, not users): "dense" keeps
// cuSPARSELt out of a CUSPARSELT=1 build, so the same binary times the
// dense-copy prefill; "cusparselt" runs it at every count above 16 tokens,
// below the table's threshold too, to measure where that threshold belongs.

struct cu_sparse {
    tb_sp24_weight sp; // the 2:4 GEMM's form (device)
    void *dense;       // bf16 [rows, cols] in model column order, made on first need, or NULL
    void *comp;        // cuSPARSELt's compressed form, made on first need, or NULL
    size_t comp_bytes;
};

extern "C" int tb_cuda_sp24_forms(const void *sparse)
{
    const cu_sparse *s = (const cu_sparse *)sparse;
    if (!s) return 0;
    return TB_CUDA_FORM_SP24 | (s->comp ? TB_CUDA_FORM_CSLT : 0) | (s->dense ? TB_CUDA_FORM_DENSE : 0);
}

static void cu_linear_release(tb_backend *b, tb_dlinear *d)
{
    tb_cuda *cu = tb_cu(b);
    if (d->w && d->w != (void *)d->w32) cudaFree(d->w);
    cudaFree(d->w32);
    cudaFree(d->bias);
    if (d->sparse) {
        cu_sparse *s = (cu_sparse *)d->sparse;
        tb_cuda_sp24_release(&s->sp);
        cudaFree(s->dense);
        cudaFree(s->comp);
        free(s);
    }
    (void)cu;
    d->w = NULL;
    d->w32 = NULL;
    d->bias = NULL;
    d->sparse = NULL;
    d->bytes = 0;
}

template <typename V> __device__ __forceinline__ float nm_value(const V *v, int64_t i);
template <> __device__ __forceinline__ float nm_value<float>(const float *v, int64_t i) { return v[i]; }
template <> __device__ __forceinline__ float nm_value<__half>(const __half *v, int64_t i) { return __half2float(v[i]); }
template <> __device__ __forceinline__ float nm_value<__nv_bfloat16>(const __nv_bfloat16 *v, int64_t i)
{
    return __bfloat162float(v[i]);
}
__device__ __forceinline__ void nm_store(float *p, float v) { *p = v; }
__device__ __forceinline__ void nm_store(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

// One thread per (row, group of m columns), as tb_nm_unpack_rows and
// tb_linear_rows: the group's n kept values to their positions (b bits each,
// LSB first, a row's bits starting on a byte), zeros elsewhere, every stored
// column c written once at model column perm[c].
template <typename V, typename O>
__global__ void k_nm_decode(const V *values, const uint8_t *idx, const int32_t *perm, int64_t rows, int64_t cols,
                            int n, int m, int bits, int64_t irb, O *out)
{
    const int64_t groups = cols / m, vpr = groups * n, total = rows * groups;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / groups, g = i % groups;
        const uint8_t *irow = idx + r * irb;
        float v[16];
        for (int t = 0; t < m; t++) v[t] = 0.0f;
        for (int j = 0; j < n; j++) {
            const int64_t k = g * n + j, bit = k * bits, byte = bit >> 3;
            const int sh = (int)(bit & 7);
            unsigned word = irow[byte];
            if (sh + bits > 8) word |= (unsigned)irow[byte + 1] << 8; // a 3-bit position across two bytes
            v[(word >> sh) & ((1u << bits) - 1)] = nm_value(values, r * vpr + k);
        }
        for (int t = 0; t < m; t++) {
            const int64_t c = g * m + t;
            nm_store(out + r * cols + (perm ? perm[c] : c), v[t]);
        }
    }
}

template <typename V>
static void launch_nm_decode(tb_cuda *cu, const void *values, const uint8_t *idx, const int32_t *perm,
                             const tb_linear *L, void *out)
{
    const int bits = tb_nm_index_bits(L->m);
    const int64_t irb = tb_nm_index_row_bytes(L->cols, L->n, L->m);
    const unsigned grid = blocks_for((size_t)L->rows * (L->cols / L->m), 256);
    if (cu->bf16)
        k_nm_decode<<<grid, 256, 0, cu->stream>>>((const V *)values, idx, perm, L->rows, L->cols, L->n, L->m, bits, irb,
                                                  (__nv_bfloat16 *)out);
    else
        k_nm_decode<<<grid, 256, 0, cu->stream>>>((const V *)values, idx, perm, L->rows, L->cols, L->n, L->m, bits, irb,
                                                  (float *)out);
    TB_CU_LAUNCHED(cu, "N:M decode");
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

// the 2:4 GEMM can take this weight (see the policy above)
static int sp24_fits(const tb_cuda *cu, const tb_linear *L)
{
    return cu->bf16 && L->n == 2 && L->m == 4 && L->dtype == TB_BF16 && L->rows % 32 == 0 && L->cols % 64 == 0 &&
           cu->prop.major >= 8;
}

static int upload_nm(tb_cuda *cu, tb_dlinear *d, const tb_linear *L)
{
    const char *what = L->name ? L->name : "N:M weight";
    if (L->n < 1 || L->m < 2 || L->m > 16 || L->n >= L->m || L->cols % L->m ||
        (L->dtype != TB_F32 && L->dtype != TB_F16 && L->dtype != TB_BF16))
        return tb_fail(TB_EUSAGE, "cuda: %s: %d:%d weight of %s values over %d columns is not a packed N:M weight this "
                                  "backend reads", what, L->n, L->m, tb_dtype_name(L->dtype), L->cols);
    const size_t vbytes = (size_t)L->rows * (size_t)tb_nm_values_per_row(L->cols, L->n, L->m) * tb_dtype_size(L->dtype);
    const size_t ibytes = (size_t)L->rows * (size_t)tb_nm_index_row_bytes(L->cols, L->n, L->m);
    const size_t pbytes = L->perm ? (size_t)L->cols * sizeof(int32_t) : 0;
    const size_t ioff = align256(vbytes), poff = align256(ioff + ibytes);
    char *stage = (char *)tb_cuda_ws(cu, poff + pbytes, "N:M weight staging");
    if (!stage) return tb_fail(cu->err, "%s", cu->msg);
    // the source is pageable (a mapped file): each copy returns once it is staged, in stream order before the decode
    TB_CU_CHECK(cu, cudaMemcpyAsync(stage, L->data, vbytes, cudaMemcpyHostToDevice, cu->stream), "weight upload");
    TB_CU_CHECK(cu, cudaMemcpyAsync(stage + ioff, L->indices, ibytes, cudaMemcpyHostToDevice, cu->stream),
                "weight upload");
    if (pbytes)
        TB_CU_CHECK(cu, cudaMemcpyAsync(stage + poff, L->perm, pbytes, cudaMemcpyHostToDevice, cu->stream),
                    "weight upload");
    if (cu->err) return tb_fail(cu->err, "%s", cu->msg);
    const uint8_t *idx = (const uint8_t *)(stage + ioff);
    const int32_t *perm = pbytes ? (const int32_t *)(stage + poff) : NULL;
    if (sp24_fits(cu, L)) {
        cu_sparse *s = (cu_sparse *)calloc(1, sizeof *s);
        if (!s) return tb_fail(TB_EIO, "out of memory uploading %s", what);
        d->sparse = s; // released with d on failure
        int rc = tb_cuda_sp24_prepare_device(&s->sp, (const uint16_t *)stage, idx, L->rows, L->cols, perm, cu->stream);
        if (rc) return tb_err_context("%s", what);
        d->bytes = tb_sp24_a_bytes(L->rows, L->cols) + tb_sp24_e_bytes(L->rows, L->cols) + pbytes;
        return TB_OK;
    }
    const size_t count = (size_t)L->rows * L->cols;
    d->w = dev_alloc(cu, count * elt(cu), what);
    if (!d->w) return TB_EIO;
    if (L->dtype == TB_F32) launch_nm_decode<float>(cu, stage, idx, perm, L, d->w);
    else if (L->dtype == TB_F16) launch_nm_decode<__half>(cu, stage, idx, perm, L, d->w);
    else launch_nm_decode<__nv_bfloat16>(cu, stage, idx, perm, L, d->w);
    if (cu->err) return tb_fail(cu->err, "%s", cu->msg);
    d->bytes = count * elt(cu);
    return TB_OK;
}

struct decode_job {
    const tb_linear *L;
    int r0;
    float *out;      // [rows of the chunk, cols]
    float *row_bufs; // [threads, cols]: tb_linear_rows' work row for a permuted weight
};

static void decode_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    const decode_job *j = (const decode_job *)ctx;
    if (end <= begin) return;
    const size_t cols = (size_t)j->L->cols;
    tb_linear_rows(j->L, j->r0 + (int)begin, (int)(end - begin), j->out + (size_t)begin * cols,
                   j->row_bufs + (size_t)tid * cols);
}

// A dense weight's device copy in the compute dtype: one copy when the file
// holds the compute dtype unpermuted; else rows come out of tb_linear_rows on
// the host (dtype converted, permutation undone, f32) a chunk at a time, cross
// into a device f32 staging area and are converted there.
static int upload_dense(tb_backend *b, tb_cuda *cu, tb_dlinear *d, const tb_linear *L)
{
    const char *what = L->name ? L->name : "linear weight";
    const size_t count = (size_t)L->rows * L->cols;
    int rc = TB_OK;
    d->w = dev_alloc(cu, count * elt(cu), what);
    if (!d->w) return TB_EIO;
    d->bytes = count * elt(cu);
    const int direct = !L->perm && ((cu->bf16 && L->dtype == TB_BF16) || (!cu->bf16 && L->dtype == TB_F32));
    if (direct) {
        if (TB_CU_CHECK(cu, cudaMemcpyAsync(d->w, L->data, count * elt(cu), cudaMemcpyHostToDevice, cu->stream),
                        "weight upload"))
            rc = tb_fail(cu->err, "%s", cu->msg);
        return rc;
    }
    size_t chunk = ((size_t)4 << 20) / (size_t)L->cols; // rows per 16 MB of f32
    if (chunk < 1) chunk = 1;
    const int nr_max = chunk < (size_t)L->rows ? (int)chunk : L->rows;
    // rows convert independently: split each chunk over the host threads
    const int nt = b->o.n_threads > 1 ? (b->o.n_threads < nr_max ? b->o.n_threads : nr_max) : 1;
    float *hbuf = (float *)malloc(((size_t)nr_max + nt) * L->cols * sizeof(float));
    float *stage = (float *)tb_cuda_ws(cu, (size_t)nr_max * L->cols * sizeof(float), "weight staging");
    if (!hbuf) rc = tb_fail(TB_EIO, "out of memory (%zu bytes) converting %s", (size_t)nr_max * L->cols * 4, what);
    else if (!stage) rc = tb_fail(cu->err, "%s", cu->msg);
    for (int r0 = 0; !rc && r0 < L->rows; r0 += nr_max) {
        const int nr = L->rows - r0 < nr_max ? L->rows - r0 : nr_max;
        const size_t c = (size_t)nr * L->cols;
        decode_job job = {L, r0, hbuf, hbuf + (size_t)nr_max * L->cols};
        tb_parallel_for(nt, nr, decode_rows, &job);
        // the previous chunk's conversion must be done with `stage`; the copy is stream-ordered after it
        TB_CU_CHECK(cu, cudaMemcpyAsync(stage, hbuf, c * 4, cudaMemcpyHostToDevice, cu->stream), "weight upload");
        to_compute(cu, (char *)d->w + (size_t)r0 * L->cols * elt(cu), stage, c);
        // a pageable source is staged before the copy returns, so hbuf may be refilled now
        if (cu->err) rc = tb_fail(cu->err, "%s", cu->msg);
    }
    free(hbuf);
    return rc;
}

static int cu_linear_upload(tb_backend *b, tb_dlinear *d, const tb_linear *L)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err) return tb_fail(cu->err, "%s", cu->msg);
    TB_RANGE_PUSH("linear_upload");
    memset(d, 0, sizeof *d);
    d->host = L;
    d->rows = L->rows;
    d->cols = L->cols;
    int rc = L->format == TB_LINEAR_NM ? upload_nm(cu, d, L) : upload_dense(b, cu, d, L);
    if (!rc) rc = upload_bias(cu, d, L);
    if (rc) cu_linear_release(b, d);
    else d->bytes += L->bias ? (size_t)L->rows * 4 : 0;
    TB_RANGE_POP();
    return rc;
}

// The dense compute-dtype weight of W: W->w, or a 2:4 weight's dense copy,
// expanded from its 2:4 form the first time an op asks (the policy above).
// NULL and a sticky error when there is no memory for it.
static const void *dense_of(tb_cuda *cu, const tb_dlinear *W)
{
    if (!W->sparse) return W->w;
    cu_sparse *s = (cu_sparse *)W->sparse;
    if (s->dense || cu->err) return s->dense;
    char what[200];
    snprintf(what, sizeof what, "the dense copy of 2:4 weight %.120s (for more than 16 tokens)",
             W->host && W->host->name ? W->host->name : "?");
    void *p = dev_alloc(cu, (size_t)W->rows * W->cols * 2, what);
    if (!p) {
        tb_cuda_set_error(cu, TB_EIO, "%s", tb_errmsg());
        return NULL;
    }
    if (tb_cuda_sp24_to_dense(&s->sp, p, TB_BF16, cu->stream)) {
        cudaFree(p);
        tb_cuda_set_error(cu, TB_EIO, "%s", tb_errmsg());
        return NULL;
    }
    s->dense = p;
    return p;
}

static int cu_linear_upload_train(tb_backend *b, tb_dlinear *d, const tb_linear *L)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err) return tb_fail(cu->err, "%s", cu->msg);
    if (L->format != TB_LINEAR_DENSE || L->dtype != TB_F32 || L->perm)
        return tb_fail(TB_EUSAGE, "cuda: training weight %s must be dense f32 without a permutation",
                       L->name ? L->name : "?");
    memset(d, 0, sizeof *d);
    d->host = L;
    d->rows = L->rows;
    d->cols = L->cols;
    d->trainable = 1;
    const char *what = L->name ? L->name : "trained weight";
    const size_t count = (size_t)L->rows * L->cols;
    int rc = TB_OK;
    d->w32 = (float *)dev_alloc(cu, count * 4, what);
    if (!d->w32) return TB_EIO;
    if (TB_CU_CHECK(cu, cudaMemcpyAsync(d->w32, L->data, count * 4, cudaMemcpyHostToDevice, cu->stream),
                    "weight upload"))
        rc = tb_fail(cu->err, "%s", cu->msg);
    if (!rc && cu->bf16) {
        d->w = dev_alloc(cu, count * 2, what);
        if (!d->w) rc = TB_EIO;
        else to_compute(cu, d->w, d->w32, count);
        if (!rc && cu->err) rc = tb_fail(cu->err, "%s", cu->msg);
    } else if (!rc) {
        d->w = d->w32; // f32: the master is the compute copy
    }
    if (!rc) rc = upload_bias(cu, d, L);
    if (rc) cu_linear_release(b, d);
    else d->bytes = count * (cu->bf16 ? 6 : 4) + (L->bias ? (size_t)L->rows * 4 : 0);
    return rc;
}

static void cu_linear_download(tb_backend *b, const tb_dlinear *d, float *dst)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err) return;
    const size_t count = (size_t)d->rows * d->cols;
    if (d->sparse) { // from the 2:4 form: exact, and no dense copy made for it
        float *tmp = (float *)tb_cuda_ws(cu, count * 4, "weight download");
        if (!tmp) return;
        if (tb_cuda_sp24_to_dense(&((cu_sparse *)d->sparse)->sp, tmp, TB_F32, cu->stream))
            tb_cuda_set_error(cu, TB_EIO, "%s", tb_errmsg());
        else
            cu_download(b, dst, tmp, count * 4);
    } else if (d->w32) {
        cu_download(b, dst, d->w32, count * 4);
    } else if (!cu->bf16) {
        cu_download(b, dst, d->w, count * 4);
    } else {
        float *tmp = (float *)tb_cuda_ws(cu, count * 4, "weight download");
        if (!tmp) return;
        k_bf16_to_f32<<<blocks_for(count, 256), 256, 0, cu->stream>>>(tmp, (const __nv_bfloat16 *)d->w, count);
        if (!TB_CU_LAUNCHED(cu, "weight download")) cu_download(b, dst, tmp, count * 4);
    }
}

// ---------------------------------------------------------------- GEMMs

// C[m, n] (column-major, f32) = alpha op(A) op(B) + beta C; A, B in the compute dtype
static void gemm(tb_cuda *cu, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A, int lda,
                 const void *B, int ldb, float beta, float *C, int ldc, const char *what)
{
    if (cu->err) return;
    const float alpha = 1.0f;
    const cudaDataType t = cu->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t ct = cu->bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC;
    blas_check(cu,
               cublasGemmEx(cu->blas, ta, tb, m, n, k, &alpha, A, t, lda, B, t, ldb, &beta, C, CUDA_R_32F, ldc, ct,
                            CUBLAS_GEMM_DEFAULT),
               what);
}

// an f32 device activation as a GEMM operand: itself (f32), or a bf16 copy in ws at byte offset `off`
static const void *operand(tb_cuda *cu, const float *x, size_t count, size_t off, size_t ws_total)
{
    if (!cu->bf16) return x;
    char *ws = (char *)tb_cuda_ws(cu, ws_total, "bf16 activations");
    if (!ws) return NULL;
    k_f32_to_bf16<<<blocks_for(count, 256), 256, 0, cu->stream>>>((__nv_bfloat16 *)(ws + off), x, count);
    if (TB_CU_LAUNCHED(cu, "bf16 activations")) return NULL;
    return ws + off;
}

// ---- bf16 operands
//
// In bf16 every linear reads its f32 x as a bf16 copy: cuBLAS through
// operand() above, cuSPARSELt through its own conversion pass. At prefill
// counts that pass is a read of 4 and a write of 2 bytes per value, per
// linear: a 7B layer converts its rmsnorm output three times (q, k, v) and
// twice (gate, up), and swiglu's [n, 14336] once, ~0.46 GB of traffic a layer
// at 2048 tokens. Instead the ops that write the linears' inputs (rmsnorm,
// add_rmsnorm, swiglu) also write the bf16 copy, from the f32 value they hold in a
// register (the same rounding, __float2bfloat16_rn, the conversion applies:
// the linears see identical operands), into cu->xb; a linear uses it when it
// reads the same pointer and no other op has entered since (cu->seq: every
// op counts itself in tb_cu), and keeps it valid for the next linear unless
// its y overlaps the source (q, k, v in a row; gate, up). Anything else that
// enters the backend makes it stale, so the f32 array stays the truth; the
// one gap is device memory written outside the ops table between the op and
// the linear (no caller does). Made only in bf16, by the norms at n > 16 rows
// and by swiglu at >= XB_MIN values (prefill: decode, whose swiglu is one row
// of at most a few 10^4 values, is left as it is), and never while the stream
// is being captured into a graph (the buffer may grow, which syncs).
static const size_t XB_MIN = (size_t)1 << 16;

// the bf16 buffer for an op about to write `count` f32 values at src, or NULL
// (then the op writes f32 only); the caller launches the writing kernel next
static __nv_bfloat16 *xb_claim(tb_cuda *cu, const float *src, size_t count)
{
    cu->xb_src = NULL;
    if (!cu->bf16 || cu->err || !count) return NULL;
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(cu->stream, &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone) {
        cudaGetLastError();
        return NULL;
    }
    if (count * 2 > cu->xb_cap) {
        // the old buffer may still be read by issued linears
        if (TB_CU_CHECK(cu, cudaStreamSynchronize(cu->stream), "bf16 operands")) return NULL;
        cudaFree(cu->xb);
        cu->xb = NULL;
        cu->xb_cap = 0;
        const size_t want = count * 2 + count / 4; // headroom, as tb_cuda_ws
        if (cudaMalloc(&cu->xb, want) != cudaSuccess) {
            cudaGetLastError(); // no room: the linears convert as before (an optimisation, never an error)
            cu->xb = NULL;
            return NULL;
        }
        cu->xb_cap = want;
    }
    cu->xb_src = src;
    cu->xb_count = count;
    cu->xb_seq = cu->seq;
    return (__nv_bfloat16 *)cu->xb;
}

// the bf16 copy of x [count] an op made for this linear (entered just after
// it, or after linears that kept it), or NULL
static const void *xb_find(const tb_cuda *cu, const float *x, size_t count)
{
    if (cu->xb_src && cu->xb_src == x && count <= cu->xb_count && cu->xb_seq + 1 == cu->seq) return cu->xb;
    return NULL;
}

// after a linear that wrote y [count]: the copy stays valid for the next op if
// y does not overlap its source
static void xb_keep(tb_cuda *cu, const float *y, size_t count)
{
    if (!cu->xb_src || cu->xb_seq + 1 != cu->seq) return;
    const float *s0 = cu->xb_src, *s1 = cu->xb_src + cu->xb_count;
    if (y < s1 && s0 < y + count) cu->xb_src = NULL;
    else cu->xb_seq = cu->seq;
}

// y = x W^T (+ bias) on the sparse tensor cores (x f32, converted by the kernel's x pass)
static void sparse_linear(tb_cuda *cu, const tb_dlinear *W, const float *x, int n, float *y)
{
    const tb_sp24_weight *sp = &((const cu_sparse *)W->sparse)->sp;
    const size_t wsb = tb_cuda_sp24_workspace_bytes(sp, n, TB_F32);
    void *ws = wsb ? tb_cuda_ws(cu, wsb, "2:4 GEMM activations") : NULL;
    if (wsb && !ws) return;
    if (tb_cuda_sp24_linear(sp, x, TB_F32, n, y, TB_F32, W->bias, ws, cu->stream, TB_SP24_AUTO))
        tb_cuda_set_error(cu, TB_EIO, "%s", tb_errmsg());
}

// y = x W^T (+ bias) through cuSPARSELt (xb: x's bf16 copy or NULL): 1 if it ran
// (or recorded an error), 0 if the library has no plan for this shape (the
// caller runs the dense copy)
static int cslt_linear(tb_cuda *cu, const tb_dlinear *W, const float *x, const void *xb, int n, float *y)
{
    // the plans promise the library 16-byte aligned operands; y may be written in place
    if ((uintptr_t)y % 16 || !tb_cuda_cslt_supports(cu->cslt, W->rows, W->cols, n)) return 0;
    cu_sparse *s = (cu_sparse *)W->sparse;
    if (!s->comp && tb_cuda_cslt_compress(cu->cslt, &s->sp, &s->comp, &s->comp_bytes, cu->stream)) {
        tb_cuda_set_error(cu, TB_EIO, "%s (2:4 weight %.120s)", tb_errmsg(),
                          W->host && W->host->name ? W->host->name : "?");
        return 1;
    }
    if (tb_cuda_cslt_linear(cu->cslt, &s->sp, s->comp, x, xb, n, y, W->bias, cu->stream))
        tb_cuda_set_error(cu, TB_EIO, "%s", tb_errmsg());
    return 1;
}

// y[n, rows] = x[n, cols] W^T (+ bias). Column-major: y^T = W x^T, W^T being W read column-major.
// A 2:4 weight runs what tb_cuda_sp24_choose names for n: the 2:4 GEMM, cuSPARSELt, or its dense copy.
static void linear_body(tb_cuda *cu, const tb_dlinear *W, const float *x, const void *xb, int n, float *y);

static void cu_linear(tb_backend *b, const tb_dlinear *W, const float *x, int n, float *y)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    const void *xb = n > 16 ? xb_find(cu, x, (size_t)n * W->cols) : NULL; // prefill: a bf16 x made by its op
    linear_body(cu, W, x, xb, n, y);
    xb_keep(cu, y, (size_t)n * W->rows);
}

static void linear_body(tb_cuda *cu, const tb_dlinear *W, const float *x, const void *xb, int n, float *y)
{
    tb_sp24_path path = W->sparse ? tb_cuda_sp24_choose(W->rows, W->cols, n, cu->cslt != NULL)
                                  : TB_SP24_PATH_DENSE;
    if (path == TB_SP24_PATH_DENSE && W->sparse && cu->cslt && cu->cslt_always) path = TB_SP24_PATH_CSLT;
    // (the 2:4 kernel reads x rows in place as float2: 8-byte aligned, as every backend allocation is)
    if (path == TB_SP24_PATH_KERNEL && (uintptr_t)x % 8 == 0) {
        TB_RANGE_PUSH("linear 2:4"); // its own range, so a profile shows which path ran
        sparse_linear(cu, W, x, n, y);
        TB_RANGE_POP();
        return;
    }
    if (path == TB_SP24_PATH_CSLT) {
        TB_RANGE_PUSH("linear 2:4 cuSPARSELt");
        const int ran = cslt_linear(cu, W, x, xb, n, y);
        TB_RANGE_POP();
        if (ran) return;
    }
    TB_RANGE_PUSH("linear");
    const void *w = dense_of(cu, W);
    // batch-1 decode in bf16: the W-streaming kernel reads x in place (no bf16 copy of x)
    if (w && cu->bf16 && n <= TB_GEMV_MAX_TOKENS && tb_cuda_gemv_fits(W->rows, W->cols, n, w, x)) {
        if (tb_cuda_gemv_bf16(w, x, n, W->rows, W->cols, W->bias, y, cu->stream))
            tb_cuda_set_error(cu, TB_EIO, "%s", tb_errmsg());
        TB_RANGE_POP();
        return;
    }
    const size_t xc = (size_t)n * W->cols;
    const void *xo = xb ? xb : operand(cu, x, xc, 0, xc * 2);
    float beta = 0.0f;
    if (xo && W->bias) {
        k_bias_rows<<<blocks_for((size_t)n * W->rows, 256), 256, 0, cu->stream>>>(y, W->bias, n, W->rows);
        TB_CU_LAUNCHED(cu, "linear bias");
        beta = 1.0f;
    }
    if (xo && w) gemm(cu, CUBLAS_OP_T, CUBLAS_OP_N, W->rows, n, W->cols, w, W->cols, xo, W->cols, beta, y, W->rows, "linear");
    TB_RANGE_POP();
}

// dx[n, cols] (+)= dy[n, rows] W. Column-major: dx^T = W^T dy^T.
static void cu_linear_dx(tb_backend *b, const tb_dlinear *W, const float *dy, int n, float *dx, int accumulate)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    TB_RANGE_PUSH("linear_dx");
    const size_t c = (size_t)n * W->rows;
    const void *w = dense_of(cu, W);
    const void *dyo = w ? operand(cu, dy, c, 0, c * 2) : NULL;
    if (dyo)
        gemm(cu, CUBLAS_OP_N, CUBLAS_OP_N, W->cols, n, W->rows, w, W->cols, dyo, W->rows, accumulate ? 1.0f : 0.0f,
             dx, W->cols, "linear_dx");
    TB_RANGE_POP();
}

// dW[rows, cols] = dy[n, rows]^T x[n, cols]. Column-major: dW^T = x^T dy.
static void cu_linear_dw(tb_backend *b, const float *dy, const float *x, int n, int rows, int cols, float *dW)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err) return;
    if (n <= 0) {
        cu_zero(b, dW, (size_t)rows * cols * 4);
        return;
    }
    TB_RANGE_PUSH("linear_dw");
    const size_t cy = (size_t)n * rows, cx = (size_t)n * cols, total = (cy + cx) * 2;
    const void *dyo = operand(cu, dy, cy, 0, total);
    const void *xo = dyo ? operand(cu, x, cx, cy * 2, total) : NULL;
    if (xo) gemm(cu, CUBLAS_OP_N, CUBLAS_OP_T, cols, rows, n, xo, cols, dyo, rows, 0.0f, dW, cols, "linear_dw");
    TB_RANGE_POP();
}

// G[cols, cols] += x^T x in f64; the header defines the upper triangle of
// row-major G (j >= i), which column-major cuBLAS sees as the lower one.
// f32: each chunk of tokens widened to f64 and DSYRK'd (exact products, f64
// sums). bf16: bf16 operand tiles of <= 4096 tokens, f32 accumulation, for
// column blocks of G restricted to the needed triangle, added into G in f64.
static void cu_gram_acc(tb_backend *b, const float *x, int n, int cols, double *G)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    TB_RANGE_PUSH("gram_acc");
    const size_t budget = (size_t)256 << 20; // bytes of work space per chunk
    if (!cu->bf16) {
        int chunk = (int)(budget / ((size_t)cols * 8));
        if (chunk < 1) chunk = 1;
        if (chunk > n) chunk = n;
        double *xd = (double *)tb_cuda_ws(cu, (size_t)chunk * cols * 8, "gram f64 tile");
        const double one = 1.0;
        for (int t0 = 0; xd && !cu->err && t0 < n; t0 += chunk) {
            const int nt = n - t0 < chunk ? n - t0 : chunk;
            const size_t c = (size_t)nt * cols;
            k_f32_to_f64<<<blocks_for(c, 256), 256, 0, cu->stream>>>(xd, x + (size_t)t0 * cols, c);
            if (TB_CU_LAUNCHED(cu, "gram f64 tile")) break;
            // x chunk row-major [nt, cols] = column-major X^T [cols, nt]; G += X^T (X^T)^T
            blas_check(cu, cublasDsyrk(cu->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, cols, nt, &one, xd, cols, &one, G,
                                       cols),
                       "gram (DSYRK)");
        }
    } else {
        const int chunk = n < 4096 ? n : 4096; // f32 accumulation over at most 4096 products
        int bc = (int)(budget / ((size_t)cols * 4));
        if (bc < 1) bc = 1;
        if (bc > cols) bc = cols;
        const size_t xbytes = (size_t)chunk * cols * 2, cbytes = (size_t)cols * bc * 4;
        char *ws = (char *)tb_cuda_ws(cu, xbytes + cbytes, "gram bf16 tile");
        for (int t0 = 0; ws && !cu->err && t0 < n; t0 += chunk) {
            const int nt = n - t0 < chunk ? n - t0 : chunk;
            const size_t c = (size_t)nt * cols;
            __nv_bfloat16 *xb = (__nv_bfloat16 *)ws;
            float *C = (float *)(ws + xbytes);
            k_f32_to_bf16<<<blocks_for(c, 256), 256, 0, cu->stream>>>(xb, x + (size_t)t0 * cols, c);
            if (TB_CU_LAUNCHED(cu, "gram bf16 tile")) break;
            for (int j0 = 0; j0 < cols && !cu->err; j0 += bc) {
                const int nb = cols - j0 < bc ? cols - j0 : bc, m = cols - j0;
                // column-major C[m, nb] = X^T[j0.., t] X[t, j0..j0+nb): the entries (r >= c) of
                // G's column block j0.. that the header defines (and a few below them)
                gemm(cu, CUBLAS_OP_N, CUBLAS_OP_T, m, nb, nt, xb + j0, cols, xb + j0, cols, 0.0f, C, m, "gram");
                if (cu->err) break;
                k_add_block<<<blocks_for((size_t)m * nb, 256), 256, 0, cu->stream>>>(G + (size_t)j0 * cols + j0, cols,
                                                                                    C, m, nb);
                TB_CU_LAUNCHED(cu, "gram accumulate");
            }
        }
    }
    TB_RANGE_POP();
}

// ---------------------------------------------------------------- row and elementwise ops

// Embedding rows at prefill counts. The table stays on the host (a 7B
// model's is 262 MB of bf16 the GPU does not otherwise need), so each window
// gathers its n rows there; done row by row through tb_linear_row that is a
// bf16 -> f32 widening of n * d values on one host thread and an upload of 4
// bytes a value from pageable memory (32 MB at 2048 tokens of a 4096-wide
// model). For a plain table (dense, no permutation, bf16 or f32) the rows are
// instead copied as stored, by the host threads, into pinned staging, cross
// at 2 bytes a value (bf16), and are widened on the device: the same f32
// values (bf16 -> f32 is exact). Decode counts (<= 16) keep the simple path.
struct embed_job {
    const tb_linear *T;
    const int32_t *tokens;
    char *dst;
    size_t row_bytes;
};

static void embed_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const embed_job *j = (const embed_job *)ctx;
    for (int64_t t = begin; t < end; t++)
        memcpy(j->dst + (size_t)t * j->row_bytes, (const char *)j->T->data + (size_t)j->tokens[t] * j->row_bytes,
               j->row_bytes);
}

// pinned host staging of `bytes`, free to be written (the previous upload from it has run), or NULL
static void *pinned_ws(tb_cuda *cu, size_t bytes)
{
    if (cu->pin_ev && TB_CU_CHECK(cu, cudaEventSynchronize(cu->pin_ev), "embed staging")) return NULL;
    if (bytes <= cu->pin_bytes) return cu->pin;
    if (cu->pin) cudaFreeHost(cu->pin);
    cu->pin = NULL;
    cu->pin_bytes = 0;
    if (!cu->pin_ev && cudaEventCreateWithFlags(&cu->pin_ev, cudaEventDisableTiming) != cudaSuccess) {
        cudaGetLastError();
        cu->pin_ev = NULL;
        return NULL;
    }
    if (cudaHostAlloc(&cu->pin, bytes, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError(); // no pinned memory: the pageable path instead
        cu->pin = NULL;
        return NULL;
    }
    cu->pin_bytes = bytes;
    return cu->pin;
}

// 1 if the rows went the fast way (or an error was recorded), 0 to take the row-by-row path
static int embed_plain(tb_backend *b, tb_cuda *cu, const tb_linear *T, const int32_t *tokens, int n, float *x)
{
    if (n <= 16 || T->format != TB_LINEAR_DENSE || T->perm || (T->dtype != TB_BF16 && T->dtype != TB_F32)) return 0;
    const size_t d = (size_t)T->cols, es = T->dtype == TB_BF16 ? 2 : 4, bytes = (size_t)n * d * es;
    char *h = (char *)pinned_ws(cu, bytes);
    if (!h) return cu->err != 0;
    void *dst = x;
    if (es == 2 && !(dst = tb_cuda_ws(cu, bytes, "embedding rows"))) return 1;
    embed_job job = {T, tokens, h, d * es};
    const int nt = b->o.n_threads > 1 ? (b->o.n_threads < n / 64 + 1 ? b->o.n_threads : n / 64 + 1) : 1;
    tb_parallel_for(nt, n, embed_rows, &job);
    if (TB_CU_CHECK(cu, cudaMemcpyAsync(dst, h, bytes, cudaMemcpyHostToDevice, cu->stream), "embedding upload") ||
        TB_CU_CHECK(cu, cudaEventRecord(cu->pin_ev, cu->stream), "embedding upload"))
        return 1;
    if (es == 2) {
        k_bf16_to_f32<<<blocks_for((size_t)n * d, 256), 256, 0, cu->stream>>>(x, (const __nv_bfloat16 *)dst,
                                                                              (size_t)n * d);
        TB_CU_LAUNCHED(cu, "embedding rows");
    }
    return 1;
}

static void cu_embed(tb_backend *b, const tb_linear *table, const int32_t *tokens, int n, float *x)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    const size_t d = (size_t)table->cols;
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= table->rows) {
            tb_cuda_set_error(cu, TB_EDATA, "embed: token %d at position %d outside the vocabulary (%d)", tokens[t], t,
                              table->rows);
            return;
        }
    if (embed_plain(b, cu, table, tokens, n, x)) return;
    float *h = (float *)host_ws(cu, (size_t)n * d * sizeof(float));
    if (!h) return;
    for (int t = 0; t < n; t++) tb_linear_row(table, tokens[t], h + (size_t)t * d);
    cu_upload(b, x, h, (size_t)n * d * sizeof(float));
}

static void cu_rmsnorm(tb_backend *b, float *y, float *inv_rms, const float *x, const float *w, int n, int d, float eps)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    __nv_bfloat16 *yb = n > 16 ? xb_claim(cu, y, (size_t)n * d) : NULL; // prefill: the next linears' operand
    k_rmsnorm<<<n, norm_threads(d), 0, cu->stream>>>(y, inv_rms, x, w, d, eps, yb);
    TB_CU_LAUNCHED(cu, "rmsnorm");
}

static void cu_rmsnorm_backward(tb_backend *b, float *dx, const float *dy, const float *x, const float *inv_rms,
                                const float *w, int n, int d, int accumulate)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    k_rmsnorm_backward<<<n, kRowThreads, 0, cu->stream>>>(dx, dy, x, inv_rms, w, d, accumulate);
    TB_CU_LAUNCHED(cu, "rmsnorm backward");
}

static void cu_rope(tb_backend *b, float *x, int n, int heads, int head_dim, int pos0, const float *cos_t,
                    const float *sin_t)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    const size_t count = (size_t)n * heads * (head_dim / 2);
    k_rope<<<blocks_for(count, 256), 256, 0, cu->stream>>>(x, n, heads, head_dim, pos0, cos_t, sin_t);
    TB_CU_LAUNCHED(cu, "rope");
}

static void cu_rope_append(tb_backend *b, float *q, const float *k, const float *v, int n, int q_heads,
                           int kv_heads, int head_dim, const int32_t *pos, const float *cos_t, const float *sin_t,
                           float *k_cache, float *v_cache)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    const size_t count = (size_t)n * (q_heads + kv_heads) * (head_dim / 2) + (size_t)n * kv_heads * head_dim;
    k_rope_append<<<blocks_for(count, 256), 256, 0, cu->stream>>>(q, k, v, n, q_heads, kv_heads, head_dim, pos, cos_t,
                                                                  sin_t, k_cache, v_cache);
    TB_CU_LAUNCHED(cu, "rope_append");
}

static void cu_add_rmsnorm(tb_backend *b, float *y, float *yn, float *inv_rms, const float *a, const float *c,
                           const float *w, int n, int d, float eps)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    __nv_bfloat16 *nb = n > 16 ? xb_claim(cu, yn, (size_t)n * d) : NULL; // prefill: the next linears' operand
    k_add_rmsnorm<<<n, norm_threads(d), 0, cu->stream>>>(y, yn, inv_rms, a, c, w, d, eps, nb);
    TB_CU_LAUNCHED(cu, "add_rmsnorm");
}

static void cu_swiglu(tb_backend *b, float *out, const float *gate, const float *up, size_t count);

// the SwiGLU pair: one launch at 1 token of dense bf16 weights (tb_gemv_bf16.cu
// version 1s, the same values as the three ops), else linear, linear, swiglu
static void cu_linear_swiglu(tb_backend *b, const tb_dlinear *Wg, const tb_dlinear *Wu, const float *x, int n,
                             float *gate, float *up, float *out)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    if (n == 1 && cu->bf16 && !Wg->sparse && !Wu->sparse && Wg->w && Wu->w && Wg->rows == Wu->rows &&
        Wg->cols == Wu->cols && tb_cuda_gemv_fits(Wg->rows, Wg->cols, 1, Wg->w, x) &&
        tb_cuda_gemv_fits(Wu->rows, Wu->cols, 1, Wu->w, x)) {
        TB_RANGE_PUSH("linear_swiglu");
        if (tb_cuda_gemv_bf16_swiglu(Wg->w, Wu->w, x, Wg->rows, Wg->cols, Wg->bias, Wu->bias, out, cu->stream))
            tb_cuda_set_error(cu, TB_EIO, "%s", tb_errmsg());
        TB_RANGE_POP();
        return;
    }
    cu_linear(b, Wg, x, n, gate);
    cu_linear(b, Wu, x, n, up);
    cu_swiglu(b, out, gate, up, (size_t)n * Wg->rows);
}

// several linears on one x: one launch at 1 token of dense bf16 weights
// (tb_gemv_bf16.cu version 1m), else one linear after the other
static void cu_linears(tb_backend *b, int count, const tb_dlinear *const *W, const float *x, int n, float *const *y)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || n <= 0) return;
    int fused = n == 1 && cu->bf16 && count >= 1 && count <= 3;
    const void *w[3];
    int64_t rows[3];
    const float *bias[3];
    for (int i = 0; fused && i < count; i++) {
        w[i] = W[i]->w, rows[i] = W[i]->rows, bias[i] = W[i]->bias;
        fused = !W[i]->sparse && W[i]->w && W[i]->cols == W[0]->cols &&
                tb_cuda_gemv_fits(W[i]->rows, W[i]->cols, 1, W[i]->w, x);
    }
    if (fused) {
        TB_RANGE_PUSH("linears");
        if (tb_cuda_gemv_bf16_multi(count, w, rows, W[0]->cols, x, bias, y, cu->stream))
            tb_cuda_set_error(cu, TB_EIO, "%s", tb_errmsg());
        TB_RANGE_POP();
        return;
    }
    for (int i = 0; i < count; i++) cu_linear(b, W[i], x, n, y[i]);
}

static size_t cu_attention_saved(tb_backend *b, const tb_attn_shape *a, int n, int kv)
{
    (void)b;
    (void)kv;
    return (size_t)a->n_heads * n; // the row log-sum-exp
}

static void cu_attention(tb_backend *b, const tb_attn_shape *a, const float *q, const float *k, const float *v, int n,
                         int pos0, float *out, float *saved)
{
    tb_cuda_attention(tb_cu(b), a, q, k, v, n, pos0, NULL, out, saved);
}

static void cu_attention_at(tb_backend *b, const tb_attn_shape *a, const float *q, const float *k, const float *v,
                            int n, const int32_t *pos, float *out)
{
    tb_cuda_attention(tb_cu(b), a, q, k, v, n, 0, pos, out, NULL);
}

static void cu_attention_backward(tb_backend *b, const tb_attn_shape *a, const float *q, const float *k, const float *v,
                                  const float *out, const float *saved, const float *d_out, int n, float *d_q,
                                  float *d_k, float *d_v)
{
    tb_cuda_attention_backward(tb_cu(b), a, q, k, v, out, saved, d_out, n, d_q, d_k, d_v);
}

static void cu_swiglu(tb_backend *b, float *out, const float *gate, const float *up, size_t count)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !count) return;
    __nv_bfloat16 *ob = count >= XB_MIN ? xb_claim(cu, out, count) : NULL; // down_proj's operand (not at decode)
    k_swiglu<<<blocks_for(count, 256), 256, 0, cu->stream>>>(out, gate, up, count, ob);
    TB_CU_LAUNCHED(cu, "swiglu");
}

static void cu_swiglu_backward(tb_backend *b, float *d_gate, float *d_up, const float *d_out, const float *gate,
                               const float *up, size_t count)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !count) return;
    k_swiglu_backward<<<blocks_for(count, 256), 256, 0, cu->stream>>>(d_gate, d_up, d_out, gate, up, count);
    TB_CU_LAUNCHED(cu, "swiglu backward");
}

static void cu_add(tb_backend *b, float *y, const float *a, const float *c, size_t count)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !count) return;
    k_add<<<blocks_for(count, 256), 256, 0, cu->stream>>>(y, a, c, count);
    TB_CU_LAUNCHED(cu, "add");
}

static void cu_sq_acc(tb_backend *b, float *F, const float *g, size_t count)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !count) return;
    k_sq_acc<<<blocks_for(count, 256), 256, 0, cu->stream>>>(F, g, count);
    TB_CU_LAUNCHED(cu, "sq_acc");
}

static void cu_scaled_diff(tb_backend *b, float *d, const float *a, const float *c, float scale, size_t count)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !count) return;
    k_scaled_diff<<<blocks_for(count, 256), 256, 0, cu->stream>>>(d, a, c, scale, count);
    TB_CU_LAUNCHED(cu, "scaled_diff");
}

// ---------------------------------------------------------------- losses and reductions

// per-row NLL (and gradient) on the device; the rows' f64 values summed on the host in order
static double nll_common(tb_backend *b, float *logits, const int32_t *tokens, int n, int vocab, int grad)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err) return NAN;
    if (n < 2) {
        if (grad && n == 1) cu_zero(b, logits, (size_t)vocab * 4);
        return 0.0;
    }
    for (int t = 1; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= vocab) {
            tb_cuda_set_error(cu, TB_EDATA, "nll: token %d at position %d outside the vocabulary (%d)", tokens[t], t,
                              vocab);
            return NAN;
        }
    TB_RANGE_PUSH(grad ? "xent_backward" : "nll");
    const size_t rows = (size_t)n - 1;
    char *ws = (char *)tb_cuda_ws(cu, rows * 8 + (size_t)n * 4, "nll rows");
    double *hrow = (double *)host_ws(cu, rows * 8);
    double sum = NAN;
    if (ws && hrow) {
        double *row_nll = (double *)ws;
        int32_t *dtok = (int32_t *)(ws + rows * 8);
        if (!TB_CU_CHECK(cu, cudaMemcpyAsync(dtok, tokens, (size_t)n * 4, cudaMemcpyHostToDevice, cu->stream), "tokens")) {
            k_nll_rows<<<grad ? n : n - 1, kRowThreads, 0, cu->stream>>>(logits, dtok, n, vocab, row_nll, grad);
            if (!TB_CU_LAUNCHED(cu, "nll")) {
                cu_download(b, hrow, row_nll, rows * 8);
                if (!cu->err) {
                    sum = 0;
                    for (size_t t = 0; t < rows; t++) sum += hrow[t];
                }
            }
        }
    }
    TB_RANGE_POP();
    return grad ? sum / (double)rows : sum;
}

static double cu_nll(tb_backend *b, const float *logits, const int32_t *tokens, int n, int vocab)
{
    return nll_common(b, (float *)logits, tokens, n, vocab, 0); // grad = 0 never writes
}

static double cu_xent_backward(tb_backend *b, float *logits, const int32_t *tokens, int n, int vocab)
{
    return nll_common(b, logits, tokens, n, vocab, 1);
}

static double kl_common(tb_backend *b, const float *ref, float *cur, int n, int vocab, double scale,
                        int64_t *top1_same)
{
    tb_cuda *cu = tb_cu(b);
    if (top1_same) *top1_same = 0;
    if (cu->err) return NAN;
    if (n <= 0) return 0.0;
    TB_RANGE_PUSH("kl");
    const size_t bytes = (size_t)n * 8 + (size_t)n * 4;
    char *ws = (char *)tb_cuda_ws(cu, bytes, "kl rows");
    char *h = (char *)host_ws(cu, bytes);
    double sum = NAN;
    if (ws && h) {
        k_kl_rows<<<n, kRowThreads, 0, cu->stream>>>(ref, cur, vocab, (double *)ws, (int *)(ws + (size_t)n * 8),
                                                     scale);
        if (!TB_CU_LAUNCHED(cu, "kl")) {
            cu_download(b, h, ws, bytes);
            if (!cu->err) {
                sum = 0;
                int64_t same = 0;
                const double *kl = (const double *)h;
                const int *s = (const int *)(h + (size_t)n * 8);
                for (int t = 0; t < n; t++) {
                    sum += kl[t];
                    same += s[t];
                }
                if (top1_same) *top1_same = same;
            }
        }
    }
    TB_RANGE_POP();
    return sum;
}

static double cu_kl(tb_backend *b, const float *ref, const float *cur, int n, int vocab, int64_t *top1_same)
{
    return kl_common(b, ref, (float *)cur, n, vocab, 0, top1_same); // scale 0 never writes
}

static double cu_kl_grad(tb_backend *b, const float *ref, float *cur, int n, int vocab, double scale,
                         int64_t *top1_same)
{
    return kl_common(b, ref, cur, n, vocab, scale, top1_same);
}

static double cu_sum_sq_diff(tb_backend *b, const float *a, const float *c, size_t count)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err) return NAN;
    if (!count) return 0.0;
    const unsigned nb = blocks_for(count, 256, 1024);
    double *part = (double *)tb_cuda_ws(cu, nb * 8, "sum_sq_diff");
    double *h = (double *)host_ws(cu, nb * 8);
    if (!part || !h) return NAN;
    k_sum_sq_diff<<<nb, 256, 0, cu->stream>>>(a, c, count, part);
    if (TB_CU_LAUNCHED(cu, "sum_sq_diff")) return NAN;
    cu_download(b, h, part, nb * 8);
    if (cu->err) return NAN;
    double s = 0;
    for (unsigned i = 0; i < nb; i++) s += h[i];
    return s;
}

static int64_t cu_first_nonfinite(tb_backend *b, const float *x, size_t count)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !count) return -1;
    unsigned long long *first = (unsigned long long *)tb_cuda_ws(cu, 8, "first_nonfinite");
    if (!first) return -1;
    unsigned long long h = ~0ull;
    if (TB_CU_CHECK(cu, cudaMemsetAsync(first, 0xff, 8, cu->stream), "first_nonfinite")) return -1;
    k_first_nonfinite<<<blocks_for(count, 256), 256, 0, cu->stream>>>(x, count, first);
    if (TB_CU_LAUNCHED(cu, "first_nonfinite")) return -1;
    cu_download(b, &h, first, 8);
    return h == ~0ull ? -1 : (int64_t)h;
}

// ---------------------------------------------------------------- training

static void cu_adam(tb_backend *b, tb_dlinear *W, const float *g, const uint8_t *keep, float *m1, float *m2, double lr,
                    double beta1, double beta2, double c1, double c2, double eps)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err) return;
    if (!W->trainable || !W->w32) {
        tb_cuda_set_error(cu, TB_EUSAGE, "adam: weight %s was not uploaded for training",
                          W->host && W->host->name ? W->host->name : "?");
        return;
    }
    const size_t count = (size_t)W->rows * W->cols;
    __nv_bfloat16 *wb = W->w != (void *)W->w32 ? (__nv_bfloat16 *)W->w : NULL;
    k_adam<<<blocks_for(count, 256), 256, 0, cu->stream>>>(W->w32, wb, g, keep, m1, m2, count, lr, (float)beta1,
                                                           (float)beta2, c1, c2, eps);
    TB_CU_LAUNCHED(cu, "adam");
}

// ---------------------------------------------------------------- learned N:M masks

static void cu_col_sq_acc(tb_backend *b, const float *x, int n, int cols, double *colsq)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || cols <= 0 || n <= 0) return;
    k_col_sq_acc<<<(cols + 255) / 256, 256, 0, cu->stream>>>(x, n, cols, colsq);
    TB_CU_LAUNCHED(cu, "col_sq_acc");
}

static void cu_latent_step(tb_backend *b, float *lat, const float *g, float *m1, float *m2, const uint8_t *keep,
                           size_t count, double lr, double beta1, double beta2, double eps, int64_t t, double decay)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err || !count) return;
    // as tb_adam_masked and tb_learnmask_update compute them on the host
    const double c1 = 1.0 - pow(beta1, (double)t), c2 = 1.0 - pow(beta2, (double)t);
    const float shrink = (float)(1.0 - lr * decay);
    k_latent_step<<<blocks_for(count, 256), 256, 0, cu->stream>>>(lat, g, m1, m2, keep, count, lr, (float)beta1,
                                                                  (float)beta2, c1, c2, eps, shrink, decay > 0);
    TB_CU_LAUNCHED(cu, "latent_step");
}

static void cu_nm_reselect(tb_backend *b, const float *w, const double *colsq, double tokens, int64_t rows,
                           int64_t cols, int n, int m, uint8_t *keep)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err) return;
    if (m < 1 || m > 16 || n < 0 || n > m) {
        tb_cuda_set_error(cu, TB_EUSAGE, "nm_reselect: %d:%d is not a pattern with M <= 16", n, m);
        return;
    }
    const size_t groups = (size_t)rows * (size_t)(cols / m);
    if (!groups) return;
    k_nm_reselect<<<blocks_for(groups, 128), 128, 0, cu->stream>>>(w, colsq, tokens, rows, cols, n, m, keep);
    TB_CU_LAUNCHED(cu, "nm_reselect");
}

static void cu_mask_apply(tb_backend *b, tb_dlinear *W, const float *lat, const uint8_t *keep)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->err) return;
    if (!W->trainable || !W->w32) {
        tb_cuda_set_error(cu, TB_EUSAGE, "mask_apply: weight %s was not uploaded for training",
                          W->host && W->host->name ? W->host->name : "?");
        return;
    }
    const size_t count = (size_t)W->rows * W->cols;
    __nv_bfloat16 *wb = W->w != (void *)W->w32 ? (__nv_bfloat16 *)W->w : NULL;
    k_mask_apply<<<blocks_for(count, 256), 256, 0, cu->stream>>>(W->w32, wb, lat, keep, count);
    TB_CU_LAUNCHED(cu, "mask_apply");
}

// ---------------------------------------------------------------- graphs
//
// The engine captures one decode step (tb_forward.c, decode_run) after a
// plain warm-up step, so nothing in the capture allocates, synchronises or
// grows the work space; every op of the step reads its position from device
// memory, so the one graph replays for every token. Capture mode thread-local:
// an unsafe call from this thread (a cudaMalloc, a synchronisation) fails the
// capture, and the engine falls back to plain launches. A graph holds the work
// space's address: when the space has been reallocated since (a longer prefill
// in between), graph_launch says stale and the engine captures again.

struct cu_graph {
    cudaGraphExec_t exec;
    void *ws; // cu->ws at capture
};

// 1 if the graph allocates (a library's cudaMallocAsync inside the capture)
// more than it frees: such a graph cannot be launched again while the memory
// lives, so it fails at the second token, not here; refuse it instead
static int unfreed_allocs(cudaGraph_t g)
{
    size_t n = 0;
    if (cudaGraphGetNodes(g, NULL, &n) != cudaSuccess) return 1;
    cudaGraphNode_t *nodes = (cudaGraphNode_t *)malloc((n ? n : 1) * sizeof *nodes);
    int alloc = 0, freed = 0, bad = !nodes || cudaGraphGetNodes(g, nodes, &n) != cudaSuccess;
    for (size_t i = 0; !bad && i < n; i++) {
        cudaGraphNodeType t = cudaGraphNodeTypeEmpty;
        if (cudaGraphNodeGetType(nodes[i], &t) != cudaSuccess) bad = 1;
        alloc += t == cudaGraphNodeTypeMemAlloc;
        freed += t == cudaGraphNodeTypeMemFree;
    }
    free(nodes);
    if (bad) cudaGetLastError();
    return bad || alloc != freed;
}

static int cu_graph_begin(tb_backend *b)
{
    tb_cuda *cu = tb_cu(b);
    if (cu->no_graph) return tb_fail(TB_EUSAGE, "CUDA graphs off (TB_CUDA_GRAPH=0)");
    if (cu->err) return tb_fail(cu->err, "%s", cu->msg); // left sticky: the next sync reports it too
    cudaError_t e = cudaStreamBeginCapture(cu->stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return tb_fail(TB_EIO, "cuda: beginning a graph capture: %s", cudaGetErrorString(e));
    }
    return TB_OK;
}

static void *cu_graph_end(tb_backend *b)
{
    tb_cuda *cu = tb_cu(b);
    cudaGraph_t g = NULL;
    cudaGraphExec_t x = NULL;
    char why[400] = "";
    cudaError_t e = cudaStreamEndCapture(cu->stream, &g);
    if (cu->err) snprintf(why, sizeof why, "%s", cu->msg);
    else if (e != cudaSuccess) snprintf(why, sizeof why, "cuda: ending the capture: %s", cudaGetErrorString(e));
    else if (!g) snprintf(why, sizeof why, "cuda: the capture made no graph");
    else if (unfreed_allocs(g)) snprintf(why, sizeof why, "cuda: the capture allocates device memory it does not free");
    else if ((e = cudaGraphInstantiate(&x, g, 0)) != cudaSuccess)
        snprintf(why, sizeof why, "cuda: instantiating the graph: %s", cudaGetErrorString(e));
    if (g) cudaGraphDestroy(g);
    cu_graph *cg = NULL;
    if (!why[0] && !(cg = (cu_graph *)calloc(1, sizeof *cg))) snprintf(why, sizeof why, "out of host memory");
    if (why[0]) {
        if (x) cudaGraphExecDestroy(x);
        // nothing captured ran, and errors made inside a capture concern only
        // it: clear them, so the caller's plain re-run starts clean
        cudaGetLastError();
        cu->err = TB_OK;
        tb_fail(TB_EIO, "%s", why);
        return NULL;
    }
    cg->exec = x;
    cg->ws = cu->ws;
    return cg;
}

static int cu_graph_launch(tb_backend *b, void *graph)
{
    tb_cuda *cu = tb_cu(b);
    cu_graph *g = (cu_graph *)graph;
    if (g->ws != cu->ws) return 1;
    if (!cu->err) TB_CU_CHECK(cu, cudaGraphLaunch(g->exec, cu->stream), "graph launch");
    return 0;
}

static void cu_graph_free(tb_backend *b, void *graph)
{
    tb_cuda *cu = tb_cu(b);
    cu_graph *g = (cu_graph *)graph;
    if (!g) return;
    // a replay may still run: the executable's memory goes once it is done
    if (!cu->err) cudaStreamSynchronize(cu->stream);
    cudaGraphExecDestroy(g->exec);
    free(g);
}

// ---------------------------------------------------------------- open / close

static void cu_close(tb_backend *b)
{
    tb_cuda *cu = (tb_cuda *)b->impl;
    if (!cu) return;
    cudaSetDevice(cu->dev);
    if (cu->stream) cudaStreamSynchronize(cu->stream);
    cudaFree(cu->ws);
    cudaFree(cu->xb);
    if (cu->pin) cudaFreeHost(cu->pin);
    if (cu->pin_ev) cudaEventDestroy(cu->pin_ev);
    free(cu->host);
    tb_cuda_cslt_close(cu->cslt);
    if (cu->blas) cublasDestroy(cu->blas);
    if (cu->stream) cudaStreamDestroy(cu->stream);
    free(cu);
    b->impl = NULL;
}

static tb_backend_ops make_ops(void)
{
    tb_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.alloc = cu_alloc;
    o.free = cu_free;
    o.upload = cu_upload;
    o.download = cu_download;
    o.copy = cu_copy;
    o.zero = cu_zero;
    o.sync = cu_sync;
    o.mem_free = cu_mem_free;
    o.linear_upload = cu_linear_upload;
    o.linear_upload_train = cu_linear_upload_train;
    o.linear_download = cu_linear_download;
    o.linear_release = cu_linear_release;
    o.embed = cu_embed;
    o.rmsnorm = cu_rmsnorm;
    o.rmsnorm_backward = cu_rmsnorm_backward;
    o.rope = cu_rope;
    o.attention_saved = cu_attention_saved;
    o.attention = cu_attention;
    o.attention_backward = cu_attention_backward;
    o.swiglu = cu_swiglu;
    o.swiglu_backward = cu_swiglu_backward;
    o.add = cu_add;
    o.rope_append = cu_rope_append;
    o.attention_at = cu_attention_at;
    o.add_rmsnorm = cu_add_rmsnorm;
    o.linear_swiglu = cu_linear_swiglu;
    o.linears = cu_linears;
    o.graph_begin = cu_graph_begin;
    o.graph_end = cu_graph_end;
    o.graph_launch = cu_graph_launch;
    o.graph_free = cu_graph_free;
    o.linear = cu_linear;
    o.linear_dx = cu_linear_dx;
    o.linear_dw = cu_linear_dw;
    o.gram_acc = cu_gram_acc;
    o.sq_acc = cu_sq_acc;
    o.nll = cu_nll;
    o.xent_backward = cu_xent_backward;
    o.kl = cu_kl;
    o.kl_grad = cu_kl_grad;
    o.sum_sq_diff = cu_sum_sq_diff;
    o.scaled_diff = cu_scaled_diff;
    o.first_nonfinite = cu_first_nonfinite;
    o.adam = cu_adam;
    o.col_sq_acc = cu_col_sq_acc;
    o.latent_step = cu_latent_step;
    o.nm_reselect = cu_nm_reselect;
    o.mask_apply = cu_mask_apply;
    o.close = cu_close;
    return o;
}

static const tb_backend_ops cuda_ops = make_ops();

extern "C" int tb_cuda_backend_open(tb_backend *b)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        cudaGetLastError();
        if (e == cudaErrorInsufficientDriver)
            return tb_fail(TB_EIO, "cuda: the NVIDIA driver is older than this build's CUDA runtime");
        return tb_fail(TB_EIO, "cuda: no GPU found%s%s", e != cudaSuccess ? " (" : "",
                       e != cudaSuccess ? cudaGetErrorString(e) : "");
    }
    const int gpu = b->o.gpu;
    if (gpu < 0 || gpu >= count)
        return tb_fail(TB_EIO, "cuda: --gpu %d but %d GPU%s found (0..%d)", gpu, count, count == 1 ? "" : "s",
                       count - 1);
    cudaDeviceProp prop;
    if ((e = cudaSetDevice(gpu)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, gpu)) != cudaSuccess) {
        cudaGetLastError();
        return tb_fail(TB_EIO, "cuda:%d: %s", gpu, cudaGetErrorString(e));
    }
    // does this build carry code this GPU can run?
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, k_add);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction)
            return tb_fail(TB_EIO, "cuda:%d: %.96s is sm_%d%d and this build has no code for it (make CUDA=1 CUDA_ARCHS=%d%d)",
                           gpu, prop.name, prop.major, prop.minor, prop.major, prop.minor);
        return tb_fail(TB_EIO, "cuda:%d: %s", gpu, cudaGetErrorString(e));
    }
    tb_cuda *cu = (tb_cuda *)calloc(1, sizeof *cu);
    if (!cu) return tb_fail(TB_EIO, "out of memory opening the CUDA backend");
    cu->dev = gpu;
    cu->prop = prop;
    int rc = TB_OK;
    if ((e = cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        cudaGetLastError();
        free(cu);
        return tb_fail(TB_EIO, "cuda:%d: creating a stream: %s", gpu, cudaGetErrorString(e));
    }
    // TB_CUDA_GRAPH=0: decode with plain launches (the same binary times both)
    const char *gv = getenv("TB_CUDA_GRAPH");
    cu->no_graph = gv && !strcmp(gv, "0");
    if (b->o.precision == TB_PREC_DEFAULT) b->o.precision = TB_PREC_BF16;
    cu->bf16 = b->o.precision == TB_PREC_BF16;
    cublasStatus_t s = cublasCreate(&cu->blas);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(cu->blas, cu->stream);
    // f32 means f32: no TF32 and no reduced-precision reductions anywhere in cuBLAS
    // (bf16 GEMMs ask for tensor cores through their operand types)
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasSetMathMode(cu->blas, cu->bf16 ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH);
    if (s != CUBLAS_STATUS_SUCCESS) rc = tb_fail(TB_EIO, "cuda:%d: cuBLAS: %s", gpu, cublasGetStatusString(s));
    b->impl = cu;
    b->ops = &cuda_ops;
    if (rc) {
        cu_close(b);
        return rc;
    }
    b->o.device = TB_DEVICE_CUDA;
    snprintf(b->desc, sizeof b->desc, "cuda:%d %.96s, sm_%d%d, %.1f GiB, %s", gpu, cu->prop.name, cu->prop.major,
             cu->prop.minor, gib(cu->prop.totalGlobalMem), cu->bf16 ? "bf16" : "f32");
    // cuSPARSELt for 2:4 prefill: only bf16 runs 2:4 weights packed (sp24_fits); a
    // library that cannot start leaves the dense copy in its place, and the
    // description says which (tools print it under -v)
    const char *pf = getenv("TB_SP24_PREFILL");
    if (tb_cuda_cslt_built() && cu->bf16 && !(pf && !strcmp(pf, "dense"))) {
        cu->cslt = tb_cuda_cslt_open();
        size_t at = strlen(b->desc);
        cu->cslt_always = cu->cslt && pf && !strcmp(pf, "cusparselt");
        if (cu->cslt)
            snprintf(b->desc + at, sizeof b->desc - at, ", 2:4 prefill %s%s", tb_cuda_cslt_describe(cu->cslt),
                     cu->cslt_always ? " (at every count > 16)" : "");
        else
            snprintf(b->desc + at, sizeof b->desc - at, ", 2:4 prefill dense (%.60s)", tb_errmsg());
        tb_err_clear();
    }
    return TB_OK;
}
