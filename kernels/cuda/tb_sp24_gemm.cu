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

Versions (bench/gpu/NOTES-sp24.md has each one's prediction and outcome):
  1  tiled: 128 rows x 128 tokens x 64 columns per block, 8 warps of 64 x 32,
     A/metadata/x tiles through a 4-stage cp.async pipeline in shared memory
     (x swizzled for conflict-free ldmatrix), grouped block order so that W and
     x tiles stay in L2. sm_80+. 1b: the same with 4 warps of 64 x 64.
  2  skinny: 1-16 tokens (one or two n8 mma columns). Memory bound on W, so W
     is streamed straight from HBM into registers (16-byte loads, 4 k-steps in
     flight per warp), and the warps of a block split K over the same rows and
     reduce in shared memory. Variants: 32 or 64 rows a warp (a/b...), 8 or 16
     warps, x pre-shuffled into B fragments by a small kernel or read in place
     (c-f); g = the entry's choice per shape, launched with programmatic
     dependent launch (sm_90) so the W stream starts while the previous kernel
     (the x shuffle, or in a model the op before) finishes. sm_80+.
  3  Hopper sparse wgmma (sm_90a, -DTB_SP24_WGMMA): wgmma.mma_async.sp
     m64n128k32, A and metadata from registers (version 1's layout is the
     wgmma register layout warp by warp), x from shared memory through a
     128-byte-swizzle descriptor, version 1's pipeline; 2 warpgroups a block.
     3b/3c: version 3 with the wgmmas of one k-tile running while the next
     k-tile's fragments load (wait_group 1, two register sets), 128 (3b) or
     256 (3c) tokens a block. WRITTEN AND COMPILED, NOT YET RUN ON A GPU (the
     session's device time was spent): the next sp24_bench.sh run checks them
     (--check covers them) before timing them.

Library entry (tb_sp24.h): tb_cuda_sp24_prepare (host reorder) or
_prepare_device (the same reorder on the device, from the .tb arrays uploaded
as they are), _linear, _to_dense (the layout back to dense, in model column
order), _release, _choose (the per-shape decision table), _x_bf16. The CUDA backend (tb_backend_cuda.cu) keeps
a 2:4 bf16 weight in this form and calls _linear for 1-16 tokens; the device
reorder and _to_dense are checked byte for byte / element for element against
tb_sp24_reorder and the CPU backend by tests/cuda/test_backend.c. WRITTEN AND
COMPILED, NOT YET RUN ON A GPU (the device budget was spent): the next
bench/gpu/device_tests.sh run checks them.

Build and run the bench and checker standalone (the device machine has nvcc
but no cJSON/OpenBLAS; this file needs only the three small C files below):
    nvcc -O3 -std=c++17 -DTB_SP24_BENCH -DTB_SP24_WGMMA -gencode=arch=compute_90a,code=sm_90a \
      -gencode=arch=compute_80,code=sm_80 -Ikernels/cpu -Iformats -Icommon \
      kernels/cuda/tb_sp24_gemm.cu kernels/cpu/tb_sp24_layout.c \
      formats/tb_dtype.c common/tb_error.c -lcublas -o tb_sp24_gemm
    ./tb_sp24_gemm --check      # small shapes through the C entry, every variant (also under compute-sanitizer)
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

// Programmatic dependent launch (sm_90): a kernel launched with it may start
// while the previous kernel in the stream finishes; it must wait here before
// reading what that kernel writes (x) or writing what it reads (y). Weights
// are constant, so their loads go out before the wait.
__device__ __forceinline__ void grid_dep_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dep_launch_dependents()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::);
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
    grid_dep_launch_dependents(); // let the GEMM start streaming W now
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
// the layout built and read on the device: tb_sp24_reorder and tb_sp24_decode
// (kernels/cpu/tb_sp24_layout.c) a thread per (row, group of 4 columns) or per
// metadata word, so a weight crosses the bus once, as the .tb arrays

// the u32 slot of A holding the kept pair of (row r, group j), as tb_sp24_reorder places it
__device__ __forceinline__ int64_t sp24_a_slot(int64_t r, int64_t j, int64_t k32)
{
    const int64_t mt = r / 16, ks = j / 8;
    const int g = (int)(r % 8), hi = (int)((r % 16) / 8), q = (int)(j % 8);
    return (((mt * k32 + ks) * 32 + 4 * g + q % 4) * 8 + (q / 4) * 4 + hi * 2) / 2;
}

// the E word holding the nibble of (row r, group j), and the nibble's shift in it
__device__ __forceinline__ int64_t sp24_e_word(int64_t r, int64_t j, int64_t k32, int *shift)
{
    const int64_t p = r / 32, ks = j / 8;
    const int g = (int)(r % 8), hi = (int)((r % 16) / 8), tile = (int)((r % 32) / 16), q = (int)(j % 8);
    *shift = 16 * hi + 4 * (q % 4);
    return (p * k32 + ks) * 32 + 4 * g + 2 * tile + q / 4;
}

// A: the .tb values read as u32 pairs (a group's two kept values, lower position first)
__global__ void sp24_reorder_a(const uint32_t *__restrict__ pairs, int64_t rows, int64_t cols, uint32_t *__restrict__ a)
{
    const int64_t groups = cols / 4, k32 = cols / 32, total = rows * groups;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        a[sp24_a_slot(i / groups, i % groups, k32)] = pairs[i];
}

// E: one thread per word gathers its 8 nibbles (.tb: two groups a byte, the lower group low)
__global__ void sp24_reorder_e(const uint8_t *__restrict__ idx, int64_t rows, int64_t cols, uint32_t *__restrict__ e)
{
    const int64_t k32 = cols / 32, irow = cols / 8, total = rows / 32 * k32 * 32;
    for (int64_t w = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; w < total; w += (int64_t)gridDim.x * blockDim.x) {
        const int lane = (int)(w % 32), g = lane >> 2, s = lane & 3;
        const int64_t ks = (w / 32) % k32, p = w / 32 / k32;
        uint32_t word = 0;
        for (int hi = 0; hi < 2; hi++) {
            const int64_t r = 32 * p + 16 * (s >> 1) + 8 * hi + g;
            for (int c = 0; c < 4; c++) {
                const int64_t j = ks * 8 + 4 * (s & 1) + c;
                word |= ((uint32_t)(idx[r * irow + j / 2] >> ((j & 1) * 4)) & 15u) << (16 * hi + 4 * c);
            }
        }
        e[w] = word;
    }
}

// the kernel layout back to dense [rows, cols] in model column order (out[r][perm[c]] = W_stored[r][c])
template <typename OutT>
__global__ void sp24_to_dense(const uint32_t *__restrict__ a, const uint32_t *__restrict__ e,
                              const int32_t *__restrict__ perm, int64_t rows, int64_t cols, OutT *__restrict__ out)
{
    const int64_t groups = cols / 4, k32 = cols / 32, total = rows * groups;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / groups, j = i % groups;
        const uint32_t pair = a[sp24_a_slot(r, j, k32)];
        int shift;
        const uint32_t nib = (e[sp24_e_word(r, j, k32, &shift)] >> shift) & 15u;
        const float v0 = __uint_as_float(pair << 16), v1 = __uint_as_float(pair & 0xffff0000u);
        for (int k = 0; k < 4; k++) {
            const float v = k == (int)(nib & 3u) ? v0 : k == (int)(nib >> 2) ? v1 : 0.0f;
            const int64_t c = perm ? perm[4 * j + k] : 4 * j + k;
            store_out(out + r * cols + c, v); // a bf16 value: exact in either output type
        }
    }
}

