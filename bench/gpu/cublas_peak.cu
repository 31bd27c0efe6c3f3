// cublas_peak.cu - the two ceilings of a GPU benchmark, measured in the same run:
// the device-to-device copy bandwidth (bytes read + written) and cuBLAS's bf16
// GEMM rate (f32 accumulation) at the shapes a 7B-shaped decoder's prefill
// runs (tokens x hidden times the seven projections' weights), plus f32
// (pedantic) and f64 rates for the solves. Random inputs, never zeros.
//
//   nvcc -O2 -arch=sm_90 bench/gpu/cublas_peak.cu -lcublas -o cublas_peak
//   ./cublas_peak [tokens]        (default 2048)
// Prints one line per measurement: name, shape, ms (median of 20), rate.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>

#define CK(x)                                                                              \
    do {                                                                                   \
        cudaError_t e_ = (x);                                                              \
        if (e_ != cudaSuccess) {                                                           \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

__global__ void fill(__nv_bfloat16 *p, size_t n, unsigned seed)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) {
        unsigned x = (unsigned)i * 2654435761u ^ seed;
        x ^= x >> 13;
        x *= 0x5bd1e995u;
        x ^= x >> 15;
        p[i] = __float2bfloat16(((x & 0xffff) / 65536.0f - 0.5f) * 0.1f);
    }
}

template <class F> static float median_ms(F f, int reps = 20)
{
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    for (int i = 0; i < 3; i++) f();
    std::vector<float> t;
    for (int i = 0; i < reps; i++) {
        cudaEventRecord(a);
        f();
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

int main(int argc, char **argv)
{
    int T = argc > 1 ? atoi(argv[1]) : 2048;
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("device: %s, %d SMs\n", p.name, p.multiProcessorCount);
    // copy bandwidth: 4 GiB buffers (far past L2)
    size_t bytes = (size_t)4 << 30;
    void *x, *y;
    CK(cudaMalloc(&x, bytes));
    CK(cudaMalloc(&y, bytes));
    CK(cudaMemset(x, 1, bytes));
    float ms = median_ms([&] { cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice); });
    printf("copy  %zu MiB                       %8.3f ms  %7.1f GB/s (read + write)\n", bytes >> 20, ms,
           2.0 * bytes / ms / 1e6);
    CK(cudaFree(y));
    CK(cudaFree(x));

    cublasHandle_t h;
    cublasCreate(&h);
    const int shapes[][2] = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}, {32000, 4096}};
    const char *names[] = {"q/o_proj", "k/v_proj", "gate/up_proj", "down_proj", "lm_head"};
    double flops_total = 0, ms_total = 0;
    const int count[] = {2, 2, 2, 1, 0}; // per layer: q,o / k,v / gate,up / down
    for (int s = 0; s < 5; s++) {
        int rows = shapes[s][0], cols = shapes[s][1];
        __nv_bfloat16 *A, *W;
        float *C;
        CK(cudaMalloc(&A, (size_t)T * cols * 2));
        CK(cudaMalloc(&W, (size_t)rows * cols * 2));
        CK(cudaMalloc(&C, (size_t)T * rows * 4));
        fill<<<(unsigned)(((size_t)T * cols + 255) / 256), 256>>>(A, (size_t)T * cols, 1);
        fill<<<(unsigned)(((size_t)rows * cols + 255) / 256), 256>>>(W, (size_t)rows * cols, 2);
        const float one = 1, zero = 0;
        // row-major y[T, rows] = x[T, cols] W^T: column-major y^T = W x^T
        ms = median_ms([&] {
            cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, rows, T, cols, &one, W, CUDA_R_16BF, cols, A, CUDA_R_16BF, cols,
                         &zero, C, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        });
        double f = 2.0 * T * rows * cols;
        printf("bf16  %-12s %5d x %5d x %5d  %8.3f ms  %7.1f TFLOP/s\n", names[s], T, rows, cols, ms, f / ms / 1e9);
        flops_total += count[s] * f;
        ms_total += count[s] * ms;
        cudaFree(A);
        cudaFree(W);
        cudaFree(C);
    }
    printf("bf16  one 7B-shaped layer's 7 GEMMs at %d tokens: %.1f TFLOP/s (the forward's GEMM ceiling)\n", T,
           flops_total / ms_total / 1e9);
    // f32 pedantic and f64, for the f32 path and the solves
    {
        int n = 4096;
        float *a, *b, *c;
        double *da, *db, *dc;
        CK(cudaMalloc(&a, (size_t)n * n * 4));
        CK(cudaMalloc(&b, (size_t)n * n * 4));
        CK(cudaMalloc(&c, (size_t)n * n * 4));
        CK(cudaMalloc(&da, (size_t)n * n * 8));
        CK(cudaMalloc(&db, (size_t)n * n * 8));
        CK(cudaMalloc(&dc, (size_t)n * n * 8));
        CK(cudaMemset(a, 0x3f, (size_t)n * n * 4));
        CK(cudaMemset(b, 0x3e, (size_t)n * n * 4));
        CK(cudaMemset(da, 0x3f, (size_t)n * n * 8));
        CK(cudaMemset(db, 0x3e, (size_t)n * n * 8));
        const float one = 1, zero = 0;
        const double done = 1, dzero = 0;
        cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH);
        ms = median_ms([&] { cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, n, b, n, &zero, c, n); }, 10);
        printf("f32   pedantic %d^3                    %8.3f ms  %7.1f TFLOP/s\n", n, ms, 2.0 * n * n * n / ms / 1e9);
        cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
        ms = median_ms([&] { cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &done, da, n, db, n, &dzero, dc, n); }, 10);
        printf("f64   %d^3                             %8.3f ms  %7.1f TFLOP/s\n", n, ms, 2.0 * n * n * n / ms / 1e9);
    }
    CK(cudaDeviceSynchronize());
    return 0;
}
