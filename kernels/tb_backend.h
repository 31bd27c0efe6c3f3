/* tb_backend.h - the compute seam: one decoder, two backends.
 *
 * The decoder (kernels/tb_forward.c, tb_backward.c, tb_eval.c, tb_calib.c,
 * tb_recon.c) is written once and calls only the table below; kernels/cpu/
 * and kernels/cuda/ each implement it. A tool chooses a backend with
 * tb_backend_open() (from --device cpu|cuda|auto and --gpu N) and hands it to
 * the engine; nothing else in the decoder knows which one runs.
 *
 * Memory. Every array an op reads or writes is backend memory, allocated with
 * ops->alloc (for the CPU backend that is ordinary host memory, so the
 * existing host code and tests read it directly). Host data crosses with
 * upload/download. Activations are f32, row-major [tokens, features]. Weights
 * live in a tb_dlinear, made from a tb_linear (tb_linear.h) by linear_upload:
 * the CPU backend computes from the mapped file data in place; the CUDA
 * backend keeps a dense copy in the compute dtype (bf16 or f32), and for a
 * packed 2:4 weight in bf16 the sparse tensor-core form (its policy is in
 * tb_backend_cuda.cu), one layer at a time when memory is short (the engine
 * decides: tb_forward_opts.weight_budget in tb_model.h).
 *
 * Precision. TB_PREC_F32: f32 everywhere, no TF32 (matches transformers' f32
 * forward to ~1e-6); TB_PREC_BF16: linears, Gram tiles and inference
 * attention (saved == NULL) with bf16 operands and f32 accumulation, everything
 * else f32 (the GPU default; attention that keeps `saved` for a backward stays
 * f32, so the backward recomputes what the forward computed). The CPU backend
 * is always f32.
 *
 * Ordering. Ops are issued in order on one stream; results written by an op
 * are visible to every later op. download and the reductions that return a
 * host value (nll, kl, sum_sq_diff, first_nonfinite) wait for the device.
 * Errors inside an op (a failed launch, an out-of-memory in cuBLAS) are
 * sticky: the op records them and ops->sync (called at least once per window
 * by the engine) returns them through tb_fail, so every call site need not
 * check. alloc and linear_upload return errors at once.
 */
#ifndef TB_BACKEND_H
#define TB_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "tb_linear.h"
#include "tb_ops.h" /* tb_attn_shape */

typedef enum { TB_DEVICE_CPU = 0, TB_DEVICE_CUDA = 1, TB_DEVICE_AUTO = 2 } tb_device;
typedef enum { TB_PREC_DEFAULT = 0, TB_PREC_F32 = 1, TB_PREC_BF16 = 2 } tb_precision;

typedef struct {
    tb_device device;       /* AUTO (0 is CPU: set it): CUDA if compiled in and a GPU is present, else CPU */
    int gpu;                /* CUDA device index; 0 takes $TB_GPU when that is set
                             * (examples/gpu-slot.sh), so pass a nonzero --gpu to override it */
    tb_precision precision; /* DEFAULT: bf16 on CUDA, f32 on the CPU */
    int n_threads;          /* CPU backend threads (and host-side work of the CUDA one) */
} tb_backend_opts;

/* "cpu", "cuda", "auto" -> TB_DEVICE_*; -1 if none. "f32", "bf16" likewise. */
int tb_device_parse(const char *s);
int tb_precision_parse(const char *s);

/* The device options every heavy tool takes, one meaning everywhere:
 *   --device cpu|cuda|auto   --gpu N   --precision f32|bf16
 * opt is the option's name as typed ("--device"); TB_EUSAGE naming it on a
 * bad value. The help text for them: */
int tb_backend_parse_option(tb_backend_opts *o, const char *opt, const char *value);
#define TB_BACKEND_OPTIONS_HELP \
    "  --device D          cpu, cuda or auto (default: auto, CUDA when built in and a GPU is present)\n" \
    "  --gpu N             which CUDA device (default $TB_GPU, else 0)\n" \
    "  --precision P       f32 or bf16 arithmetic on the GPU (default bf16; the CPU computes in f32)\n"

typedef struct tb_backend tb_backend;

/* A linear weight where the backend computes. rows/cols as tb_linear. */
typedef struct {
    const tb_linear *host; /* the source (not owned) */
    int rows, cols;
    void *w;               /* CUDA: dense [rows, cols] in model column order, compute dtype */
    float *w32;            /* CUDA training (linear_upload_train): the f32 master copy */
    float *bias;           /* CUDA: [rows] f32 or NULL */
    void *sparse;          /* CUDA: a 2:4 weight's sparse tensor-core form (tb_backend_cuda.cu: w is then
                            * NULL and the dense copy made on first need), else NULL */
    int trainable;
    size_t bytes;          /* backend memory this copy holds (CPU: 0, it binds) */
} tb_dlinear;

