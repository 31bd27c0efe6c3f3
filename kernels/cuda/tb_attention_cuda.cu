// tb_attention_cuda.cu - fused causal attention (GQA, sliding window) and its
// backward, f32, for the CUDA backend. CPU reference: tb_attention in
// kernels/cpu/tb_ops.c (forward, keeps the probabilities) and the attention
// backward of kernels/cpu/tb_backward.c; parity in tests/cuda/test_backend.c.
//
// Forward (flash-style): one block per (tile of B queries, head). Key tiles
// stream through shared memory; each thread keeps R query rows' running max,
// sum and R x HD/16 output values in registers and rescales them as the max
// grows (online softmax), so no T x T score matrix exists anywhere. What the
// backward keeps is the row log-sum-exp lse = m + log(l), [n_heads, n].
//
// Backward (flash-style, recompute): P = exp(scale q.k - lse) is recomputed
// tile by tile; D_i = sum_d dO_i O_i replaces sum_j P_ij dP_ij. Two kernels so
// that every output element has one writer and the sums have a fixed order
// (no atomics, reproducible, racecheck-clean):
//   dq:  one block per (query tile, head), loops over the key tiles it sees;
//   dkv: one block per (key tile, KV head), loops over the group's heads and
//        the query tiles that see its keys, so dK/dV of a GQA group are summed
//        in registers.
// Thread layout in all three: 256 threads = 16 x 16 (ty, tx); a thread owns
// tile rows ty + 16 i (i < R) and tile columns tx + 16 j, so a row's values
// lie in 16 lanes of one warp (shuffle reductions) and shared-memory reads are
// conflict-free (rows padded to hd + 1 floats).
//
// Decode as a graph (tb_forward.c): both forward kernels take pos_dev, the
// queries' first position in device memory (NULL: the pos0 argument), so one
// captured decode step replays at every position; grids depend on n only.
//
// Variants: HD (largest head_dim served: 64, 128, 256) and R (B = 16 R = 64 or
// 32 rows per tile); R = 2 where the device's shared memory is short.
//
// bf16 precision, inference (saved == NULL), head_dim 64 or 128, sm_80+: the
// same online softmax on bf16 tensor cores (mma.sync m16n8k16, f32 accumulate),
// in numbered versions (llm.c dev/cuda style; TB_ATTN_FWD=1|2|3 picks one,
// else the default rule in fwd_version below):
//   version 1, attn_fwd_mma: one block of 4 warps per (64 queries, head); K/V
//     read from f32 global with scalar loads and converted every tile, V
//     transposed into shared memory by scalar stores, no prefetch, so each GQA
//     group's K/V are loaded and converted once per head. H200, 32/8 heads x
//     128, T 2048 causal: 0.54 ms (63 TFLOP/s) against the f32 kernel's 2.3 ms
//     (15 TFLOP/s); backward (f32) 8.9 ms (9.6 TFLOP/s).
//   version 2, attn_fwd_mma2: one block of 8 warps per (128 rows, KV head),
//     where a row is a (query, head of the group) pair, query-major, so every
//     converted K/V tile serves all heads of its group (32 queries x 4 heads
//     at 32/8); float4 loads of the next K/V tile into registers while the
//     current one computes, converted to bf16 once into shared memory; B
//     fragments by ldmatrix (.trans for V, no transpose); exp2 with the scale
//     folded into one fma; no mask arithmetic on tiles wholly inside every
//     row's causal/window range; warps skip tiles none of their rows see; the
//     latest (heaviest) query tiles start first. Needs 16-byte aligned q, k, v,
//     out (else version 1). The default at every token count: H200,
//     bash bench/gpu/attn_bench.sh 2026-12-03, 32/8 x 128 causal: n 512
//     0.033 ms (2.06x version 1), n 2048 0.205 ms (167 TFLOP/s, 3.03x), n 4096
//     0.706 ms (195 TFLOP/s, 2.98x), window 1024 at 2048 2.52x; decode n 1 at
//     position 2047 0.054 ms (3.58x), n 16 at 2032 0.065 ms (3.02x).
//   version 3, attn_fwd_mma2<HD, true>: version 2 with K and V converted to
//     bf16 first, in one pass over rows [0, pos0 + n) into the backend's work
//     space (half the bytes each block then reads from L2), and copied by
//     cp.async into two stages of shared memory (the next tile in flight
//     without registers). Needs pos0 on the host (a decode graph's pos_dev
//     gets version 2). Opt-in (TB_ATTN_FWD=3): measured 1-5% faster than
//     version 2 at 2048-4096 tokens and 5-11% slower at 512 and in decode,
//     not enough to carry a second kernel in the default path.
//   bench and check (device): bash bench/gpu/attn_bench.sh (builds
//     bench/gpu/attn_bench.cu, which includes this file with TB_ATTN_BENCH:
//     f64 CPU reference, every version checked, timed, compute-sanitizer).
#ifndef TB_ATTN_BENCH
#include "tb_cuda_backend.h"
#include "tb_nvtx.h"
#endif

#include <algorithm>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float row_max16(float x)
{
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

__device__ __forceinline__ float row_sum16(float x)
{
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// rows r0..r0+B-1 of a [rows, ld_g] matrix, columns col0..col0+hd-1, into smem [B][hd+1]; zeros past `rows`
template <int B>
__device__ __forceinline__ void load_tile(float *s, const float *g, int r0, int rows, size_t ld_g, int col0, int hd)
{
    const int ld = hd + 1;
    for (int idx = threadIdx.x; idx < B * hd; idx += kThreads) {
        int r = idx / hd, c = idx - r * hd;
        s[r * ld + c] = r0 + r < rows ? g[(size_t)(r0 + r) * ld_g + col0 + c] : 0.0f;
    }
}

// acc[i][j] = sum_d A[ty+16i][d] * Bm[tx+16j][d]
template <int R>
__device__ __forceinline__ void tile_dot(float (&acc)[R][R], const float *A, const float *Bm, int hd, int tx, int ty)
{
    const int ld = hd + 1;
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int j = 0; j < R; j++) acc[i][j] = 0.0f;
    for (int d = 0; d < hd; d++) {
        float a[R], bv[R];
#pragma unroll
        for (int i = 0; i < R; i++) a[i] = A[(ty + 16 * i) * ld + d];
#pragma unroll
        for (int j = 0; j < R; j++) bv[j] = Bm[(tx + 16 * j) * ld + d];
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int j = 0; j < R; j++) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
    }
}

