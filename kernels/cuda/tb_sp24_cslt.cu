/*
tb_sp24_cslt.cu - y = x W^T with W 2:4 through NVIDIA cuSPARSELt: the second
implementation of the 2:4 GEMM (tb_sp24_gemm.cu is the first), for the token
counts where it beats cuBLAS dense and our kernels do not (prefill; the table
is at tb_cuda_sp24_choose). Built with `make CUDA=1 CUSPARSELT=1`
(scripts/cusparselt.sh finds or fetches the library); without it this file
is the stubs at the end, and nothing needs the library.

Reference: the same as tb_sp24_gemm.cu's (the CPU product from the .tb arrays):
tests/cuda/test_backend.c checks the CUDA backend's linear on this path
against the CPU backend (test_sp24_prefill). The bench comparison against
cuBLAS and our kernels is tb_sp24_gemm.cu's bench main (-DTB_HAVE_CUSPARSELT).

Layout, as the bench main's (its parity held at every benchmarked shape):
A = W [rows, cols] row-major, 2:4 along cols in W's stored column order, in
the library's compressed form; B = x^T, i.e. x [n, cols] row-major read as a
cols x n column-major matrix; D = y^T, y [n, rows] row-major. W's stored order
is the .tb's (its permutation applied), so x is gathered into that order while
it is cast to bf16 (tb_cuda_sp24_x_bf16, the 2:4 kernel's own x pass).

Output: f32 y straight from the library where it accepts f32 C/D for bf16
A/B (the plan is made that way first); else bf16 D into scratch and one pass
to f32 with the bias. The bias otherwise goes in as C (y filled with it, beta 1).
TB_CSLT_OUT=bf16 forces the second way (the parity test covers both).

Costs paid once: per weight, the compression (a transient dense bf16 copy in
stored order, compressed, freed); per (rows, cols, tokens), the plan and its
algorithm search (cusparseLtMatmulSearch: every algorithm the library has for
the shape, timed on the call's own operands; its default algorithm was 2-3x
slower than the searched one in the bench). A run with many distinct token
counts at or above the threshold pays a search per count and shape.
*/
#include "tb_sp24.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "tb_error.h"
}

#ifdef TB_HAVE_CUSPARSELT
#include <cusparseLt.h>

#include <new>
#include <vector>

// y [n, R] f32 = yb (bf16 [n, R], or none: 0) + bias (or 0)
__global__ void cslt_y_out(const __nv_bfloat16 *__restrict__ yb, const float *__restrict__ bias, int64_t n,
                           int64_t R, float *__restrict__ y)
{
    const int64_t total = n * R;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = (yb ? __bfloat162float(yb[i]) : 0.0f) + (bias ? bias[i % R] : 0.0f);
}

namespace {

struct shape_a { // the structured (sparse) operand's descriptor: one per (rows, cols)
    int64_t R, K;
    cusparseLtMatDescriptor_t ma;
};

struct plan_n { // one per (rows, cols, tokens)
    int64_t R, K;
    int n;
    int ok;        // 0: the library has no plan for this shape
    int searched;  // the algorithm search has run on it
    int out_f32;
    cusparseLtMatDescriptor_t mb, mc;
    cusparseLtMatmulDescriptor_t mm;
    cusparseLtMatmulAlgSelection_t sel;
    cusparseLtMatmulPlan_t plan;
    size_t ws;     // the library's workspace for this plan
};

} // namespace

struct tb_cslt {
    cusparseLtHandle_t h;
    int dev;
    int want_f32; // try f32 output first (not when TB_CSLT_OUT=bf16)
    char desc[64];
    std::vector<shape_a *> shapes;
    std::vector<plan_n *> plans;
    void *scratch;
    size_t scratch_bytes;
};

static int cslt_fail(cusparseStatus_t s, const char *what)
{
    return tb_fail(TB_EIO, "cuSPARSELt: %s: %s", what, cusparseLtGetErrorString(s));
}
static int cuda_fail(cudaError_t e, const char *what)
{
    cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) return tb_fail(TB_EIO, "out of GPU memory: cuSPARSELt %s", what);
    return tb_fail(TB_EIO, "cuSPARSELt: %s: %s", what, cudaGetErrorString(e));
}

