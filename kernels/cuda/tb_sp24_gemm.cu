/*
tb_sp24_gemm.cu - y = x W^T in bf16 with W 2:4 sparse along its input dim, on
the sparse tensor cores (mma.sp, sm_80+). y[n, rows], x[n, cols], W[rows, cols].

The weight comes from a .tb file (values + 2-bit positions, formats/tb_pack.h)
and is reordered once at load into the fragment order of
    mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32
(kernels/cpu/tb_sp24_layout.h: A = W, B = x^T, D = y^T; each lane loads its
fragment with one 16-byte load), 0.5625x the bytes of dense bf16.

Reference: tb_sp24_gemm_ref (kernels/cpu/tb_sp24_layout.c), the CPU product
from the .tb arrays in f64. Every version below is checked against it.

Versions:
  1  tiled: 128 rows x 128 tokens x 64 columns per block, 8 warps of 64 x 32,
     A/metadata/x tiles through a 4-stage cp.async pipeline in shared memory
     (x swizzled for conflict-free ldmatrix), grouped block order so that W and
     x tiles stay in L2. For prefill (>= 17 tokens).
  2  skinny: 1-16 tokens (one or two n8 mma columns). Memory bound on W, so W
     is streamed straight from HBM into registers (16-byte loads, 4 k-steps in
     flight per warp), x pre-shuffled into B fragments (read through L1/L2),
     8 warps of a block split K over the same rows and reduce in shared
     memory. 2a: 32 rows per warp; 2b: 64 rows per warp (x read half as often).
  -  (not done) sparse wgmma (sm_90a): see bench/gpu/NOTES-sp24.md.

Library entry (tb_sp24.h): tb_cuda_sp24_prepare / _linear / _release /
_prefer_dense; the CUDA backend calls these for 2:4 weights.

Build and run the bench and checker standalone (the device machine has nvcc
but no cJSON/OpenBLAS; this file needs only the three small C files below):
    nvcc -O3 -std=c++17 -DTB_SP24_BENCH -gencode=arch=compute_90a,code=sm_90a \
      -gencode=arch=compute_80,code=sm_80 -Ikernels/cpu -Iformats -Icommon \
      kernels/cuda/tb_sp24_gemm.cu kernels/cpu/tb_sp24_layout.c \
      formats/tb_dtype.c common/tb_error.c -lcublas -o tb_sp24_gemm
    ./tb_sp24_gemm --check      # small shapes through the C entry (run under compute-sanitizer)
    ./tb_sp24_gemm --probe      # which lanes hold the sparse-mma metadata (one mma)
    ./tb_sp24_gemm --bench      # the issue's shapes: every version, cuBLAS, cuSPARSELt
  add -DTB_HAVE_CUSPARSELT -I$CUSPARSELT_HOME/include -L$CUSPARSELT_HOME/lib
  -lcusparseLt to compare with cuSPARSELt (bench/gpu/sp24_bench.sh does all this).
*/
#include "tb_sp24.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "tb_error.h" /* C headers without their own extern "C" */
}
#include "tb_sp24_layout.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define SP24_DEVICE_OK 1
#else
#define SP24_DEVICE_OK 0
#endif

// ----------------------------------------------------------------------------
// device helpers

// D += A B for one 16x8x32 tile: A sparse (4 regs of kept bf16 pairs, e the
// metadata word, SEL which lane pair of each quad supplies it), B 32x8 bf16.
template <int SEL>
__device__ __forceinline__ void mma_sp_16832(float d[4], const uint32_t a[4], const uint32_t b[4], uint32_t e)
{
#if SP24_DEVICE_OK
    asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
                   "r"(e), "n"(SEL));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem)
{
#if SP24_DEVICE_OK
    uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}

// 16-byte global->shared copy; src_bytes 0 fills the destination with zeros
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes)
{
#if SP24_DEVICE_OK
    uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit()
{
#if SP24_DEVICE_OK
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
#if SP24_DEVICE_OK
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

template <typename T> __device__ __forceinline__ void store_out(T *p, float v);
template <> __device__ __forceinline__ void store_out<float>(float *p, float v) { *p = v; }
template <> __device__ __forceinline__ void store_out<__nv_bfloat16>(__nv_bfloat16 *p, float v)
{
    *p = __float2bfloat16_rn(v);
}

template <typename T> __device__ __forceinline__ float load_in(const T *p, int64_t i);
template <> __device__ __forceinline__ float load_in<float>(const float *p, int64_t i) { return p[i]; }
template <> __device__ __forceinline__ float load_in<__nv_bfloat16>(const __nv_bfloat16 *p, int64_t i)
{
    return __bfloat162float(p[i]);
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x = lo (low half)
    return *reinterpret_cast<uint32_t *>(&v);
}

// ----------------------------------------------------------------------------
// x preparation (the only work on x; included in every timing)

// x [n, K] (f32 or bf16), optional channel gather perm -> bf16 rows [n, K]
template <typename InT>
__global__ void sp24_x_rows(const InT *__restrict__ x, const int32_t *__restrict__ perm, int n, int K,
                            __nv_bfloat16 *__restrict__ xr)
{
    int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 2;
    if (i >= (int64_t)n * K) return;
    int64_t tok = i / K, c = i % K; // K even: the pair stays in one row
    float v0 = load_in(x, tok * K + (perm ? perm[c] : c));
    float v1 = load_in(x, tok * K + (perm ? perm[c + 1] : c + 1));
    *reinterpret_cast<uint32_t *>(xr + i) = pack_bf16x2(v0, v1);
}

// x [n, K] -> B fragments [K/32][nt][32 lanes] x 16 bytes, tokens >= n zero:
// lane 4g + t holds x[8j + g][32ks + 2t + {0, 1, 8, 9, 16, 17, 24, 25}]
template <typename InT>
__global__ void sp24_x_frag(const InT *__restrict__ x, const int32_t *__restrict__ perm, int n, int K, int nt,
                            uint4 *__restrict__ xb)
{
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)(K / 32) * nt * 32) return;
    int lane = (int)(idx % 32), j = (int)((idx / 32) % nt);
    int64_t ks = idx / (32 * nt);
    int g = lane >> 2, t = lane & 3, tok = 8 * j + g;
    uint32_t w[4];
#pragma unroll
    for (int q = 0; q < 4; q++) {
        int64_t c = ks * 32 + 8 * q + 2 * t;
        float v0 = 0.f, v1 = 0.f;
        if (tok < n) {
            v0 = load_in(x, (int64_t)tok * K + (perm ? perm[c] : c));
            v1 = load_in(x, (int64_t)tok * K + (perm ? perm[c + 1] : c + 1));
        }
        w[q] = pack_bf16x2(v0, v1);
    }
    xb[idx] = make_uint4(w[0], w[1], w[2], w[3]);
}

// ----------------------------------------------------------------------------
// version 1: tiled

namespace tiled {
constexpr int BM = 128, BN = 128, BK = 64, STAGES = 4, THREADS = 256, GROUP_M = 16;
constexpr int A_BYTES = BM / 16 * 2 * 512; // 8 tiles x 2 k-steps x 512 B
constexpr int E_BYTES = BM / 32 * 2 * 128; // 4 pairs x 2 k-steps x 128 B
constexpr int B_BYTES = BN * BK * 2;       // 128 tokens x 128 B (swizzled)
constexpr int STAGE_BYTES = A_BYTES + E_BYTES + B_BYTES;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES;
} // namespace tiled