typedef struct tb_backend_ops {
    const char *name; /* "cpu", "cuda" */
    /* release everything the backend holds (b->impl); allocations made with
     * alloc must have been freed by their owners first */
    void (*close)(tb_backend *b);

    /* ---- memory ---- */
    /* NULL and a one-line error naming `what` and the bytes asked when it fails */
    void *(*alloc)(tb_backend *b, size_t bytes, const char *what);
    void (*free)(tb_backend *b, void *p);
    void (*upload)(tb_backend *b, void *dst, const void *src, size_t bytes);
    void (*download)(tb_backend *b, void *dst, const void *src, size_t bytes);
    void (*copy)(tb_backend *b, void *dst, const void *src, size_t bytes);
    void (*zero)(tb_backend *b, void *p, size_t bytes);
    /* wait for the issued work; TB_OK or the first sticky error (tb_fail) */
    int (*sync)(tb_backend *b);
    /* bytes free for new allocations (CPU: SIZE_MAX) */
    size_t (*mem_free)(tb_backend *b);

    /* ---- weights ---- */
    /* d from L for inference in the backend's precision. */
    int (*linear_upload)(tb_backend *b, tb_dlinear *d, const tb_linear *L);
    /* d from L (dense f32, unpermuted) for training: ops->adam updates it. On
     * the CPU d computes from L->data in place, so adam writes the caller's array. */
    int (*linear_upload_train)(tb_backend *b, tb_dlinear *d, const tb_linear *L);
    /* the trained weights back into host f32 [rows, cols] (CPU: a no-op when
     * dst is L->data) */
    void (*linear_download)(tb_backend *b, const tb_dlinear *d, float *dst);
    void (*linear_release)(tb_backend *b, tb_dlinear *d);

    /* ---- decoder ops (all pointers backend memory unless noted) ---- */
    /* x[t] = row tokens[t] of the table, tokens on the HOST */
    void (*embed)(tb_backend *b, const tb_linear *table, const int32_t *tokens, int n, float *x);
    /* y = w * x / sqrt(mean(x^2) + eps) per row; inv_rms [n] (may be NULL); y may equal x */
    void (*rmsnorm)(tb_backend *b, float *y, float *inv_rms, const float *x, const float *w, int n, int d, float eps);
    /* dx (+)= the input gradient of rmsnorm for dy, from x and its inv_rms */
    void (*rmsnorm_backward)(tb_backend *b, float *dx, const float *dy, const float *x, const float *inv_rms,
                             const float *w, int n, int d, int accumulate);
    /* rotate x [n, heads*head_dim] in place for positions pos0..; cos/sin [positions, head_dim/2]
     * (the backward passes -sin) */
    void (*rope)(tb_backend *b, float *x, int n, int heads, int head_dim, int pos0, const float *cos_t,
                 const float *sin_t);
    /* floats of `saved` the attention of n queries over kv keys keeps for its backward */
    size_t (*attention_saved)(tb_backend *b, const tb_attn_shape *a, int n, int kv);
    /* causal attention for n queries at pos0.. over keys 0..pos0+n-1 (tb_ops.h's
     * tb_attention); saved: NULL or attention_saved floats for the backward */
    void (*attention)(tb_backend *b, const tb_attn_shape *a, const float *q, const float *k, const float *v, int n,
                      int pos0, float *out, float *saved);
    /* the backward of a pos0 = 0 attention of n tokens: d_q, d_k, d_v overwritten */
    void (*attention_backward)(tb_backend *b, const tb_attn_shape *a, const float *q, const float *k,
                               const float *v, const float *out, const float *saved, const float *d_out, int n,
                               float *d_q, float *d_k, float *d_v);
    /* out = silu(gate) * up (count values); out may equal gate */
    void (*swiglu)(tb_backend *b, float *out, const float *gate, const float *up, size_t count);
    /* d_gate = d_out * up * s (1 + g (1 - s)), d_up = d_out * g s; d_gate may equal d_out */
    void (*swiglu_backward)(tb_backend *b, float *d_gate, float *d_up, const float *d_out, const float *gate,
                            const float *up, size_t count);
    /* y = a + c elementwise */
    void (*add)(tb_backend *b, float *y, const float *a, const float *c, size_t count);
    /* y[n, rows] = x[n, cols] W^T (+ bias) */
    void (*linear)(tb_backend *b, const tb_dlinear *W, const float *x, int n, float *y);
    /* dx[n, cols] (+)= dy[n, rows] W */
    void (*linear_dx)(tb_backend *b, const tb_dlinear *W, const float *dy, int n, float *dx, int accumulate);
    /* dW[rows, cols] = dy[n, rows]^T x[n, cols] (f32) */
    void (*linear_dw)(tb_backend *b, const float *dy, const float *x, int n, int rows, int cols, float *dW);
    /* G[cols, cols] += x^T x in f64; the upper triangle (row-major G[i*cols + j],
     * j >= i) is what is defined and read, the lower is unspecified */
    void (*gram_acc)(tb_backend *b, const float *x, int n, int cols, double *G);
    /* F += g^2 elementwise (the Fisher diagonal) */
    void (*sq_acc)(tb_backend *b, float *F, const float *g, size_t count);

    /* ---- decode at a position held in backend memory: pos is one int32 the
     * host uploads before each step, so the step's launches do not change
     * from token to token and replay as one CUDA graph (tb_forward.c) ---- */
    /* for t < n at p = *pos + t: rotate q [n, q_heads*head_dim] in place, and
     * write k [n, kv_heads*head_dim] rotated into row p of k_cache and v into
     * row p of v_cache (k, v unchanged); the two ropes and the cache writes
     * of one layer in one pass */
    void (*rope_append)(tb_backend *b, float *q, const float *k, const float *v, int n, int q_heads, int kv_heads,
                        int head_dim, const int32_t *pos, const float *cos_t, const float *sin_t, float *k_cache,
                        float *v_cache);
    /* attention (inference: nothing saved) for n queries at positions *pos.. */
    void (*attention_at)(tb_backend *b, const tb_attn_shape *a, const float *q, const float *k, const float *v, int n,
                         const int32_t *pos, float *out);
    /* y = a + c, then yn = rmsnorm(y) with w as rmsnorm does (inv_rms may be
     * NULL; y may equal a or c): a residual add and the next norm in one pass,
     * the same values as add then rmsnorm */
    void (*add_rmsnorm)(tb_backend *b, float *y, float *yn, float *inv_rms, const float *a, const float *c,
                        const float *w, int n, int d, float eps);
    /* out[n, rows] = silu(x Wg^T) * (x Wu^T), Wg and Wu of one shape (biases
     * added): linear, linear and swiglu, which is what runs where no fused
     * kernel takes the call, gate and up [n, rows] then holding the products
     * (else unspecified); CUDA fuses 1 token of dense bf16 weights */
    void (*linear_swiglu)(tb_backend *b, const tb_dlinear *Wg, const tb_dlinear *Wu, const float *x, int n,
                          float *gate, float *up, float *out);
    /* y[i] [n, W[i]->rows] = x W[i]^T (+ bias) for i < count (1..3), the W[i]
     * of one column count: count linears on one input (a decode step's q, k,
     * v); CUDA fuses 1 token of dense bf16 weights into one launch */
    void (*linears)(tb_backend *b, int count, const tb_dlinear *const *W, const float *x, int n, float *const *y);

    /* ---- graphs (NULL on a backend without them) ---- */
    /* Capture the ops issued between graph_begin and graph_end instead of
     * running them; graph_end returns the replayable graph, or NULL with the
     * reason (tb_errmsg) when the capture failed, in which case nothing of it
     * ran and no error is left sticky. graph_begin fails (TB_EUSAGE) when
     * graphs are switched off (CUDA: TB_CUDA_GRAPH=0). graph_launch runs a
     * graph on the stream: 0, or 1 when the graph is stale (the backend
     * reallocated work space it captured): free it and capture again. */
    int (*graph_begin)(tb_backend *b);
    void *(*graph_end)(tb_backend *b);
    int (*graph_launch)(tb_backend *b, void *graph);
    void (*graph_free)(tb_backend *b, void *graph);

    /* ---- losses and reductions (host results; they wait) ---- */
    /* sum over t < n-1 of logsumexp(logits[t]) - logits[t][tokens[t+1]], f64; tokens on the HOST */
    double (*nll)(tb_backend *b, const float *logits, const int32_t *tokens, int n, int vocab);
    /* the same loss's gradient in place: logits[t] = (softmax - onehot(tokens[t+1])) / (n-1),
     * row n-1 zero; returns the mean NLL */
    double (*xent_backward)(tb_backend *b, float *logits, const int32_t *tokens, int n, int vocab);
    /* sum over rows of KL(softmax(ref) || softmax(cur)), f64, and how many rows agree on the argmax */
    double (*kl)(tb_backend *b, const float *ref, const float *cur, int n, int vocab, int64_t *top1_same);
    /* the same sum (and top1_same, set) for distillation, per row in f64; with
     * scale != 0 cur is then overwritten by scale * (softmax(cur) -
     * softmax(ref)), the gradient of scale * KL (scale 0 writes nothing). The
     * CPU sums as tb_kl_rows (tb_train.h) does, which kl need not. */
    double (*kl_grad)(tb_backend *b, const float *ref, float *cur, int n, int vocab, double scale,
                      int64_t *top1_same);
    /* sum of (a - c)^2 in f64; c NULL: sum of a^2 */
    double (*sum_sq_diff)(tb_backend *b, const float *a, const float *c, size_t count);
    /* d = scale * (a - c) (the MSE gradient) */
    void (*scaled_diff)(tb_backend *b, float *d, const float *a, const float *c, float scale, size_t count);
    /* index of the first non-finite value, or -1 */
    int64_t (*first_nonfinite)(tb_backend *b, const float *x, size_t count);

    /* ---- training ---- */
    /* Adam step on the trainable entries (keep[i] != 0; keep on the backend)
     * of W from its gradient g: m1, m2 f32 moments, laid out as
     * adam_moments_kept says; lr already scheduled; c1 = 1 - beta1^t,
     * c2 = 1 - beta2^t. Pruned entries stay exact zeros. */
    void (*adam)(tb_backend *b, tb_dlinear *W, const float *g, const uint8_t *keep, float *m1, float *m2, double lr,
                 double beta1, double beta2, double c1, double c2, double eps);
    /* 1: m1, m2 hold the trainable entries only, in order (the CPU: one
     * sequential pass; half the memory at 2:4, which a 7B layer needs to fit
     * in 3 GB); 0: every entry, indexed by position (CUDA: threads need no
     * prefix count, and the GPU has the room) */
    int adam_moments_kept;

    /* ---- learned N:M masks (tb_learnmask.h; the CPU calls its functions,
     * CUDA rounds every operation as they do, so masks re-select alike) ---- */
    /* colsq[cols] += the f64 sum over the n rows of x[n, cols] of x[t, c]^2 */
    void (*col_sq_acc)(tb_backend *b, const float *x, int n, int cols, double *colsq);
    /* the straight-through step of a latent weight lat [count] whose mask may
     * still change (tb_learnmask_update): Adam on every entry, m1 and m2 at
     * full size whatever adam_moments_kept says, t the 1-based step; then,
     * decay > 0, the pruned latents (keep 0) *= 1 - lr * decay */
    void (*latent_step)(tb_backend *b, float *lat, const float *g, float *m1, float *m2, const uint8_t *keep,
                        size_t count, double lr, double beta1, double beta2, double eps, int64_t t, double decay);
    /* keep [rows, cols] = in each group of m consecutive columns of a row the
     * n entries of largest |w| * (float)sqrt(colsq[c] / tokens), ties to the
     * lower column (tb_nm_reselect; m <= 16; a trailing partial group is left) */
    void (*nm_reselect)(tb_backend *b, const float *w, const double *colsq, double tokens, int64_t rows,
                        int64_t cols, int n, int m, uint8_t *keep);
    /* the trained weight W (linear_upload_train) = lat where keep, exact zeros
     * elsewhere (tb_learnmask_apply), its compute copy refreshed */
    void (*mask_apply)(tb_backend *b, tb_dlinear *W, const float *lat, const uint8_t *keep);
} tb_backend_ops;

struct tb_backend {
    const tb_backend_ops *ops;
    tb_backend_opts o;     /* resolved: device CPU or CUDA, precision F32 or BF16 */
    char desc[160];        /* "cpu, 2 threads, f32" / "cuda:0 NVIDIA H200, sm_90, 139.8 GiB, bf16" */
    void *impl;
};

/* Resolve o (AUTO, DEFAULT) and open the backend. One-line errors: CUDA asked
 * for but not compiled in (TB_EUSAGE), no GPU or --gpu N past the count
 * (TB_EIO), a GPU architecture the build has no code for (TB_EIO). */
int tb_backend_open(tb_backend *b, const tb_backend_opts *o);
void tb_backend_close(tb_backend *b);

/* The implementations (tb_backend_open picks one). */
int tb_cpu_backend_open(tb_backend *b);
int tb_cuda_backend_open(tb_backend *b); /* CUDA=1 builds; else TB_EUSAGE */

/* Typed helpers */
static inline float *tb_alloc_f32(tb_backend *b, size_t count, const char *what)
{
    return (float *)b->ops->alloc(b, count * sizeof(float), what);
}

#endif