static unsigned sp24_grid(int64_t count)
{
    int64_t b = (count + 255) / 256;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

// ----------------------------------------------------------------------------
// version 1: tiled

namespace tiled {
constexpr int BM = 128, BN = 128, BK = 64, STAGES = 4, GROUP_M = 16;
constexpr int A_BYTES = BM / 16 * 2 * 512; // 8 tiles x 2 k-steps x 512 B
constexpr int E_BYTES = BM / 32 * 2 * 128; // 4 pairs x 2 k-steps x 128 B
constexpr int B_BYTES = BN * BK * 2;       // 128 tokens x 128 B (swizzled)
constexpr int STAGE_BYTES = A_BYTES + E_BYTES + B_BYTES;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES;
} // namespace tiled

// WN warps across the 128 tokens (each 128 / WN tokens = NJ n8 tiles), 2 warps
// across the 128 rows (each 64 rows = 4 m16 tiles). v1: WN = 4 (8 warps,
// 64 x 32 per warp); v1b: WN = 2 (4 warps, 64 x 64 per warp: half the shared-
// memory reads of x per mma).
template <int WN, typename OutT>
__global__ void __launch_bounds__(64 * WN, 8 / (2 * WN))
    sp24_gemm_tiled(const uint8_t *__restrict__ A, const uint8_t *__restrict__ E, const __nv_bfloat16 *__restrict__ X,
                    int n, int R, int K, const float *__restrict__ bias, OutT *__restrict__ Y)
{
    using namespace tiled;
    constexpr int THREADS = 64 * WN, NJ = BN / 8 / WN;
    extern __shared__ __align__(128) uint8_t smem[];
    const int K32 = K / 32, KT = K / BK, ntiles16 = R / 16, npairs = R / 32;
    const int num_m = (R + BM - 1) / BM, num_n = (n + BN - 1) / BN;
    // grouped order: GROUP_M row tiles sweep the token tiles together
    const int bid = blockIdx.x, width = GROUP_M * num_n, group = bid / width;
    const int first_m = group * GROUP_M, gsz = min(num_m - first_m, GROUP_M);
    const int mtile = first_m + (bid % width) % gsz, ntile = (bid % width) / gsz;
    const int m0 = mtile * BM, n0 = ntile * BN;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int warp_m = warp / WN, warp_n = warp % WN;

    auto load_stage = [&](int stage, int kt) {
        uint8_t *sA = smem + stage * STAGE_BYTES, *sE = sA + A_BYTES, *sB = sE + E_BYTES;
#pragma unroll
        for (int i = 0; i < A_BYTES / 16 / THREADS; i++) { // A: 8 tiles x 64 chunks
            int c = tid + i * THREADS, tile = c / 64, off = c % 64, mt = m0 / 16 + tile;
            bool ok = mt < ntiles16;
            const uint8_t *src = A + ((size_t)(ok ? mt : 0) * K32 + (size_t)kt * 2) * 512 + off * 16;
            cp_async16(sA + tile * 1024 + off * 16, src, ok ? 16 : 0);
        }
        if (tid < E_BYTES / 16) { // E: 4 pairs x 16 chunks
            int pair = tid / 16, off = tid % 16, p = m0 / 32 + pair;
            bool ok = p < npairs;
            const uint8_t *src = E + ((size_t)(ok ? p : 0) * K32 + (size_t)kt * 2) * 128 + off * 16;
            cp_async16(sE + pair * 256 + off * 16, src, ok ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < B_BYTES / 16 / THREADS; i++) { // x: 128 rows x 8 chunks
            int c = tid + i * THREADS, row = c / 8, ch = c % 8, tok = n0 + row;
            bool ok = tok < n;
            const __nv_bfloat16 *src = X + (size_t)(ok ? tok : 0) * K + (size_t)kt * BK + ch * 8;
            cp_async16(sB + row * 128 + ((ch ^ (row & 7)) * 16), src, ok ? 16 : 0);
        }
    };

    float acc[4][NJ][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++)
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
            uint32_t a[4][4], b[NJ][4], e[2];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                uint4 v = *reinterpret_cast<const uint4 *>(sA + ((warp_m * 4 + i) * 2 + ks) * 512 + lane * 16);
                a[i][0] = v.x, a[i][1] = v.y, a[i][2] = v.z, a[i][3] = v.w;
            }
#pragma unroll
            for (int j = 0; j < 2; j++)
                e[j] = *reinterpret_cast<const uint32_t *>(sE + ((warp_m * 2 + j) * 2 + ks) * 128 + lane * 4);
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                int row = warp_n * (NJ * 8) + j * 8 + (lane & 7), ch = ks * 4 + (lane >> 3);
                ldmatrix_x4(b[j], sB + row * 128 + ((ch ^ (row & 7)) * 16));
            }
#pragma unroll
            for (int j = 0; j < NJ; j++) {
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
            for (int j = 0; j < NJ; j++)
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    int tok = n0 + warp_n * (NJ * 8) + j * 8 + 2 * t + c;
                    if (tok < n) store_out(Y + (size_t)tok * R + r, acc[i][j][2 * h + c] + bv);
                }
        }
    }
}

// ----------------------------------------------------------------------------
// version 3: Hopper sparse wgmma (sm_90a; built when TB_SP24_WGMMA is defined)
//
// wgmma.mma_async.sp m64n128k32 with A (the sparse weight) from registers and
// B (x) from shared memory through a 128-byte-swizzle descriptor. The A and
// metadata fragments of a warp in the warpgroup are exactly the mma.sp ones
// of its 16-row tile (CUTLASS's ALayout_64x32 / ELayout_64x32 for sparse
// 16-bit types), so version 1's layout and shared-memory stages serve as they
// are; the x stage is already in the 128B-swizzle K-major order (16-byte chunk
// c of row r at c ^ (r % 8), rows of 128 bytes, 1024-byte aligned). One
// selector (0) serves the warpgroup, so odd warps move their tile's metadata
// words from lanes 4g+2, 4g+3 down to 4g, 4g+1.
#if defined(TB_SP24_WGMMA) && defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SP24_WGMMA_OK 1
#else
#define SP24_WGMMA_OK 0
#endif

__device__ __forceinline__ uint64_t wgmma_desc_sw128(const void *smem)
{
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    uint64_t d = (uint64_t)((a & 0x3FFFF) >> 4); // start address
    d |= (uint64_t)1 << 16;                      // leading byte offset (unused: K fits one swizzle row)
    d |= (uint64_t)(1024 >> 4) << 32;            // stride byte offset: 8 rows x 128 B
    d |= (uint64_t)1 << 62;                      // 128-byte swizzle
    return d;
}

