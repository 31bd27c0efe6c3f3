/* tb_synth.h - synthetic HF checkpoints: a model's real shapes with random
 * weights (tb-synth), to prove memory, disk and speed at a scale whose real
 * weights cannot be had here.
 *
 * From a config.json (llama, mistral, qwen2) it writes a checkpoint directory
 * as transformers' save_pretrained lays it out: model.safetensors, or
 * model-0000i-of-0000n.safetensors shards of at most max_shard_bytes (whole
 * tensors, greedily, in model order) with model.safetensors.index.json; the
 * config (torch_dtype set to the output dtype); generation_config.json; and a
 * tokenizer whose ids cover the whole vocabulary (generation from random
 * weights can emit any id): the given small model's tokenizer files when its
 * vocabulary covers every id, else a byte-level BPE written for the config
 * (256 byte tokens, the config's bos/eos/pad as special tokens, merges of
 * growing byte strings up to vocab_size).
 *
 * Weights follow transformers' _init_weights: linear weights and the
 * embedding ~ N(0, initializer_range^2) (default 0.02; the pad_token_id row of
 * the embedding zero), biases 0, RMSNorm weights 1. Values come from a
 * counter-based generator keyed by (seed, tensor name, block), so the output
 * is the same for any thread count. Tensors are generated and written in
 * blocks: memory is a few MB whatever the model size.
 */
#ifndef TB_SYNTH_H
#define TB_SYNTH_H

#include <stdint.h>

#include "tb_dtype.h"

typedef struct {
    uint64_t seed;
    tb_dtype dtype;             /* TB_BF16, TB_F16 or TB_F32 */
    uint64_t max_shard_bytes;   /* 0: 5 GB, transformers' default */
    const char *tokenizer_from; /* a model directory or tokenizer.json; NULL: byte-level */
    int force;                  /* replace a non-empty out_dir */
    int dry_run;                /* fill the summary, write nothing */
    int n_threads;              /* 0: tb_default_threads() */
    /* after each block of data is written (may be NULL) */
    void (*on_bytes)(void *ctx, uint64_t done, uint64_t total);
    void *ctx;
} tb_synth_opts;

typedef struct {
    int n_tensors;
    int n_files;                /* safetensors files */
    uint64_t bytes;             /* tensor bytes */
    long long params;
    int tokenizer_copied;       /* 1: copied from tokenizer_from */
    char tokenizer_note[256];   /* why a given tokenizer was not copied, or "" */
} tb_synth_summary;

/* Write the checkpoint for the config at config_path into out_dir (built
 * under a temporary name and renamed at the end). Errors: TB_EUSAGE (out_dir
 * not empty without force, bad dtype), TB_EDATA (config or tokenizer input),
 * TB_EIO. */
int tb_synth_model(const char *config_path, const char *out_dir, const tb_synth_opts *o, tb_synth_summary *s);

#define TB_SYNTH_MAX_SPECIAL 16

/* The byte-level BPE tokenizer.json text for a vocabulary of vocab_size ids
 * with the given special tokens (at most TB_SYNTH_MAX_SPECIAL, ids <
 * vocab_size, names NULL for "<|special_ID|>"); caller frees. */
char *tb_synth_tokenizer_json(int vocab_size, const int *special_ids, const char *const *special_names, int n_special);

/* The i-th normal deviate (mean 0, std 1) of the stream (seed, key): fills
 * out[0..n) with elements first..first+n of that stream. */
void tb_synth_normal(uint64_t seed, uint64_t key, uint64_t first, int64_t n, float *out);

#endif