static void destroy_plan(plan_n *p)
{
    cusparseLtMatmulPlanDestroy(&p->plan);
    cusparseLtMatmulAlgSelectionDestroy(&p->sel);
    cusparseLtMatDescriptorDestroy(&p->mb);
    cusparseLtMatDescriptorDestroy(&p->mc);
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

extern "C" int tb_cuda_cslt_built(void) { return 1; }

extern "C" tb_cslt *tb_cuda_cslt_open(void)
{
    int dev = 0;
    cudaDeviceProp p;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
        cudaGetLastError();
        tb_fail(TB_EIO, "cuSPARSELt: no current CUDA device");
        return NULL;
    }
    if (p.major < 8) {
        tb_fail(TB_EUSAGE, "cuSPARSELt: %s is sm_%d%d; sparse tensor cores need sm_80+", p.name, p.major, p.minor);
        return NULL;
    }
    tb_cslt *c = new (std::nothrow) tb_cslt();
    if (!c) {
        tb_fail(TB_EIO, "out of memory opening cuSPARSELt");
        return NULL;
    }
    cusparseStatus_t s = cusparseLtInit(&c->h);
    if (s != CUSPARSE_STATUS_SUCCESS) {
        cslt_fail(s, "init");
        delete c;
        return NULL;
    }
    c->dev = dev;
    const char *out = getenv("TB_CSLT_OUT");
    c->want_f32 = !(out && !strcmp(out, "bf16"));
    int v = 0;
    // the library's own version, and the header's where they differ (the handle's layout is the header's)
    if (cusparseLtGetVersion(&c->h, &v) != CUSPARSE_STATUS_SUCCESS) v = CUSPARSELT_VERSION;
    snprintf(c->desc, sizeof c->desc, "cuSPARSELt %d.%d.%d", v / 1000, v / 100 % 10, v % 100);
    if (v != CUSPARSELT_VERSION)
        snprintf(c->desc + strlen(c->desc), sizeof c->desc - strlen(c->desc), " (built with %d.%d.%d)",
                 CUSPARSELT_VERSION / 1000, CUSPARSELT_VERSION / 100 % 10, CUSPARSELT_VERSION % 100);
    return c;
}

extern "C" void tb_cuda_cslt_close(tb_cslt *c)
{
    if (!c) return;
    for (plan_n *p : c->plans) {
        if (p->ok) destroy_plan(p);
        delete p;
    }
    for (shape_a *a : c->shapes) {
        cusparseLtMatDescriptorDestroy(&a->ma);
        delete a;
    }
    cudaFree(c->scratch);
    cusparseLtDestroy(&c->h);
    delete c;
}

extern "C" const char *tb_cuda_cslt_describe(const tb_cslt *c) { return c ? c->desc : "cuSPARSELt (not open)"; }

// the structured descriptor of W [R, K], made once per shape; NULL + tb_fail
static shape_a *get_shape(tb_cslt *c, int64_t R, int64_t K)
{
    for (shape_a *a : c->shapes)
        if (a->R == R && a->K == K) return a;
    shape_a *a = new (std::nothrow) shape_a();
    if (!a) {
        tb_fail(TB_EIO, "out of memory (cuSPARSELt descriptor)");
        return NULL;
    }
    cusparseStatus_t s = cusparseLtStructuredDescriptorInit(&c->h, &a->ma, R, K, K, 16, CUDA_R_16BF, CUSPARSE_ORDER_ROW,
                                                            CUSPARSELT_SPARSITY_50_PERCENT);
    if (s != CUSPARSE_STATUS_SUCCESS) {
        cslt_fail(s, "structured descriptor");
        delete a;
        return NULL;
    }
    a->R = R, a->K = K;
    c->shapes.push_back(a);
    return a;
}