template <typename OutT>
__global__ void __launch_bounds__(tiled::THREADS, 1)
    sp24_gemm_tiled(const uint8_t *__restrict__ A, const uint8_t *__restrict__ E, const __nv_bfloat16 *__restrict__ X,
                    int n, int R, int K, const float *__restrict__ bias, OutT *__restrict__ Y)
{
    using namespace tiled;
    extern __shared__ __align__(128) uint8_t smem[];
    const int K32 = K / 32, KT = K / BK, ntiles16 = R / 16, npairs = R / 32;
    const int num_m = (R + BM - 1) / BM, num_n = (n + BN - 1) / BN;
    // grouped order: GROUP_M row tiles sweep the token tiles together
    const int bid = blockIdx.x, width = GROUP_M * num_n, group = bid / width;
    const int first_m = group * GROUP_M, gsz = min(num_m - first_m, GROUP_M);
    const int mtile = first_m + (bid % width) % gsz, ntile = (bid % width) / gsz;
    const int m0 = mtile * BM, n0 = ntile * BN;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int warp_m = warp / 4, warp_n = warp % 4;

    auto load_stage = [&](int stage, int kt) {
        uint8_t *sA = smem + stage * STAGE_BYTES, *sE = sA + A_BYTES, *sB = sE + E_BYTES;
#pragma unroll
        for (int i = 0; i < 2; i++) { // A: 512 chunks of 16 B
            int c = tid + i * THREADS, tile = c / 64, off = c % 64, mt = m0 / 16 + tile;
            bool ok = mt < ntiles16;
            const uint8_t *src = A + ((size_t)(ok ? mt : 0) * K32 + (size_t)kt * 2) * 512 + off * 16;
            cp_async16(sA + tile * 1024 + off * 16, src, ok ? 16 : 0);
        }
        if (tid < 64) { // E: 64 chunks
            int pair = tid / 16, off = tid % 16, p = m0 / 32 + pair;
            bool ok = p < npairs;
            const uint8_t *src = E + ((size_t)(ok ? p : 0) * K32 + (size_t)kt * 2) * 128 + off * 16;
            cp_async16(sE + pair * 256 + off * 16, src, ok ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) { // x: 128 rows x 8 chunks
            int c = tid + i * THREADS, row = c / 8, ch = c % 8, tok = n0 + row;
            bool ok = tok < n;
            const __nv_bfloat16 *src = X + (size_t)(ok ? tok : 0) * K + (size_t)kt * BK + ch * 8;
            cp_async16(sB + row * 128 + ((ch ^ (row & 7)) * 16), src, ok ? 16 : 0);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;
    // pairs of this warp that exist (rows past R are skipped, warp-uniformly)
    const int pair0 = m0 / 32 + warp_m * 2;
    const bool pv0 = pair0 < npairs, pv1 = pair0 + 1 < npairs;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < KT) load_stage(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            int nk = kt + STAGES - 1;
            if (nk < KT) load_stage(nk % STAGES, nk);
            cp_async_commit();
        }
        const uint8_t *sA = smem + (kt % STAGES) * STAGE_BYTES, *sE = sA + A_BYTES, *sB = sE + E_BYTES;
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint32_t a[4][4], b[4][4], e[2];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                uint4 v = *reinterpret_cast<const uint4 *>(sA + ((warp_m * 4 + i) * 2 + ks) * 512 + lane * 16);
                a[i][0] = v.x, a[i][1] = v.y, a[i][2] = v.z, a[i][3] = v.w;
            }
#pragma unroll
            for (int j = 0; j < 2; j++)
                e[j] = *reinterpret_cast<const uint32_t *>(sE + ((warp_m * 2 + j) * 2 + ks) * 128 + lane * 4);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int row = warp_n * 32 + j * 8 + (lane & 7), ch = ks * 4 + (lane >> 3);
                ldmatrix_x4(b[j], sB + row * 128 + ((ch ^ (row & 7)) * 16));
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (pv0) {
                    mma_sp_16832<0>(acc[0][j], a[0], b[j], e[0]);
                    mma_sp_16832<1>(acc[1][j], a[1], b[j], e[0]);
                }
                if (pv1) {
                    mma_sp_16832<0>(acc[2][j], a[2], b[j], e[1]);
                    mma_sp_16832<1>(acc[3][j], a[3], b[j], e[1]);
                }
            }
        }
    }
    // epilogue: lane (g, t) holds rows g, g + 8 x tokens 2t, 2t + 1 of each tile
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (!(i < 2 ? pv0 : pv1)) continue;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int r = m0 + (warp_m * 4 + i) * 16 + g + 8 * h;
            float bv = bias ? bias[r] : 0.f;
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    int tok = n0 + warp_n * 32 + j * 8 + 2 * t + c;
                    if (tok < n) store_out(Y + (size_t)tok * R + r, acc[i][j][2 * h + c] + bv);
                }
        }
    }
}

// ----------------------------------------------------------------------------
// version 2: skinny (1-16 tokens)

namespace skinny {
constexpr int WARPS = 8, U = 4; // warps per block (split K), k-steps in flight per warp
}

template <int NT, int PAIRS, typename OutT>
__global__ void __launch_bounds__(skinny::WARPS * 32)
    sp24_gemm_skinny(const uint4 *__restrict__ A, const uint32_t *__restrict__ E, const uint4 *__restrict__ XB,
                     int n, int R, int K, const float *__restrict__ bias, OutT *__restrict__ Y)
{
    using namespace skinny;
    constexpr int TILES = 2 * PAIRS, NACC = TILES * NT * 4;
    __shared__ float red[WARPS][NACC][32];
    const int K32 = K / 32, npairs = R / 32;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int p0 = blockIdx.x * PAIRS;
    bool pv[PAIRS];
#pragma unroll
    for (int p = 0; p < PAIRS; p++) pv[p] = p0 + p < npairs;

    float acc[TILES][NT][4];
#pragma unroll
    for (int i = 0; i < TILES; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;

    for (int ks0 = warp * U; ks0 < K32; ks0 += WARPS * U) {
        uint4 a[U][TILES], b[U][NT];
        uint32_t e[U][PAIRS];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int ks = ks0 + u;
            if (ks < K32) {
#pragma unroll
                for (int p = 0; p < PAIRS; p++) {
                    int pp = pv[p] ? p0 + p : 0;
                    a[u][2 * p] = __ldcs(A + ((size_t)(2 * pp) * K32 + ks) * 32 + lane);
                    a[u][2 * p + 1] = __ldcs(A + ((size_t)(2 * pp + 1) * K32 + ks) * 32 + lane);
                    e[u][p] = __ldcs(E + ((size_t)pp * K32 + ks) * 32 + lane);
                }
#pragma unroll
                for (int j = 0; j < NT; j++) b[u][j] = __ldg(XB + ((size_t)ks * NT + j) * 32 + lane);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (ks0 + u < K32) {
#pragma unroll
                for (int p = 0; p < PAIRS; p++) {
                    const uint32_t *a0 = reinterpret_cast<const uint32_t *>(&a[u][2 * p]);
                    const uint32_t *a1 = reinterpret_cast<const uint32_t *>(&a[u][2 * p + 1]);
#pragma unroll
                    for (int j = 0; j < NT; j++) {
                        const uint32_t *bb = reinterpret_cast<const uint32_t *>(&b[u][j]);
                        mma_sp_16832<0>(acc[2 * p][j], a0, bb, e[u][p]);
                        mma_sp_16832<1>(acc[2 * p + 1][j], a1, bb, e[u][p]);
                    }
                }
            }
        }
    }
    // split-K reduction across the block's warps
#pragma unroll
    for (int i = 0; i < TILES; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) red[warp][(i * NT + j) * 4 + r][lane] = acc[i][j][r];
    __syncthreads();
    for (int q = threadIdx.x; q < NACC * 32; q += WARPS * 32) {
        int slot = q / 32, ln = q % 32;
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) s += red[w][slot][ln];
        int i = slot / (NT * 4), j = (slot / 4) % NT, r = slot % 4;
        int g = ln >> 2, t = ln & 3;
        int pair = p0 + i / 2;
        if (pair >= npairs) continue;
        int row = (2 * p0 + i) * 16 + g + 8 * (r >> 1);
        int tok = j * 8 + 2 * t + (r & 1);
        if (tok < n) store_out(Y + (size_t)tok * R + row, s + (bias ? bias[row] : 0.f));
    }
}

