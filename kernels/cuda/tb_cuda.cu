// tb_cuda.cu - device discovery for the CUDA path (CUDA=1 builds).
#include "tb_cuda.h"

#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int tb_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no device" status
        return 0;
    }
    return n;
}

extern "C" int tb_cuda_device_describe(int i, char *buf, int n)
{
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    snprintf(buf, (size_t)n, "%s, sm_%d%d, %.1f GiB, %d SMs", p.name, p.major, p.minor,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), p.multiProcessorCount);
    return 0;
}

extern "C" void tb_cuda_versions(char *buf, int n)
{
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    snprintf(buf, (size_t)n, "runtime %d.%d, driver %s", rt / 1000, (rt % 1000) / 10,
             drv ? "present" : "absent");
    if (drv) snprintf(buf, (size_t)n, "runtime %d.%d, driver %d.%d", rt / 1000, (rt % 1000) / 10, drv / 1000,
                      (drv % 1000) / 10);
}