// B, C/D descriptors, matmul descriptor, default algorithm, plan; out_f32 or bf16 C/D
static cusparseStatus_t make_plan(tb_cslt *c, shape_a *a, plan_n *p, int out_f32)
{
    const cudaDataType ty = out_f32 ? CUDA_R_32F : CUDA_R_16BF;
    int have_b = 0, have_c = 0, have_sel = 0, have_plan = 0;
    cusparseStatus_t s = cusparseLtDenseDescriptorInit(&c->h, &p->mb, a->K, p->n, a->K, 16, CUDA_R_16BF,
                                                       CUSPARSE_ORDER_COL);
    if (s == CUSPARSE_STATUS_SUCCESS) {
        have_b = 1;
        s = cusparseLtDenseDescriptorInit(&c->h, &p->mc, a->R, p->n, a->R, 16, ty, CUSPARSE_ORDER_COL);
    }
    if (s == CUSPARSE_STATUS_SUCCESS) {
        have_c = 1;
        s = cusparseLtMatmulDescriptorInit(&c->h, &p->mm, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                           CUSPARSE_OPERATION_NON_TRANSPOSE, &a->ma, &p->mb, &p->mc, &p->mc,
                                           CUSPARSE_COMPUTE_32F);
    }
    if (s == CUSPARSE_STATUS_SUCCESS)
        s = cusparseLtMatmulAlgSelectionInit(&c->h, &p->sel, &p->mm, CUSPARSELT_MATMUL_ALG_DEFAULT);
    if (s == CUSPARSE_STATUS_SUCCESS) {
        have_sel = 1;
        s = cusparseLtMatmulPlanInit(&c->h, &p->plan, &p->mm, &p->sel);
    }
    if (s == CUSPARSE_STATUS_SUCCESS) {
        have_plan = 1;
        s = cusparseLtMatmulGetWorkspace(&c->h, &p->plan, &p->ws);
    }
    if (s == CUSPARSE_STATUS_SUCCESS) {
        p->out_f32 = out_f32;
        return s;
    }
    if (have_plan) cusparseLtMatmulPlanDestroy(&p->plan);
    if (have_sel) cusparseLtMatmulAlgSelectionDestroy(&p->sel);
    if (have_c) cusparseLtMatDescriptorDestroy(&p->mc);
    if (have_b) cusparseLtMatDescriptorDestroy(&p->mb);
    return s;
}

static plan_n *get_plan(tb_cslt *c, int64_t R, int64_t K, int n)
{
    for (plan_n *p : c->plans)
        if (p->R == R && p->K == K && p->n == n) return p;
    shape_a *a = get_shape(c, R, K);
    if (!a) return NULL;
    plan_n *p = new (std::nothrow) plan_n();
    if (!p) {
        tb_fail(TB_EIO, "out of memory (cuSPARSELt plan)");
        return NULL;
    }
    p->R = R, p->K = K, p->n = n;
    cusparseStatus_t s = c->want_f32 ? make_plan(c, a, p, 1) : CUSPARSE_STATUS_NOT_SUPPORTED;
    if (s != CUSPARSE_STATUS_SUCCESS) s = make_plan(c, a, p, 0);
    p->ok = s == CUSPARSE_STATUS_SUCCESS;
    c->plans.push_back(p); // a refusal is kept too, so it is asked once
    return p;
}

// scratch of at least `bytes`; the old one may be in use by queued work
static void *scratch(tb_cslt *c, size_t bytes, cudaStream_t st)
{
    if (bytes <= c->scratch_bytes) return c->scratch;
    cudaError_t e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) {
        cuda_fail(e, "scratch");
        return NULL;
    }
    cudaFree(c->scratch);
    c->scratch = NULL;
    c->scratch_bytes = 0;
    size_t want = bytes + bytes / 4; // headroom, as the backend's work space
    if ((e = cudaMalloc(&c->scratch, want)) != cudaSuccess) {
        c->scratch = NULL;
        tb_fail(TB_EIO, "out of GPU memory: cuSPARSELt scratch of %zu bytes", want);
        return NULL;
    }
    c->scratch_bytes = want;
    return c->scratch;
}

