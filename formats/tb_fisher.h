/* tb_fisher.h - the calibration statistics file (tb-fisher output, .fisher).
 *
 * A .fisher file is safetensors (readable by tb-inspect and Python) holding,
 * for the linear weights of the decoder (W = "<module>.weight", e.g.
 * "model.layers.0.self_attn.q_proj.weight"):
 *   "fisher.<W>"            F32 shape of W: empirical Fisher diagonal, the mean
 *                           over windows of the squared gradient of the window's
 *                           mean next-token NLL (PROTOCOL.md's definition).
 *   "gram.<module>.input"   F64 [in, in]: sum over all calibration tokens of
 *                           x x^T, x the input of that module. Modules reading
 *                           the same input share one matrix, stored under the
 *                           name tb_fisher_gram_module() gives (q/k/v -> q_proj,
 *                           gate/up -> gate_proj).
 *   "gram.<module>.count"   I64 [1]: number of tokens summed.
 *   "grad.<W>"              BF16 [K, rows, cols] (--grad-samples K): K
 *                           per-window gradients, see tb-fisher(1).
 * metadata: "tensorbit.kind" = "fisher", "model_sha256" (of the weights read),
 * "windows", "seq_len", "tokens", "tensorbit.version", the command line.
 */
#ifndef TB_FISHER_H
#define TB_FISHER_H

#include <stddef.h>

#include "tb_safetensors.h"

/* Module whose Gram matrix serves `weight_name` ("...q_proj.weight" ->
 * "...q_proj", "...k_proj.weight" -> "...q_proj", "...up_proj.weight" ->
 * "...gate_proj"), written into buf. Returns 0, or -1 if the name is not a
 * "<module>.weight" name or does not fit. */
int tb_fisher_gram_module(const char *weight_name, char *buf, size_t n);

/* The name of the Gram matrix serving a weight, "gram.<module>.input" (kind
 * "input") or its token count "gram.<module>.count" (kind "count"), into buf;
 * -1 as tb_fisher_gram_module. "gram.?.input" is written on failure, for messages. */
int tb_fisher_gram_name(const char *weight_name, const char *kind, char *buf, size_t n);

/* A stream file (tb-fisher --acts-out, read by tb-fisher and tb-recon
 * --acts-in): F32 "hidden" [windows, seq_len, hidden], the residual stream
 * entering decoder layer L, with metadata "tensorbit.kind" = "stream" and
 * "layer" = L. Opens `path` and checks it is the stream entering `layer` of a
 * model of width `hidden` (TB_EDATA otherwise); *h points into f, which the
 * caller closes with st_close. */
int tb_stream_open(st_file *f, const char *path, int hidden, int layer, const st_tensor **h);

/* ---- reading statistics: every reader goes through these, so a hostile
 * file is refused in one place with TB_EDATA naming the tensor ---- */

/* Structure of a .fisher file (f already opened by st_open): tensorbit.kind,
 * if present, is "fisher"; every "gram.<m>.input" is a float [k, k] matrix,
 * "gram.<m>.count" an integer [1] >= 1, "fisher.<W>" a float 2-D tensor and
 * "grad.<W>" a float [K >= 1, rows, cols] tensor. Values are checked when a
 * statistic is read (tb_fisher_gram_f64 ...), so opening stays O(header). */
int tb_fisher_check(const st_file *f);

/* The Gram matrix serving weight `weight_name` whose input width is k: *g =
 * NULL when the file holds none, TB_EDATA when it is not float [k, k]. */
int tb_fisher_find_gram(const st_file *f, const char *weight_name, int64_t k, const st_tensor **g);

/* A Gram matrix as a new f64 array [k * k] (caller frees), refused with
 * TB_EDATA "tensor 'gram.m.input': entry (i, j) is NaN" when an entry is not
 * finite or a diagonal entry is negative (a sum of x x^T has none). */
int tb_fisher_gram_f64(const st_tensor *g, double **out);
/* The same check of a Gram matrix a [k * k] already converted (and possibly
 * permuted symmetrically), `name` naming it in the error. */
int tb_fisher_gram_check(const char *name, const double *a, int64_t k);
/* Its diagonal only, into diag[k], checked the same way. */
int tb_fisher_gram_diag(const st_tensor *g, double *diag);

/* The token count of module `module`'s Gram ("gram.<m>.count"), 0 when the
 * file has none; TB_EDATA when it is not a positive integer. */
int tb_fisher_gram_count(const st_file *f, const char *module, double *n);

/* A float statistic (Fisher diagonal, gradient samples, scores) as a new f32
 * array, refused with TB_EDATA naming the tensor and element when a value is
 * NaN or infinite (or negative, with nonneg). */
int tb_fisher_values_f32(const st_tensor *t, int nonneg, float **out);

/* ---- writing: the engine hands its arrays, this writes the file ---- */

typedef enum { TB_FISHER_STAT_DIAG, TB_FISHER_STAT_GRAM, TB_FISHER_STAT_GRAD } tb_fisher_stat_kind;

/* One statistic of a .fisher file. DIAG and GRAM data may live where the
 * caller computed them (a GPU): they are read only through the source's
 * fetch, a block at a time, so writing never holds a second copy of the
 * largest (at 7B a down_proj Gram is 14336^2 f64 = 1.5 GiB). */
typedef struct {
    tb_fisher_stat_kind kind;
    const char *weight;  /* the weight served, "model.layers.0.mlp.down_proj.weight"; a GRAM is
                          * named by tb_fisher_gram_name() of it (q/k/v -> q_proj, ...) */
    int64_t rows, cols;  /* DIAG, GRAD: the weight's shape; GRAM: k = rows = cols, its input width */
    int samples;         /* GRAD: K */
    const void *data;    /* DIAG: f32 sums [rows, cols], written as (float)(sum * scale);
                          * GRAM: f64 [k, k] of which only the upper triangle (row-major
                          * [i * k + j], j >= i) is read: the file gets the symmetric matrix;
                          * GRAD: bf16 [K, rows, cols] in host memory, written as is */
    double scale;        /* DIAG */
    int64_t tokens;      /* GRAM: tokens summed ("gram.<m>.count") */
} tb_fisher_stat;

typedef struct {
    /* copy `bytes` at src (inside a DIAG or GRAM's data) into host memory dst;
     * NULL: data is host memory (memcpy) */
    void (*fetch)(void *ctx, void *dst, const void *src, size_t bytes);
    void *ctx;
    size_t block_bytes;  /* host buffer for one piece (0: 32 MiB; tests make it small) */
} tb_fisher_source;

/* Write stats[0..n) (in that order, the layout above) and the metadata pairs
 * meta_kv[2 n_meta] to `path` through an atomic output ("-": stdout). */
int tb_fisher_write(const char *path, const tb_fisher_stat *stats, int n, const tb_fisher_source *src,
                    const char *const *meta_kv, int n_meta);

#endif