// acc[i][c] += sum_kk P[ty+16i][kk] * M[kk][tx+16c], P [B][B+1], M [B][hd+1]
template <int HD, int R>
__device__ __forceinline__ void tile_pv(float (&acc)[R][HD / 16], const float *P, const float *M, int hd, int tx,
                                        int ty)
{
    constexpr int B = 16 * R, C = HD / 16;
    const int ld = hd + 1;
#pragma unroll 4
    for (int kk = 0; kk < B; kk++) {
        float p[R];
#pragma unroll
        for (int i = 0; i < R; i++) p[i] = P[(ty + 16 * i) * (B + 1) + kk];
#pragma unroll
        for (int c = 0; c < C; c++) {
            int col = tx + 16 * c;
            if (col < hd) {
                float m = M[kk * ld + col];
#pragma unroll
                for (int i = 0; i < R; i++) acc[i][c] = fmaf(p[i], m, acc[i][c]);
            }
        }
    }
}

template <int HD, int R>
__global__ void __launch_bounds__(kThreads) attn_fwd(const float *__restrict__ q, const float *__restrict__ k,
                                                     const float *__restrict__ v, float *__restrict__ out,
                                                     float *__restrict__ lse, int n, int pos0,
                                                     const int32_t *__restrict__ pos_dev, int H, int KVH, int hd,
                                                     int window, float scale)
{
    if (pos_dev) pos0 = *pos_dev; // a decode step replayed as a graph: the position is data
    constexpr int B = 16 * R, C = HD / 16;
    extern __shared__ float sm[];
    const int ld = hd + 1;
    float *Qs = sm, *KVs = Qs + B * ld, *Ps = KVs + B * ld;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int h = blockIdx.y, g = h / (H / KVH), q0 = blockIdx.x * B;
    const size_t qd = (size_t)H * hd, kd = (size_t)KVH * hd;
    const int total = pos0 + n;

    load_tile<B>(Qs, q, q0, n, qd, h * hd, hd);

    float m[R], l[R], o[R][C];
#pragma unroll
    for (int i = 0; i < R; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < C; c++) o[i][c] = 0.0f;
    }
    const int p_first = pos0 + q0, p_last = pos0 + min(q0 + B, n) - 1;
    const int klo = window > 0 ? max(0, p_first - window + 1) : 0;
    for (int k0 = (klo / B) * B; k0 <= p_last; k0 += B) {
        __syncthreads(); // the previous tile's P V is done with KVs and Ps
        load_tile<B>(KVs, k, k0, total, kd, g * hd, hd);
        __syncthreads();
        float s[R][R];
        tile_dot<R>(s, Qs, KVs, hd, tx, ty);
#pragma unroll
        for (int i = 0; i < R; i++) {
            const int p = pos0 + q0 + ty + 16 * i;
            const int lo = window > 0 ? max(0, p - window + 1) : 0;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < R; j++) {
                const int key = k0 + tx + 16 * j;
                s[i][j] = key >= lo && key <= p ? s[i][j] * scale : -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = row_max16(mx);
            const float mnew = fmaxf(m[i], mx);
            const float alpha = mnew == -INFINITY ? 1.0f : expf(m[i] - mnew);
            float rs = 0.0f;
#pragma unroll
            for (int j = 0; j < R; j++) {
                const float pj = s[i][j] == -INFINITY ? 0.0f : expf(s[i][j] - mnew);
                Ps[(ty + 16 * i) * (B + 1) + tx + 16 * j] = pj;
                rs += pj;
            }
            rs = row_sum16(rs);
            l[i] = l[i] * alpha + rs;
            m[i] = mnew;
#pragma unroll
            for (int c = 0; c < C; c++) o[i][c] *= alpha;
        }
        __syncthreads(); // K no longer read; P complete
        load_tile<B>(KVs, v, k0, total, kd, g * hd, hd);
        __syncthreads();
        tile_pv<HD, R>(o, Ps, KVs, hd, tx, ty);
    }
#pragma unroll
    for (int i = 0; i < R; i++) {
        const int row = q0 + ty + 16 * i;
        if (row >= n) continue;
        const float inv = 1.0f / l[i];
#pragma unroll
        for (int c = 0; c < C; c++) {
            const int col = tx + 16 * c;
            if (col < hd) out[(size_t)row * qd + h * hd + col] = o[i][c] * inv;
        }
        if (lse && tx == 0) lse[(size_t)h * n + row] = m[i] + logf(l[i]);
    }
}

// D[h, i] = sum_d dO[i, h, d] O[i, h, d]: one warp per (i, h)
__global__ void attn_bwd_rowdot(const float *__restrict__ out, const float *__restrict__ d_out, float *__restrict__ D,
                                int n, int H, int hd)
{
    const int warp = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (warp >= n * H) return;
    const int i = warp / H, h = warp - i * H;
    const size_t base = (size_t)i * H * hd + (size_t)h * hd;
    float s = 0.0f;
    for (int d = lane; d < hd; d += 32) s = fmaf(out[base + d], d_out[base + d], s);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) D[(size_t)h * n + i] = s;
}

template <int HD, int R>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq(const float *__restrict__ q, const float *__restrict__ k,
                                                        const float *__restrict__ v, const float *__restrict__ d_out,
                                                        const float *__restrict__ lse, const float *__restrict__ D,
                                                        float *__restrict__ d_q, int n, int H, int KVH, int hd,
                                                        int window, float scale)
{
    constexpr int B = 16 * R, C = HD / 16;
    extern __shared__ float sm[];
    const int ld = hd + 1;
    float *Qs = sm, *dOs = Qs + B * ld, *KVs = dOs + B * ld, *dSs = KVs + B * ld;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int h = blockIdx.y, g = h / (H / KVH), q0 = blockIdx.x * B;
    const size_t qd = (size_t)H * hd, kd = (size_t)KVH * hd;

    load_tile<B>(Qs, q, q0, n, qd, h * hd, hd);
    load_tile<B>(dOs, d_out, q0, n, qd, h * hd, hd);
    float rl[R], rD[R], acc[R][C];
#pragma unroll
    for (int i = 0; i < R; i++) {
        const int row = q0 + ty + 16 * i;
        rl[i] = row < n ? lse[(size_t)h * n + row] : 0.0f;
        rD[i] = row < n ? D[(size_t)h * n + row] : 0.0f;
#pragma unroll
        for (int c = 0; c < C; c++) acc[i][c] = 0.0f;
    }
    const int q_last = min(q0 + B, n) - 1;
    const int klo = window > 0 ? max(0, q0 - window + 1) : 0;
    for (int k0 = (klo / B) * B; k0 <= q_last; k0 += B) {
        __syncthreads(); // previous dS K done with KVs and dSs
        load_tile<B>(KVs, v, k0, n, kd, g * hd, hd);
        __syncthreads();
        float dp[R][R], s[R][R];
        tile_dot<R>(dp, dOs, KVs, hd, tx, ty);
        __syncthreads();
        load_tile<B>(KVs, k, k0, n, kd, g * hd, hd);
        __syncthreads();
        tile_dot<R>(s, Qs, KVs, hd, tx, ty);
#pragma unroll
        for (int i = 0; i < R; i++) {
            const int p = q0 + ty + 16 * i;
            const int lo = window > 0 ? max(0, p - window + 1) : 0;
#pragma unroll
            for (int j = 0; j < R; j++) {
                const int key = k0 + tx + 16 * j;
                const float P = key >= lo && key <= p && p < n ? expf(s[i][j] * scale - rl[i]) : 0.0f;
                dSs[(ty + 16 * i) * (B + 1) + tx + 16 * j] = P * (dp[i][j] - rD[i]) * scale;
            }
        }
        __syncthreads();
        tile_pv<HD, R>(acc, dSs, KVs, hd, tx, ty);
    }
#pragma unroll
    for (int i = 0; i < R; i++) {
        const int row = q0 + ty + 16 * i;
        if (row >= n) continue;
#pragma unroll
        for (int c = 0; c < C; c++) {
            const int col = tx + 16 * c;
            if (col < hd) d_q[(size_t)row * qd + h * hd + col] = acc[i][c];
        }
    }
}

