/* tb_export.h - write a pruned model (.tbm) back out as a HuggingFace
 * checkpoint directory (tb-export). Layouts in FORMATS.md, "tb-export
 * formats".
 *
 * Dense: config.json (the .tbm's config), the side files the .tbm lists,
 * and model.safetensors (or model-0000i-of-0000n.safetensors shards and
 * model.safetensors.index.json above max_shard_bytes) with every tensor dense:
 * pruned weights unpacked, their channel permutation undone, pruned entries
 * exact zeros, values in the source dtype unless `dtype` says otherwise.
 *
 * Compressed: the compressed-tensors sparsity layouts (version 0.14.0.1, the
 * last release with sparse compressors). TB_EXPORT_CT24: the weights that are
 * 2:4 in the model's own column order as "sparse-24-bitmask"
 * (<module>.compressed, .bitmask, .shape), every other tensor dense.
 * TB_EXPORT_CTBITMASK: every pruned weight as "sparse-bitmask" (+
 * .row_offsets). config.json gains "quantization_config" with the
 * "sparsity_config" block. A model with nothing to compress is TB_EDATA.
 *
 * A partial index (tb-merge --partial) exports whole: the tensors in no
 * shard come from its base checkpoint, byte for byte.
 *
 * The directory is built beside out_dir under a temporary name and renamed
 * into place at the end, so a failure (or a fatal signal) leaves no output.
 * Tensors are streamed: one weight in memory at a time.
 */
#ifndef TB_EXPORT_H
#define TB_EXPORT_H

#include <stdint.h>

#include "tb_tbm.h"

typedef enum {
    TB_EXPORT_DENSE = 0,     /* every tensor dense */
    TB_EXPORT_CT24 = 1,      /* compressed-tensors sparse-24-bitmask for the 2:4 weights */
    TB_EXPORT_CTBITMASK = 2, /* compressed-tensors sparse-bitmask for every pruned weight */
} tb_export_format;

#define TB_EXPORT_DEFAULT_SHARD 5000000000ull /* 5 GB, transformers' default */

typedef struct {
    tb_export_format format;
    int dtype;                /* TB_F32 / TB_F16 / TB_BF16 for every float tensor, or -1: each its own */
    uint64_t max_shard_bytes; /* 0: TB_EXPORT_DEFAULT_SHARD */
    int force;                /* replace an existing non-empty out_dir */
    /* after each model tensor is written (may be NULL) */
    void (*on_tensor)(void *ctx, const char *name, int done, int total);
    void *ctx;
} tb_export_opts;

typedef struct {
    int n_tensors;             /* model tensors */
    int n_pruned;              /* of them pruned in the .tbm */
    int n_compressed;          /* written in compressed-tensors form */
    int n_folded;              /* channel permutations folded into the layer before */
    int n_files;               /* safetensors files written */
    uint64_t bytes;            /* tensor bytes written */
    double global_sparsity;    /* exact zeros / parameters, whole model */
    char sparsity_format[32];  /* "sparse-24-bitmask", "sparse-bitmask" or "" (dense) */
    char why_not_24[256];      /* TB_EXPORT_CT24: why a pruned weight stayed dense, "" if none did */
} tb_export_summary;

/* Export the opened model into out_dir. Errors: TB_EUSAGE for an out_dir that
 * exists and is not empty (without force) or is not a directory, or that
 * holds the model itself or a partial index's base; TB_EDATA for bad input
 * (a side file whose checksum differs from the .tbm, nothing to compress, a
 * config that already has a quantization_config for compressed output);
 * TB_EIO for I/O or space. */
int tb_export_model(const tb_tbm *t, const char *out_dir, const tb_export_opts *o, tb_export_summary *s);

/* "5GB", "500MB", "2GiB", "1048576" -> bytes (K/M/G/T = 10^3.., Ki/Mi/Gi/Ti =
 * 2^10..; a trailing B is optional). TB_EUSAGE naming opt otherwise. */
int tb_parse_size(const char *opt, const char *s, uint64_t *out);

/* Natural order of tensor names: runs of digits compare as numbers, so
 * layers.2 sorts before layers.10 (the order HF checkpoints list them). */
int tb_name_natural_cmp(const char *a, const char *b);

#endif
