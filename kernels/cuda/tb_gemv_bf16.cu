/*
tb_gemv_bf16.cu - y = x W^T for 1-16 tokens, W dense bf16 [rows, cols], x f32
[n, cols], y f32 [n, rows]: the decode-time linear of the CUDA backend
(tb_gemv_bf16.h is the C entry).

The two numbers (a Mistral-7B layer at 1 token): 2 R K FLOPs against 2 R K
bytes of W, 1 FLOP a byte, so the W stream is the whole cost; the floor is
2 R K / copy rate (4096x4096: 33.5 MB, 7.9 us at the H200's 4.26 TB/s).
cuBLAS (bf16 x, f32 out, what the backend called before) ran 17 us there
(BENCHMARKS.md's 2:4 GEMM table) and needs x converted to bf16 by a launch
of its own first.

Reference: gemv_ref below (f64 on the host, from the same bf16 bits). The
backend's parity test (tests/cuda/test_backend.c, dense bf16 linears at 1-16
tokens against the CPU backend's f32 product) covers the entry in the build.

Versions:
  1  one warp a row per k-slice: each lane streams 16-byte chunks of the row
     (8 bf16) with cache-streaming loads, 4 chunks in flight, multiplies them
     by the n token rows of x read in place (two float4 loads each, L1/L2
     hits: x is at most 16 x 14336 x 4 bytes), f32 sums, warp shuffle reduce.
     A block's 8 warps split K S ways (S = 1, 2, 4 or 8, the smallest giving
     >= 1024 blocks, so a 1024-row k_proj still puts 8 warps on every SM) and
     add their slices in shared memory. The token count is a template
     parameter (1, 2, 4, 8, 16; the smallest >= n, guarded by n).

  1s the SwiGLU pair at 1 token (tb_cuda_gemv_bf16_swiglu): out = silu(x Wg^T)
     * (x Wu^T) in one launch, a warp streaming row r of both weights against
     one read of x; the split S, the sums and their order are version 1's for
     `rows` (so each product is the value version 1 computes), then k_swiglu's
     expression. Saves the up_proj launch and the swiglu launch of a decode
     step's MLP, and the gate/up round trip through memory. Parity: the
     backend's test (linear_swiglu against the CPU's linear, linear, swiglu);
     not in this file's bench yet.

  1m up to 3 weights of one column count on the same x at 1 token
     (tb_cuda_gemv_bf16_multi; a decode step's q, k and v): version 1 over
     the rows of all of them stacked, each warp's row looked up in its
     weight, so one launch streams the 3 (the 1024-row k and v alone reach
     0.8 TB/s, the 4096-row q 1.8, the 14336-row gate 3.1: gemv_bench
     2026-12-02). The split S is chosen for the stacked rows, so a weight's
     sums may be ordered differently from its version 1 launch (f32 rounding).

Build and run the checker and bench standalone (bench/gpu/gemv_bench.sh):
    nvcc -O3 -std=c++17 -DTB_GEMV_BENCH -gencode=arch=compute_90,code=sm_90 \
      -Icommon kernels/cuda/tb_gemv_bf16.cu common/tb_error.c -lcublas -o tb_gemv_bf16
    ./tb_gemv_bf16         # parity at every shape and token count, then times against cuBLAS
*/
#include "tb_gemv_bf16.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "tb_error.h" /* a C header without its own extern "C" */
}

#define GEMV_WARPS 8 /* warps a block */
#define GEMV_UNROLL 4 /* 16-byte W chunks in flight a lane */

static __device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
static __device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// x rounded to bf16 (nearest even), as every other bf16 linear of the backend
// does (cuBLAS's bf16 operands, the 2:4 kernel's x pass): a packed 2:4 model
// and its dense export then compute the same products and differ only in the
// order of f32 sums (tests/cuda/tools.sh compares their greedy generations;
// with f32 x here they diverged at a near tie on the H200, 2026-12-02 15:03)
static __device__ __forceinline__ float4 bf16_round4(float4 v)
{
    return make_float4(__bfloat162float(__float2bfloat16(v.x)), __bfloat162float(__float2bfloat16(v.y)),
                       __bfloat162float(__float2bfloat16(v.z)), __bfloat162float(__float2bfloat16(v.w)));
}

