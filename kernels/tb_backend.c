/* tb_backend.c - choosing and opening a backend (tb_backend.h). */
#include "tb_backend.h"
#include "tb_error.h"
#include "tb_opts.h"
#include "tb_threads.h"

#ifdef TB_HAVE_CUDA
#include "tb_cuda.h"
#endif

#include <stdlib.h>
#include <string.h>

int tb_device_parse(const char *s)
{
    if (!s) return -1;
    if (!strcmp(s, "cpu")) return TB_DEVICE_CPU;
    if (!strcmp(s, "cuda") || !strcmp(s, "gpu")) return TB_DEVICE_CUDA;
    if (!strcmp(s, "auto")) return TB_DEVICE_AUTO;
    return -1;
}

int tb_precision_parse(const char *s)
{
    if (!s) return -1;
    if (!strcmp(s, "f32") || !strcmp(s, "fp32")) return TB_PREC_F32;
    if (!strcmp(s, "bf16")) return TB_PREC_BF16;
    if (!strcmp(s, "default") || !strcmp(s, "auto")) return TB_PREC_DEFAULT;
    return -1;
}

int tb_backend_parse_option(tb_backend_opts *o, const char *opt, const char *value)
{
    if (!strcmp(opt, "--device")) {
        int d = tb_device_parse(value);
        if (d < 0) return tb_fail(TB_EUSAGE, "%s: '%s' is not one of cpu, cuda, auto", opt, value);
        o->device = (tb_device)d;
        return TB_OK;
    }
    if (!strcmp(opt, "--precision")) {
        int p = tb_precision_parse(value);
        if (p < 0) return tb_fail(TB_EUSAGE, "%s: '%s' is not one of f32, bf16", opt, value);
        o->precision = (tb_precision)p;
        return TB_OK;
    }
    if (!strcmp(opt, "--gpu")) return tb_parse_int(opt, value, 0, 1023, &o->gpu);
    return tb_fail(TB_EUSAGE, "%s: not a device option", opt);
}

/* GPUs this process can use: 0 without a CUDA build, a driver or a device */
static int gpu_count(void)
{
#ifdef TB_HAVE_CUDA
    return tb_cuda_device_count();
#else
    return 0;
#endif
}

int tb_backend_open(tb_backend *b, const tb_backend_opts *o)
{
    memset(b, 0, sizeof *b);
    b->o = *o;
    /* $TB_GPU is the default GPU (examples/gpu-slot.sh hands each step one);
     * a --gpu other than 0 wins */
    const char *env = getenv("TB_GPU");
    if (b->o.gpu == 0 && env && *env) {
        char *end;
        long g = strtol(env, &end, 10);
        if (*end || g < 0 || g > 1023) return tb_fail(TB_EUSAGE, "TB_GPU='%s' is not a GPU index", env);
        b->o.gpu = (int)g;
    }
    if (b->o.n_threads < 1) b->o.n_threads = tb_default_threads();
    tb_device dev = o->device;
    if (dev == TB_DEVICE_AUTO) dev = gpu_count() > 0 ? TB_DEVICE_CUDA : TB_DEVICE_CPU;
    if (dev == TB_DEVICE_CPU) {
        if (o->precision == TB_PREC_BF16)
            return tb_fail(TB_EUSAGE, "--precision bf16 needs --device cuda (the CPU computes in f32)");
        return tb_cpu_backend_open(b);
    }
#if defined(TB_HAVE_CUDA) && defined(TB_HAVE_CUDA_BACKEND)
    int n = gpu_count();
    if (n == 0) return tb_fail(TB_EIO, "--device cuda: no CUDA GPU is visible (driver missing or no device)");
    if (b->o.gpu < 0 || b->o.gpu >= n)
        return tb_fail(TB_EUSAGE, "--gpu %d: %d GPU%s visible (0..%d)", b->o.gpu, n, n == 1 ? "" : "s", n - 1);
    b->o.device = TB_DEVICE_CUDA;
    if (b->o.precision == TB_PREC_DEFAULT) b->o.precision = TB_PREC_BF16;
    return tb_cuda_backend_open(b);
#else
    return tb_fail(TB_EUSAGE, "--device cuda: this build has no CUDA backend (rebuild with make CUDA=1)");
#endif
}

void tb_backend_close(tb_backend *b)
{
    if (b->ops && b->ops->close) b->ops->close(b);
    memset(b, 0, sizeof *b);
}