extern "C" int tb_cuda_cslt_compress(tb_cslt *c, const tb_sp24_weight *w, void **comp, size_t *bytes, void *stream)
{
    *comp = NULL;
    *bytes = 0;
    cudaStream_t st = (cudaStream_t)stream;
    shape_a *a = get_shape(c, w->rows, w->cols);
    if (!a) return TB_EIO;
    size_t csz = 0, cbuf = 0;
    cusparseStatus_t s = cusparseLtSpMMACompressedSize2(&c->h, &a->ma, &csz, &cbuf);
    if (s != CUSPARSE_STATUS_SUCCESS) return cslt_fail(s, "compressed size");
    // W dense in its stored column order (no permutation undone): there it is 2:4
    tb_sp24_weight stored = *w;
    stored.perm = NULL;
    void *dense = NULL, *buf = NULL, *out = NULL;
    const size_t dbytes = (size_t)w->rows * (size_t)w->cols * 2;
    int rc = TB_OK;
    cudaError_t e = cudaMalloc(&dense, dbytes);
    if (e != cudaSuccess) rc = cuda_fail(e, "compression (the transient dense copy)");
    if (!rc && cbuf && (e = cudaMalloc(&buf, cbuf)) != cudaSuccess) rc = cuda_fail(e, "compression buffer");
    if (!rc && (e = cudaMalloc(&out, csz)) != cudaSuccess) rc = cuda_fail(e, "compressed weight");
    if (!rc) rc = tb_cuda_sp24_to_dense(&stored, dense, TB_BF16, stream);
    if (!rc && (s = cusparseLtSpMMACompress2(&c->h, &a->ma, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, dense, out, buf,
                                             st)) != CUSPARSE_STATUS_SUCCESS)
        rc = cslt_fail(s, "compress");
    if (!rc && (e = cudaStreamSynchronize(st)) != cudaSuccess) rc = cuda_fail(e, "compress");
    cudaFree(dense);
    cudaFree(buf);
    if (rc) {
        cudaFree(out);
        return rc;
    }
    *comp = out;
    *bytes = csz;
    return TB_OK;
}

extern "C" int tb_cuda_cslt_supports(tb_cslt *c, int64_t rows, int64_t cols, int n)
{
    if (!c || n <= 0) return 0;
    plan_n *p = get_plan(c, rows, cols, n);
    if (!p) tb_err_clear(); // out of host memory or a descriptor refused: another path runs
    return p && p->ok;
}

