// attn_bench.cu - check and time the bf16 tensor-core attention forward
// (kernels/cuda/tb_attention_cuda.cu, versions 1, 2 and 3) outside the
// backend, llm.c dev/cuda style. The kernel file is included with
// TB_ATTN_BENCH, which leaves out the backend and exposes the launchers
// fwd_mma1_run, fwd_mma2_run, fwd_mma3_run (version 3's time includes its
// bf16 conversion pass).
//
//   nvcc -O3 -std=c++17 -arch=sm_90 bench/gpu/attn_bench.cu -o attn_bench
//   attn_bench --check-quick   a few small shapes (for compute-sanitizer)
//   attn_bench --check         every edge: n not a multiple of 64/128, n 1..3, pos0 > 0,
//                              windows smaller than n, GQA 32/8, 12/4, 32/1, MHA, head_dim 64/128
//   attn_bench --bench         32/8 heads x 128: n 512, 2048, 4096, 2048 with window 1024,
//                              and one decode step (n 1 at position 2047); ms, TFLOP/s
// bash bench/gpu/attn_bench.sh runs all three and the sanitizers.
//
// Reference: causal GQA attention with f64 accumulation on the CPU (below),
// on random inputs (never zeros). Every output is poisoned with NaN first and
// 8 rows past n with a marker that must survive (rows past n never written).
// Error: ||gpu - ref|| / ||ref|| over the checked rows (the backend test's
// measure; tolerance 5e-3: bf16 operands) and max |gpu - ref| / max |ref|.
// FLOPs (causal, counted as done): 4 * H * HD * sum over rows of the keys the row sees.
#define TB_ATTN_BENCH
#include "../../kernels/cuda/tb_attention_cuda.cu"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(call)                                                                                                  \
    do {                                                                                                          \
        cudaError_t e_ = (call);                                                                                  \
        if (e_ != cudaSuccess) {                                                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));                \
            exit(2);                                                                                              \
        }                                                                                                         \
    } while (0)

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float frand() // uniform in [-1, 1)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

struct shape {
    int H, KVH, HD, n, pos0, window;
};

// keys row i sees: pos0 + i - lo + 1
static int keys_seen(const shape &s, int i)
{
    const int p = s.pos0 + i, lo = s.window > 0 ? std::max(0, p - s.window + 1) : 0;
    return p - lo + 1;
}

static double flops(const shape &s)
{
    double keys = 0;
    for (int i = 0; i < s.n; i++) keys += keys_seen(s, i);
    return 4.0 * s.H * s.HD * keys;
}

// the CPU reference for query row i, all heads: out[h * HD + d], f64 sums
static void ref_row(const shape &s, const float *q, const float *k, const float *v, int i, std::vector<double> &out)
{
    const int HD = s.HD, G = s.H / s.KVH, p = s.pos0 + i;
    const int lo = s.window > 0 ? std::max(0, p - s.window + 1) : 0;
    const double scale = 1.0 / sqrt((double)HD);
    std::vector<double> sc(p - lo + 1);
    out.assign((size_t)s.H * HD, 0.0);
    for (int h = 0; h < s.H; h++) {
        const float *qr = q + ((size_t)i * s.H + h) * HD;
        const int g = h / G;
        double mx = -INFINITY;
        for (int key = lo; key <= p; key++) {
            const float *kr = k + ((size_t)key * s.KVH + g) * HD;
            double d = 0;
            for (int c = 0; c < HD; c++) d += (double)qr[c] * kr[c];
            sc[key - lo] = d * scale;
            mx = std::max(mx, sc[key - lo]);
        }
        double sum = 0;
        for (int key = lo; key <= p; key++) sum += sc[key - lo] = exp(sc[key - lo] - mx);
        double *o = &out[(size_t)h * HD];
        for (int key = lo; key <= p; key++) {
            const float *vr = v + ((size_t)key * s.KVH + g) * HD;
            const double w = sc[key - lo] / sum;
            for (int c = 0; c < HD; c++) o[c] += w * vr[c];
        }
    }
}

static const uint32_t kMarker = 0x7fbadbadu; // a NaN no kernel writes: rows past n must keep it

