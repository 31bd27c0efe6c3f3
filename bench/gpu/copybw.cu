// copybw.cu - the device-to-device copy rate, the bound of memory-bound kernels:
// (read + write bytes) / time of a 4 GiB copy, best of 10 after a warm-up.
// nvcc -O2 -arch=sm_90 bench/gpu/copybw.cu -o copybw; prints GB/s.
#include <cstdio>
#include <cuda_runtime.h>
// device-to-device copy of 4 GiB (past L2): (read + write bytes) / time, best of 10
int main() {
    size_t b = (size_t)4 << 30; void *x, *y; cudaEvent_t e0, e1; float best = 1e30f, ms;
    if (cudaMalloc(&x, b) || cudaMalloc(&y, b)) return 1;
    cudaMemset(x, 1, b); cudaEventCreate(&e0); cudaEventCreate(&e1);
    for (int i = 0; i < 11; i++) {
        cudaEventRecord(e0); cudaMemcpyAsync(y, x, b, cudaMemcpyDeviceToDevice); cudaEventRecord(e1);
        cudaEventSynchronize(e1); cudaEventElapsedTime(&ms, e0, e1); if (i && ms < best) best = ms;
    }
    printf("%.1f\n", 2.0 * b / (best * 1e-3) / 1e9);
    return 0;
}