extern "C" int tb_cuda_cslt_linear(tb_cslt *c, const tb_sp24_weight *w, const void *comp, const float *x,
                                   const void *x_bf16, int n, float *y, const float *bias, void *stream)
{
    if (n <= 0) return TB_OK;
    cudaStream_t st = (cudaStream_t)stream;
    plan_n *p = get_plan(c, w->rows, w->cols, n);
    if (!p) return TB_EIO;
    if (!p->ok)
        return tb_fail(TB_EUSAGE, "cuSPARSELt: no plan for %lld x %lld at %d tokens", (long long)w->rows,
                       (long long)w->cols, n);
retry:
    const size_t xb = align256((size_t)n * w->cols * 2), yb = p->out_f32 ? 0 : align256((size_t)n * w->rows * 2);
    char *sc = (char *)scratch(c, xb + yb + p->ws, st);
    if (!sc) return TB_EIO;
    // B: x as bf16 rows in W's stored column order; the caller's bf16 copy as
    // it is when there is no permutation, else gathered (from bf16 if given)
    const int own_x = !x_bf16 || w->perm;
    const void *B = own_x ? (const void *)sc : x_bf16;
    int rc = own_x ? tb_cuda_sp24_x_bf16(w, x_bf16 ? x_bf16 : (const void *)x, x_bf16 ? TB_BF16 : TB_F32, n, sc, stream)
                   : TB_OK;
    if (rc) return rc;
    void *d = p->out_f32 ? (void *)y : (void *)(sc + xb);
    const float one = 1.0f, zero = 0.0f;
    cusparseStatus_t s;
    if (!p->searched) {
        // the algorithm search runs the product several times, beta 0, into the real output
        s = cusparseLtMatmulSearch(&c->h, &p->plan, &one, comp, B, &zero, d, d, sc + xb + yb, &st, 1);
        if (s != CUSPARSE_STATUS_SUCCESS && p->out_f32) {
            // an f32-output plan the library made but will not run: the bf16-output one instead
            destroy_plan(p);
            shape_a *a = get_shape(c, w->rows, w->cols);
            s = a ? make_plan(c, a, p, 0) : CUSPARSE_STATUS_INTERNAL_ERROR;
            if (s == CUSPARSE_STATUS_SUCCESS) goto retry;
            p->ok = 0;
        }
        if (s != CUSPARSE_STATUS_SUCCESS) return cslt_fail(s, "algorithm search");
        p->searched = 1;
        size_t ws = 0;
        if ((s = cusparseLtMatmulGetWorkspace(&c->h, &p->plan, &ws)) != CUSPARSE_STATUS_SUCCESS)
            return cslt_fail(s, "workspace");
        if (ws > p->ws) { // the chosen algorithm needs more: grow (x stays at the start of the scratch)
            p->ws = ws;
            char *grown = (char *)scratch(c, xb + yb + p->ws, st);
            if (!grown) return TB_EIO;
            if (grown != sc && own_x &&
                (rc = tb_cuda_sp24_x_bf16(w, x_bf16 ? x_bf16 : (const void *)x, x_bf16 ? TB_BF16 : TB_F32, n, grown,
                                          stream)))
                return rc;
            if (own_x) B = grown;
            sc = grown;
            d = p->out_f32 ? (void *)y : (void *)(sc + xb);
        }
    }
    const float *beta = &zero;
    if (p->out_f32 && bias) { // y = bias, then y = W x + 1 * y
        cslt_y_out<<<1024, 256, 0, st>>>(NULL, bias, n, w->rows, y);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return cuda_fail(e, "bias launch");
        beta = &one;
    }
    s = cusparseLtMatmul(&c->h, &p->plan, &one, comp, B, beta, d, d, sc + xb + yb, &st, 1);
    if (s != CUSPARSE_STATUS_SUCCESS) return cslt_fail(s, "matmul");
    if (!p->out_f32) {
        cslt_y_out<<<1024, 256, 0, st>>>((const __nv_bfloat16 *)d, bias, n, w->rows, y);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return cuda_fail(e, "output launch");
    }
    return TB_OK;
}

#else // no CUSPARSELT=1: nothing calls these after open fails

struct tb_cslt {
    int unused;
};
extern "C" int tb_cuda_cslt_built(void) { return 0; }
extern "C" tb_cslt *tb_cuda_cslt_open(void)
{
    tb_fail(TB_EUSAGE, "cuSPARSELt: not in this build (make CUDA=1 CUSPARSELT=1)");
    return NULL;
}
extern "C" void tb_cuda_cslt_close(tb_cslt *c) { (void)c; }
extern "C" const char *tb_cuda_cslt_describe(const tb_cslt *c)
{
    (void)c;
    return "cuSPARSELt (not built)";
}
extern "C" int tb_cuda_cslt_compress(tb_cslt *c, const tb_sp24_weight *w, void **comp, size_t *bytes, void *stream)
{
    (void)c, (void)w, (void)stream;
    *comp = NULL;
    *bytes = 0;
    return tb_fail(TB_EUSAGE, "cuSPARSELt: not in this build");
}
extern "C" int tb_cuda_cslt_supports(tb_cslt *c, int64_t rows, int64_t cols, int n)
{
    (void)c, (void)rows, (void)cols, (void)n;
    return 0;
}
extern "C" int tb_cuda_cslt_linear(tb_cslt *c, const tb_sp24_weight *w, const void *comp, const float *x,
                                   const void *x_bf16, int n, float *y, const float *bias, void *stream)
{
    (void)c, (void)w, (void)comp, (void)x, (void)x_bf16, (void)n, (void)y, (void)bias, (void)stream;
    return tb_fail(TB_EUSAGE, "cuSPARSELt: not in this build");
}
#endif