// ----------------------------------------------------------------------------
// launchers (shared by the library entry and the bench)

static int sp24_cuda_fail(cudaError_t err, const char *what)
{
    return tb_fail(TB_EIO, "2:4 GEMM: %s: %s", what, cudaGetErrorString(err));
}

template <typename OutT>
static cudaError_t launch_tiled(const void *A, const void *E, const __nv_bfloat16 *X, int n, int R, int K,
                                const float *bias, OutT *Y, cudaStream_t st)
{
    static bool attr_set = false; // per instantiation
    if (!attr_set) {
        cudaError_t err = cudaFuncSetAttribute(sp24_gemm_tiled<OutT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               tiled::SMEM_BYTES);
        if (err != cudaSuccess) return err;
        attr_set = true;
    }
    int blocks = ((R + tiled::BM - 1) / tiled::BM) * ((n + tiled::BN - 1) / tiled::BN);
    sp24_gemm_tiled<OutT><<<blocks, tiled::THREADS, tiled::SMEM_BYTES, st>>>(
        (const uint8_t *)A, (const uint8_t *)E, X, n, R, K, bias, Y);
    return cudaGetLastError();
}

// XB: B fragments of x for ceil(n / 8) n8 tiles (n <= 16)
template <typename OutT>
static cudaError_t launch_skinny(int pairs_per_warp, const void *A, const void *E, const uint4 *XB, int n, int R,
                                 int K, const float *bias, OutT *Y, cudaStream_t st)
{
    const int npairs = R / 32, threads = skinny::WARPS * 32;
    const bool two = n > 8;
    if (pairs_per_warp == 2) {
        int blocks = (npairs + 1) / 2;
        if (two)
            sp24_gemm_skinny<2, 2, OutT><<<blocks, threads, 0, st>>>((const uint4 *)A, (const uint32_t *)E, XB, n,
                                                                    R, K, bias, Y);
        else
            sp24_gemm_skinny<1, 2, OutT><<<blocks, threads, 0, st>>>((const uint4 *)A, (const uint32_t *)E, XB, n,
                                                                    R, K, bias, Y);
    } else {
        if (two)
            sp24_gemm_skinny<2, 1, OutT><<<npairs, threads, 0, st>>>((const uint4 *)A, (const uint32_t *)E, XB, n,
                                                                    R, K, bias, Y);
        else
            sp24_gemm_skinny<1, 1, OutT><<<npairs, threads, 0, st>>>((const uint4 *)A, (const uint32_t *)E, XB, n,
                                                                    R, K, bias, Y);
    }
    return cudaGetLastError();
}

template <typename InT>
static cudaError_t launch_x_frag(const InT *x, const int32_t *perm, int n, int K, uint4 *xb, cudaStream_t st)
{
    int nt = (n + 7) / 8;
    int64_t total = (int64_t)(K / 32) * nt * 32;
    sp24_x_frag<InT><<<(unsigned)((total + 255) / 256), 256, 0, st>>>(x, perm, n, K, nt, xb);
    return cudaGetLastError();
}

template <typename InT>
static cudaError_t launch_x_rows(const InT *x, const int32_t *perm, int n, int K, __nv_bfloat16 *xr, cudaStream_t st)
{
    int64_t pairs = (int64_t)n * K / 2;
    sp24_x_rows<InT><<<(unsigned)((pairs + 255) / 256), 256, 0, st>>>(x, perm, n, K, xr);
    return cudaGetLastError();
}

// Skinny up to 16 tokens; the pairs-per-warp choice is the measured one
// (bench/gpu/NOTES-sp24.md).
static const int SKINNY_MAX_N = 16;
static int g_force_pairs; // the checker exercises both variants through the entry
static int skinny_pairs(int64_t rows) { return g_force_pairs ? g_force_pairs : rows >= 8192 ? 2 : 1; }

// ----------------------------------------------------------------------------
// library entry

extern "C" int tb_cuda_sp24_prepare(tb_sp24_weight *w, const uint16_t *values, const uint8_t *indices,
                                    int64_t rows, int64_t cols, const int32_t *perm)
{
    memset(w, 0, sizeof *w);
    int rc = tb_sp24_check_shape(rows, cols);
    if (rc) return rc;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        cudaGetLastError();
        return tb_fail(TB_EIO, "2:4 GEMM: no usable CUDA device");
    }
    if (major < 8) return tb_fail(TB_EUSAGE, "2:4 GEMM: sparse tensor cores need sm_80 or newer (device is sm_%d)", major * 10);
    size_t ab = tb_sp24_a_bytes(rows, cols), eb = tb_sp24_e_bytes(rows, cols);
    uint16_t *ha = (uint16_t *)tb_malloc(ab);
    uint32_t *he = (uint32_t *)tb_malloc(eb);
    if (!ha || !he) {
        free(ha), free(he);
        return TB_EIO;
    }
    rc = tb_sp24_reorder(values, indices, rows, cols, ha, he);
    cudaError_t err = cudaSuccess;
    const char *what = "";
    if (!rc) {
        if ((err = cudaMalloc(&w->a, ab)) != cudaSuccess) what = "allocating the kept values";
        else if ((err = cudaMalloc(&w->e, eb)) != cudaSuccess) what = "allocating the metadata";
        else if ((err = cudaMemcpy(w->a, ha, ab, cudaMemcpyHostToDevice)) != cudaSuccess) what = "upload";
        else if ((err = cudaMemcpy(w->e, he, eb, cudaMemcpyHostToDevice)) != cudaSuccess) what = "upload";
        else if (perm && (err = cudaMalloc(&w->perm, (size_t)cols * sizeof(int32_t))) != cudaSuccess)
            what = "allocating the permutation";
        else if (perm && (err = cudaMemcpy(w->perm, perm, (size_t)cols * sizeof(int32_t),
                                           cudaMemcpyHostToDevice)) != cudaSuccess)
            what = "upload";
    }
    free(ha), free(he);
    if (!rc && err != cudaSuccess) rc = sp24_cuda_fail(err, what);
    if (rc) {
        tb_cuda_sp24_release(w);
        return rc;
    }
    w->rows = rows, w->cols = cols;
    return TB_OK;
}

extern "C" void tb_cuda_sp24_release(tb_sp24_weight *w)
{
    if (w->a) cudaFree(w->a);
    if (w->e) cudaFree(w->e);
    if (w->perm) cudaFree(w->perm);
    memset(w, 0, sizeof *w);
}

static tb_sp24_kernel choose_kernel(int n) { return n <= SKINNY_MAX_N ? TB_SP24_SKINNY : TB_SP24_TILED; }

extern "C" size_t tb_cuda_sp24_workspace_bytes(const tb_sp24_weight *w, int n, tb_dtype x_dt)
{
    if (n <= SKINNY_MAX_N) return (size_t)(w->cols / 32) * ((n + 7) / 8) * 512; // also enough for tiled at n <= 16
    if (x_dt == TB_BF16 && !w->perm) return 0;
    return (size_t)n * (size_t)w->cols * 2;
}

