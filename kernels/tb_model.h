/* tb_model.h - a Llama-family decoder (llama, mistral, qwen2), on any backend.
 *
 * Three pieces:
 *   tb_model    the weights, bound by HF tensor name from a checkpoint and
 *               validated against config.json; tb_model_open() is the one
 *               loading function (HF directory today, pruned formats later).
 *               Linear weights stay in the mapping (see tb_linear.h); the
 *               small per-channel vectors (norms, biases) are f32 copies.
 *   tb_forward  the run state: every activation buffer, the KV cache and the
 *               scratch, allocated once by tb_forward_init() in the memory of
 *               its backend (tb_backend.h: host memory on the CPU, device
 *               memory on CUDA); tb_forward_run() allocates nothing but the
 *               weights of a layer it has not used yet. One call processes n tokens at positions
 *               pos0 .. pos0+n-1 against the cache, so prefill (pos0 = 0, a
 *               whole window) and a decode step (n = 1) are the same code.
 *   tb_eval_*   the perplexity protocol of PROTOCOL.md and token sampling.
 *
 * Activations are public, in the style of llm.c, because the backward pass
 * (empirical Fisher, Gram matrices) reads them: with opts.keep_acts every
 * layer keeps its own buffers, otherwise one set is reused layer after layer.
 * They are backend memory: host code reads them directly only on the CPU
 * backend; everything else goes through the backend's ops or the
 * tb_forward_get/set functions below.
 */
#ifndef TB_MODEL_H
#define TB_MODEL_H

#include <stdint.h>

#include "tb_backend.h"
#include "tb_config.h"
#include "tb_linear.h"
#include "tb_loss.h"
#include "tb_safetensors.h"
#include "tb_tbm.h"

/* The linear layers of a decoder layer, in forward order; TB_LIN_LM_HEAD is
 * the output projection (layer index = n_layers in hooks). */
typedef enum {
    TB_LIN_Q, TB_LIN_K, TB_LIN_V, TB_LIN_O, TB_LIN_GATE, TB_LIN_UP, TB_LIN_DOWN,
    TB_LIN_PER_LAYER,
    TB_LIN_LM_HEAD = TB_LIN_PER_LAYER,
} tb_lin_id;

/* "self_attn.q_proj", ... "lm_head" */
const char *tb_lin_name(tb_lin_id id);

typedef struct {
    tb_linear lin[TB_LIN_PER_LAYER]; /* indexed by tb_lin_id */
    const float *attn_norm;          /* input_layernorm.weight [hidden] */
    const float *mlp_norm;           /* post_attention_layernorm.weight [hidden] */
} tb_layer;

typedef struct {
    tb_config cfg;
    tb_ckpt ckpt;
    tb_linear embed;   /* model.embed_tokens.weight [vocab, hidden], looked up by row */
    tb_linear lm_head; /* [vocab, hidden]; the embedding's data when tied */
    tb_layer *layers;  /* [n_layers] */
    const float *final_norm;
    float *inv_freq;   /* RoPE [head_dim/2] */
    float *f32;        /* one allocation behind the norm/bias/inv_freq vectors */
    char *path;
    int is_tbm;        /* loaded from a pruned model's .tbm index (tbm), else ckpt */
    tb_tbm tbm;
    int32_t *perms;    /* owned copies of the channel permutations (aligned) */
    size_t perms_used; /* int32s of perms handed out */
} tb_model;

/* Open an HF checkpoint directory (config.json + model.safetensors or a sharded
 * index), or a pruned model's .tbm index (its .tb shards verified against
 * their SHA-256; N:M weights stay packed, see tb_linear.h): parses the config, maps the tensors and checks every expected tensor
 * exists with a float dtype and the shape the config implies. Errors name the
 * tensor and dimension, e.g. "tensor 'model.layers.0.self_attn.k_proj.weight':
 * dim 0 is 256, expected 128 (num_key_value_heads * head_dim)". */
int tb_model_open(tb_model *m, const char *path);
void tb_model_close(tb_model *m);

/* Where the model's tokenizer files are: the HF directory, or the directory
 * of a .tbm (tb-merge copies them there). Points into m. */
const char *tb_model_tokenizer_path(const tb_model *m);

/* SHA-256 over the bytes of every weight file (HF shards or .tb shards): the
 * identity of the weights later stages record. */
void tb_model_sha256(const tb_model *m, char hex[65]);
/* SHA-256 of the weights layers [l0, l1) read, in a fixed order: the
 * embedding when l0 = 0, each layer's seven linears (stored bytes: values,
 * indices, permutation, bias) and norms, the final norm and an untied lm_head
 * when l1 = n_layers. What a layer-wise run records: it costs one layer's
 * bytes, not the checkpoint's (14.5 GB at 7B, per run). */
void tb_model_sha256_layers(const tb_model *m, int l0, int l1, char hex[65]);