template <int HD, int R>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkv(const float *__restrict__ q, const float *__restrict__ k,
                                                         const float *__restrict__ v, const float *__restrict__ d_out,
                                                         const float *__restrict__ lse, const float *__restrict__ D,
                                                         float *__restrict__ d_k, float *__restrict__ d_v, int n, int H,
                                                         int KVH, int hd, int window, float scale)
{
    constexpr int B = 16 * R, C = HD / 16;
    extern __shared__ float sm[];
    const int ld = hd + 1;
    float *Ks = sm, *Vs = Ks + B * ld, *Qs = Vs + B * ld, *dOs = Qs + B * ld, *Ps = dOs + B * ld;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int g = blockIdx.y, group = H / KVH, k0 = blockIdx.x * B;
    const size_t qd = (size_t)H * hd, kd = (size_t)KVH * hd;

    load_tile<B>(Ks, k, k0, n, kd, g * hd, hd);
    load_tile<B>(Vs, v, k0, n, kd, g * hd, hd);
    float dk[R][C], dv[R][C];
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int c = 0; c < C; c++) dk[i][c] = dv[i][c] = 0.0f;
    const int k_last = min(k0 + B, n) - 1;
    // queries that see a key of this tile: key <= query < key + window
    const int q_hi = window > 0 ? min(n - 1, k_last + window - 1) : n - 1;
    for (int hi = 0; hi < group; hi++) {
        const int h = g * group + hi;
        for (int q0 = (k0 / B) * B; q0 <= q_hi; q0 += B) {
            __syncthreads(); // previous products done with Qs, dOs, Ps
            load_tile<B>(Qs, q, q0, n, qd, h * hd, hd);
            load_tile<B>(dOs, d_out, q0, n, qd, h * hd, hd);
            float cl[R], cD[R];
#pragma unroll
            for (int j = 0; j < R; j++) {
                const int col = q0 + tx + 16 * j;
                cl[j] = col < n ? lse[(size_t)h * n + col] : 0.0f;
                cD[j] = col < n ? D[(size_t)h * n + col] : 0.0f;
            }
            __syncthreads();
            float s[R][R], dp[R][R];
            tile_dot<R>(s, Ks, Qs, hd, tx, ty);
            tile_dot<R>(dp, Vs, dOs, hd, tx, ty);
#pragma unroll
            for (int i = 0; i < R; i++) {
                const int key = k0 + ty + 16 * i;
#pragma unroll
                for (int j = 0; j < R; j++) {
                    const int p = q0 + tx + 16 * j;
                    const bool ok = p < n && key <= p && (window <= 0 || p - key < window);
                    const float P = ok ? expf(s[i][j] * scale - cl[j]) : 0.0f;
                    Ps[(ty + 16 * i) * (B + 1) + tx + 16 * j] = P;
                    dp[i][j] = P * (dp[i][j] - cD[j]) * scale; // dS^T, kept for the dK product
                }
            }
            __syncthreads();
            tile_pv<HD, R>(dv, Ps, dOs, hd, tx, ty); // dV += P^T dO
            __syncthreads();
#pragma unroll
            for (int i = 0; i < R; i++)
#pragma unroll
                for (int j = 0; j < R; j++) Ps[(ty + 16 * i) * (B + 1) + tx + 16 * j] = dp[i][j];
            __syncthreads();
            tile_pv<HD, R>(dk, Ps, Qs, hd, tx, ty); // dK += dS^T Q
        }
    }
#pragma unroll
    for (int i = 0; i < R; i++) {
        const int key = k0 + ty + 16 * i;
        if (key >= n) continue;
#pragma unroll
        for (int c = 0; c < C; c++) {
            const int col = tx + 16 * c;
            if (col < hd) {
                d_k[(size_t)key * kd + g * hd + col] = dk[i][c];
                d_v[(size_t)key * kd + g * hd + col] = dv[i][c];
            }
        }
    }
}

// ---- bf16 tensor-core forward, for inference in the bf16 precision: version 1 ----
// (saved == NULL: nothing recomputes from it, so the f32 backward never meets
// probabilities it did not compute). Four warps, 16 query rows each, mma.sync
// m16n8k16 with bf16 operands and f32 accumulation: S = Q K^T from Q
// fragments held in registers and K in shared memory; the online softmax in
// f32 on the accumulator fragments (a row's 64 scores lie in the 4 lanes of a
// quad); P re-packed in place as the A operand of O += P V, V stored
// transposed so that each B fragment is one 32-bit shared load.
constexpr int kMmaQ = 64, kMmaK = 64;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

template <int HD>
__global__ void __launch_bounds__(128) attn_fwd_mma(const float *__restrict__ q, const float *__restrict__ k,
                                                    const float *__restrict__ v, float *__restrict__ out, int n,
                                                    int pos0, const int32_t *__restrict__ pos_dev, int H, int KVH,
                                                    int window, float scale)
{
    if (pos_dev) pos0 = *pos_dev;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap(); // the host dispatches here only on sm_80 and newer
#else
    constexpr int LDK = HD + 8, LDV = kMmaK + 8, KS = HD / 16, ND = HD / 8;
    __shared__ __align__(16) __nv_bfloat16 Ks[kMmaK * LDK];
    __shared__ __align__(16) __nv_bfloat16 Vt[HD * LDV];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, kvh = h / (H / KVH), q0 = blockIdx.x * kMmaQ;
    const size_t qd = (size_t)H * HD, kd = (size_t)KVH * HD;
    const int total = pos0 + n;
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8; // this thread's two query rows
    const bool in0 = r0 < n, in1 = r1 < n;

    uint32_t qa[KS][4]; // A fragments of the warp's 16 x HD queries
    {
        const float *a = q + (size_t)(in0 ? r0 : 0) * qd + h * HD, *b = q + (size_t)(in1 ? r1 : 0) * qd + h * HD;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const int c = ks * 16 + t * 2;
            qa[ks][0] = in0 ? pack_bf16(a[c], a[c + 1]) : 0u;
            qa[ks][1] = in1 ? pack_bf16(b[c], b[c + 1]) : 0u;
            qa[ks][2] = in0 ? pack_bf16(a[c + 8], a[c + 9]) : 0u;
            qa[ks][3] = in1 ? pack_bf16(b[c + 8], b[c + 9]) : 0u;
        }
    }
    float o[ND][4];