struct problem {
    shape s;
    std::vector<float> q, k, v;
    float *dq = nullptr, *dk = nullptr, *dv = nullptr, *dout = nullptr;
    void *ws = nullptr; // version 3's bf16 K and V
    int32_t *dpos = nullptr;
    size_t nq, nk;
    explicit problem(const shape &s_) : s(s_)
    {
        nq = (size_t)s.n * s.H * s.HD;
        nk = (size_t)(s.pos0 + s.n) * s.KVH * s.HD;
        q.resize(nq), k.resize(nk), v.resize(nk);
        for (auto &x : q) x = 2.0f * frand(); // peakier softmax than unit scores
        for (auto &x : k) x = frand();
        for (auto &x : v) x = frand();
        CK(cudaMalloc(&dq, nq * 4));
        CK(cudaMalloc(&dk, nk * 4));
        CK(cudaMalloc(&dv, nk * 4));
        CK(cudaMalloc(&dout, (nq + (size_t)8 * s.H * s.HD) * 4));
        CK(cudaMalloc(&dpos, 4));
        CK(cudaMalloc(&ws, fwd_mma3_ws_bytes(s.n, s.pos0, s.KVH, s.HD)));
        CK(cudaMemcpy(dq, q.data(), nq * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dk, k.data(), nk * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dv, v.data(), nk * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dpos, &s.pos0, 4, cudaMemcpyHostToDevice));
    }
    ~problem()
    {
        cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dpos), cudaFree(ws);
    }
    void poison()
    {
        std::vector<uint32_t> p(nq + (size_t)8 * s.H * s.HD, 0x7fc00000u); // NaN
        for (size_t i = nq; i < p.size(); i++) p[i] = kMarker;
        CK(cudaMemcpy(dout, p.data(), p.size() * 4, cudaMemcpyHostToDevice));
    }
    // version ver; pos0 passed in device memory (a decode graph's way) when use_dev (not version 3)
    cudaError_t run(int ver, bool use_dev)
    {
        if (ver == 3)
            return s.HD == 64 ? fwd_mma3_run<64>(dq, dk, dv, dout, s.n, s.pos0, s.H, s.KVH, s.window, ws, 0)
                              : fwd_mma3_run<128>(dq, dk, dv, dout, s.n, s.pos0, s.H, s.KVH, s.window, ws, 0);
        const int32_t *pd = use_dev ? dpos : nullptr;
        const int p0 = use_dev ? -12345 : s.pos0; // must be ignored when pos_dev is given
        if (ver == 1)
            return s.HD == 64 ? fwd_mma1_run<64>(dq, dk, dv, dout, s.n, p0, pd, s.H, s.KVH, s.window, 0)
                              : fwd_mma1_run<128>(dq, dk, dv, dout, s.n, p0, pd, s.H, s.KVH, s.window, 0);
        return s.HD == 64 ? fwd_mma2_run<64>(dq, dk, dv, dout, s.n, p0, pd, s.H, s.KVH, s.window, 0)
                          : fwd_mma2_run<128>(dq, dk, dv, dout, s.n, p0, pd, s.H, s.KVH, s.window, 0);
    }
    std::vector<float> result(bool *tail_ok)
    {
        std::vector<float> o(nq + (size_t)8 * s.H * s.HD);
        CK(cudaMemcpy(o.data(), dout, o.size() * 4, cudaMemcpyDeviceToHost));
        *tail_ok = true;
        for (size_t i = nq; i < o.size(); i++) {
            uint32_t b;
            memcpy(&b, &o[i], 4);
            if (b != kMarker) *tail_ok = false;
        }
        o.resize(nq);
        return o;
    }
};

// rows to compare against the CPU: all of them, or `sample` spread over n (first and last included)
static std::vector<int> rows_to_check(int n, int sample)
{
    std::vector<int> r;
    if (sample <= 0 || sample >= n) {
        for (int i = 0; i < n; i++) r.push_back(i);
        return r;
    }
    for (int j = 0; j < sample; j++) r.push_back((int)((long long)j * (n - 1) / (sample - 1)));
    r.erase(std::unique(r.begin(), r.end()), r.end());
    return r;
}

struct err {
    double rel, maxrel;
};

static err compare(const problem &P, const std::vector<float> &got, const std::vector<int> &rows)
{
    const size_t w = (size_t)P.s.H * P.s.HD;
    double num = 0, den = 0, maxd = 0, maxr = 0;
    std::vector<double> ref;
    for (int i : rows) {
        ref_row(P.s, P.q.data(), P.k.data(), P.v.data(), i, ref);
        for (size_t c = 0; c < w; c++) {
            const double d = (double)got[(size_t)i * w + c] - ref[c];
            num += d * d, den += ref[c] * ref[c];
            maxd = std::max(maxd, fabs(d)); // NaN: fmax ignores it, so the norm (NaN) carries it
            maxr = std::max(maxr, fabs(ref[c]));
        }
    }
    return {sqrt(num / den), maxd / maxr};
}

static int n_fail;

static const char *desc(const shape &s)
{
    static char b[96];
    snprintf(b, sizeof b, "%d/%d x %d, n %d, pos0 %d, win %d", s.H, s.KVH, s.HD, s.n, s.pos0, s.window);
    return b;
}