/* Per-layer activations for tokens [0, n) of the last call. [n, hidden] unless noted. */
typedef struct {
    float *x;        /* residual stream entering the layer: hidden_states[l] */
    float *xn1;      /* input_layernorm(x): the input of q/k/v_proj */
    float *rms1;     /* [n] 1/rms of x */
    float *q;        /* [n, n_heads*head_dim] after RoPE */
    float *saved;    /* what the attention backward needs (CPU: the softmax [n_heads, n, n];
                      * CUDA: row log-sum-exps); NULL unless keep_acts */
    float *att;      /* [n, n_heads*head_dim] attention output: the input of o_proj */
    float *h;        /* residual after attention */
    float *xn2;      /* post_attention_layernorm(h): the input of gate/up_proj */
    float *rms2;     /* [n] */
    float *gate;     /* [n, intermediate] before the activation */
    float *up;       /* [n, intermediate] */
    float *act;      /* silu(gate) * up: the input of down_proj */
    float *k_cache;  /* [max_seq, n_kv_heads*head_dim] keys after RoPE */
    float *v_cache;  /* [max_seq, n_kv_heads*head_dim] */
} tb_layer_acts;

/* Called with the input of every linear layer just before it is applied
 * (q, k and v see the same pointer; x is backend memory). layer = n_layers
 * for lm_head. */
typedef void (*tb_linear_hook)(void *ctx, int layer, tb_lin_id which, const float *x, int n, int cols);

typedef struct {
    int max_seq;    /* KV cache length: the last position + 1 ever used */
    int max_tokens; /* most tokens per tb_forward_run call (<= max_seq) */
    int keep_acts;  /* 1: separate buffers per layer, and what attention's backward needs */
    int n_threads;  /* CPU threads when backend is NULL; OpenBLAS is set to one thread per call */
    tb_backend *backend; /* NULL: a CPU backend of n_threads owned by the forward */
    int layer_begin, layer_end; /* activations, KV caches and weights only for layers in
                                 * [begin, end) (end 0: every layer); the stream entering
                                 * layer end is kept too. tb_forward_run needs them all;
                                 * layer-wise tools (tb-recon, sequential tb-fisher) need
                                 * one, which keeps a 7B model's memory at one layer's. */
    size_t weight_budget; /* bytes of backend memory for resident layer weights; 0: no limit
                           * (layers load on first use; over the budget the least recently
                           * used layers are released, so a model streams layer by layer) */
} tb_forward_opts;

/* One decoder layer's weights where the backend computes. */
typedef struct {
    tb_dlinear lin[TB_LIN_PER_LAYER];
    float *attn_norm, *mlp_norm; /* backend copies */
    uint8_t borrowed[TB_LIN_PER_LAYER]; /* lin[i] is the caller's (tb_forward_use_linear) */
    int loaded;
    uint64_t last_use;
    size_t bytes;
} tb_dlayer;

typedef struct {
    const tb_model *m;
    tb_forward_opts o;
    tb_backend *be;      /* what runs it: o.backend or own_be */
    tb_backend own_be;
    tb_dlayer *dl;       /* [n_layers], loaded on first use (tb_forward_layer_weights) */
    tb_dlinear lm_head;
    float *final_norm;   /* backend copy */
    size_t resident;     /* bytes of layer weights loaded */
    uint64_t clock;
    tb_layer_acts *acts; /* [n_layers]; without keep_acts all alias one set except the caches */
    float *x_final;      /* [n, hidden] output of the last layer (before the final norm) */
    float *xn_final;     /* [n, hidden] after model.norm: the input of lm_head */
    float *rms_final;    /* [n] */
    float *logits;       /* [n, vocab] */
    float *tmp;          /* [n, hidden] o_proj / down_proj output before the residual add */
    float *rope_cos, *rope_sin; /* [max_seq, head_dim/2] */
    float *rope_neg_sin; /* -rope_sin: RoPE's inverse rotation, for the backward */
    /* one-token decode (tb_forward_run with n = 1): the step reads its
     * position from pos_dev, so it replays unchanged as a graph */
    int32_t *pos_dev;    /* [1] in backend memory, uploaded before each step */
    float *k_new, *v_new; /* [n_kv_heads*head_dim] k/v_proj outputs before rope_append caches them */
    void *graph;         /* the captured step (backend graph) or NULL */
    int graph_state;     /* 0: no step yet; 1: one ran plainly (the warm-up), capture next; -1: off */
    int n;               /* tokens of the last call */
    tb_linear_hook hook; /* optional */
    void *hook_ctx;
    float *mem;          /* the one allocation behind all of the above */
} tb_forward;

int tb_forward_init(tb_forward *f, const tb_model *m, const tb_forward_opts *o);
void tb_forward_free(tb_forward *f);

/* Run tokens[0..n) at positions pos0..pos0+n-1; positions < pos0 must be in
 * the KV cache from earlier calls. Fills f->logits [n, vocab] and the
 * activations. Errors: TB_EUSAGE for n or pos0 outside the allocated range,
 * TB_EDATA for a token id outside the vocabulary. */