#pragma unroll
    for (int d = 0; d < ND; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const int p0 = pos0 + r0, p1 = pos0 + r1;
    const int lo0 = window > 0 ? max(0, p0 - window + 1) : 0, lo1 = window > 0 ? max(0, p1 - window + 1) : 0;
    const int p_first = pos0 + q0, p_last = pos0 + min(q0 + kMmaQ, n) - 1;
    const int klo = window > 0 ? max(0, p_first - window + 1) : 0;

    for (int k0 = (klo / kMmaK) * kMmaK; k0 <= p_last; k0 += kMmaK) {
        __syncthreads(); // the previous tile's products are done with Ks and Vt
        for (int idx = threadIdx.x; idx < kMmaK * HD / 2; idx += 128) {
            const int r = idx / (HD / 2), c = (idx - r * (HD / 2)) * 2, key = k0 + r;
            float k0v = 0.0f, k1v = 0.0f, v0v = 0.0f, v1v = 0.0f;
            if (key < total) {
                const size_t at = (size_t)key * kd + kvh * HD + c;
                k0v = k[at];
                k1v = k[at + 1];
                v0v = v[at];
                v1v = v[at + 1];
            }
            *reinterpret_cast<uint32_t *>(&Ks[r * LDK + c]) = pack_bf16(k0v, k1v);
            Vt[c * LDV + r] = __float2bfloat16_rn(v0v);
            Vt[(c + 1) * LDV + r] = __float2bfloat16_rn(v1v);
        }
        __syncthreads();
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            const __nv_bfloat16 *kr = Ks + (j * 8 + g) * LDK + t * 2;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                const uint32_t b0 = *reinterpret_cast<const uint32_t *>(kr + ks * 16);
                const uint32_t b1 = *reinterpret_cast<const uint32_t *>(kr + ks * 16 + 8);
                asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                             "{%8,%9}, {%0,%1,%2,%3};\n"
                             : "+f"(s[j][0]), "+f"(s[j][1]), "+f"(s[j][2]), "+f"(s[j][3])
                             : "r"(qa[ks][0]), "r"(qa[ks][1]), "r"(qa[ks][2]), "r"(qa[ks][3]), "r"(b0), "r"(b1));
            }
        }
        // mask and scale; c0, c1 are row r0, c2, c3 row r1, columns j*8 + t*2 + {0, 1}
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = k0 + j * 8 + t * 2 + e;
                s[j][e] = key >= lo0 && key <= p0 ? s[j][e] * scale : -INFINITY;
                s[j][2 + e] = key >= lo1 && key <= p1 ? s[j][2 + e] * scale : -INFINITY;
                mx0 = fmaxf(mx0, s[j][e]);
                mx1 = fmaxf(mx1, s[j][2 + e]);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float al0 = mn0 == -INFINITY ? 1.0f : expf(m0 - mn0), al1 = mn1 == -INFINITY ? 1.0f : expf(m1 - mn1);
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[j][e] = s[j][e] == -INFINITY ? 0.0f : expf(s[j][e] - mn0);
                s[j][2 + e] = s[j][2 + e] == -INFINITY ? 0.0f : expf(s[j][2 + e] - mn1);
                rs0 += s[j][e];
                rs1 += s[j][2 + e];
            }
        rs0 += __shfl_xor_sync(0xffffffffu, rs0, 1);
        rs0 += __shfl_xor_sync(0xffffffffu, rs0, 2);
        rs1 += __shfl_xor_sync(0xffffffffu, rs1, 1);
        rs1 += __shfl_xor_sync(0xffffffffu, rs1, 2);
        l0 = l0 * al0 + rs0;
        l1 = l1 * al1 + rs1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int d = 0; d < ND; d++) {
            o[d][0] *= al0;
            o[d][1] *= al0;
            o[d][2] *= al1;
            o[d][3] *= al1;
        }
        // O += P V: keys 16 kk .. 16 kk + 15 are the accumulator tiles 2 kk and 2 kk + 1
#pragma unroll
        for (int kk = 0; kk < kMmaK / 16; kk++) {
            const uint32_t a0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]), a1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            const uint32_t a2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            const uint32_t a3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int d = 0; d < ND; d++) {
                const __nv_bfloat16 *vr = Vt + (d * 8 + g) * LDV + kk * 16 + t * 2;
                const uint32_t b0 = *reinterpret_cast<const uint32_t *>(vr);
                const uint32_t b1 = *reinterpret_cast<const uint32_t *>(vr + 8);
                asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                             "{%8,%9}, {%0,%1,%2,%3};\n"
                             : "+f"(o[d][0]), "+f"(o[d][1]), "+f"(o[d][2]), "+f"(o[d][3])
                             : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
            }
        }
    }
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
#pragma unroll
    for (int d = 0; d < ND; d++) {
        const int col = h * HD + d * 8 + t * 2;
        if (in0) {
            out[(size_t)r0 * qd + col] = o[d][0] * i0;
            out[(size_t)r0 * qd + col + 1] = o[d][1] * i0;
        }
        if (in1) {
            out[(size_t)r1 * qd + col] = o[d][2] * i1;
            out[(size_t)r1 * qd + col + 1] = o[d][3] * i1;
        }
    }
#endif
}

// ---- version 2: a block per (128 rows, KV head), rows = (query, group head) pairs ----
// Row r of a KV head's problem is query r / G, head kvh * G + r % G (G = H /
// KVH), so the group's heads of one query are neighbours and a block's 128
// rows span 128 / G queries (32 at 32/8; 128 for MHA): each K/V tile is loaded
// and converted once for the whole group. Warp w owns rows 16 w .. 16 w + 15;
// a thread's rows are 16 w + g and 16 w + g + 8 (g = lane / 4), as in the mma
// accumulator layout. Key tiles of 64: thread i loads float4s i, i + 256, ...
// of the next K and V tiles into registers before the current tile's
// products, so the global latency hides behind the tensor cores; the next
// iteration converts them into shared memory (bf16, rows padded by 8 so that
// ldmatrix's 8 row addresses fall in distinct banks). Q waits in shared memory
// too (ptxas, sm_90: 250 registers and no spills so; spills with Q's
// fragments held in registers beside the prefetch).
constexpr int kV2Rows = 128, kV2Keys = 64, kV2Threads = 256;
// Qs [128][LD], then Ks, Vs [64][LD] (version 2) or two stages of them (version 3); bytes
constexpr int v2_smem_bytes(int hd, bool kvb)
{
    return (kV2Rows + (kvb ? 4 : 2) * kV2Keys) * (hd + 8) * 2; // 69632 (104448) at 128
}

