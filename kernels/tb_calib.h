/* tb_calib.h - calibration statistics over windows of tokens (tb-fisher).
 *
 * Per window: a forward pass that keeps its activations (Gram matrices of
 * every distinct linear input are accumulated from the forward's linear-input
 * hook), then a backward pass whose per-weight gradients feed the empirical
 * Fisher diagonal (sum of dW^2, divided by the window count on output) and,
 * for K chosen windows, the gradient samples. See tb_fisher.h for the file.
 *
 * Memory, in addition to the model's mapping and one window's activations
 * (tb_forward) and their gradients (tb_backward):
 *   Fisher  4 bytes x linear parameters        (f32 sums of squares)
 *   Gram    8 bytes x sum over distinct inputs of in^2   (f64)
 *   samples 2 bytes x K x linear parameters    (bf16)
 * Numerics: a non-finite gradient is an error naming the tensor and window.
 * Fisher and Gram sums live in the backend's memory (the GPU's on CUDA) and
 * cross to the host only when written, a block at a time (tb_fisher_write).
 */
#ifndef TB_CALIB_H
#define TB_CALIB_H

#include <stdint.h>

#include "tb_backward.h"
#include "tb_model.h"

enum { TB_GRAM_QKV, TB_GRAM_O, TB_GRAM_GATE_UP, TB_GRAM_DOWN, TB_GRAM_PER_LAYER };

typedef struct {
    int fisher;            /* accumulate the Fisher diagonal (needs a backward pass) */
    int gram;              /* accumulate Gram matrices of linear inputs */
    int grad_samples;      /* K >= 0 windows whose gradients are kept */
    int64_t total_windows; /* windows that will be fed: decides which are sampled */
    int layer_begin, layer_end; /* Gram only for layers in [begin, end) */
    tb_backend *backend;   /* where the sums live: the forward's backend (NULL: the CPU) */
} tb_calib_opts;

typedef struct {
    const tb_model *m;
    tb_calib_opts o;
    int with_lm_head;   /* lm_head has its own weight (untied): Fisher for it too */
    tb_backend *be;     /* o.backend or own_be */
    tb_backend own_be;
    float **fisher;     /* [n_layers * TB_LIN_PER_LAYER + 1] sums of dW^2 (backend memory); NULL when off */
    uint16_t **samples; /* same indexing, bf16 [K, rows, cols] (host) */
    double **gram;      /* [n_layers * TB_GRAM_PER_LAYER] sums of x x^T (upper triangle, backend memory) */
    int64_t *gram_tokens;
    float *host_tmp;    /* a sampled gradient downloaded (largest linear) */
    int64_t windows, tokens;
    int64_t cur_window; /* index of the window being processed */
    int sample_slot;    /* of the current window, -1 if not sampled */
} tb_calib;

int tb_calib_init(tb_calib *c, const tb_model *m, int max_tokens, const tb_calib_opts *o);
void tb_calib_free(tb_calib *c);

/* Accumulate one window (ids [n]) through f (and b when Fisher or samples are
 * wanted; f must then keep activations). Installs its own forward hook. */
int tb_calib_window(tb_calib *c, tb_forward *f, tb_backward *b, const int32_t *ids, int n, double *loss);

/* Sequential mode: the caller has put the residual stream entering layer l0
 * into tb_forward_stream(f, l0) (or embedded the tokens); runs layers
 * [l0, l1) accumulating their Gram matrices. The output stays in
 * tb_forward_stream(f, l1). No Fisher: that needs the whole model's loss. */
int tb_calib_layers(tb_calib *c, tb_forward *f, int n, int l0, int l1);

/* The same run in two parts, [l0, mid) then [mid, l1), with at_mid(ctx)
 * called between them while tb_forward_stream(f, mid) holds the stream
 * entering layer mid (l0 < mid <= l1; at mid == l1, after the whole run):
 * one window counted, the same sums as tb_calib_layers. tb-fisher
 * --acts-out-at saves the stream leaving pruned layer L while the dense layer
 * L+1 after it accumulates its Grams, in one pass. */
int tb_calib_layers_at(tb_calib *c, tb_forward *f, int n, int l0, int mid, int l1, int (*at_mid)(void *ctx),
                       void *ctx);

/* Write the statistics (safetensors, layout of tb_fisher.h) through an atomic
 * output; meta_kv: extra metadata pairs. */
int tb_calib_write(tb_calib *c, const char *path, const char *const *meta_kv, int n_meta);

/* Weight name of a linear layer ("model.layers.3.mlp.up_proj.weight",
 * "lm_head.weight" for layer == n_layers) into buf. */
void tb_calib_weight_name(const tb_model *m, int layer, tb_lin_id which, char *buf, size_t n);

#endif
