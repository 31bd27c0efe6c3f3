/* tb_cuda_backend.h - the CUDA backend's private state, shared by its .cu files
 * (tb_backend_cuda.cu: memory, weights, GEMMs, elementwise ops, reductions,
 * Adam; tb_attention_cuda.cu: the fused attention and its backward).
 *
 * Error model (tb_backend.h's "sticky" errors): an op never returns a status;
 * a failed launch or library call records the first message in cu->msg, and
 * every later op returns at once, until ops->sync reports it through tb_fail.
 * alloc and linear_upload report at once as well. */
#ifndef TB_CUDA_BACKEND_H
#define TB_CUDA_BACKEND_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "tb_backend.h"
#include "tb_error.h"
#include "tb_threads.h"
}

struct tb_cuda {
    int dev;
    cudaDeviceProp prop;
    cudaStream_t stream;  /* every op of this backend runs on this one stream */
    cublasHandle_t blas;
    int bf16;             /* compute dtype of weights and GEMM operands */
    int err;              /* sticky: TB_OK or the first error's code */
    char msg[320];
    /* device work space, grown on demand; one op uses it at a time */
    void *ws;
    size_t ws_bytes;
    /* host staging (embed rows, reduction partials) */
    void *host;
    size_t host_bytes;
    /* cuSPARSELt for 2:4 weights at prefill token counts (CUSPARSELT=1 builds,
     * bf16, sm_80+; tb_backend_cuda.cu "N:M weights"), or NULL */
    struct tb_cslt *cslt;
    int cslt_always;      /* TB_SP24_PREFILL=cusparselt: cuSPARSELt at every count above 16 tokens */
    int no_graph;         /* TB_CUDA_GRAPH=0: graph_begin refuses (decode runs plain launches) */
    /* bf16 operands made by the op that writes an activation (tb_backend_cuda.cu
     * "bf16 operands"): seq counts op entries (tb_cu); xb holds the bf16 copy of
     * xb_count floats at xb_src, made by the op that entered as number xb_seq */
    unsigned long long seq;
    const float *xb_src;
    size_t xb_count;
    unsigned long long xb_seq;
    void *xb;
    size_t xb_cap;
    /* pinned host staging of embed at prefill counts, and the event after its last upload */
    void *pin;
    size_t pin_bytes;
    cudaEvent_t pin_ev;
};

/* every op enters through here (and counts itself, cu->seq): make this
 * backend's GPU current on the calling thread (a tool may call from another
 * thread than the one that opened it, or hold backends on two GPUs); cheap
 * when it already is */
static inline tb_cuda *tb_cu(tb_backend *b)
{
    tb_cuda *cu = (tb_cuda *)b->impl;
    cu->seq++; /* an op began: an earlier op's bf16 operand is stale unless a linear keeps it (cu_linear) */
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != cu->dev) cudaSetDevice(cu->dev);
    return cu;
}

/* record the first error; returns 1 if `e` is an error */
int tb_cuda_check(tb_cuda *cu, cudaError_t e, const char *what, const char *file, int line);
#define TB_CU_CHECK(cu, call, what) tb_cuda_check((cu), (call), (what), __FILE__, __LINE__)
/* after a kernel launch */
#define TB_CU_LAUNCHED(cu, what) tb_cuda_check((cu), cudaGetLastError(), (what), __FILE__, __LINE__)
void tb_cuda_set_error(tb_cuda *cu, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* device work space of at least `bytes` (NULL and a sticky error on failure) */
void *tb_cuda_ws(tb_cuda *cu, size_t bytes, const char *what);

/* ---- tb_attention_cuda.cu ---- */
/* lse: NULL or [n_heads, n] (the row log-sum-exp the backward recomputes from);
 * pos_dev: NULL, or the queries' first position in device memory (pos0 unused) */
void tb_cuda_attention(tb_cuda *cu, const tb_attn_shape *a, const float *q, const float *k, const float *v, int n,
                       int pos0, const int32_t *pos_dev, float *out, float *lse);
void tb_cuda_attention_backward(tb_cuda *cu, const tb_attn_shape *a, const float *q, const float *k, const float *v,
                                const float *out, const float *lse, const float *d_out, int n, float *d_q, float *d_k,
                                float *d_v);
/* 0 if this device can run the attention kernels for head_dim (shared memory); else sets an error */
int tb_cuda_attention_check(tb_cuda *cu, int head_dim);

#endif