// cp.async of 16 bytes global -> shared; src_bytes 0 writes zeros and reads nothing
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

// version 3's pre-pass: K and V rows [0, total) to bf16, K then V: out [2][total * kd]
__global__ void kv_to_bf16(const float4 *__restrict__ k, const float4 *__restrict__ v, uint2 *__restrict__ out,
                           size_t n4)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        const float4 a = k[i], b = v[i];
        out[i] = make_uint2(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w));
        out[n4 + i] = make_uint2(pack_bf16(b.x, b.y), pack_bf16(b.z, b.w));
    }
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const __nv_bfloat16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const __nv_bfloat16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

// d += a b: m16n8k16, bf16 operands, f32 accumulators
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// KVB false: version 2 (K, V f32, prefetched into registers); true: version 3
// (kvb: K and V already bf16, [2][pos0 + n][KVH * HD], copied by cp.async
// into two stages of shared memory, the next tile in flight while the current
// one computes; pos_dev must be NULL: the host sized kvb)
template <int HD, bool KVB>
__global__ void __launch_bounds__(kV2Threads, 1)
    attn_fwd_mma2(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                  const __nv_bfloat16 *__restrict__ kvb, float *__restrict__ out, int n, int pos0,
                  const int32_t *__restrict__ pos_dev, int H, int KVH, int window, float scale_log2)
{
    if (pos_dev) pos0 = *pos_dev;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap(); // the host dispatches here only on sm_80 and newer
#else
    constexpr int LD = HD + 8, KS = HD / 16, ND = HD / 8, C4 = HD / 4;
    constexpr int NLD = kV2Keys * C4 / kV2Threads; // float4s of each of K and V per thread per tile
    static_assert(kV2Keys * C4 % kV2Threads == 0 && KS % 2 == 0, "tile shape");
    extern __shared__ __align__(16) unsigned char v2_smem[]; // v2_smem_bytes
    __nv_bfloat16 *Qs = reinterpret_cast<__nv_bfloat16 *>(v2_smem), *Ks = Qs + kV2Rows * LD, *Vs = Ks + kV2Keys * LD;
    constexpr int STAGE = 2 * kV2Keys * LD; // version 3: stage 1's Ks, Vs lie this far after stage 0's
    const int G = H / KVH, rows = n * G, tiles = (rows + kV2Rows - 1) / kV2Rows;
    // 1-D grid, heaviest first: the last query tile of every KV head, then the one before...
    const int kvh = (int)(blockIdx.x % (unsigned)KVH), tile = tiles - 1 - (int)(blockIdx.x / (unsigned)KVH);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const size_t qd = (size_t)H * HD, kd = (size_t)KVH * HD;
    const int total = pos0 + n;
    const int R0 = tile * kV2Rows, wr0 = R0 + warp * 16;
    const int r0 = wr0 + g, r1 = r0 + 8; // this thread's two rows
    const bool in0 = r0 < rows, in1 = r1 < rows;
    const int i0 = r0 / G, i1 = r1 / G; // their queries
    const int h0 = kvh * G + (r0 - i0 * G), h1 = kvh * G + (r1 - i1 * G);
    const int p0 = pos0 + i0, p1 = pos0 + i1;
    const int lo0 = window > 0 ? p0 - window + 1 : 0, lo1 = window > 0 ? p1 - window + 1 : 0;
    // the warp's queries (meaningful only when live) and the block's
    const bool live = wr0 < rows;
    const int wp_first = pos0 + wr0 / G, wp_last = pos0 + (min(wr0 + 15, rows - 1)) / G;
    const int p_first = pos0 + R0 / G, p_last = pos0 + (min(R0 + kV2Rows, rows) - 1) / G;

    // the block's 128 rows of Q, bf16, zeros past the last row; ldmatrix
    // reloads the A fragments every tile (held in registers they would take
    // 32 more of a budget the prefetch needs)
    for (int idx = threadIdx.x; idx < kV2Rows * C4; idx += kV2Threads) {
        const int rr = idx / C4, c = (idx - rr * C4) * 4, r = R0 + rr;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < rows) {
            const int i = r / G;
            x = *reinterpret_cast<const float4 *>(q + (size_t)i * qd + (size_t)(kvh * G + r - i * G) * HD + c);
        }
        *reinterpret_cast<uint2 *>(&Qs[rr * LD + c]) = make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
    }
    // ldmatrix x4 of an A fragment (16 x 16 at column 16 ks): lanes 0-15 address rows 0-15 at column
    // 0, lanes 16-31 the same rows at column 8 (registers a0..a3: rows 0-7 / 8-15, columns 0-7 / 8-15)
    const __nv_bfloat16 *qr = Qs + (warp * 16 + (lane & 15)) * LD + (lane >> 4) * 8;
    float o[ND][4];