extern "C" int tb_cuda_sp24_linear(const tb_sp24_weight *w, const void *x, tb_dtype x_dt, int n, void *y,
                                   tb_dtype y_dt, const float *bias, void *workspace, void *stream,
                                   tb_sp24_kernel kernel)
{
    if ((x_dt != TB_F32 && x_dt != TB_BF16) || (y_dt != TB_F32 && y_dt != TB_BF16))
        return tb_fail(TB_EUSAGE, "2:4 GEMM: x and y must be F32 or BF16");
    if (n <= 0) return TB_OK;
    if (kernel == TB_SP24_AUTO) kernel = choose_kernel(n);
    if (kernel == TB_SP24_SKINNY && n > SKINNY_MAX_N)
        return tb_fail(TB_EUSAGE, "2:4 GEMM: the skinny kernel takes at most %d tokens, not %d", SKINNY_MAX_N, n);
    cudaStream_t st = (cudaStream_t)stream;
    const int R = (int)w->rows, K = (int)w->cols;
    cudaError_t err;
    if (kernel == TB_SP24_SKINNY) {
        uint4 *xb = (uint4 *)workspace;
        err = x_dt == TB_F32 ? launch_x_frag((const float *)x, w->perm, n, K, xb, st)
                             : launch_x_frag((const __nv_bfloat16 *)x, w->perm, n, K, xb, st);
        if (err == cudaSuccess)
            err = y_dt == TB_F32 ? launch_skinny(skinny_pairs(R), w->a, w->e, xb, n, R, K, bias, (float *)y, st)
                                 : launch_skinny(skinny_pairs(R), w->a, w->e, xb, n, R, K, bias,
                                                 (__nv_bfloat16 *)y, st);
    } else {
        const __nv_bfloat16 *xr = (const __nv_bfloat16 *)x;
        err = cudaSuccess;
        if (x_dt != TB_BF16 || w->perm) {
            xr = (const __nv_bfloat16 *)workspace;
            err = x_dt == TB_F32
                      ? launch_x_rows((const float *)x, w->perm, n, K, (__nv_bfloat16 *)workspace, st)
                      : launch_x_rows((const __nv_bfloat16 *)x, w->perm, n, K, (__nv_bfloat16 *)workspace, st);
        }
        if (err == cudaSuccess)
            err = y_dt == TB_F32 ? launch_tiled(w->a, w->e, xr, n, R, K, bias, (float *)y, st)
                                 : launch_tiled(w->a, w->e, xr, n, R, K, bias, (__nv_bfloat16 *)y, st);
    }
    return err == cudaSuccess ? TB_OK : sp24_cuda_fail(err, "launch");
}

// Measured on an H200 (bench/gpu/sp24_bench.sh; BENCHMARKS.md "2:4 GEMM",
// bench/gpu/NOTES-sp24.md): the skinny kernel beats cuBLAS dense at 1-16
// tokens (1.5-1.7x at 4096x4096); the tiled mma.sp kernel runs at 0.28-0.45x
// of cuBLAS from 128 tokens up, so there the dense weight is faster.
extern "C" int tb_cuda_sp24_prefer_dense(int64_t rows, int64_t cols, int n)
{
    (void)rows, (void)cols;
    return n > SKINNY_MAX_N;
}

// ----------------------------------------------------------------------------
// checker and bench main (nvcc -DTB_SP24_BENCH ...; see the header comment)
#ifdef TB_SP24_BENCH
#include <cublas_v2.h>
#include <math.h>
#include <stdio.h>

#include <algorithm>
#include <vector>

#ifdef TB_HAVE_CUSPARSELT
#include <cusparseLt.h>
#endif

#define CK(x)                                                                                              \
    do {                                                                                                   \
        cudaError_t e_ = (x);                                                                              \
        if (e_ != cudaSuccess) {                                                                           \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));            \
            exit(1);                                                                                       \
        }                                                                                                  \
    } while (0)
#define CKB(x)                                                                                             \
    do {                                                                                                   \
        cublasStatus_t s_ = (x);                                                                           \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                 \
            fprintf(stderr, "%s:%d: %s: cublas status %d\n", __FILE__, __LINE__, #x, (int)s_);             \
            exit(1);                                                                                       \
        }                                                                                                  \
    } while (0)

static FILE *g_full; // every number, one line each ($OUT/sp24_full.txt)
static int g_failures;

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd32(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (uint32_t)((g_rng * 0x2545f4914f6cdd1dull) >> 32);
}
static float rndf(void) { return (float)rnd32() / 4294967296.0f * 2.0f - 1.0f; }

// device fill: uniform [-1, 1) from a hash of (index, seed)
__global__ void fill_bf16(__nv_bfloat16 *p, size_t n, uint32_t seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 0x9e3779b1u ^ seed;
        h ^= h >> 15, h *= 0x2c1b3c6du, h ^= h >> 12, h *= 0x297a2d39u, h ^= h >> 15;
        p[i] = __float2bfloat16_rn((float)h / 4294967296.0f * 2.0f - 1.0f);
    }
}

// non-finite count (unwritten poison), sum (y - ref)^2, sum ref^2 over all elements
__global__ void compare_bf16(const __nv_bfloat16 *y, const __nv_bfloat16 *ref, size_t n, unsigned long long *bad,
                             double *num, double *den)
{
    double a = 0, b = 0;
    unsigned long long nb = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = __bfloat162float(y[i]), r = __bfloat162float(ref[i]);
        if (!isfinite(v)) nb++;
        else a += (double)(v - r) * (v - r);
        b += (double)r * r;
    }
    for (int o = 16; o; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
        nb += __shfl_down_sync(0xffffffffu, nb, o);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(num, a), atomicAdd(den, b);
        atomicAdd(bad, nb);
    }
}

// ---- random 2:4 weights in the .tb layout
struct HostW {
    int64_t R, K;
    std::vector<uint16_t> values; // [R, K/2]
    std::vector<uint8_t> idx;     // [R, K/8]
};
static void make_w(HostW &w, int64_t R, int64_t K)
{
    static const unsigned pairs[6] = {0x4, 0x8, 0xc, 0x9, 0xd, 0xe}; // {0,1} {0,2} {0,3} {1,2} {1,3} {2,3}
    w.R = R, w.K = K;
    w.values.resize((size_t)(R * K / 2));
    w.idx.assign((size_t)(R * K / 8), 0);
    for (auto &v : w.values) {
        float f = rndf();
        v = tb_f32_to_bf16(f == 0.f ? 0.25f : f);
    }
    for (size_t i = 0; i < w.idx.size(); i++) w.idx[i] = (uint8_t)(pairs[rnd32() % 6] | pairs[rnd32() % 6] << 4);
}
static void densify(const HostW &w, std::vector<uint16_t> &d)
{
    d.assign((size_t)(w.R * w.K), 0);
    for (int64_t r = 0; r < w.R; r++)
        for (int64_t j = 0; j < w.K / 4; j++) {
            unsigned nib = (w.idx[r * (w.K / 8) + j / 2] >> ((j & 1) * 4)) & 15u;
            d[r * w.K + 4 * j + (nib & 3)] = w.values[r * (w.K / 2) + 2 * j];
            d[r * w.K + 4 * j + (nib >> 2)] = w.values[r * (w.K / 2) + 2 * j + 1];
        }
}

// ---- timing: median over trials of the mean time of `reps` calls (~2 ms a trial)
template <class F>
static double time_us(F f, cudaStream_t st)
{
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++) f(i);
    CK(cudaEventRecord(e0, st));
    f(3);
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    int reps = std::max(3, std::min(2000, (int)(2.0 / std::max(ms, 1e-4f))));
    std::vector<double> trials;
    int it = 4;
    for (int tr = 0; tr < 7; tr++) {
        CK(cudaEventRecord(e0, st));
        for (int r = 0; r < reps; r++) f(it++);
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        trials.push_back(ms * 1000.0 / reps);
    }
    CK(cudaGetLastError());
    std::sort(trials.begin(), trials.end());
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return trials[trials.size() / 2];
}

// ---- --probe: one mma.sp per metadata hypothesis, against the CPU
__global__ void probe_mma(const uint32_t *a, const uint32_t *b, const uint32_t *e, float *d)
{
    int lane = threadIdx.x;
    float acc[4] = {0, 0, 0, 0};
    uint32_t ra[4], rb[4];
    for (int i = 0; i < 4; i++) ra[i] = a[lane * 4 + i], rb[i] = b[lane * 4 + i];
    mma_sp_16832<0>(acc, ra, rb, e[lane]);
    for (int i = 0; i < 4; i++) d[lane * 4 + i] = acc[i];
}