// acc[t] += dot(8 bf16 of w, bf16(x[t][8c .. 8c+8)))
template <int NT>
static __device__ __forceinline__ void fma_chunk(float (&acc)[NT], uint4 w, const float *__restrict__ x, int64_t cols,
                                                 int64_t c, int n)
{
    const float w0 = bf16_lo(w.x), w1 = bf16_hi(w.x), w2 = bf16_lo(w.y), w3 = bf16_hi(w.y);
    const float w4 = bf16_lo(w.z), w5 = bf16_hi(w.z), w6 = bf16_lo(w.w), w7 = bf16_hi(w.w);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t < n) {
            const float4 *xp = (const float4 *)(x + (int64_t)t * cols) + 2 * c;
            const float4 a = bf16_round4(__ldg(xp)), b = bf16_round4(__ldg(xp + 1));
            acc[t] += w0 * a.x + w1 * a.y + w2 * a.z + w3 * a.w + w4 * b.x + w5 * b.y + w6 * b.z + w7 * b.w;
        }
    }
}

// block: GEMV_WARPS / S rows, each by S warps taking every S-th 32-chunk stripe of the row
template <int NT, int S>
__global__ void __launch_bounds__(GEMV_WARPS * 32) k_gemv(const uint4 *__restrict__ W, const float *__restrict__ x,
                                                         const float *__restrict__ bias, float *__restrict__ y,
                                                         int64_t rows, int64_t cols, int n)
{
    __shared__ float part[GEMV_WARPS][NT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int slice = warp % S;
    const int64_t row = (int64_t)blockIdx.x * (GEMV_WARPS / S) + warp / S;
    const bool live = row < rows; // a dead warp still reaches the barrier below
    const int64_t chunks = cols >> 3;
    const uint4 *wr = W + (live ? row : 0) * chunks;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    const int64_t step = (int64_t)32 * S;
    if (live) {
        for (int64_t c0 = (int64_t)slice * 32 + lane; c0 < chunks; c0 += step * GEMV_UNROLL) {
            uint4 w[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int64_t c = c0 + u * step;
                w[u] = c < chunks ? __ldcs(wr + c) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int64_t c = c0 + u * step;
                if (c < chunks) fma_chunk<NT>(acc, w[u], x, cols, c, n);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], off);
    }
    if (S == 1) {
        if (live && lane < NT && lane < n) {
            float v = 0.0f;
#pragma unroll
            for (int t = 0; t < NT; t++)
                if (t == lane) v = acc[t];
            y[(int64_t)lane * rows + row] = v + (bias ? bias[row] : 0.0f);
        }
        return;
    }
    if (lane == 0) {
#pragma unroll
        for (int t = 0; t < NT; t++) part[warp][t] = acc[t];
    }
    __syncthreads();
    if (slice == 0 && live && lane < NT && lane < n) {
        float v = 0.0f;
#pragma unroll
        for (int s = 0; s < S; s++) v += part[warp + s][lane];
        y[(int64_t)lane * rows + row] = v + (bias ? bias[row] : 0.0f);
    }
}

template <int NT>
static void launch_nt(const uint4 *W, const float *x, const float *bias, float *y, int64_t rows, int64_t cols, int n,
                      cudaStream_t st)
{
    // the smallest split giving >= 1024 blocks (8 a SM on a 132-SM H100/H200)
    int S = 1;
    while (S < GEMV_WARPS && (rows * S + GEMV_WARPS - 1) / GEMV_WARPS < 1024) S *= 2;
    const int64_t rows_per_block = GEMV_WARPS / S;
    const unsigned blocks = (unsigned)((rows + rows_per_block - 1) / rows_per_block);
    const dim3 th(GEMV_WARPS * 32);
    switch (S) {
    case 1: k_gemv<NT, 1><<<blocks, th, 0, st>>>(W, x, bias, y, rows, cols, n); break;
    case 2: k_gemv<NT, 2><<<blocks, th, 0, st>>>(W, x, bias, y, rows, cols, n); break;
    case 4: k_gemv<NT, 4><<<blocks, th, 0, st>>>(W, x, bias, y, rows, cols, n); break;
    default: k_gemv<NT, 8><<<blocks, th, 0, st>>>(W, x, bias, y, rows, cols, n); break;
    }
}

// version 1s: out[row] = silu(g) * u of the two products of row `row`
template <int S>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    k_gemv_swiglu(const uint4 *__restrict__ Wg, const uint4 *__restrict__ Wu, const float *__restrict__ x,
                  const float *__restrict__ bg, const float *__restrict__ bu, float *__restrict__ out, int64_t rows,
                  int64_t cols)
{
    __shared__ float part[2][GEMV_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int slice = warp % S;
    const int64_t row = (int64_t)blockIdx.x * (GEMV_WARPS / S) + warp / S;
    const bool live = row < rows; // a dead warp still reaches the barrier below
    const int64_t chunks = cols >> 3;
    const uint4 *wg = Wg + (live ? row : 0) * chunks, *wu = Wu + (live ? row : 0) * chunks;
    float ag[1] = {0.0f}, au[1] = {0.0f};
    const int64_t step = (int64_t)32 * S;
    if (live) {
        for (int64_t c0 = (int64_t)slice * 32 + lane; c0 < chunks; c0 += step * GEMV_UNROLL) {
            uint4 w[GEMV_UNROLL], v[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int64_t c = c0 + u * step;
                w[u] = c < chunks ? __ldcs(wg + c) : make_uint4(0, 0, 0, 0);
                v[u] = c < chunks ? __ldcs(wu + c) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int64_t c = c0 + u * step;
                if (c < chunks) {
                    fma_chunk<1>(ag, w[u], x, cols, c, 1);
                    fma_chunk<1>(au, v[u], x, cols, c, 1);
                }
            }
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        ag[0] += __shfl_xor_sync(0xffffffffu, ag[0], off);
        au[0] += __shfl_xor_sync(0xffffffffu, au[0], off);
    }
    float g = ag[0], u = au[0];
    if (S > 1) {
        if (lane == 0) {
            part[0][warp] = ag[0];
            part[1][warp] = au[0];
        }
        __syncthreads();
        g = 0.0f, u = 0.0f;
#pragma unroll
        for (int s = 0; s < S; s++) {
            g += part[0][warp - slice + s];
            u += part[1][warp - slice + s];
        }
    }
    if (slice == 0 && live && lane == 0) {
        g = g + (bg ? bg[row] : 0.0f);
        u = u + (bu ? bu[row] : 0.0f);
        out[row] = g / (1.0f + expf(-g)) * u; // k_swiglu's expression
    }
}

// version 1m: the rows of up to 3 weights stacked (m.end: their cumulative row counts)
struct gemv_multi {
    const uint4 *W[3];
    const float *bias[3];
    float *y[3];
    int64_t end[3];
};

template <int S>
__global__ void __launch_bounds__(GEMV_WARPS * 32) k_gemv_multi(const gemv_multi m, const float *__restrict__ x,
                                                               int64_t cols)
{
    __shared__ float part[GEMV_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int slice = warp % S;
    const int64_t r = (int64_t)blockIdx.x * (GEMV_WARPS / S) + warp / S;
    const bool live = r < m.end[2]; // a dead warp still reaches the barrier below
    const int seg = r < m.end[0] ? 0 : r < m.end[1] ? 1 : 2;
    const int64_t row = live ? r - (seg ? m.end[seg - 1] : 0) : 0;
    const int64_t chunks = cols >> 3;
    const uint4 *wr = m.W[seg] + row * chunks;
    float acc[1] = {0.0f};
    const int64_t step = (int64_t)32 * S;
    if (live) {
        for (int64_t c0 = (int64_t)slice * 32 + lane; c0 < chunks; c0 += step * GEMV_UNROLL) {
            uint4 w[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int64_t c = c0 + u * step;
                w[u] = c < chunks ? __ldcs(wr + c) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int64_t c = c0 + u * step;
                if (c < chunks) fma_chunk<1>(acc, w[u], x, cols, c, 1);
            }
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc[0] += __shfl_xor_sync(0xffffffffu, acc[0], off);
    float v = acc[0];
    if (S > 1) {
        if (lane == 0) part[warp] = acc[0];
        __syncthreads();
        v = 0.0f;
#pragma unroll
        for (int s = 0; s < S; s++) v += part[warp - slice + s];
    }
    if (slice == 0 && live && lane == 0) m.y[seg][row] = v + (m.bias[seg] ? m.bias[seg][row] : 0.0f);
}

extern "C" int tb_cuda_gemv_fits(int64_t rows, int64_t cols, int n, const void *W, const float *x)
{
    return rows > 0 && cols > 0 && n >= 1 && n <= TB_GEMV_KERNEL_MAX_TOKENS && cols % 8 == 0 && (uintptr_t)W % 16 == 0 &&
           (uintptr_t)x % 16 == 0 && rows < ((int64_t)1 << 31);
}

extern "C" int tb_cuda_gemv_bf16(const void *W, const float *x, int n, int64_t rows, int64_t cols, const float *bias,
                                 float *y, void *stream)
{
    if (!tb_cuda_gemv_fits(rows, cols, n, W, x))
        return tb_fail(TB_EUSAGE, "gemv: %lldx%lld at %d tokens: not a shape the kernel takes", (long long)rows,
                       (long long)cols, n);
    const uint4 *w = (const uint4 *)W;
    cudaStream_t st = (cudaStream_t)stream;
    if (n == 1)
        launch_nt<1>(w, x, bias, y, rows, cols, n, st);
    else if (n == 2)
        launch_nt<2>(w, x, bias, y, rows, cols, n, st);
    else if (n <= 4)
        launch_nt<4>(w, x, bias, y, rows, cols, n, st);
    else if (n <= 8)
        launch_nt<8>(w, x, bias, y, rows, cols, n, st);
    else
        launch_nt<16>(w, x, bias, y, rows, cols, n, st);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return tb_fail(TB_EIO, "gemv %lldx%lld: launch: %s", (long long)rows, (long long)cols,
                                         cudaGetErrorString(e));
    return TB_OK;
}

extern "C" int tb_cuda_gemv_bf16_swiglu(const void *Wg, const void *Wu, const float *x, int64_t rows, int64_t cols,
                                        const float *bg, const float *bu, float *out, void *stream)
{
    if (!tb_cuda_gemv_fits(rows, cols, 1, Wg, x) || !tb_cuda_gemv_fits(rows, cols, 1, Wu, x))
        return tb_fail(TB_EUSAGE, "gemv swiglu: %lldx%lld: not a shape the kernel takes", (long long)rows,
                       (long long)cols);
    // launch_nt's split for `rows`, so the sums are version 1's
    int S = 1;
    while (S < GEMV_WARPS && (rows * S + GEMV_WARPS - 1) / GEMV_WARPS < 1024) S *= 2;
    const int64_t rows_per_block = GEMV_WARPS / S;
    const unsigned blocks = (unsigned)((rows + rows_per_block - 1) / rows_per_block);
    const dim3 th(GEMV_WARPS * 32);
    cudaStream_t st = (cudaStream_t)stream;
    const uint4 *g = (const uint4 *)Wg, *u = (const uint4 *)Wu;
    switch (S) {
    case 1: k_gemv_swiglu<1><<<blocks, th, 0, st>>>(g, u, x, bg, bu, out, rows, cols); break;
    case 2: k_gemv_swiglu<2><<<blocks, th, 0, st>>>(g, u, x, bg, bu, out, rows, cols); break;
    case 4: k_gemv_swiglu<4><<<blocks, th, 0, st>>>(g, u, x, bg, bu, out, rows, cols); break;
    default: k_gemv_swiglu<8><<<blocks, th, 0, st>>>(g, u, x, bg, bu, out, rows, cols); break;
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return tb_fail(TB_EIO, "gemv swiglu %lldx%lld: launch: %s", (long long)rows,
                                         (long long)cols, cudaGetErrorString(e));
    return TB_OK;
}

extern "C" int tb_cuda_gemv_bf16_multi(int count, const void *const *W, const int64_t *rows, int64_t cols,
                                       const float *x, const float *const *bias, float *const *y, void *stream)
{
    if (count < 1 || count > 3) return tb_fail(TB_EUSAGE, "gemv multi: %d weights (1..3)", count);
    gemv_multi m;
    int64_t total = 0;
    for (int i = 0; i < 3; i++) {
        const int k = i < count ? i : count - 1; // past count: empty segments
        if (i < count && !tb_cuda_gemv_fits(rows[i], cols, 1, W[i], x))
            return tb_fail(TB_EUSAGE, "gemv multi: weight %d, %lldx%lld: not a shape the kernel takes", i,
                           (long long)rows[i], (long long)cols);
        m.W[i] = (const uint4 *)W[k];
        m.bias[i] = bias ? bias[k] : NULL;
        m.y[i] = y[k];
        total += i < count ? rows[i] : 0;
        m.end[i] = total;
    }
    int S = 1;
    while (S < GEMV_WARPS && (total * S + GEMV_WARPS - 1) / GEMV_WARPS < 1024) S *= 2;
    const int64_t rows_per_block = GEMV_WARPS / S;
    const unsigned blocks = (unsigned)((total + rows_per_block - 1) / rows_per_block);
    const dim3 th(GEMV_WARPS * 32);
    cudaStream_t st = (cudaStream_t)stream;
    switch (S) {
    case 1: k_gemv_multi<1><<<blocks, th, 0, st>>>(m, x, cols); break;
    case 2: k_gemv_multi<2><<<blocks, th, 0, st>>>(m, x, cols); break;
    case 4: k_gemv_multi<4><<<blocks, th, 0, st>>>(m, x, cols); break;
    default: k_gemv_multi<8><<<blocks, th, 0, st>>>(m, x, cols); break;
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return tb_fail(TB_EIO, "gemv multi: launch: %s", cudaGetErrorString(e));
    return TB_OK;
}

#ifdef TB_GEMV_BENCH
// ---------------------------------------------------------------- checker and bench
#include <cublas_v2.h>
#include <initializer_list>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                                          \
    do {                                                                                                               \
        cudaError_t e_ = (x);                                                                                          \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));                        \
            exit(3);                                                                                                   \
        }                                                                                                              \
    } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) // uniform in [-1, 1)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) * (2.0 / 16777216.0) - 1.0);
}
static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static double from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// the reference: f64 sums of the same bf16 W and bf16-rounded x
static void gemv_ref(const uint16_t *W, const float *x, const float *bias, int n, int64_t rows, int64_t cols, double *y)
{
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < rows; r++) {
            double s = bias ? bias[r] : 0.0;
            for (int64_t c = 0; c < cols; c++) s += from_bf16(W[r * cols + c]) * from_bf16(to_bf16(x[(int64_t)t * cols + c]));
            y[(int64_t)t * rows + r] = s;
        }
}

__global__ void k_to_bf16(__nv_bfloat16 *d, const float *s, int64_t count)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        d[i] = __float2bfloat16(s[i]);
}

int main(void)
{
    const int64_t shapes[][2] = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}, {32000, 4096}, {96, 72}};
    const int toks[] = {1, 2, 3, 4, 8, 16};
    const int nshapes = 6, ntoks = 6, ROT = 8; // W copies rotated so every timed call reads W from HBM
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 3;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    // the copy ceiling of this card, measured here
    {
        const size_t bytes = (size_t)2 << 30;
        void *a, *b;
        CK(cudaMalloc(&a, bytes));
        CK(cudaMalloc(&b, bytes));
        CK(cudaMemset(a, 1, bytes));
        float best = 1e30f;
        for (int i = 0; i < 5; i++) {
            CK(cudaEventRecord(e0));
            CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (ms < best) best = ms;
        }
        printf("copy %zu MiB: %.1f GB/s (read + write)\n", bytes >> 20, 2.0 * bytes / (best * 1e-3) / 1e9);
        CK(cudaFree(a));
        CK(cudaFree(b));
    }
    int failures = 0;
    printf("%-12s %4s %10s %12s %12s %12s %9s %10s\n", "W", "n", "rel.err", "gemv us", "cuBLAS us", "+x conv us",
           "speed-up", "W GB/s");
    for (int si = 0; si < nshapes; si++) {
        const int64_t R = shapes[si][0], K = shapes[si][1];
        const size_t wn = (size_t)R * K;
        uint16_t *hw = (uint16_t *)malloc(wn * 2);
        for (size_t i = 0; i < wn; i++) hw[i] = to_bf16(frand());
        float *hb = (float *)malloc(R * 4);
        for (int64_t r = 0; r < R; r++) hb[r] = frand();
        uint16_t *dw[ROT];
        for (int k = 0; k < ROT; k++) {
            CK(cudaMalloc(&dw[k], wn * 2));
            CK(cudaMemcpy(dw[k], hw, wn * 2, cudaMemcpyHostToDevice));
        }
        float *db, *dx, *dy, *dyc;
        __nv_bfloat16 *dxb;
        CK(cudaMalloc(&db, R * 4));
        CK(cudaMemcpy(db, hb, R * 4, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&dx, 16 * K * 4));
        CK(cudaMalloc(&dxb, 16 * K * 2));
        CK(cudaMalloc(&dy, 16 * R * 4));
        CK(cudaMalloc(&dyc, 16 * R * 4));
        for (int ti = 0; ti < ntoks; ti++) {
            const int n = toks[ti];
            float *hx = (float *)malloc((size_t)n * K * 4);
            for (int64_t i = 0; i < n * K; i++) hx[i] = frand();
            CK(cudaMemcpy(dx, hx, (size_t)n * K * 4, cudaMemcpyHostToDevice));
            // parity: poison y, run, compare every element with the f64 reference (a sample of rows at big shapes)
            CK(cudaMemset(dy, 0xff, 16 * R * 4));
            const int with_bias = ti % 2;
            if (tb_cuda_gemv_bf16(dw[0], dx, n, R, K, with_bias ? db : NULL, dy, NULL)) {
                printf("launch: %s\n", tb_errmsg());
                return 3;
            }
            CK(cudaDeviceSynchronize());
            float *hy = (float *)malloc((size_t)n * R * 4);
            CK(cudaMemcpy(hy, dy, (size_t)n * R * 4, cudaMemcpyDeviceToHost));
            const int64_t Rs = R > 2048 ? 256 : R; // reference rows: the first Rs (all, for small shapes)
            double *ref = (double *)malloc((size_t)n * Rs * 8);
            gemv_ref(hw, hx, with_bias ? hb : NULL, n, Rs, K, ref);
            double num = 0, den = 0;
            int64_t bad = 0;
            for (int t = 0; t < n; t++)
                for (int64_t r = 0; r < R; r++) {
                    const float v = hy[(int64_t)t * R + r];
                    if (!isfinite(v)) bad++; // an unwritten (poisoned: NaN) element
                    if (r < Rs) {
                        const double d = v - ref[(int64_t)t * Rs + r];
                        num += d * d, den += ref[(int64_t)t * Rs + r] * ref[(int64_t)t * Rs + r];
                    }
                }
            const double rel = sqrt(num / den);
            const int ok = bad == 0 && rel <= 1e-5;
            failures += !ok;
            // times: median of 21, W rotated
            float t_g[21], t_c[21], t_cx[21];
            const float one = 1.0f, zero = 0.0f;
            for (int it = 0; it < 21 + 3; it++) {
                const uint16_t *w = dw[it % ROT];
                CK(cudaEventRecord(e0));
                tb_cuda_gemv_bf16(w, dx, n, R, K, NULL, dy, NULL);
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                if (it >= 3) t_g[it - 3] = ms;
                w = dw[(it + 3) % ROT];
                CK(cudaEventRecord(e0));
                cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)R, n, (int)K, &one, w, CUDA_R_16BF, (int)K, dxb,
                             CUDA_R_16BF, (int)K, &zero, dyc, CUDA_R_32F, (int)R, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                CK(cudaEventElapsedTime(&ms, e0, e1));
                if (it >= 3) t_c[it - 3] = ms;
                w = dw[(it + 5) % ROT];
                CK(cudaEventRecord(e0)); // what the backend ran before: x to bf16, then cuBLAS
                k_to_bf16<<<64, 256>>>(dxb, dx, (int64_t)n * K);
                cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)R, n, (int)K, &one, w, CUDA_R_16BF, (int)K, dxb,
                             CUDA_R_16BF, (int)K, &zero, dyc, CUDA_R_32F, (int)R, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                CK(cudaEventElapsedTime(&ms, e0, e1));
                if (it >= 3) t_cx[it - 3] = ms;
            }
            for (float *a : {t_g, t_c, t_cx}) // insertion sort, for the medians
                for (int i = 1; i < 21; i++)
                    for (int j = i; j > 0 && a[j] < a[j - 1]; j--) {
                        float s = a[j];
                        a[j] = a[j - 1], a[j - 1] = s;
                    }
            const double g = t_g[10] * 1e3, c = t_c[10] * 1e3, cx = t_cx[10] * 1e3;
            char wname[32];
            snprintf(wname, sizeof wname, "%lldx%lld", (long long)R, (long long)K);
            printf("%-12s %4d %10.2e%s %12.1f %12.1f %12.1f %8.2fx %10.0f\n", wname, n, rel, ok ? "  " : " !", g, c, cx,
                   cx / g, 2.0 * wn / (g * 1e-6) / 1e9);
            free(hx), free(hy), free(ref);
        }
        for (int k = 0; k < ROT; k++) CK(cudaFree(dw[k]));
        CK(cudaFree(db));
        CK(cudaFree(dx));
        CK(cudaFree(dxb));
        CK(cudaFree(dy));
        CK(cudaFree(dyc));
        free(hw), free(hb);
    }
    printf("gemv: %s (%d failed)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
#endif