#pragma unroll
    for (int d = 0; d < ND; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    // running max (raw scores, -inf until a key is seen) and this thread's share of the row sums
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    // version 2: the next tile's K and V, f32, in flight in registers while the
    // current tile computes; zeros past the keys. 256 is a multiple of a row's
    // HD / 4 float4s, so a thread's column is the same in all its loads and its rows step by RS
    constexpr int RS = kV2Threads / C4;
    static_assert(kV2Threads % C4 == 0, "a thread's column is fixed");
    const int fr = threadIdx.x / C4, fc = (threadIdx.x - fr * C4) * 4;
    const float *kb = k + (size_t)kvh * HD + fc, *vb = v + (size_t)kvh * HD + fc;
    float4 kf[NLD], vf[NLD]; // (version 3 never calls fetch: the compiler drops them)
    auto fetch = [&](int k0) {
        const size_t at = (size_t)(k0 + fr) * kd;
#pragma unroll
        for (int j = 0; j < NLD; j++) {
            if (k0 + fr + j * RS < total) {
                kf[j] = *reinterpret_cast<const float4 *>(kb + at + (size_t)j * RS * kd);
                vf[j] = *reinterpret_cast<const float4 *>(vb + at + (size_t)j * RS * kd);
            } else {
                kf[j] = vf[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
    };
    // version 3: 16-byte chunks of 8 bf16; a thread's column is fixed again, its rows step by RS3
    constexpr int C8 = HD / 8, RS3 = kV2Threads / C8, NCP = kV2Keys * C8 / kV2Threads;
    static_assert(kV2Threads % C8 == 0 && kV2Keys * C8 % kV2Threads == 0, "chunks");
    const int cr = threadIdx.x / C8, cc = (threadIdx.x - cr * C8) * 8;
    auto issue = [&](int k0, int stage) {
        const __nv_bfloat16 *kg = kvb + (size_t)kvh * HD + cc, *vg = kg + (size_t)total * kd;
#pragma unroll
        for (int j = 0; j < NCP; j++) {
            const int r = cr + j * RS3, key = k0 + r;
            const bool in = key < total;
            const size_t at = in ? (size_t)key * kd : 0;
            cp_async16(&Ks[stage * STAGE + r * LD + cc], kg + at, in ? 16 : 0);
            cp_async16(&Vs[stage * STAGE + r * LD + cc], vg + at, in ? 16 : 0);
        }
    };
    const int klo = window > 0 ? max(0, p_first - window + 1) : 0;
    const int k_begin = (klo / kV2Keys) * kV2Keys;
    int stage = 0;
    if constexpr (KVB) {
        issue(k_begin, 0);
        cp_async_commit();
    } else {
        fetch(k_begin);
    }
    for (int k0 = k_begin; k0 <= p_last; k0 += kV2Keys) {
        __syncthreads(); // the previous tile's products are done with the buffer written next
        if constexpr (KVB) {
            if (k0 + kV2Keys <= p_last) issue(k0 + kV2Keys, stage ^ 1);
            cp_async_commit(); // (an empty group at the last tile keeps the count of wait_group 1 right)
            cp_async_wait1();  // all but the newest group landed: this tile's
        } else {
#pragma unroll
            for (int j = 0; j < NLD; j++) {
                const int at = (fr + j * RS) * LD + fc;
                *reinterpret_cast<uint2 *>(&Ks[at]) = make_uint2(pack_bf16(kf[j].x, kf[j].y), pack_bf16(kf[j].z, kf[j].w));
                *reinterpret_cast<uint2 *>(&Vs[at]) = make_uint2(pack_bf16(vf[j].x, vf[j].y), pack_bf16(vf[j].z, vf[j].w));
            }
        }
        __syncthreads();
        if constexpr (!KVB) {
            if (k0 + kV2Keys <= p_last) fetch(k0 + kV2Keys);
        }
        const __nv_bfloat16 *Kt = Ks + stage * STAGE, *Vt = Vs + stage * STAGE;
        if constexpr (KVB) stage ^= 1;
        // a warp whose rows see no key of this tile leaves its state as it is
        // (every key masked changes nothing); a tile inside every row's range
        // of the warp needs no mask
        if (!live || k0 > wp_last || (window > 0 && k0 + kV2Keys - 1 < wp_first - window + 1)) continue;
        const bool full = k0 + kV2Keys - 1 <= wp_first && (window <= 0 || k0 >= wp_last - window + 1);

        // S = Q K^T: accumulator tile j holds keys k0 + 8 j .. + 7; c0, c1 row r0, c2, c3 row r1, keys 8 j + 2 t + {0, 1}
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        // ldmatrix x4 of K: lanes 8 m .. 8 m + 7 address keys 8 j .. 8 j + 7 at column 8 m of a 32-column
        // slab, so the four registers are the B fragments (b0, b1) of k-steps 2 ks2 and 2 ks2 + 1
        const __nv_bfloat16 *kr = Kt + (lane & 7) * LD + (lane >> 3) * 8;
#pragma unroll
        for (int ks2 = 0; ks2 < KS / 2; ks2++) {
            uint32_t qa0[4], qa1[4];
            ldsm_x4(qa0, qr + ks2 * 32);
            ldsm_x4(qa1, qr + ks2 * 32 + 16);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                uint32_t b[4];
                ldsm_x4(b, kr + j * 8 * LD + ks2 * 32);
                mma_bf16(s[j], qa0, b[0], b[1]);
                mma_bf16(s[j], qa1, b[2], b[3]);
            }
        }
        if (!full) {
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int key = k0 + j * 8 + t * 2 + e;
                    if (key < lo0 || key > p0) s[j][e] = -INFINITY;
                    if (key < lo1 || key > p1) s[j][2 + e] = -INFINITY;
                }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
        // a row's 64 scores lie in the 4 lanes of a quad
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        // exp(scale (x - mn)) = exp2(x scale log2(e) - mn scale log2(e)): one fma and ex2 a score.
        // A row with no key seen yet has mn = -inf: subtract 0 instead, so masked
        // scores (and the old max, -inf) give exp2(-inf) = 0, never NaN.
        const float ms0 = mn0 == -INFINITY ? 0.0f : mn0 * scale_log2;
        const float ms1 = mn1 == -INFINITY ? 0.0f : mn1 * scale_log2;
        const float al0 = exp2f(fmaf(m0, scale_log2, -ms0)), al1 = exp2f(fmaf(m1, scale_log2, -ms1));
        m0 = mn0;
        m1 = mn1;
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            s[j][0] = exp2f(fmaf(s[j][0], scale_log2, -ms0));
            s[j][1] = exp2f(fmaf(s[j][1], scale_log2, -ms0));
            s[j][2] = exp2f(fmaf(s[j][2], scale_log2, -ms1));
            s[j][3] = exp2f(fmaf(s[j][3], scale_log2, -ms1));
            rs0 += s[j][0] + s[j][1];
            rs1 += s[j][2] + s[j][3];
        }
        // al is the same in the 4 lanes of a quad, so each lane's share of l
        // rescales alone; the quad sums them once at the end
        l0 = l0 * al0 + rs0;
        l1 = l1 * al1 + rs1;
#pragma unroll
        for (int d = 0; d < ND; d++) {
            o[d][0] *= al0;
            o[d][1] *= al0;
            o[d][2] *= al1;
            o[d][3] *= al1;
        }
        // O += P V: keys 16 kk .. 16 kk + 15 are accumulator tiles 2 kk and 2 kk + 1, re-packed as the A fragment
#pragma unroll
        for (int kk = 0; kk < kV2Keys / 16; kk++) {
            uint32_t pa[4];
            pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            // ldmatrix x4 .trans: lanes 0-7 address keys 16 kk + 0..7, lanes 8-15 keys + 8..15 (both at
            // columns 16 d2), lanes 16-31 the same keys at columns 16 d2 + 8: the B fragments (b0, b1)
            // of output column tiles 2 d2 and 2 d2 + 1, V[key][col] transposed by the load
            const __nv_bfloat16 *vr = Vt + (kk * 16 + (lane & 15)) * LD + (lane >> 4) * 8;
#pragma unroll
            for (int d2 = 0; d2 < ND / 2; d2++) {
                uint32_t b[4];
                ldsm_x4_trans(b, vr + d2 * 16);
                mma_bf16(o[2 * d2], pa, b[0], b[1]);
                mma_bf16(o[2 * d2 + 1], pa, b[2], b[3]);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    // every row in range has seen its own key, so l > 0 there; rows past n are not written
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    float *o0 = out + (size_t)(in0 ? i0 : 0) * qd + (size_t)h0 * HD + t * 2;
    float *o1 = out + (size_t)(in1 ? i1 : 0) * qd + (size_t)h1 * HD + t * 2;
#pragma unroll
    for (int d = 0; d < ND; d++) {
        if (in0) *reinterpret_cast<float2 *>(o0 + d * 8) = make_float2(o[d][0] * inv0, o[d][1] * inv0);
        if (in1) *reinterpret_cast<float2 *>(o1 + d * 8) = make_float2(o[d][2] * inv1, o[d][3] * inv1);
    }
#endif
}

// Launchers without the backend (the bench calls them too): 0 or the launch's error
template <int HD>
cudaError_t fwd_mma1_run(const float *q, const float *k, const float *v, float *out, int n, int pos0,
                         const int32_t *pos_dev, int H, int KVH, int window, cudaStream_t st)
{
    dim3 grid((unsigned)((n + kMmaQ - 1) / kMmaQ), (unsigned)H);
    attn_fwd_mma<HD><<<grid, 128, 0, st>>>(q, k, v, out, n, pos0, pos_dev, H, KVH, window, 1.0f / sqrtf((float)HD));
    return cudaGetLastError();
}

template <int HD>
cudaError_t fwd_mma2_run(const float *q, const float *k, const float *v, float *out, int n, int pos0,
                         const int32_t *pos_dev, int H, int KVH, int window, cudaStream_t st)
{
    const long long blocks = (((long long)n * (H / KVH) + kV2Rows - 1) / kV2Rows) * KVH;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    const int sm = v2_smem_bytes(HD, false);
    cudaError_t e = cudaFuncSetAttribute(attn_fwd_mma2<HD, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, sm);
    if (e != cudaSuccess) return e;
    attn_fwd_mma2<HD, false><<<(unsigned)blocks, kV2Threads, sm, st>>>(
        q, k, v, nullptr, out, n, pos0, pos_dev, H, KVH, window, 1.4426950408889634f / sqrtf((float)HD));
    return cudaGetLastError();
}

// version 3's work space: the bf16 copy of K and V, bytes
inline size_t fwd_mma3_ws_bytes(int n, int pos0, int KVH, int hd) { return (size_t)2 * (pos0 + n) * KVH * hd * 2; }

// version 3: K, V to bf16 in ws (fwd_mma3_ws_bytes, 16-byte aligned), then the kernel; pos0 on the host only
template <int HD>
cudaError_t fwd_mma3_run(const float *q, const float *k, const float *v, float *out, int n, int pos0, int H,
                         int KVH, int window, void *ws, cudaStream_t st)
{
    const long long blocks = (((long long)n * (H / KVH) + kV2Rows - 1) / kV2Rows) * KVH;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    const size_t n4 = (size_t)(pos0 + n) * KVH * HD / 4;
    kv_to_bf16<<<(unsigned)std::min<size_t>((n4 + 255) / 256, 65536), 256, 0, st>>>(
        reinterpret_cast<const float4 *>(k), reinterpret_cast<const float4 *>(v), reinterpret_cast<uint2 *>(ws), n4);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    const int sm = v2_smem_bytes(HD, true);
    e = cudaFuncSetAttribute(attn_fwd_mma2<HD, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, sm);
    if (e != cudaSuccess) return e;
    attn_fwd_mma2<HD, true><<<(unsigned)blocks, kV2Threads, sm, st>>>(
        q, k, v, reinterpret_cast<const __nv_bfloat16 *>(ws), out, n, pos0, nullptr, H, KVH, window,
        1.4426950408889634f / sqrtf((float)HD));
    return cudaGetLastError();
}

// versions 2 and 3 read q, k, v as float4s and write out as float2s
inline bool v2_aligned(const void *q, const void *k, const void *v, const void *out)
{
    return (((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)out) & 15) == 0;
}

#ifndef TB_ATTN_BENCH
// Which bf16 forward runs: TB_ATTN_FWD=1, 2 or 3 forces one (2 and 3 only
// where their alignment holds, 3 only with pos0 on the host: else 2); else
// version 2 at every token count (prefill and decode: the same kernel for
// attention and the decode graph's attention_at, so they agree bit for bit).
int fwd_version(int n, const int32_t *pos_dev, const void *q, const void *k, const void *v, const void *out)
{
    const char *e = getenv("TB_ATTN_FWD");
    const int want = e && *e ? atoi(e) : 0;
    if (want == 1 || !v2_aligned(q, k, v, out)) return 1;
    if (want == 3) return pos_dev ? 2 : 3;
    (void)n; /* every token count: attn_bench.sh 2026-12-03 measured version 2 faster from 1 token up */
    return 2;
}

template <int HD>
void fwd_mma_launch(tb_cuda *cu, const tb_attn_shape *a, const float *q, const float *k, const float *v, int n,
                    int pos0, const int32_t *pos_dev, float *out)
{
    const int H = a->n_heads, KVH = a->n_kv_heads, win = a->sliding_window;
    switch (fwd_version(n, pos_dev, q, k, v, out)) {
    case 3: {
        void *ws = tb_cuda_ws(cu, fwd_mma3_ws_bytes(n, pos0, KVH, HD), "attention: bf16 K and V");
        if (ws)
            TB_CU_CHECK(cu, fwd_mma3_run<HD>(q, k, v, out, n, pos0, H, KVH, win, ws, cu->stream),
                        "attention (bf16 tensor cores, version 3)");
        return;
    }
    case 2:
        TB_CU_CHECK(cu, fwd_mma2_run<HD>(q, k, v, out, n, pos0, pos_dev, H, KVH, win, cu->stream),
                    "attention (bf16 tensor cores, version 2)");
        return;
    default:
        TB_CU_CHECK(cu, fwd_mma1_run<HD>(q, k, v, out, n, pos0, pos_dev, H, KVH, win, cu->stream),
                    "attention (bf16 tensor cores)");
    }
}

// shared memory of each kernel, bytes
size_t smem_fwd(int R, int hd) { return ((size_t)2 * 16 * R * (hd + 1) + (size_t)16 * R * (16 * R + 1)) * 4; }
size_t smem_dq(int R, int hd) { return ((size_t)3 * 16 * R * (hd + 1) + (size_t)16 * R * (16 * R + 1)) * 4; }
size_t smem_dkv(int R, int hd) { return ((size_t)4 * 16 * R * (hd + 1) + (size_t)16 * R * (16 * R + 1)) * 4; }

struct variant {
    int HD, R;
};

// the variant serving head_dim on this device; HD 0 if none fits
variant pick(const tb_cuda *cu, int hd)
{
    variant v = {hd <= 64 ? 64 : hd <= 128 ? 128 : hd <= 256 ? 256 : 0, 4};
    if (!v.HD) return v;
    const size_t optin = cu->prop.sharedMemPerBlockOptin;
    if (v.HD == 256 || smem_dkv(4, hd) > optin) v.R = 2;
    if (smem_dkv(v.R, hd) > optin) v.HD = 0;
    return v;
}

template <int HD, int R>
void fwd_launch(tb_cuda *cu, const tb_attn_shape *a, const float *q, const float *k, const float *v, int n, int pos0,
                const int32_t *pos_dev, float *out, float *lse)
{
    const size_t sm = smem_fwd(R, a->head_dim);
    if (TB_CU_CHECK(cu, cudaFuncSetAttribute(attn_fwd<HD, R>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm),
                    "attention: shared memory"))
        return;
    dim3 grid((unsigned)((n + 16 * R - 1) / (16 * R)), (unsigned)a->n_heads);
    attn_fwd<HD, R><<<grid, kThreads, sm, cu->stream>>>(q, k, v, out, lse, n, pos0, pos_dev, a->n_heads, a->n_kv_heads,
                                                         a->head_dim, a->sliding_window,
                                                         1.0f / sqrtf((float)a->head_dim));
    TB_CU_LAUNCHED(cu, "attention");
}

template <int HD, int R>
void bwd_launch(tb_cuda *cu, const tb_attn_shape *a, const float *q, const float *k, const float *v, const float *lse,
                const float *D, const float *d_out, int n, float *d_q, float *d_k, float *d_v)
{
    const int hd = a->head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t s1 = smem_dq(R, hd), s2 = smem_dkv(R, hd);
    if (TB_CU_CHECK(cu, cudaFuncSetAttribute(attn_bwd_dq<HD, R>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s1),
                    "attention backward: shared memory") ||
        TB_CU_CHECK(cu, cudaFuncSetAttribute(attn_bwd_dkv<HD, R>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s2),
                    "attention backward: shared memory"))
        return;
    const unsigned tiles = (unsigned)((n + 16 * R - 1) / (16 * R));
    attn_bwd_dq<HD, R><<<dim3(tiles, (unsigned)a->n_heads), kThreads, s1, cu->stream>>>(
        q, k, v, d_out, lse, D, d_q, n, a->n_heads, a->n_kv_heads, hd, a->sliding_window, scale);
    if (TB_CU_LAUNCHED(cu, "attention backward (dq)")) return;
    attn_bwd_dkv<HD, R><<<dim3(tiles, (unsigned)a->n_kv_heads), kThreads, s2, cu->stream>>>(
        q, k, v, d_out, lse, D, d_k, d_v, n, a->n_heads, a->n_kv_heads, hd, a->sliding_window, scale);
    TB_CU_LAUNCHED(cu, "attention backward (dk, dv)");
}

#endif // TB_ATTN_BENCH
} // namespace

#ifndef TB_ATTN_BENCH
int tb_cuda_attention_check(tb_cuda *cu, int head_dim)
{
    if (head_dim < 1 || head_dim > 256) {
        tb_cuda_set_error(cu, TB_EUSAGE, "cuda attention: head_dim %d not supported (1..256)", head_dim);
        return -1;
    }
    if (!pick(cu, head_dim).HD) {
        tb_cuda_set_error(cu, TB_EIO, "cuda attention: head_dim %d needs %zu bytes of shared memory per block; %s allows %zu",
                          head_dim, smem_dkv(2, head_dim), cu->prop.name, (size_t)cu->prop.sharedMemPerBlockOptin);
        return -1;
    }
    return 0;
}

static int shape_ok(tb_cuda *cu, const tb_attn_shape *a)
{
    if (a->n_kv_heads < 1 || a->n_heads % a->n_kv_heads) {
        tb_cuda_set_error(cu, TB_EUSAGE, "cuda attention: %d heads not a multiple of %d KV heads", a->n_heads,
                          a->n_kv_heads);
        return 0;
    }
    return tb_cuda_attention_check(cu, a->head_dim) == 0;
}

void tb_cuda_attention(tb_cuda *cu, const tb_attn_shape *a, const float *q, const float *k, const float *v, int n,
                       int pos0, const int32_t *pos_dev, float *out, float *lse)
{
    if (cu->err || n <= 0 || !shape_ok(cu, a)) return;
    TB_RANGE_PUSH("tb_cuda_attention");
    // bf16 precision, inference (nothing saved for a backward): the tensor-core kernel
    const int hd = a->head_dim;
    if (cu->bf16 && !lse && cu->prop.major >= 8 && (hd == 64 || hd == 128)) {
        if (hd == 64) fwd_mma_launch<64>(cu, a, q, k, v, n, pos0, pos_dev, out);
        else fwd_mma_launch<128>(cu, a, q, k, v, n, pos0, pos_dev, out);
        TB_RANGE_POP();
        return;
    }
    variant vr = pick(cu, hd);
    if (vr.HD == 64 && vr.R == 4) fwd_launch<64, 4>(cu, a, q, k, v, n, pos0, pos_dev, out, lse);
    else if (vr.HD == 64) fwd_launch<64, 2>(cu, a, q, k, v, n, pos0, pos_dev, out, lse);
    else if (vr.HD == 128 && vr.R == 4) fwd_launch<128, 4>(cu, a, q, k, v, n, pos0, pos_dev, out, lse);
    else if (vr.HD == 128) fwd_launch<128, 2>(cu, a, q, k, v, n, pos0, pos_dev, out, lse);
    else fwd_launch<256, 2>(cu, a, q, k, v, n, pos0, pos_dev, out, lse);
    TB_RANGE_POP();
}

void tb_cuda_attention_backward(tb_cuda *cu, const tb_attn_shape *a, const float *q, const float *k, const float *v,
                                const float *out, const float *lse, const float *d_out, int n, float *d_q, float *d_k,
                                float *d_v)
{
    if (cu->err || n <= 0 || !shape_ok(cu, a)) return;
    TB_RANGE_PUSH("tb_cuda_attention_backward");
    float *D = (float *)tb_cuda_ws(cu, (size_t)a->n_heads * n * sizeof(float), "attention backward row sums");
    if (D) {
        const size_t warps = (size_t)n * a->n_heads;
        attn_bwd_rowdot<<<(unsigned)((warps * 32 + 255) / 256), 256, 0, cu->stream>>>(out, d_out, D, n, a->n_heads,
                                                                                      a->head_dim);
        if (!TB_CU_LAUNCHED(cu, "attention backward (row sums)")) {
            variant vr = pick(cu, a->head_dim);
            if (vr.HD == 64 && vr.R == 4) bwd_launch<64, 4>(cu, a, q, k, v, lse, D, d_out, n, d_q, d_k, d_v);
            else if (vr.HD == 64) bwd_launch<64, 2>(cu, a, q, k, v, lse, D, d_out, n, d_q, d_k, d_v);
            else if (vr.HD == 128 && vr.R == 4) bwd_launch<128, 4>(cu, a, q, k, v, lse, D, d_out, n, d_q, d_k, d_v);
            else if (vr.HD == 128) bwd_launch<128, 2>(cu, a, q, k, v, lse, D, d_out, n, d_q, d_k, d_v);
            else bwd_launch<256, 2>(cu, a, q, k, v, lse, D, d_out, n, d_q, d_k, d_v);
        }
    }
    TB_RANGE_POP();
}
#endif // TB_ATTN_BENCH