static void run_probe(void)
{
    // a 16 x 32 2:4 tile: nib[row][group], kept values val[row][16]
    unsigned nib[16][8];
    uint16_t val[16][16];
    static const unsigned pairs[6] = {0x4, 0x8, 0xc, 0x9, 0xd, 0xe};
    float dense[16][32] = {{0}}, bm[32][8];
    for (int r = 0; r < 16; r++)
        for (int q = 0; q < 8; q++) {
            nib[r][q] = pairs[rnd32() % 6];
            for (int k = 0; k < 2; k++) {
                val[r][2 * q + k] = tb_f32_to_bf16(rndf());
                dense[r][4 * q + ((nib[r][q] >> (2 * k)) & 3)] = tb_bf16_to_f32(val[r][2 * q + k]);
            }
        }
    uint16_t bh[32][8];
    for (int k = 0; k < 32; k++)
        for (int c = 0; c < 8; c++) bh[k][c] = tb_f32_to_bf16(rndf()), bm[k][c] = tb_bf16_to_f32(bh[k][c]);
    // fragments (PTX: A as dense m16n8k16 over the compressed tile; B rows 2t.. of column g)
    uint32_t ha[128], hb[128];
    for (int lane = 0; lane < 32; lane++) {
        int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; i++) {
            int row = g + (i & 1) * 8, ccol = 2 * t + (i >> 1) * 8;
            ha[lane * 4 + i] = val[row][ccol] | (uint32_t)val[row][ccol + 1] << 16;
            int k = 2 * t + 8 * i;
            hb[lane * 4 + i] = bh[k][g] | (uint32_t)bh[k + 1][g] << 16;
        }
    }
    float want[16][8];
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 8; c++) {
            double s = 0;
            for (int k = 0; k < 32; k++) s += (double)dense[r][k] * bm[k][c];
            want[r][c] = (float)s;
        }
    const char *names[3] = {"B: lane 4g+h = groups 4h.. of rows g (lo16), g+8 (hi16) [the layout used]",
                            "A: lane 4g = row g (8 groups), lane 4g+1 = row g+8",
                            "C: as B on lanes 4g, 4g+2"};
    uint32_t *da, *db, *de;
    float *dd;
    CK(cudaMalloc(&da, 512)); CK(cudaMalloc(&db, 512)); CK(cudaMalloc(&de, 128)); CK(cudaMalloc(&dd, 512));
    CK(cudaMemcpy(da, ha, 512, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, hb, 512, cudaMemcpyHostToDevice));
    for (int h = 0; h < 3; h++) {
        uint32_t he[32] = {0};
        for (int g = 0; g < 8; g++)
            for (int c = 0; c < 4; c++) {
                if (h == 0 || h == 2) {
                    int l1 = h == 0 ? 1 : 2;
                    he[4 * g] |= nib[g][c] << (4 * c) | nib[g + 8][c] << (16 + 4 * c);
                    he[4 * g + l1] |= nib[g][4 + c] << (4 * c) | nib[g + 8][4 + c] << (16 + 4 * c);
                } else {
                    he[4 * g] |= nib[g][c] << (4 * c) | nib[g][4 + c] << (16 + 4 * c);
                    he[4 * g + 1] |= nib[g + 8][c] << (4 * c) | nib[g + 8][4 + c] << (16 + 4 * c);
                }
            }
        for (int l = 0; l < 32; l++)
            if (!he[l]) he[l] = 0x44444444u; // lanes the selector does not name: a valid pattern anyway
        float hd[128];
        CK(cudaMemcpy(de, he, 128, cudaMemcpyHostToDevice));
        probe_mma<<<1, 32>>>(da, db, de, dd);
        CK(cudaGetLastError());
        CK(cudaMemcpy(hd, dd, 512, cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (int lane = 0; lane < 32; lane++)
            for (int i = 0; i < 4; i++) {
                int r = (lane >> 2) + (i >> 1) * 8, c = 2 * (lane & 3) + (i & 1);
                num += (hd[lane * 4 + i] - want[r][c]) * (double)(hd[lane * 4 + i] - want[r][c]);
                den += (double)want[r][c] * want[r][c];
            }
        printf("probe: hypothesis %s: rel err %.2e %s\n", names[h], sqrt(num / den),
               sqrt(num / den) < 1e-5 ? "MATCH" : "no");
    }
    cudaFree(da), cudaFree(db), cudaFree(de), cudaFree(dd);
}

// ---- --check: small shapes through the C entry, every dtype, perm, bias, kernel
static void run_check(bool quick)
{
    const int shapes[][2] = {{32, 64}, {160, 128}, {96, 192}, {64, 704}};
    const int ns_full[] = {1, 3, 8, 9, 16, 17, 40, 130, 300}, ns_quick[] = {1, 9, 17, 130};
    std::vector<int> ns = quick ? std::vector<int>(ns_quick, ns_quick + 4) : std::vector<int>(ns_full, ns_full + 9);
    int cases = 0;
    for (int si = 0; si < (quick ? 2 : 4); si++) {
        int R = shapes[si][0], K = shapes[si][1];
        HostW w;
        make_w(w, R, K);
        std::vector<int32_t> perm(K);
        for (int i = 0; i < K; i++) perm[i] = i;
        for (int i = K - 1; i > 0; i--) std::swap(perm[i], perm[rnd32() % (i + 1)]);
        std::vector<float> bias(R);
        for (auto &b : bias) b = rndf();
        for (int use_perm = 0; use_perm < 2; use_perm++) {
            tb_sp24_weight dw;
            if (tb_cuda_sp24_prepare(&dw, w.values.data(), w.idx.data(), R, K, use_perm ? perm.data() : NULL)) {
                printf("check: prepare: %s\n", tb_errmsg());
                exit(1);
            }
            float *dbias;
            CK(cudaMalloc(&dbias, R * sizeof(float)));
            CK(cudaMemcpy(dbias, bias.data(), R * sizeof(float), cudaMemcpyHostToDevice));
            for (int n : ns)
                for (int xdt = 0; xdt < 2; xdt++)
                    for (int ydt = 0; ydt < 2; ydt++)
                        for (int kv = 0; kv < 4; kv++) { // AUTO, TILED, SKINNY 32 rows/warp, SKINNY 64
                            int kern = kv < 3 ? kv : TB_SP24_SKINNY;
                            if (kern == TB_SP24_SKINNY && n > 16) continue;
                            g_force_pairs = kv == 2 ? 1 : kv == 3 ? 2 : 0;
                            tb_dtype xt = xdt ? TB_BF16 : TB_F32, yt = ydt ? TB_BF16 : TB_F32;
                            int with_bias = (n + kern) & 1;
                            // x in the model's order; the reference applies perm itself
                            std::vector<float> x((size_t)n * K), xg((size_t)n * K);
                            std::vector<uint16_t> xb((size_t)n * K);
                            for (size_t i = 0; i < x.size(); i++) {
                                xb[i] = tb_f32_to_bf16(rndf());
                                x[i] = tb_bf16_to_f32(xb[i]); // bf16-exact, so f32 and bf16 inputs agree
                            }
                            for (int t = 0; t < n; t++)
                                for (int c = 0; c < K; c++)
                                    xg[(size_t)t * K + c] = x[(size_t)t * K + (use_perm ? perm[c] : c)];
                            std::vector<double> ref((size_t)n * R);
                            tb_sp24_gemm_ref(w.values.data(), w.idx.data(), R, K, xg.data(), n, 0, R, ref.data());
                            void *dx, *dy, *ws = NULL;
                            size_t ysz = (size_t)n * R * (ydt ? 2 : 4);
                            CK(cudaMalloc(&dx, (size_t)n * K * (xdt ? 2 : 4)));
                            CK(cudaMalloc(&dy, ysz));
                            CK(cudaMemcpy(dx, xdt ? (void *)xb.data() : (void *)x.data(), (size_t)n * K * (xdt ? 2 : 4),
                                          cudaMemcpyHostToDevice));
                            size_t wsb = tb_cuda_sp24_workspace_bytes(&dw, n, xt);
                            if (kern == TB_SP24_TILED) wsb = std::max(wsb, (size_t)n * K * 2);
                            if (wsb) CK(cudaMalloc(&ws, wsb));
                            CK(cudaMemset(dy, 0xff, ysz)); // poison: NaN in f32 and bf16
                            int rc = tb_cuda_sp24_linear(&dw, dx, xt, n, dy, yt, with_bias ? dbias : NULL, ws, NULL,
                                                         (tb_sp24_kernel)kern);
                            CK(cudaDeviceSynchronize());
                            std::vector<uint8_t> hy(ysz);
                            CK(cudaMemcpy(hy.data(), dy, ysz, cudaMemcpyDeviceToHost));
                            double num = 0, den = 0;
                            long bad = 0;
                            for (int t = 0; t < n; t++)
                                for (int r = 0; r < R; r++) {
                                    size_t i = (size_t)t * R + r;
                                    double v = ydt ? tb_bf16_to_f32(((uint16_t *)hy.data())[i]) : ((float *)hy.data())[i];
                                    double want = ref[i] + (with_bias ? bias[r] : 0.0);
                                    if (!isfinite(v)) bad++;
                                    else num += (v - want) * (v - want);
                                    den += want * want;
                                }
                            double rel = sqrt(num / den), tol = ydt ? 4e-3 : 1e-5;
                            bool ok = rc == TB_OK && bad == 0 && rel < tol;
                            if (!ok) g_failures++;
                            cases++;
                            fprintf(g_full, "check R=%d K=%d n=%d perm=%d x=%s y=%s kernel=%d pairs=%d bias=%d rel=%.3e unwritten=%ld %s\n",
                                    R, K, n, use_perm, xdt ? "bf16" : "f32", ydt ? "bf16" : "f32", kern, g_force_pairs, with_bias, rel,
                                    bad, ok ? "ok" : "FAIL");
                            if (!ok)
                                printf("check FAIL: R=%d K=%d n=%d perm=%d x=%s y=%s kernel=%d rel=%.3e unwritten=%ld rc=%d %s\n",
                                       R, K, n, use_perm, xdt ? "bf16" : "f32", ydt ? "bf16" : "f32", kern, rel, bad, rc,
                                       rc ? tb_errmsg() : "");
                            cudaFree(dx), cudaFree(dy);
                            if (ws) cudaFree(ws);
                        }
            cudaFree(dbias);
            tb_cuda_sp24_release(&dw);
        }
    }
    // bad input is refused with a message, not computed
    {
        HostW w;
        make_w(w, 32, 64);
        w.idx[5] = 0x45; // row 0, group 10: positions {1, 1}
        tb_sp24_weight dw;
        int rc = tb_cuda_sp24_prepare(&dw, w.values.data(), w.idx.data(), 32, 64, NULL);
        bool ok = rc == TB_EDATA && dw.a == NULL;
        printf("check: bad indices refused: %s (%s)\n", ok ? "ok" : "FAIL", tb_errmsg());
        if (!ok) g_failures++;
        rc = tb_cuda_sp24_prepare(&dw, w.values.data(), w.idx.data(), 48, 64, NULL);
        ok = rc == TB_EUSAGE;
        printf("check: rows 48 refused: %s (%s)\n", ok ? "ok" : "FAIL", tb_errmsg());
        if (!ok) g_failures++;
    }
    printf("check: %d cases, %d failures\n", cases, g_failures);
}

// ---- --bench
struct Ceil {
    double bw, flops; // measured copy bandwidth (B/s, read + write) and cuBLAS dense bf16 rate (FLOP/s)
};

static Ceil measure_ceilings(cublasHandle_t cb, cudaStream_t st)
{
    Ceil c;
    size_t bytes = (size_t)2 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes)); CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    double us = time_us([&](int) { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st)); }, st);
    c.bw = 2.0 * bytes / (us * 1e-6);
    cudaFree(a), cudaFree(b);
    const int N = 8192;
    __nv_bfloat16 *A, *B, *C;
    CK(cudaMalloc(&A, (size_t)N * N * 2)); CK(cudaMalloc(&B, (size_t)N * N * 2)); CK(cudaMalloc(&C, (size_t)N * N * 2));
    fill_bf16<<<1024, 256, 0, st>>>(A, (size_t)N * N, 1);
    fill_bf16<<<1024, 256, 0, st>>>(B, (size_t)N * N, 2);
    float one = 1, zero = 0;
    us = time_us(
        [&](int) {
            CKB(cublasGemmEx(cb, CUBLAS_OP_T, CUBLAS_OP_N, N, N, N, &one, A, CUDA_R_16BF, N, B, CUDA_R_16BF, N, &zero,
                             C, CUDA_R_16BF, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        },
        st);
    c.flops = 2.0 * N * N * (double)N / (us * 1e-6);
    cudaFree(A), cudaFree(B), cudaFree(C);
    printf("ceilings: copy %.0f GB/s (read+write), cuBLAS bf16 %dx%dx%d %.0f TFLOP/s (random data)\n", c.bw / 1e9, N, N,
           N, c.flops / 1e12);
    fprintf(g_full, "ceiling copy_GBps=%.1f cublas_TFLOPs=%.1f\n", c.bw / 1e9, c.flops / 1e12);
    return c;
}

#ifdef TB_HAVE_CUSPARSELT
#define CKL(x)                                                                                             \
    do {                                                                                                   \
        cusparseStatus_t s_ = (x);                                                                         \
        if (s_ != CUSPARSE_STATUS_SUCCESS) {                                                               \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cusparseLtGetErrorString(s_));      \
            ok = false;                                                                                    \
        }                                                                                                  \
    } while (0)