__device__ __forceinline__ void wgmma_sp_m64n128k32(float (&d)[64], const uint32_t a[4], uint64_t desc_b, uint32_t e)
{
#if SP24_WGMMA_OK
    asm volatile("{\n"
                 "wgmma.mma_async.sp.sync.aligned.m64n128k32.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, %69, 0, 1, 1, 1, 0;\n"
                 "}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(e));
#endif
}
__device__ __forceinline__ void wgmma_fence()
{
#if SP24_WGMMA_OK
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit()
{
#if SP24_WGMMA_OK
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait()
{
#if SP24_WGMMA_OK
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void fence_proxy_async()
{
#if SP24_WGMMA_OK
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// 2 warpgroups x 64 rows, 128 tokens, the tiled stages (4 x 25 KB + 1 KB for alignment)
template <typename OutT>
__global__ void __launch_bounds__(256, 2)
    sp24_gemm_wgmma(const uint8_t *__restrict__ A, const uint8_t *__restrict__ E, const __nv_bfloat16 *__restrict__ X,
                    int n, int R, int K, const float *__restrict__ bias, OutT *__restrict__ Y)
{
    using namespace tiled;
    extern __shared__ __align__(128) uint8_t smem_raw[];
    uint8_t *smem = (uint8_t *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
    const int K32 = K / 32, KT = K / BK, ntiles16 = R / 16, npairs = R / 32;
    const int num_m = (R + BM - 1) / BM, num_n = (n + BN - 1) / BN;
    const int bid = blockIdx.x, width = GROUP_M * num_n, group = bid / width;
    const int first_m = group * GROUP_M, gsz = min(num_m - first_m, GROUP_M);
    const int mtile = first_m + (bid % width) % gsz, ntile = (bid % width) / gsz;
    const int m0 = mtile * BM, n0 = ntile * BN;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int tile = warp; // warp w <-> 16-row tile w of the block (warpgroup w / 4 holds rows 64 (w / 4) ..)
    const bool tile_ok = m0 / 16 + tile < ntiles16;

    auto load_stage = [&](int stage, int kt) {
        uint8_t *sA = smem + stage * STAGE_BYTES, *sE = sA + A_BYTES, *sB = sE + E_BYTES;
#pragma unroll
        for (int i = 0; i < A_BYTES / 16 / 256; i++) {
            int c = tid + i * 256, t = c / 64, off = c % 64, mt = m0 / 16 + t;
            bool ok = mt < ntiles16;
            const uint8_t *src = A + ((size_t)(ok ? mt : 0) * K32 + (size_t)kt * 2) * 512 + off * 16;
            cp_async16(sA + t * 1024 + off * 16, src, ok ? 16 : 0);
        }
        if (tid < E_BYTES / 16) {
            int pair = tid / 16, off = tid % 16, p = m0 / 32 + pair;
            bool ok = p < npairs;
            const uint8_t *src = E + ((size_t)(ok ? p : 0) * K32 + (size_t)kt * 2) * 128 + off * 16;
            cp_async16(sE + pair * 256 + off * 16, src, ok ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < B_BYTES / 16 / 256; i++) {
            int c = tid + i * 256, row = c / 8, ch = c % 8, tok = n0 + row;
            bool ok = tok < n;
            const __nv_bfloat16 *src = X + (size_t)(ok ? tok : 0) * K + (size_t)kt * BK + ch * 8;
            cp_async16(sB + row * 128 + ((ch ^ (row & 7)) * 16), src, ok ? 16 : 0);
        }
    };

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < KT) load_stage(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<STAGES - 2>();
        fence_proxy_async(); // cp.async wrote x through the generic proxy; wgmma reads it through the async one
        __syncthreads();
        {
            int nk = kt + STAGES - 1;
            if (nk < KT) load_stage(nk % STAGES, nk);
            cp_async_commit();
        }
        const uint8_t *sA = smem + (kt % STAGES) * STAGE_BYTES, *sE = sA + A_BYTES, *sB = sE + E_BYTES;
        uint32_t a[2][4], e[2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint4 v = *reinterpret_cast<const uint4 *>(sA + (tile * 2 + ks) * 512 + lane * 16);
            a[ks][0] = v.x, a[ks][1] = v.y, a[ks][2] = v.z, a[ks][3] = v.w;
            uint32_t w = *reinterpret_cast<const uint32_t *>(sE + ((tile / 2) * 2 + ks) * 128 + lane * 4);
            uint32_t down = __shfl_down_sync(0xffffffffu, w, 2);
            e[ks] = (tile & 1) ? down : w;
            if (!tile_ok) e[ks] = 0x44444444u; // rows past R: a valid pattern over zero values
        }
        wgmma_fence();
        wgmma_sp_m64n128k32(acc, a[0], wgmma_desc_sw128(sB), e[0]);
        wgmma_sp_m64n128k32(acc, a[1], wgmma_desc_sw128(sB + 64), e[1]);
        wgmma_commit();
        wgmma_wait<0>();
    }
    const int g = lane >> 2, t = lane & 3;
    if (!tile_ok) return;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int r = m0 + tile * 16 + g + 8 * h;
        float bv = bias ? bias[r] : 0.f;
#pragma unroll
        for (int j = 0; j < 16; j++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                int tok = n0 + j * 8 + 2 * t + c;
                if (tok < n) store_out(Y + (size_t)tok * R + r, acc[j * 4 + 2 * h + c] + bv);
            }
    }
}


__device__ __forceinline__ void wgmma_sp_m64n256k32(float (&d)[128], const uint32_t a[4], uint64_t desc_b, uint32_t e)
{
#if SP24_WGMMA_OK
    asm volatile("{\n"
                 "wgmma.mma_async.sp.sync.aligned.m64n256k32.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, %133, 0, 1, 1, 1, 0;\n"
                 "}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(e));
#endif
}

// Version 3b/3c: version 3 with the wgmmas of k-tile i still running while
// k-tile i+1's fragments load (wgmma.wait_group 1; two register sets; loads run
// STAGES - 2 tiles ahead so no stage an unfinished wgmma reads is overwritten),
// BN = 128 (3b) or 256 tokens (3c: half the A traffic per FLOP).
template <int BN2, typename OutT>
__global__ void __launch_bounds__(256, BN2 == 128 ? 2 : 1)
    sp24_gemm_wgmma2(const uint8_t *__restrict__ A, const uint8_t *__restrict__ E, const __nv_bfloat16 *__restrict__ X,
                     int n, int R, int K, const float *__restrict__ bias, OutT *__restrict__ Y)
{
    constexpr int BM = 128, BK = 64, STAGES = 4, GROUP_M = 16;
    constexpr int A_B = BM / 16 * 2 * 512, E_B = BM / 32 * 2 * 128, B_B = BN2 * BK * 2;
    constexpr int STAGE_B = A_B + E_B + B_B; // multiple of 1024: the x tile stays 1024-aligned
    constexpr int NACC = BN2 / 2;
    extern __shared__ __align__(128) uint8_t smem_raw[];
    uint8_t *smem = (uint8_t *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
    const int K32 = K / 32, KT = K / BK, ntiles16 = R / 16, npairs = R / 32;
    const int num_m = (R + BM - 1) / BM, num_n = (n + BN2 - 1) / BN2;
    const int bid = blockIdx.x, width = GROUP_M * num_n, group = bid / width;
    const int first_m = group * GROUP_M, gsz = min(num_m - first_m, GROUP_M);
    const int mtile = first_m + (bid % width) % gsz, ntile = (bid % width) / gsz;
    const int m0 = mtile * BM, n0 = ntile * BN2;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int tile = warp;
    const bool tile_ok = m0 / 16 + tile < ntiles16;

    auto load_stage = [&](int stage, int kt) {
        uint8_t *sA = smem + stage * STAGE_B, *sE = sA + A_B, *sB = sE + E_B;
#pragma unroll
        for (int i = 0; i < A_B / 16 / 256; i++) {
            int c = tid + i * 256, t = c / 64, off = c % 64, mt = m0 / 16 + t;
            bool ok = mt < ntiles16;
            const uint8_t *src = A + ((size_t)(ok ? mt : 0) * K32 + (size_t)kt * 2) * 512 + off * 16;
            cp_async16(sA + t * 1024 + off * 16, src, ok ? 16 : 0);
        }
        if (tid < E_B / 16) {
            int pair = tid / 16, off = tid % 16, p = m0 / 32 + pair;
            bool ok = p < npairs;
            const uint8_t *src = E + ((size_t)(ok ? p : 0) * K32 + (size_t)kt * 2) * 128 + off * 16;
            cp_async16(sE + pair * 256 + off * 16, src, ok ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < B_B / 16 / 256; i++) {
            int c = tid + i * 256, row = c / 8, ch = c % 8, tok = n0 + row;
            bool ok = tok < n;
            const __nv_bfloat16 *src = X + (size_t)(ok ? tok : 0) * K + (size_t)kt * BK + ch * 8;
            cp_async16(sB + row * 128 + ((ch ^ (row & 7)) * 16), src, ok ? 16 : 0);
        }
    };
    auto mma_tile = [&](int kt, uint32_t (&a)[2][4], uint32_t (&e)[2], float (&acc)[NACC]) {
        const uint8_t *sA = smem + (kt % STAGES) * STAGE_B, *sE = sA + A_B, *sB = sE + E_B;
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint4 v = *reinterpret_cast<const uint4 *>(sA + (tile * 2 + ks) * 512 + lane * 16);
            a[ks][0] = v.x, a[ks][1] = v.y, a[ks][2] = v.z, a[ks][3] = v.w;
            uint32_t w = *reinterpret_cast<const uint32_t *>(sE + ((tile / 2) * 2 + ks) * 128 + lane * 4);
            uint32_t down = __shfl_down_sync(0xffffffffu, w, 2);
            e[ks] = (tile & 1) ? down : w;
            if (!tile_ok) e[ks] = 0x44444444u;
        }
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            if constexpr (BN2 == 256) wgmma_sp_m64n256k32(acc, a[ks], wgmma_desc_sw128(sB + ks * 64), e[ks]);
            else wgmma_sp_m64n128k32(*reinterpret_cast<float (*)[64]>(&acc), a[ks], wgmma_desc_sw128(sB + ks * 64), e[ks]);
        }
        wgmma_commit();
    };

    float acc[NACC];
#pragma unroll
    for (int i = 0; i < NACC; i++) acc[i] = 0.f;
    uint32_t a0[2][4], a1[2][4], e0[2], e1[2];

#pragma unroll
    for (int s = 0; s < STAGES - 2; s++) {
        if (s < KT) load_stage(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; kt += 2) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int k = kt + half;
            if (k < KT) {
                cp_async_wait<STAGES - 3>();
                fence_proxy_async();
                __syncthreads();
                int nk = k + STAGES - 2;
                if (nk < KT) load_stage(nk % STAGES, nk);
                cp_async_commit();
                if (half == 0) mma_tile(k, a0, e0, acc);
                else mma_tile(k, a1, e1, acc);
                wgmma_wait<1>(); // k-tile k - 1 done: its registers and stage are free
            }
        }
    }
    wgmma_wait<0>();
    const int g = lane >> 2, t = lane & 3;
    if (!tile_ok) return;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int r = m0 + tile * 16 + g + 8 * h;
        float bv = bias ? bias[r] : 0.f;
#pragma unroll
        for (int j = 0; j < BN2 / 8; j++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                int tok = n0 + j * 8 + 2 * t + c;
                if (tok < n) store_out(Y + (size_t)tok * R + r, acc[j * 4 + 2 * h + c] + bv);
            }
    }
}

// ----------------------------------------------------------------------------
// version 2: skinny (1-16 tokens)

namespace skinny {
constexpr int U = 4; // k-steps in flight per warp
enum { X_FRAG = 0, X_BF16 = 1, X_F32 = 2 }; // x as pre-shuffled fragments, or rows read in place
}

// the B fragment of n8 tile j at k-step ks straight from x rows [n, K]
template <int XMODE>
__device__ __forceinline__ uint4 load_b(const void *X, int n, int K, int ks, int j, int lane, int nt)
{
    if (XMODE == skinny::X_FRAG) return __ldg(reinterpret_cast<const uint4 *>(X) + ((size_t)ks * nt + j) * 32 + lane);
    const int g = lane >> 2, t = lane & 3, tok = 8 * j + g;
    uint32_t w[4] = {0, 0, 0, 0};
    if (tok < n) {
        size_t base = (size_t)tok * K + (size_t)ks * 32 + 2 * t;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            if (XMODE == skinny::X_BF16) {
                w[q] = __ldg(reinterpret_cast<const unsigned int *>(reinterpret_cast<const __nv_bfloat16 *>(X) + base + 8 * q));
            } else {
                float2 v = __ldg(reinterpret_cast<const float2 *>(reinterpret_cast<const float *>(X) + base + 8 * q));
                w[q] = pack_bf16x2(v.x, v.y);
            }
        }
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// NT n8 token tiles (n <= 8 NT), PAIRS row pairs (32 rows each) per warp,
// WARPS warps of the block splitting K over the same rows.
template <int NT, int PAIRS, int WARPS, int XMODE, typename OutT>
__global__ void __launch_bounds__(WARPS * 32)
    sp24_gemm_skinny(const uint4 *__restrict__ A, const uint32_t *__restrict__ E, const void *__restrict__ X, int n,
                     int R, int K, const float *__restrict__ bias, OutT *__restrict__ Y)
{
    using namespace skinny;
    constexpr int TILES = 2 * PAIRS, NACC = TILES * NT * 4;
    constexpr int RW = WARPS < 8 ? WARPS : 8; // reduction slots (32 KB at most)
    __shared__ float red[RW][NACC][32];
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

    bool waited = false;
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
            }
        }
        if (!waited) grid_dep_wait(), waited = true; // x comes from the previous kernel
#pragma unroll
        for (int u = 0; u < U; u++)
            if (ks0 + u < K32) {
#pragma unroll
                for (int j = 0; j < NT; j++) b[u][j] = load_b<XMODE>(X, n, K, ks0 + u, j, lane, NT);
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
    if (!waited) grid_dep_wait(); // before y is written
    // split-K reduction across the block's warps: warps RW.. first, then 0..RW-1 add theirs
    if (warp >= RW) {
#pragma unroll
        for (int i = 0; i < TILES; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) red[warp - RW][(i * NT + j) * 4 + r][lane] = acc[i][j][r];
    }
    if (WARPS > RW) __syncthreads();
    if (warp < RW) {
#pragma unroll
        for (int i = 0; i < TILES; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    float *slot = &red[warp][(i * NT + j) * 4 + r][lane];
                    *slot = (WARPS > RW ? *slot : 0.f) + acc[i][j][r];
                }
    }
    __syncthreads();
    for (int q = threadIdx.x; q < NACC * 32; q += WARPS * 32) {
        int slot = q / 32, ln = q % 32;
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < RW; w++) s += red[w][slot][ln];
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

template <int WN, typename OutT>
static cudaError_t launch_tiled_wn(const void *A, const void *E, const __nv_bfloat16 *X, int n, int R, int K,
                                   const float *bias, OutT *Y, cudaStream_t st)
{
    static bool attr_set = false; // per instantiation
    if (!attr_set) {
        cudaError_t err = cudaFuncSetAttribute(sp24_gemm_tiled<WN, OutT>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, tiled::SMEM_BYTES);
        if (err != cudaSuccess) return err;
        attr_set = true;
    }
    int blocks = ((R + tiled::BM - 1) / tiled::BM) * ((n + tiled::BN - 1) / tiled::BN);
    sp24_gemm_tiled<WN, OutT><<<blocks, 64 * WN, tiled::SMEM_BYTES, st>>>((const uint8_t *)A, (const uint8_t *)E, X,
                                                                          n, R, K, bias, Y);
    return cudaGetLastError();
}

// version 1 (wn 4) or 1b (wn 2)
template <typename OutT>
static cudaError_t launch_tiled(int wn, const void *A, const void *E, const __nv_bfloat16 *X, int n, int R, int K,
                                const float *bias, OutT *Y, cudaStream_t st)
{
    return wn == 2 ? launch_tiled_wn<2>(A, E, X, n, R, K, bias, Y, st) : launch_tiled_wn<4>(A, E, X, n, R, K, bias, Y, st);
}

// launch, with programmatic dependent launch when pdl (sm_90+)
template <typename... KArgs, typename... Args>
static cudaError_t launch_maybe_pdl(bool pdl, void (*kern)(KArgs...), unsigned grid, unsigned block, cudaStream_t st,
                                    Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid), cfg.blockDim = dim3(block), cfg.dynamicSmemBytes = 0, cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at, cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kern, ((KArgs)args)...);
}

#ifdef TB_SP24_WGMMA
// version 3 (the device must be sm_90; the binary must hold sm_90a code)
template <typename OutT>
static cudaError_t launch_wgmma(const void *A, const void *E, const __nv_bfloat16 *X, int n, int R, int K,
                                const float *bias, OutT *Y, cudaStream_t st)
{
    static bool attr_set = false;
    const int smem = tiled::SMEM_BYTES + 1024;
    if (!attr_set) {
        cudaError_t err = cudaFuncSetAttribute(sp24_gemm_wgmma<OutT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (err != cudaSuccess) return err;
        attr_set = true;
    }
    int blocks = ((R + tiled::BM - 1) / tiled::BM) * ((n + tiled::BN - 1) / tiled::BN);
    sp24_gemm_wgmma<OutT><<<blocks, 256, smem, st>>>((const uint8_t *)A, (const uint8_t *)E, X, n, R, K, bias, Y);
    return cudaGetLastError();
}
// version 3b (BN2 128) / 3c (BN2 256)
template <int BN2, typename OutT>
static cudaError_t launch_wgmma2(const void *A, const void *E, const __nv_bfloat16 *X, int n, int R, int K,
                                 const float *bias, OutT *Y, cudaStream_t st)
{
    static bool attr_set = false;
    const int smem = 4 * (128 / 16 * 2 * 512 + 128 / 32 * 2 * 128 + BN2 * 64 * 2) + 1024;
    if (!attr_set) {
        cudaError_t err = cudaFuncSetAttribute(sp24_gemm_wgmma2<BN2, OutT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (err != cudaSuccess) return err;
        attr_set = true;
    }
    int blocks = ((R + 127) / 128) * ((n + BN2 - 1) / BN2);
    sp24_gemm_wgmma2<BN2, OutT><<<blocks, 256, smem, st>>>((const uint8_t *)A, (const uint8_t *)E, X, n, R, K, bias, Y);
    return cudaGetLastError();
}
#endif

template <int WARPS, int XMODE, typename OutT>
static cudaError_t launch_skinny_w(bool pdl, int pairs, const void *A, const void *E, const void *X, int n, int R,
                                   int K, const float *bias, OutT *Y, cudaStream_t st)
{
    const int npairs = R / 32;
    const uint4 *a = (const uint4 *)A;
    const uint32_t *e = (const uint32_t *)E;
    if (pairs == 2) {
        unsigned g = (npairs + 1) / 2;
        return n > 8 ? launch_maybe_pdl(pdl, sp24_gemm_skinny<2, 2, WARPS, XMODE, OutT>, g, WARPS * 32, st, a, e, X, n, R, K, bias, Y)
                     : launch_maybe_pdl(pdl, sp24_gemm_skinny<1, 2, WARPS, XMODE, OutT>, g, WARPS * 32, st, a, e, X, n, R, K, bias, Y);
    }
    return n > 8 ? launch_maybe_pdl(pdl, sp24_gemm_skinny<2, 1, WARPS, XMODE, OutT>, npairs, WARPS * 32, st, a, e, X, n, R, K, bias, Y)
                 : launch_maybe_pdl(pdl, sp24_gemm_skinny<1, 1, WARPS, XMODE, OutT>, npairs, WARPS * 32, st, a, e, X, n, R, K, bias, Y);
}

// version 2: xmode X_FRAG (X = pre-shuffled fragments of ceil(n / 8) n8 tiles),
// X_BF16 or X_F32 (X = rows [n, K]); 8 or 16 warps a block; 1 or 2 pairs a warp
template <typename OutT>
static cudaError_t launch_skinny(bool pdl, int pairs, int warps, int xmode, const void *A, const void *E, const void *X,
                                 int n, int R, int K, const float *bias, OutT *Y, cudaStream_t st)
{
    using namespace skinny;
    if (warps == 16) {
        if (xmode == X_FRAG) return launch_skinny_w<16, X_FRAG>(pdl, pairs, A, E, X, n, R, K, bias, Y, st);
        if (xmode == X_BF16) return launch_skinny_w<16, X_BF16>(pdl, pairs, A, E, X, n, R, K, bias, Y, st);
        return launch_skinny_w<16, X_F32>(pdl, pairs, A, E, X, n, R, K, bias, Y, st);
    }
    if (xmode == X_FRAG) return launch_skinny_w<8, X_FRAG>(pdl, pairs, A, E, X, n, R, K, bias, Y, st);
    if (xmode == X_BF16) return launch_skinny_w<8, X_BF16>(pdl, pairs, A, E, X, n, R, K, bias, Y, st);
    return launch_skinny_w<8, X_F32>(pdl, pairs, A, E, X, n, R, K, bias, Y, st);
}

// programmatic dependent launch needs sm_90; asked once (the current device)
static bool pdl_supported(void)
{
    static int cached = -1;
    if (cached < 0) {
        int dev = 0, major = 0;
        cached = cudaGetDevice(&dev) == cudaSuccess &&
                 cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
        cudaGetLastError();
    }
    return cached == 1;
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

// The variant the entry runs for a shape: the measured fastest
// (bench/gpu/NOTES-sp24.md). The checker forces each in turn (g_force_*).
static const int SKINNY_MAX_N = 16;
static int g_force_pairs, g_force_warps, g_force_frag, g_force_wn;
#ifdef TB_SP24_WGMMA
static int g_force_v3;
#endif
// 1-8 tokens: x read in place; 64 rows a warp for tall W, else 32 rows and 16
// warps. 9-16 tokens: x pre-shuffled, 32 rows a warp, 8 warps (H200, run 2).
static bool skinny_frag(int n) { return g_force_frag ? g_force_frag > 0 : n > 8; }
static int skinny_pairs(int64_t rows, int n) { return g_force_pairs ? g_force_pairs : n <= 8 && rows >= 8192 ? 2 : 1; }
static int skinny_warps(int64_t rows, int n) { return g_force_warps ? g_force_warps : n <= 8 && rows < 8192 ? 16 : 8; }
static int tiled_wn(void) { return g_force_wn ? g_force_wn : 4; }

// ----------------------------------------------------------------------------
// library entry

// sm_80+ (the sparse mma), or TB_EUSAGE / TB_EIO naming why not
static int sp24_device_check(void)
{
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        cudaGetLastError();
        return tb_fail(TB_EIO, "2:4 GEMM: no usable CUDA device");
    }
    if (major < 8) return tb_fail(TB_EUSAGE, "2:4 GEMM: sparse tensor cores need sm_80 or newer (device is sm_%d)", major * 10);
    return TB_OK;
}


extern "C" int tb_cuda_sp24_prepare(tb_sp24_weight *w, const uint16_t *values, const uint8_t *indices,
                                    int64_t rows, int64_t cols, const int32_t *perm)
{
    memset(w, 0, sizeof *w);
    int rc = tb_sp24_check_shape(rows, cols);
    if (rc) return rc;
    if ((rc = sp24_device_check())) return rc;
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

extern "C" int tb_cuda_sp24_prepare_device(tb_sp24_weight *w, const uint16_t *values, const uint8_t *indices,
                                           int64_t rows, int64_t cols, const int32_t *perm, void *stream)
{
    memset(w, 0, sizeof *w);
    int rc = tb_sp24_check_shape(rows, cols);
    if (!rc) rc = sp24_device_check();
    if (rc) return rc;
    if ((uintptr_t)values % 4)
        return tb_fail(TB_EUSAGE, "2:4 GEMM: device values must be 4-byte aligned (read as pairs)");
    cudaStream_t st = (cudaStream_t)stream;
    const size_t ab = tb_sp24_a_bytes(rows, cols), eb = tb_sp24_e_bytes(rows, cols);
    const char *what = "";
    cudaError_t err;
    if ((err = cudaMalloc(&w->a, ab)) != cudaSuccess) what = "allocating the kept values";
    else if ((err = cudaMalloc(&w->e, eb)) != cudaSuccess) what = "allocating the metadata";
    else if (perm && (err = cudaMalloc(&w->perm, (size_t)cols * sizeof(int32_t))) != cudaSuccess)
        what = "allocating the permutation";
    else if (perm && (err = cudaMemcpyAsync(w->perm, perm, (size_t)cols * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                            st)) != cudaSuccess)
        what = "copying the permutation";
    if (err == cudaSuccess) {
        sp24_reorder_a<<<sp24_grid(rows * (cols / 4)), 256, 0, st>>>((const uint32_t *)values, rows, cols,
                                                                     (uint32_t *)w->a);
        sp24_reorder_e<<<sp24_grid(rows * cols / 32), 256, 0, st>>>(indices, rows, cols, (uint32_t *)w->e);
        if ((err = cudaGetLastError()) != cudaSuccess) what = "reorder launch";
    }
    if (err != cudaSuccess) {
        cudaGetLastError();
        tb_cuda_sp24_release(w);
        return sp24_cuda_fail(err, what);
    }
    w->rows = rows, w->cols = cols;
    return TB_OK;
}

extern "C" int tb_cuda_sp24_to_dense(const tb_sp24_weight *w, void *dense, tb_dtype dt, void *stream)
{
    if (dt != TB_F32 && dt != TB_BF16) return tb_fail(TB_EUSAGE, "2:4 GEMM: dense output must be F32 or BF16");
    cudaStream_t st = (cudaStream_t)stream;
    const unsigned grid = sp24_grid(w->rows * (w->cols / 4));
    if (dt == TB_F32)
        sp24_to_dense<<<grid, 256, 0, st>>>((const uint32_t *)w->a, (const uint32_t *)w->e, w->perm, w->rows, w->cols,
                                            (float *)dense);
    else
        sp24_to_dense<<<grid, 256, 0, st>>>((const uint32_t *)w->a, (const uint32_t *)w->e, w->perm, w->rows, w->cols,
                                            (__nv_bfloat16 *)dense);
    cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? TB_OK : sp24_cuda_fail(err, "dense expansion launch");
}

static tb_sp24_kernel choose_kernel(int n) { return n <= SKINNY_MAX_N ? TB_SP24_SKINNY : TB_SP24_TILED; }

extern "C" size_t tb_cuda_sp24_workspace_bytes(const tb_sp24_weight *w, int n, tb_dtype x_dt)
{
    if (n <= SKINNY_MAX_N) return (size_t)(w->cols / 32) * ((n + 7) / 8) * 512; // fragments; >= n * cols * 2 too
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
        // x is read in place unless it must be gathered through perm
        int xmode = x_dt == TB_F32 ? skinny::X_F32 : skinny::X_BF16;
        const void *xs = x;
        err = cudaSuccess;
        if (w->perm || skinny_frag(n)) {
            xmode = skinny::X_FRAG, xs = workspace;
            err = x_dt == TB_F32 ? launch_x_frag((const float *)x, w->perm, n, K, (uint4 *)workspace, st)
                                 : launch_x_frag((const __nv_bfloat16 *)x, w->perm, n, K, (uint4 *)workspace, st);
        }
        const int pairs = skinny_pairs(R, n), warps = skinny_warps(R, n);
        const bool pdl = pdl_supported();
        if (err == cudaSuccess)
            err = y_dt == TB_F32
                      ? launch_skinny(pdl, pairs, warps, xmode, w->a, w->e, xs, n, R, K, bias, (float *)y, st)
                      : launch_skinny(pdl, pairs, warps, xmode, w->a, w->e, xs, n, R, K, bias, (__nv_bfloat16 *)y, st);
    } else {
        const __nv_bfloat16 *xr = (const __nv_bfloat16 *)x;
        err = cudaSuccess;
        if (x_dt != TB_BF16 || w->perm) {
            xr = (const __nv_bfloat16 *)workspace;
            err = x_dt == TB_F32
                      ? launch_x_rows((const float *)x, w->perm, n, K, (__nv_bfloat16 *)workspace, st)
                      : launch_x_rows((const __nv_bfloat16 *)x, w->perm, n, K, (__nv_bfloat16 *)workspace, st);
        }
#ifdef TB_SP24_WGMMA
        if (err == cudaSuccess && g_force_v3 == 1)
            err = y_dt == TB_F32 ? launch_wgmma(w->a, w->e, xr, n, R, K, bias, (float *)y, st)
                                 : launch_wgmma(w->a, w->e, xr, n, R, K, bias, (__nv_bfloat16 *)y, st);
        else if (err == cudaSuccess && g_force_v3 == 2)
            err = y_dt == TB_F32 ? launch_wgmma2<128>(w->a, w->e, xr, n, R, K, bias, (float *)y, st)
                                 : launch_wgmma2<128>(w->a, w->e, xr, n, R, K, bias, (__nv_bfloat16 *)y, st);
        else if (err == cudaSuccess && g_force_v3 == 3)
            err = y_dt == TB_F32 ? launch_wgmma2<256>(w->a, w->e, xr, n, R, K, bias, (float *)y, st)
                                 : launch_wgmma2<256>(w->a, w->e, xr, n, R, K, bias, (__nv_bfloat16 *)y, st);
        else
#endif
        if (err == cudaSuccess)
            err = y_dt == TB_F32 ? launch_tiled(tiled_wn(), w->a, w->e, xr, n, R, K, bias, (float *)y, st)
                                 : launch_tiled(tiled_wn(), w->a, w->e, xr, n, R, K, bias, (__nv_bfloat16 *)y, st);
    }
    return err == cudaSuccess ? TB_OK : sp24_cuda_fail(err, "launch");
}

extern "C" int tb_cuda_sp24_x_bf16(const tb_sp24_weight *w, const void *x, tb_dtype x_dt, int n, void *xr,
                                   void *stream)
{
    if (x_dt != TB_F32 && x_dt != TB_BF16) return tb_fail(TB_EUSAGE, "2:4 GEMM: x must be F32 or BF16");
    if (n <= 0) return TB_OK;
    cudaStream_t st = (cudaStream_t)stream;
    const int K = (int)w->cols;
    cudaError_t err = x_dt == TB_F32
                          ? launch_x_rows((const float *)x, w->perm, n, K, (__nv_bfloat16 *)xr, st)
                          : launch_x_rows((const __nv_bfloat16 *)x, w->perm, n, K, (__nv_bfloat16 *)xr, st);
    return err == cudaSuccess ? TB_OK : sp24_cuda_fail(err, "x to bf16 launch");
}

// The decision table: which implementation is fastest, per token count, from
// bench/gpu/sp24_bench.sh run 3 on an H200 (2026-12-02; every number in
// bench/gpu/results/sp24_bench-2026-12-02.txt, the table in BENCHMARKS.md
// "2:4 GEMM", the reading in bench/gpu/NOTES-sp24.md), y = x W^T, W 4096x4096,
// 14336x4096 and 4096x14336, time relative to cuBLAS dense bf16:
//
//   tokens      | skinny kernel (v2) | best other kernel here | cuSPARSELt 0.8.0 (searched) | choice
//   1, 16       | 1.49-2.54x         | 0.2-0.5x               | 0.58-0.87x (16-token plan)  | kernel
//   128         | -                  | 0.31-0.91x (v3)        | 0.66-0.93x                  | dense
//   1024-16384  | -                  | 0.77-0.84x (v3)        | 1.35-1.55x                  | cuSPARSELt
//
// Prefill (17+ tokens) is decided per shape, from the backend's own linear
// (f32 x and y, as the forward calls it) timed by bench/gpu/sp24_prefill.sh on
// an H200, 2026-12-02 14:43 (bench/gpu/results/sp24_prefill-2026-12-02-1443.txt;
// cuBLAS dense bf16 time / cuSPARSELt 0.8.0 time, per call):
//
//   W (rows x cols)          | 128   256   512   1024  2048 tokens
//   4096x4096  (q/o_proj)    | 0.76  0.83  0.91  1.20  1.21
//   1024x4096  (k/v_proj)    | 0.88  0.66  0.69  0.85  0.99
//   14336x4096 (gate/up)     | 0.83  1.17  1.29  1.10  1.13
//   4096x14336 (down_proj)   | 0.71  0.95  1.27  1.43  1.40
//
// Read as a rule by shape, not by name, so other models' shapes get the
// nearest measured behaviour:
// - fewer than CSLT_MIN_ROWS = 2048 output rows: dense at every count (the
//   1024-row k/v shape never won; 4096 rows did from 1024 tokens). Above 2048
//   tokens unmeasured for it: dense there too until measured.
// - a large weight (rows x cols >= CSLT_BIG = 2^25, 32 M entries: the two MLP
//   shapes, 58.7 M): from 256 tokens when cols <= rows (gate/up: 1.17x at
//   256, 0.83x at 128), from 512 when cols > rows (down_proj: 0.95x at 256,
//   1.27x at 512; its x rows are 3.5x longer, so the operand conversion and
//   the K loop cost more per token);
// - otherwise (q/o's 16.8 M entries): from 1024 tokens (0.91x at 512).
// Between measured counts: dense up to the first count where cuSPARSELt won.
// The sp24_bench.sh run above agrees at 1024+ on the three shapes it had.
// TB_SP24_PREFILL=cusparselt (the CUDA backend) overrides this for tests
// and for re-measuring the table.
static const int64_t CSLT_MIN_ROWS = 2048;
static const int64_t CSLT_BIG = (int64_t)1 << 25;

extern "C" int tb_cuda_sp24_cslt_min_tokens(int64_t rows, int64_t cols)
{
    if (rows < CSLT_MIN_ROWS) return 0;
    if (rows * cols >= CSLT_BIG) return cols > rows ? 512 : 256;
    return 1024;
}

extern "C" tb_sp24_path tb_cuda_sp24_choose(int64_t rows, int64_t cols, int n, int have_cslt)
{
    if (n <= SKINNY_MAX_N) return TB_SP24_PATH_KERNEL;
    const int min_n = tb_cuda_sp24_cslt_min_tokens(rows, cols);
    if (have_cslt && min_n > 0 && n >= min_n) return TB_SP24_PATH_CSLT;
    return TB_SP24_PATH_DENSE;
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
static bool g_have_v3;  // version 3 compiled in and the device is sm_90
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
                        for (int kv = 0; kv < 10; kv++) {
                            // AUTO; TILED v1, v1b; SKINNY {1 pair, 8 warps, fragments}, {2, 8, fragments},
                            // {1, 16, x in place}, {2, 16, x in place}; TILED v3, v3b, v3c (wgmma)
                            static const int kk[10] = {0, 1, 1, 2, 2, 2, 2, 1, 1, 1},
                                             wn[10] = {0, 4, 2, 0, 0, 0, 0, 0, 0, 0},
                                             pr[10] = {0, 0, 0, 1, 2, 1, 2, 0, 0, 0},
                                             wp[10] = {0, 0, 0, 8, 8, 16, 16, 0, 0, 0},
                                             fr[10] = {0, 0, 0, 1, 1, -1, -1, 0, 0, 0};
                            int kern = kk[kv];
                            if (kern == TB_SP24_SKINNY && n > 16) continue;
                            if (kv >= 7 && !g_have_v3) continue;
                            g_force_wn = wn[kv], g_force_pairs = pr[kv], g_force_warps = wp[kv], g_force_frag = fr[kv];
#ifdef TB_SP24_WGMMA
                            g_force_v3 = kv >= 7 ? kv - 6 : 0;
#endif
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
                            wsb = std::max(wsb, (size_t)n * K * 2); // forced variants may need either
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
                            fprintf(g_full, "check R=%d K=%d n=%d perm=%d x=%s y=%s variant=%d bias=%d rel=%.3e unwritten=%ld %s\n",
                                    R, K, n, use_perm, xdt ? "bf16" : "f32", ydt ? "bf16" : "f32", kv, with_bias, rel,
                                    bad, ok ? "ok" : "FAIL");
                            if (!ok)
                                printf("check FAIL: R=%d K=%d n=%d perm=%d x=%s y=%s variant=%d rel=%.3e unwritten=%ld rc=%d %s\n",
                                       R, K, n, use_perm, xdt ? "bf16" : "f32", ydt ? "bf16" : "f32", kv, rel, bad, rc,
                                       rc ? tb_errmsg() : "");
                            cudaFree(dx), cudaFree(dy);
                            if (ws) cudaFree(ws);
                        }
            cudaFree(dbias);
            tb_cuda_sp24_release(&dw);
        }
    }
    g_force_wn = g_force_pairs = g_force_warps = g_force_frag = 0;
#ifdef TB_SP24_WGMMA
    g_force_v3 = 0;
#endif
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
// y^T (R x n, col-major = y [n, R] row-major) = W (R x K row-major, 2:4 along K) x^T (K x n col-major).
// The weight is compressed once per copy (cusparseLtSpMMACompress2 depends only on
// the sparse descriptor); each token count gets its own plan.
struct CsltW {
    cusparseLtHandle_t h;
    cusparseLtMatDescriptor_t ma;
    bool have = false, have_ma = false;
    std::vector<void *> comp;
    bool init(int64_t R, int64_t K, const std::vector<__nv_bfloat16 *> &dense, cudaStream_t st)
    {
        bool ok = true;
        CKL(cusparseLtInit(&h));
        if (!ok) return false;
        have = true;
        CKL(cusparseLtStructuredDescriptorInit(&h, &ma, R, K, K, 16, CUDA_R_16BF, CUSPARSE_ORDER_ROW,
                                               CUSPARSELT_SPARSITY_50_PERCENT));
        if (!ok) return false;
        have_ma = true;
        size_t csz = 0, cbuf = 0;
        CKL(cusparseLtSpMMACompressedSize2(&h, &ma, &csz, &cbuf));
        if (!ok) return false;
        void *buf = NULL;
        if (cbuf) CK(cudaMalloc(&buf, cbuf));
        for (auto *d : dense) {
            void *c;
            CK(cudaMalloc(&c, csz));
            CKL(cusparseLtSpMMACompress2(&h, &ma, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, d, c, buf, st));
            comp.push_back(c);
        }
        CK(cudaStreamSynchronize(st));
        if (buf) cudaFree(buf);
        return ok;
    }
    void done()
    {
        for (auto *c : comp) cudaFree(c);
        comp.clear();
        if (have_ma) cusparseLtMatDescriptorDestroy(&ma);
        if (have) cusparseLtDestroy(&h);
        have = have_ma = false;
    }
};
struct CsltN {
    CsltW *w = NULL;
    cusparseLtMatDescriptor_t mb, mc;
    cusparseLtMatmulDescriptor_t mm;
    cusparseLtMatmulAlgSelection_t sel;
    cusparseLtMatmulPlan_t plan;
    bool have_desc = false, have_plan = false;
    void *ws = NULL;
    bool fit_workspace()
    {
        bool ok = true;
        size_t wsz = 0;
        CKL(cusparseLtMatmulGetWorkspace(&w->h, &plan, &wsz));
        if (ws) cudaFree(ws), ws = NULL;
        if (wsz) CK(cudaMalloc(&ws, wsz));
        return ok;
    }
    bool init(CsltW &cw, int64_t R, int64_t K, int n)
    {
        bool ok = true;
        w = &cw;
        CKL(cusparseLtDenseDescriptorInit(&w->h, &mb, K, n, K, 16, CUDA_R_16BF, CUSPARSE_ORDER_COL));
        CKL(cusparseLtDenseDescriptorInit(&w->h, &mc, R, n, R, 16, CUDA_R_16BF, CUSPARSE_ORDER_COL));
        if (!ok) return false;
        have_desc = true;
        CKL(cusparseLtMatmulDescriptorInit(&w->h, &mm, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                           CUSPARSE_OPERATION_NON_TRANSPOSE, &w->ma, &mb, &mc, &mc,
                                           CUSPARSE_COMPUTE_32F));
        CKL(cusparseLtMatmulAlgSelectionInit(&w->h, &sel, &mm, CUSPARSELT_MATMUL_ALG_DEFAULT));
        CKL(cusparseLtMatmulPlanInit(&w->h, &plan, &mm, &sel));
        if (!ok) return false;
        have_plan = true;
        return fit_workspace();
    }
    bool search(__nv_bfloat16 *x, __nv_bfloat16 *y, cudaStream_t st)
    {
        bool ok = true;
        float one = 1, zero = 0;
        CKL(cusparseLtMatmulSearch(&w->h, &plan, &one, w->comp[0], x, &zero, y, y, ws, &st, 1));
        return ok && fit_workspace(); // the chosen algorithm may need more
    }
    bool run(int it, __nv_bfloat16 *x, __nv_bfloat16 *y, cudaStream_t st)
    {
        bool ok = true;
        float one = 1, zero = 0;
        CKL(cusparseLtMatmul(&w->h, &plan, &one, w->comp[it % w->comp.size()], x, &zero, y, y, ws, &st, 1));
        return ok;
    }
    void done()
    {
        if (ws) cudaFree(ws), ws = NULL;
        if (have_plan) {
            cusparseLtMatmulPlanDestroy(&plan);
            cusparseLtMatmulAlgSelectionDestroy(&sel);
        }
        if (have_desc) {
            cusparseLtMatDescriptorDestroy(&mb);
            cusparseLtMatDescriptorDestroy(&mc);
        }
        have_desc = have_plan = false;
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
    printf("\n%-12s %6s | %7s %7s | %8s %8s %8s %8s %8s %-3s %8s  | %6s %6s\n", "W (RxK)", "tokens", "floorD",
           "flr2:4", "cuBLAS", "v1", "v1b", "v3best", "v2", "", "cuSPLt", "ours/D", "cslt/D");
    char table[64][240];
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
#ifdef TB_HAVE_CUSPARSELT
        CsltW cw;
        {
            std::vector<__nv_bfloat16 *> src;
            for (int c = 0; c < nc_sp; c++) src.push_back(dW[c % nc_d]); // compressed copies are distinct buffers
            if (!cw.init(R, K, src, st)) printf("cuSPARSELt: cannot compress %lldx%lld\n", (long long)R, (long long)K);
        }
#endif
        for (int n : toks) {
            __nv_bfloat16 *dx, *dy, *dref;
            uint4 *dxb;
            const int nal = std::max(n, 16); // room for cuSPARSELt's padded tokens
            CK(cudaMalloc(&dx, (size_t)nal * K * 2));
            CK(cudaMalloc(&dy, (size_t)nal * R * 2));
            CK(cudaMalloc(&dref, (size_t)n * R * 2));
            CK(cudaMalloc(&dxb, (size_t)(K / 32) * 2 * 512));
            fill_bf16<<<1024, 256, 0, st>>>(dx, (size_t)nal * K, (uint32_t)(n * 7919 + R));
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
            // version 1 / 1b: tiled
            double t_v1[2];
            for (int vi = 0; vi < 2; vi++) {
                int wn = vi ? 2 : 4;
                auto v1_fn = [&](int it) {
                    CK(launch_tiled(wn, dA[it % nc_sp], dE[it % nc_sp], dx, n, (int)R, (int)K, (const float *)NULL,
                                    dy, st));
                };
                check(vi ? "v1b_tiled_64x64" : "v1_tiled_64x32", v1_fn, true);
                t_v1[vi] = time_us(v1_fn, st);
            }
            double t_v3 = NAN, t_v3b = NAN, t_v3c = NAN;
#ifdef TB_SP24_WGMMA
            if (g_have_v3) {
                auto v3_fn = [&](int it) {
                    CK(launch_wgmma(dA[it % nc_sp], dE[it % nc_sp], dx, n, (int)R, (int)K, (const float *)NULL, dy, st));
                };
                check("v3_wgmma", v3_fn, true);
                t_v3 = time_us(v3_fn, st);
                auto v3b_fn = [&](int it) {
                    CK(launch_wgmma2<128>(dA[it % nc_sp], dE[it % nc_sp], dx, n, (int)R, (int)K, (const float *)NULL, dy, st));
                };
                check("v3b_wgmma_overlap_n128", v3b_fn, true);
                t_v3b = time_us(v3b_fn, st);
                auto v3c_fn = [&](int it) {
                    CK(launch_wgmma2<256>(dA[it % nc_sp], dE[it % nc_sp], dx, n, (int)R, (int)K, (const float *)NULL, dy, st));
                };
                check("v3c_wgmma_overlap_n256", v3c_fn, true);
                t_v3c = time_us(v3c_fn, st);
            }
#endif
            // version 2: skinny variants {pairs per warp} x {8 warps + fragments, 8 warps in place, 16 in place}
            // v2g: the entry's choice for this shape with programmatic dependent launch
            static const char *v2names[7] = {"v2a_p1_w8_frag", "v2b_p2_w8_frag", "v2c_p1_w8_direct",
                                             "v2d_p2_w8_direct", "v2e_p1_w16_direct", "v2f_p2_w16_direct",
                                             "v2g_entry_pdl"};
            double t_v2[7];
            int v2best = -1;
            for (int vi = 0; vi < 7; vi++) {
                t_v2[vi] = NAN;
                if (n > 16) continue;
                int pw = 1 + (vi & 1), warps = vi >= 4 ? 16 : 8, frag = vi < 2;
                bool pdl = false;
                if (vi == 6)
                    pw = skinny_pairs(R, n), warps = skinny_warps(R, n), frag = skinny_frag(n), pdl = pdl_supported();
                auto v2_fn = [&](int it) {
                    if (frag) CK(launch_x_frag(dx, (const int32_t *)NULL, n, (int)K, dxb, st));
                    CK(launch_skinny(pdl, pw, warps, frag ? (int)skinny::X_FRAG : (int)skinny::X_BF16,
                                     dA[it % nc_sp], dE[it % nc_sp], frag ? (const void *)dxb : (const void *)dx, n,
                                     (int)R, (int)K, (const float *)NULL, dy, st));
                };
                check(v2names[vi], v2_fn, true);
                t_v2[vi] = time_us(v2_fn, st);
                if (v2best < 0 || t_v2[vi] < t_v2[v2best]) v2best = vi;
            }
            double t_cs = NAN, t_cs_def = NAN;
            bool cs_pad = false;
#ifdef TB_HAVE_CUSPARSELT
            if (cw.have_ma) {
                // cuSPARSELt takes no fewer than 16 columns here: pad the tokens (what a caller would do)
                const int ncs = std::max(n, 16);
                cs_pad = ncs != n;
                CsltN cs;
                if (cs.init(cw, R, K, ncs)) {
                    auto cs_fn = [&](int it) {
                        if (!cs.run(it, dx, dy, st)) exit(1);
                    };
                    check("cusparselt_default_alg", cs_fn, true);
                    t_cs_def = time_us(cs_fn, st);
                    if (cs.search(dx, dy, st)) {
                        check("cusparselt_searched", cs_fn, true);
                        t_cs = time_us(cs_fn, st);
                    }
                } else {
                    printf("cuSPARSELt: no plan for R=%lld K=%lld n=%d\n", (long long)R, (long long)K, ncs);
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
            double best = std::min(t_v1[0], t_v1[1]);
            if (!isnan(t_v3)) best = std::min(best, t_v3);
            if (!isnan(t_v3b)) best = std::min(best, t_v3b);
            if (!isnan(t_v3c)) best = std::min(best, t_v3c);
            const double t_v3best = std::min(t_v3, std::min(isnan(t_v3b) ? INFINITY : t_v3b, isnan(t_v3c) ? INFINITY : t_v3c));
            if (v2best >= 0) best = std::min(best, t_v2[v2best]);
            fprintf(g_full,
                    "time R=%lld K=%lld n=%d floor_dense_us=%.2f floor_sp24_us=%.2f cublas_us=%.2f v1_us=%.2f "
                    "v1b_us=%.2f v3_us=%.2f v3b_us=%.2f v3c_us=%.2f v2a_us=%.2f v2b_us=%.2f v2c_us=%.2f v2d_us=%.2f v2e_us=%.2f v2f_us=%.2f v2g_us=%.2f "
                    "cusparselt_us=%.2f cusparselt_default_alg_us=%.2f%s cublas_TFLOPs=%.1f v1_TFLOPs=%.1f v1b_TFLOPs=%.1f v3_TFLOPs=%.1f "
                    "cusparselt_TFLOPs=%.1f best_sp24_GBps=%.0f cublas_GBps=%.0f\n",
                    (long long)R, (long long)K, n, floor_d, floor_s, t_cb, t_v1[0], t_v1[1], t_v3best, t_v3b, t_v3c, t_v2[0], t_v2[1],
                    t_v2[2], t_v2[3], t_v2[4], t_v2[5], t_v2[6], t_cs, t_cs_def, cs_pad ? " (16 tokens)" : "", flops / t_cb * 1e-6,
                    flops / t_v1[0] * 1e-6, flops / t_v1[1] * 1e-6, flops / t_v3 * 1e-6, flops / t_cs * 1e-6, bytes_s / best * 1e-3,
                    bytes_d / t_cb * 1e-3);
            fflush(g_full);
            snprintf(table[nrow++], sizeof table[0],
                     "%5lldx%-6lld %6d | %7.1f %7.1f | %8.1f %8.1f %8.1f %8.1f %8.1f %-3s %8.1f%s | %5.2fx %5.2fx",
                     (long long)R, (long long)K, n, floor_d, floor_s, t_cb, t_v1[0], t_v1[1], t_v3best,
                     v2best >= 0 ? t_v2[v2best] : NAN, v2best >= 0 ? v2names[v2best] + 2 : "", t_cs,
                     cs_pad ? "p" : " ", t_cb / best, t_cb / t_cs);
            printf("%s\n", table[nrow - 1]);
            fflush(stdout);
            cudaFree(dx), cudaFree(dy), cudaFree(dref), cudaFree(dxb), cudaFree(dbad), cudaFree(dnum);
        }
        for (auto p : dA) cudaFree(p);
        for (auto p : dE) cudaFree(p);
        for (auto p : dW) cudaFree(p);
#ifdef TB_HAVE_CUSPARSELT
        cw.done();
#endif
    }
    printf("\nGEMM y = x W^T, bf16 in/out, f32 accumulate; times in us (median); floorD/floor24 = max(FLOP/cuBLAS "
           "rate [x2 for 2:4], bytes/copy BW); v2 = fastest skinny variant (named); ours/D = cuBLAS / fastest of ours; "
           "cuSPLt p = run with 16 tokens (its minimum here)\n");
    printf("%-12s %6s | %7s %7s | %8s %8s %8s %8s %8s %-3s %8s  | %6s %6s\n", "W (RxK)", "tokens", "floorD",
           "flr2:4", "cuBLAS", "v1", "v1b", "v3best", "v2", "", "cuSPLt", "ours/D", "cslt/D");
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
#ifdef TB_SP24_WGMMA
    g_have_v3 = p.major == 9 && !getenv("SP24_NO_V3");
#endif
    printf("version 3 (sparse wgmma): %s\n", g_have_v3 ? "on" : "off");
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
