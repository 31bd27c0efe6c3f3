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

#endif