// y^T (R x n, col-major = y [n, R] row-major) = W (R x K row-major, 2:4 along K) x^T (K x n col-major)
struct Cslt {
    cusparseLtHandle_t h;
    bool have = false;
    cusparseLtMatDescriptor_t ma, mb, mc;
    cusparseLtMatmulDescriptor_t mm;
    cusparseLtMatmulAlgSelection_t sel;
    cusparseLtMatmulPlan_t plan;
    std::vector<void *> comp;
    void *ws = NULL;
    bool init(int64_t R, int64_t K, int n, const std::vector<__nv_bfloat16 *> &dense, __nv_bfloat16 *x,
              __nv_bfloat16 *y, cudaStream_t st)
    {
        bool ok = true;
        CKL(cusparseLtInit(&h));
        if (!ok) return false;
        have = true;
        CKL(cusparseLtStructuredDescriptorInit(&h, &ma, R, K, K, 16, CUDA_R_16BF, CUSPARSE_ORDER_ROW,
                                               CUSPARSELT_SPARSITY_50_PERCENT));
        CKL(cusparseLtDenseDescriptorInit(&h, &mb, K, n, K, 16, CUDA_R_16BF, CUSPARSE_ORDER_COL));
        CKL(cusparseLtDenseDescriptorInit(&h, &mc, R, n, R, 16, CUDA_R_16BF, CUSPARSE_ORDER_COL));
        if (!ok) return false;
        CKL(cusparseLtMatmulDescriptorInit(&h, &mm, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                           &ma, &mb, &mc, &mc, CUSPARSE_COMPUTE_32F));
        CKL(cusparseLtMatmulAlgSelectionInit(&h, &sel, &mm, CUSPARSELT_MATMUL_ALG_DEFAULT));
        CKL(cusparseLtMatmulPlanInit(&h, &plan, &mm, &sel));
        if (!ok) return false;
        size_t csz = 0, cbuf = 0;
        CKL(cusparseLtSpMMACompressedSize(&h, &plan, &csz, &cbuf));
        void *buf = NULL;
        if (cbuf) CK(cudaMalloc(&buf, cbuf));
        for (auto *d : dense) {
            void *c;
            CK(cudaMalloc(&c, csz));
            CKL(cusparseLtSpMMACompress(&h, &plan, d, c, buf, st));
            comp.push_back(c);
        }
        if (buf) { CK(cudaStreamSynchronize(st)); cudaFree(buf); }
        size_t wsz = 0;
        CKL(cusparseLtMatmulGetWorkspace(&h, &plan, &wsz));
        if (wsz) CK(cudaMalloc(&ws, wsz));
        float one = 1, zero = 0;
        CKL(cusparseLtMatmulSearch(&h, &plan, &one, comp[0], x, &zero, y, y, ws, &st, 1));
        CKL(cusparseLtMatmulGetWorkspace(&h, &plan, &wsz)); // the chosen algorithm may need more
        if (ws) cudaFree(ws), ws = NULL;
        if (wsz) CK(cudaMalloc(&ws, wsz));
        return ok;
    }
    bool run(int it, __nv_bfloat16 *x, __nv_bfloat16 *y, cudaStream_t st)
    {
        bool ok = true;
        float one = 1, zero = 0;
        CKL(cusparseLtMatmul(&h, &plan, &one, comp[it % comp.size()], x, &zero, y, y, ws, &st, 1));
        return ok;
    }
    void done()
    {
        for (auto *c : comp) cudaFree(c);
        comp.clear();
        if (ws) cudaFree(ws), ws = NULL;
        if (have) {
            cusparseLtMatmulPlanDestroy(&plan);
            cusparseLtMatmulAlgSelectionDestroy(&sel);
            cusparseLtMatDescriptorDestroy(&ma), cusparseLtMatDescriptorDestroy(&mb), cusparseLtMatDescriptorDestroy(&mc);
            cusparseLtDestroy(&h);
            have = false;
        }
    }
};
#endif