// every version against the CPU on rows (sample 0: all), pos0 on the host and
// in device memory (the same kernel: bit for bit; version 3 takes pos0 on the
// host only), rows past n untouched
static void check(const shape &s, int sample)
{
    problem P(s);
    const std::vector<int> rows = rows_to_check(s.n, sample);
    for (int ver = 1; ver <= 3; ver++) {
        P.poison();
        CK(P.run(ver, false));
        CK(cudaDeviceSynchronize());
        bool tail1, tail2 = true;
        const std::vector<float> a = P.result(&tail1);
        size_t differ = 0;
        if (ver != 3) {
            P.poison();
            CK(P.run(ver, true));
            CK(cudaDeviceSynchronize());
            const std::vector<float> b = P.result(&tail2);
            for (size_t i = 0; i < a.size(); i++) differ += memcmp(&a[i], &b[i], 4) != 0;
        }
        const err e = compare(P, a, rows);
        const bool ok = e.rel <= 5e-3 && tail1 && tail2 && differ == 0; // NaN fails e.rel <= 5e-3
        n_fail += !ok;
        printf("check v%d %-40s rel %.2e  max %.2e  pos_dev differ %zu  tail %s  %s\n", ver, desc(s), e.rel, e.maxrel,
               differ, tail1 && tail2 ? "ok" : "WRITTEN", ok ? "ok" : "FAIL");
    }
}

static void checks(bool quick)
{
    const shape quick_shapes[] = {
        {32, 8, 128, 3, 100, 0},   // decode-like, pos0 > 0
        {8, 2, 128, 130, 0, 50},   // window < n, partial tiles
        {4, 4, 64, 70, 9, 0},      // MHA, head_dim 64
    };
    const shape all[] = {
        {32, 8, 128, 1, 0, 0},     {32, 8, 128, 2, 0, 0},    {32, 8, 128, 3, 100, 0},   {32, 8, 128, 1, 2047, 0},
        {32, 8, 128, 37, 0, 0},    {32, 8, 128, 200, 0, 0},  {32, 8, 128, 333, 17, 0},  {32, 8, 128, 129, 64, 0},
        {32, 8, 128, 300, 0, 64},  {32, 8, 128, 257, 40, 100}, {8, 2, 64, 9, 120, 50},  {8, 2, 64, 130, 0, 0},
        {4, 4, 64, 37, 0, 0},      {4, 4, 128, 257, 0, 100}, {4, 4, 128, 1, 5, 0},      {12, 4, 128, 150, 0, 0},
        {32, 1, 64, 70, 0, 0},     {8, 8, 128, 129, 64, 0},  {32, 8, 64, 1000, 0, 0},   {32, 8, 128, 2048, 0, 0},
    };
    if (quick)
        for (const shape &s : quick_shapes) check(s, 0);
    else
        for (const shape &s : all) check(s, s.n > 400 ? 48 : 0);
}

static void bench()
{
    const shape shapes[] = {
        {32, 8, 128, 512, 0, 0}, {32, 8, 128, 2048, 0, 0}, {32, 8, 128, 4096, 0, 0},
        {32, 8, 128, 2048, 0, 1024}, {32, 8, 128, 1, 2047, 0}, {32, 8, 128, 16, 2032, 0},
    };
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("%-44s %8s %10s %9s %9s %8s\n", "shape", "version", "ms", "TFLOP/s", "rel err", "speedup");
    for (const shape &s : shapes) {
        problem P(s);
        const std::vector<int> rows = rows_to_check(s.n, 32);
        double ms1 = 0;
        for (int ver = 1; ver <= 3; ver++) {
            P.poison();
            CK(P.run(ver, false));
            CK(cudaDeviceSynchronize());
            bool tail;
            const err e = compare(P, P.result(&tail), rows);
            n_fail += !(e.rel <= 5e-3 && tail);
            for (int w = 0; w < 3; w++) CK(P.run(ver, false));
            std::vector<float> t;
            for (int r = 0; r < 25; r++) {
                CK(cudaEventRecord(e0));
                CK(P.run(ver, false));
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                t.push_back(ms);
            }
            std::sort(t.begin(), t.end());
            const double ms = t[t.size() / 2];
            if (ver == 1) ms1 = ms;
            printf("%-44s %8d %10.4f %9.1f %9.2e %7.2fx%s\n", desc(s), ver, ms, flops(s) / (ms * 1e-3) / 1e12, e.rel,
                   ms1 / ms, e.rel <= 5e-3 && tail ? "" : "  FAIL");
        }
    }
}

int main(int argc, char **argv)
{
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    if (prop.major < 8) {
        printf("the bf16 kernels need sm_80+\n");
        return 1;
    }
    bool any = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--check-quick")) checks(true);
        else if (!strcmp(argv[i], "--check")) checks(false);
        else if (!strcmp(argv[i], "--bench")) bench();
        else {
            fprintf(stderr, "usage: %s [--check-quick] [--check] [--bench]\n", argv[0]);
            return 2;
        }
        any = true;
    }
    if (!any) checks(false), bench();
    printf("%s: %d failed\n", n_fail ? "FAIL" : "ok", n_fail);
    return n_fail ? 1 : 0;
}