int tb_forward_run(tb_forward *f, const int32_t *tokens, int n, int pos0);

/* Sequential (layer-wise) use, one window at a time from position 0:
 * tb_forward_stream(f, l) is the residual stream entering layer l (l =
 * n_layers: leaving the last layer, before the final norm); write a layer's
 * input there (or tb_forward_embed the tokens into layer 0's), then
 * tb_forward_layers runs layers [l0, l1) on n tokens, calling the linear-input
 * hook, and leaves the result in tb_forward_stream(f, l1). */
float *tb_forward_stream(tb_forward *f, int layer);
int tb_forward_embed(tb_forward *f, const int32_t *tokens, int n);
int tb_forward_layers(tb_forward *f, int n, int l0, int l1);

/* Host copies in and out of backend memory: the stream entering `layer`
 * (n tokens x hidden), and row t of the logits (vocab floats). */
int tb_forward_set_stream(tb_forward *f, int layer, const float *host, int n);
int tb_forward_get_stream(tb_forward *f, int layer, float *host, int n);
int tb_forward_get_logits(tb_forward *f, int t, float *host);

/* Layer l's weights where the backend computes, loaded (or reloaded after
 * release) now; NULL with the error recorded when memory is short. */
tb_dlayer *tb_forward_layer_weights(tb_forward *f, int l);
/* Replace linear `which` of layer l (after tb_forward_layer_weights) by d,
 * which the caller owns (training: a copy Adam updates). The forward will
 * not release it; tb_forward_restore_linear puts the model's own back. */
void tb_forward_use_linear(tb_forward *f, int l, tb_lin_id which, const tb_dlinear *d);
void tb_forward_restore_linear(tb_forward *f, int l, tb_lin_id which);

typedef struct {
    double ppl, mean_nll;
    int64_t windows, tokens; /* tokens = windows * seq_len, those run through the model */
    double seconds;
} tb_ppl_result;

typedef void (*tb_progress_fn)(void *ctx, int64_t done, int64_t total);

/* PROTOCOL.md's protocol on ids (BOS already first): non-overlapping windows
 * of seq_len, the last partial window dropped, each run from position 0; ppl =
 * exp(mean over windows of the window's mean NLL). max_windows > 0 caps the
 * count. f needs max_tokens >= seq_len. TB_EDATA if not one full window.
 * progress (may be NULL) is called with (0, windows) first, then after each
 * window. */
int tb_eval_ppl(tb_forward *f, const int32_t *ids, int64_t n_ids, int seq_len, int64_t max_windows,
                tb_progress_fn progress, void *progress_ctx, tb_ppl_result *r);

/* Fidelity to a reference (dense) model on the same windows, PROTOCOL.md's
 * robust measure: perplexity alone rewards a model that merely softens its
 * output distribution. Over every position of every window (all seq_len logit
 * rows), in f64: */
typedef struct {
    double kl;       /* mean KL(reference || model) of the next-token distributions, nats */
    double top1;     /* fraction of positions whose argmax tokens agree */
    double ppl_ref;  /* the reference's perplexity on the same windows */
} tb_fidelity;

/* tb_eval_ppl for f, running ref (same seq_len buffers, same vocabulary) on
 * each window too, and filling fid; ref == NULL (fid unused) is tb_eval_ppl. */
int tb_eval_ppl_compare(tb_forward *f, tb_forward *ref, const int32_t *ids, int64_t n_ids, int seq_len,
                        int64_t max_windows, tb_progress_fn progress, void *progress_ctx, tb_ppl_result *r,
                        tb_fidelity *fid);

/* ---- sampling ---- */
typedef struct {
    uint64_t state;
} tb_rng;

void tb_rng_seed(tb_rng *r, uint64_t seed);
double tb_rng_uniform(tb_rng *r); /* [0, 1) */

typedef struct {
    float p;
    int id;
} tb_prob;

/* The next token from one row of logits: argmax at temp <= 0 (lowest index on
 * ties); else a draw from softmax(logits / temp) restricted to the smallest
 * set of most likely tokens whose mass reaches top_p (nucleus, top_p >= 1:
 * all). work: n entries, so that sampling allocates nothing. */
int tb_sample(const float *logits, int n, double temp, double top_p, tb_rng *rng, tb_prob *work);

/* The samplers users know from llama.cpp, applied in its order: the
 * repetition penalty over the recent tokens, then (temp > 0) top-k, top-p
 * within those, min-p; temp <= 0 is the argmax of the penalised logits. */
typedef struct {
    double temp;           /* <= 0: greedy */
    int top_k;             /* 0: every token */
    double top_p;          /* 1: off */
    double min_p;          /* 0: off; else keep p >= min_p * p_max */
    double repeat_penalty; /* 1: off; > 1 discourages the recent tokens */
} tb_sampling;
int tb_sample_with(const float *logits, int n, const tb_sampling *s, const int32_t *recent, int n_recent, tb_rng *rng,
                   tb_prob *work);

#endif