static void run_bench(const char *only)
{
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cublasHandle_t cb;
    CKB(cublasCreate(&cb));
    CKB(cublasSetStream(cb, st));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    Ceil ce = measure_ceilings(cb, st);
    const int64_t shapes[][2] = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
    const int toks[] = {1, 16, 128, 1024, 4096, 16384};
    const size_t l2x3 = (size_t)3 * prop.l2CacheSize;
    printf("\n%-12s %6s | %8s %8s | %9s %9s %9s %9s %9s | %6s %6s\n", "W (RxK)", "tokens", "floorD", "floor24", "cuBLAS",
           "v1tiled", "v2a", "v2b", "cuSPLt", "best/D", "cslt/D");
    char table[64][200];
    int nrow = 0;
    for (auto &sh : shapes) {
        const int64_t R = sh[0], K = sh[1];
        if (only && atoi(only) && atoi(only) != R) continue;
        HostW w;
        make_w(w, R, K);
        std::vector<uint16_t> ha(tb_sp24_a_bytes(R, K) / 2), dense;
        std::vector<uint32_t> he(tb_sp24_e_bytes(R, K) / 4);
        if (tb_sp24_reorder(w.values.data(), w.idx.data(), R, K, ha.data(), he.data())) {
            printf("reorder: %s\n", tb_errmsg());
            exit(1);
        }
        densify(w, dense);
        const size_t sp_bytes = ha.size() * 2 + he.size() * 4, d_bytes = dense.size() * 2;
        // copies to rotate through, so that small-token runs read W from HBM, not L2
        const int nc_sp = (int)std::min<size_t>(16, (l2x3 + sp_bytes - 1) / sp_bytes);
        const int nc_d = (int)std::min<size_t>(16, (l2x3 + d_bytes - 1) / d_bytes);
        std::vector<void *> dA(nc_sp), dE(nc_sp);
        std::vector<__nv_bfloat16 *> dW(nc_d);
        for (int c = 0; c < nc_sp; c++) {
            CK(cudaMalloc(&dA[c], ha.size() * 2)); CK(cudaMalloc(&dE[c], he.size() * 4));
            CK(cudaMemcpy(dA[c], ha.data(), ha.size() * 2, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dE[c], he.data(), he.size() * 4, cudaMemcpyHostToDevice));
        }
        for (int c = 0; c < nc_d; c++) {
            CK(cudaMalloc(&dW[c], d_bytes));
            CK(cudaMemcpy(dW[c], dense.data(), d_bytes, cudaMemcpyHostToDevice));
        }
        for (int n : toks) {
            __nv_bfloat16 *dx, *dy, *dref;
            uint4 *dxb;
            CK(cudaMalloc(&dx, (size_t)n * K * 2));
            CK(cudaMalloc(&dy, (size_t)n * R * 2));
            CK(cudaMalloc(&dref, (size_t)n * R * 2));
            CK(cudaMalloc(&dxb, (size_t)(K / 32) * 2 * 512));
            fill_bf16<<<1024, 256, 0, st>>>(dx, (size_t)n * K, (uint32_t)(n * 7919 + R));
            CK(cudaGetLastError());
            // CPU reference for up to 4 sampled tokens, all rows
            std::vector<int> samp;
            for (int q = 0; q < 4; q++) {
                int t = (int)((int64_t)q * (n - 1) / 3);
                if (std::find(samp.begin(), samp.end(), t) == samp.end()) samp.push_back(t);
            }
            std::vector<float> xs(samp.size() * K);
            std::vector<double> ref(samp.size() * R);
            {
                std::vector<uint16_t> xr(K);
                for (size_t q = 0; q < samp.size(); q++) {
                    CK(cudaMemcpy(xr.data(), dx + (size_t)samp[q] * K, K * 2, cudaMemcpyDeviceToHost));
                    for (int64_t c = 0; c < K; c++) xs[q * K + c] = tb_bf16_to_f32(xr[c]);
                }
                tb_sp24_gemm_ref(w.values.data(), w.idx.data(), R, K, xs.data(), (int)samp.size(), 0, R, ref.data());
            }
            unsigned long long *dbad;
            double *dnum;
            CK(cudaMalloc(&dbad, 8)); CK(cudaMalloc(&dnum, 16));
            // check one method's output: poison first, then CPU (sampled) and cuBLAS (all elements)
            auto check = [&](const char *name, auto &&fn, bool vs_gpu) -> double {
                CK(cudaMemsetAsync(dy, 0xff, (size_t)n * R * 2, st));
                fn(0);
                CK(cudaStreamSynchronize(st));
                CK(cudaGetLastError());
                double num = 0, den = 0;
                std::vector<uint16_t> yr(R);
                for (size_t q = 0; q < samp.size(); q++) {
                    CK(cudaMemcpy(yr.data(), dy + (size_t)samp[q] * R, R * 2, cudaMemcpyDeviceToHost));
                    for (int64_t r = 0; r < R; r++) {
                        double v = tb_bf16_to_f32(yr[r]), want = ref[q * R + r];
                        num += isfinite(v) ? (v - want) * (v - want) : 1e30;
                        den += want * want;
                    }
                }
                double rel_cpu = sqrt(num / den), rel_gpu = 0;
                unsigned long long bad = 0;
                if (vs_gpu) {
                    CK(cudaMemsetAsync(dbad, 0, 8, st)); CK(cudaMemsetAsync(dnum, 0, 16, st));
                    compare_bf16<<<1024, 256, 0, st>>>(dy, dref, (size_t)n * R, dbad, dnum, dnum + 1);
                    CK(cudaGetLastError());
                    double hn[2];
                    CK(cudaMemcpy(&bad, dbad, 8, cudaMemcpyDeviceToHost));
                    CK(cudaMemcpy(hn, dnum, 16, cudaMemcpyDeviceToHost));
                    rel_gpu = sqrt(hn[0] / hn[1]);
                } else {
                    // cuBLAS itself: every element written?
                    CK(cudaMemsetAsync(dbad, 0, 8, st)); CK(cudaMemsetAsync(dnum, 0, 16, st));
                    compare_bf16<<<1024, 256, 0, st>>>(dy, dy, (size_t)n * R, dbad, dnum, dnum + 1);
                    CK(cudaMemcpy(&bad, dbad, 8, cudaMemcpyDeviceToHost));
                }
                bool ok = rel_cpu < 5e-3 && bad == 0 && rel_gpu < 5e-3;
                if (!ok) g_failures++;
                fprintf(g_full, "parity R=%lld K=%lld n=%d %s rel_cpu=%.3e rel_vs_cublas=%.3e unwritten=%llu %s\n",
                        (long long)R, (long long)K, n, name, rel_cpu, rel_gpu, bad, ok ? "ok" : "FAIL");
                if (!ok)
                    printf("parity FAIL R=%lld K=%lld n=%d %s rel_cpu=%.3e rel_vs_cublas=%.3e unwritten=%llu\n",
                           (long long)R, (long long)K, n, name, rel_cpu, rel_gpu, bad);
                return rel_cpu;
            };
            float one = 1, zero = 0;
            auto cublas_fn = [&](int it) {
                CKB(cublasGemmEx(cb, CUBLAS_OP_T, CUBLAS_OP_N, (int)R, n, (int)K, &one, dW[it % nc_d], CUDA_R_16BF,
                                 (int)K, dx, CUDA_R_16BF, (int)K, &zero, dy, CUDA_R_16BF, (int)R, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
            };
            check("cublas", cublas_fn, false);
            CK(cudaMemcpyAsync(dref, dy, (size_t)n * R * 2, cudaMemcpyDeviceToDevice, st));
            double t_cb = time_us(cublas_fn, st);
            auto v1_fn = [&](int it) {
                CK(launch_tiled(dA[it % nc_sp], dE[it % nc_sp], dx, n, (int)R, (int)K, (const float *)NULL, dy, st));
            };
            check("v1_tiled", v1_fn, true);
            double t_v1 = time_us(v1_fn, st);
            double t_v2[2] = {NAN, NAN};
            if (n <= 16) {
                for (int pw = 1; pw <= 2; pw++) {
                    auto v2_fn = [&](int it) {
                        CK(launch_x_frag(dx, (const int32_t *)NULL, n, (int)K, dxb, st));
                        CK(launch_skinny(pw, dA[it % nc_sp], dE[it % nc_sp], dxb, n, (int)R, (int)K,
                                         (const float *)NULL, dy, st));
                    };
                    check(pw == 1 ? "v2a_skinny32" : "v2b_skinny64", v2_fn, true);
                    t_v2[pw - 1] = time_us(v2_fn, st);
                }
            }
            double t_cs = NAN;
#ifdef TB_HAVE_CUSPARSELT
            {
                Cslt cs;
                int nc_cs = nc_sp;
                std::vector<__nv_bfloat16 *> src;
                for (int c = 0; c < nc_cs; c++) src.push_back(dW[c % nc_d]); // compressed copies are distinct buffers
                if (cs.init(R, K, n, src, dx, dy, st)) {
                    auto cs_fn = [&](int it) {
                        if (!cs.run(it, dx, dy, st)) exit(1);
                    };
                    check("cusparselt", cs_fn, true);
                    t_cs = time_us(cs_fn, st);
                } else {
                    printf("cuSPARSELt: no plan for R=%lld K=%lld n=%d\n", (long long)R, (long long)K, n);
                }
                cs.done();
            }
#endif
            // floors: bytes (each operand once) over copy bandwidth, FLOPs over the cuBLAS rate (x2 for 2:4)
            double flops = 2.0 * n * (double)R * K;
            double bytes_d = 2.0 * R * K + 2.0 * n * K + 2.0 * n * R;
            double bytes_s = 1.125 * R * K + 2.0 * n * K + 2.0 * n * R;
            double floor_d = std::max(flops / ce.flops, bytes_d / ce.bw) * 1e6;
            double floor_s = std::max(flops / (2 * ce.flops), bytes_s / ce.bw) * 1e6;
            double best = t_v1;
            if (!isnan(t_v2[0])) best = std::min(best, t_v2[0]);
            if (!isnan(t_v2[1])) best = std::min(best, t_v2[1]);
            fprintf(g_full,
                    "time R=%lld K=%lld n=%d floor_dense_us=%.2f floor_sp24_us=%.2f cublas_us=%.2f v1_us=%.2f "
                    "v2a_us=%.2f v2b_us=%.2f cusparselt_us=%.2f cublas_TFLOPs=%.1f v1_TFLOPs=%.1f "
                    "best_GBps=%.0f\n",
                    (long long)R, (long long)K, n, floor_d, floor_s, t_cb, t_v1, t_v2[0], t_v2[1], t_cs,
                    flops / t_cb * 1e-6, flops / t_v1 * 1e-6, bytes_s / best * 1e-3);
            fflush(g_full);
            snprintf(table[nrow++], sizeof table[0],
                     "%5lldx%-6lld %6d | %8.1f %8.1f | %9.1f %9.1f %9.1f %9.1f %9.1f | %5.2fx %5.2fx", (long long)R,
                     (long long)K, n, floor_d, floor_s, t_cb, t_v1, t_v2[0], t_v2[1], t_cs, t_cb / best, t_cb / t_cs);
            printf("%s\n", table[nrow - 1]);
            fflush(stdout);
            cudaFree(dx), cudaFree(dy), cudaFree(dref), cudaFree(dxb), cudaFree(dbad), cudaFree(dnum);
        }
        for (auto p : dA) cudaFree(p);
        for (auto p : dE) cudaFree(p);
        for (auto p : dW) cudaFree(p);
    }
    printf("\nGEMM y = x W^T, bf16 in/out, f32 accumulate; times in us (median); floorD/floor24 = max(FLOP/cuBLAS "
           "rate [x2 for 2:4], bytes/copy BW); best/D = cuBLAS / fastest of v1, v2a, v2b\n");
    printf("%-12s %6s | %8s %8s | %9s %9s %9s %9s %9s | %6s %6s\n", "W (RxK)", "tokens", "floorD", "floor24", "cuBLAS",
           "v1tiled", "v2a", "v2b", "cuSPLt", "best/D", "cslt/D");
    for (int i = 0; i < nrow; i++) printf("%s\n", table[i]);
    cublasDestroy(cb);
    cudaStreamDestroy(st);
}

int main(int argc, char **argv)
{
    const char *out = getenv("OUT");
    char path[4096];
    snprintf(path, sizeof path, "%s/sp24_full.txt", out && *out ? out : ".");
    g_full = fopen(path, "a");
    if (!g_full) g_full = stderr;
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("device: %s, sm_%d%d, %d SMs, L2 %d MB\n", p.name, p.major, p.minor, p.multiProcessorCount,
           p.l2CacheSize >> 20);
    fprintf(g_full, "device %s sm_%d%d\n", p.name, p.major, p.minor);
    bool any = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--probe")) run_probe(), any = true;
        else if (!strcmp(argv[i], "--check")) run_check(false), any = true;
        else if (!strcmp(argv[i], "--check-quick")) run_check(true), any = true;
        else if (!strcmp(argv[i], "--bench")) run_bench(i + 1 < argc && argv[i + 1][0] != '-' ? argv[++i] : NULL), any = true;
        else {
            fprintf(stderr, "usage: %s [--probe] [--check | --check-quick] [--bench [ROWS]]\n", argv[0]);
            return 1;
        }
    }
    if (!any) run_probe(), run_check(false);
    printf("%s: %d failures\n", argv[0], g_failures);
    return g_failures ? 2 : 0;
}
#endif // TB_SP24_BENCH
