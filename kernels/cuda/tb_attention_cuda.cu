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
// Variants: HD (largest head_dim served: 64, 128, 256) and R (B = 16 R = 64 or
// 32 rows per tile); R = 2 where the device's shared memory is short.
#include "tb_cuda_backend.h"
#include "tb_nvtx.h"

#include <math.h>

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
                                                     float *__restrict__ lse, int n, int pos0, int H, int KVH, int hd,
                                                     int window, float scale)
{
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
                float *out, float *lse)
{
    const size_t sm = smem_fwd(R, a->head_dim);
    if (TB_CU_CHECK(cu, cudaFuncSetAttribute(attn_fwd<HD, R>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm),
                    "attention: shared memory"))
        return;
    dim3 grid((unsigned)((n + 16 * R - 1) / (16 * R)), (unsigned)a->n_heads);
    attn_fwd<HD, R><<<grid, kThreads, sm, cu->stream>>>(q, k, v, out, lse, n, pos0, a->n_heads, a->n_kv_heads,
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

} // namespace

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
                       int pos0, float *out, float *lse)
{
    if (cu->err || n <= 0 || !shape_ok(cu, a)) return;
    TB_RANGE_PUSH("tb_cuda_attention");
    variant vr = pick(cu, a->head_dim);
    if (vr.HD == 64 && vr.R == 4) fwd_launch<64, 4>(cu, a, q, k, v, n, pos0, out, lse);
    else if (vr.HD == 64) fwd_launch<64, 2>(cu, a, q, k, v, n, pos0, out, lse);
    else if (vr.HD == 128 && vr.R == 4) fwd_launch<128, 4>(cu, a, q, k, v, n, pos0, out, lse);
    else if (vr.HD == 128) fwd_launch<128, 2>(cu, a, q, k, v, n, pos0, out, lse);
    else fwd_launch<256, 2>(cu, a, q, k, v, n, pos0, out, lse);
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
