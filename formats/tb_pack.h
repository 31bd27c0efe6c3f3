/* tb_pack.h - the packed .tb shard (tb-pack output): N:M sparse weights as
 * kept values + bit-packed in-group indices, in a safetensors file.
 *
 * A .tb file is plain safetensors (tb-inspect and Python's safetensors read
 * it). For each pruned 2-D weight W [rows, cols] (nn.Linear [out, in]; N:M
 * groups are M consecutive elements of a row, along the reduction dim cols):
 *
 *   "<W>.values"   dtype of W, [rows, cols / M * N]
 *                  Row r lists, group by group (g = 0 .. cols/M - 1), the N
 *                  kept values of columns g*M .. g*M+M-1 in ascending column
 *                  order. Kept value number k of a row (k = g*N + j) is
 *                  element (r, k).
 *   "<W>.indices"  U8 [rows, ceil(cols / M * N * b / 8)], b = ceil(log2 M)
 *                  bits per kept value (M = 2: 1, 3-4: 2, 5-8: 3, 9-16: 4).
 *                  Each row is a little bit string: bit i of the row is bit
 *                  (i mod 8) of byte i / 8 (least significant bit first).
 *                  Kept value k of the row stores its in-group position
 *                  (column mod M, 0 .. M-1) in bits k*b .. k*b+b-1, least
 *                  significant bit first. Rows start on a byte boundary; the
 *                  bits after the row's last index are 0. Within a group the
 *                  positions are strictly ascending.
 *                  2:4: 4 bits per group, two groups per byte, the lower-
 *                  column group in the low nibble: byte = i0 | i1<<2 | i2<<4
 *                  | i3<<6 for groups (i0,i1), (i2,i3); keep {0,2} is nibble
 *                  0b1000. This is the uncompressed metadata order
 *                  cuSPARSELt's compress and CUTLASS's sparse GEMM reorder
 *                  from (2 bits per kept element, consecutive along K).
 *   "<W>.perm"     I32 [cols], only if the mask had a permutation: position
 *                  j of the stored (permuted) weight is input channel
 *                  perm[j] of the model. Values and indices are in permuted
 *                  column order; a consumer permutes its input
 *                  (x'[j] = x[perm[j]]) or un-permutes the weight.
 *
 * A group whose mask keeps fewer than N weights is padded with its lowest
 * pruned positions holding the value 0 (the format has exactly N slots per
 * group); more than N kept is an error. Pruned weights are exact zeros.
 *
 * Unstructured masks (pattern "unstructured") store
 *   "<W>"          dtype of W, [rows, cols]: dense, pruned entries exactly 0
 *   "<W>.mask"     U8 [rows, ceil(cols/8)], tb_mask bits (bit c%8 of byte c/8
 *                  of the row, 1 = kept) so the sparsity is inspectable
 *   "<W>.perm"     as above, if any.
 * Tensors that were not pruned (embeddings, norms, lm_head, ...) are copied
 * byte for byte under their own names.
 *
 * File metadata (strings): "tensorbit.kind" = "tb", "tensorbit.version",
 * "format_version" = "1", "pattern", "compensation", "damp",
 * "obs_block_size", "model", "masks", "stats", "layers" ("A-B" inclusive, or
 * "all"), "command" (tb_pack_writer sets "tensorbit.kind", "format_version"
 * and "tensorbit.tensors"; tb-pack adds the rest), and
 * "tensorbit.tensors": one JSON object (built with cJSON) mapping each
 * pruned weight name to
 *   {"format": "nm" | "masked", "dtype": "BF16", "shape": [rows, cols],
 *    "pattern": "2:4" | "unstructured", "k_dim": 1, "permuted": bool,
 *    "compensation": "none" | "redist-proportional" | "redist-uniform" |
 *                    "obs" | "recon" | "sparsegpt",
 *    "mask": "given" | "sparsegpt" | "learned"}   (sparsegpt and tb-recon
 *    --learn-masks re-choose keep bits)
 * All values little-endian, as safetensors prescribes.
 *
 * Ownership: tb_pack_open maps the file; tensor pointers live until
 * tb_pack_close. Functions returning arrays allocate; the caller frees.
 */
#ifndef TB_PACK_H
#define TB_PACK_H

#include <stdint.h>

#include "tb_dtype.h"
#include "tb_mask.h"
#include "tb_safetensors.h"

#define TB_PACK_MAX_M 16

/* ---- N:M packing (the codec) ---- */

/* Parse a mask pattern: "N:M" (1 <= N < M <= TB_PACK_MAX_M) or "unstructured"
 * (n = m = 0). TB_EDATA "pattern 'x': ..." otherwise. */
int tb_pack_parse_pattern(const char *s, int *n, int *m);

/* Index bits per kept value, ceil(log2 m), for 2 <= m <= TB_PACK_MAX_M. */
int tb_nm_index_bits(int m);
/* Values per row (cols / m * n) and index bytes per row. cols % m == 0. */
int64_t tb_nm_values_per_row(int64_t cols, int n, int m);
int64_t tb_nm_index_row_bytes(int64_t cols, int n, int m);

/* Check that every group of M columns keeps at most N weights (TB_EDATA
 * "row r, columns c..c+M-1 keep k, pattern N:M allows n"), that
 * 1 <= n < m <= TB_PACK_MAX_M and that m divides the mask's cols. */
int tb_nm_check_mask(const tb_mask *mask, int n, int m);

/* Pack W [rows, cols] (rows and cols from the mask) under the mask:
 * values [rows, cols/m*n] of dtype v_dt, indices [rows, index_row_bytes].
 * w is in w_dt, either v_dt (elements copied bit for bit) or F32 (converted,
 * rounding to nearest even). Weights outside the mask are never read into
 * values, so W need not hold zeros there. Fails like tb_nm_check_mask. */
int tb_nm_pack(tb_dtype w_dt, const void *w, const tb_mask *mask, int n, int m, tb_dtype v_dt, void *values,
               uint8_t *indices);

/* Decode rows r0 .. r0+nr-1 of a packed weight into dense f32 out[nr, cols]
 * (pruned entries 0). values and indices point at row 0 of the whole tensor,
 * so this works as the per-tile decoder of a linear layer. It trusts the
 * indices: check them once with tb_nm_check_indices (tb_pack_open does). */
/* one stored (permuted) row back to model column order: out[perm[j]] = in[j] */
void tb_unpermute_row(const float *in, float *out, int64_t n, const int32_t *perm);

void tb_nm_unpack_rows(tb_dtype v_dt, const void *values, const uint8_t *indices, int64_t cols, int n, int m,
                       int64_t r0, int64_t nr, float *out);

/* The slots of a packed N:M weight [rows, cols] as keep bytes in the model's
 * column order: keep[r * cols + (perm ? perm[j] : j)] = 1 for every stored
 * position j that holds a value slot (padding slots included: they are
 * trainable), 0 elsewhere. perm may be NULL. Rows in parallel. */
void tb_nm_keep(const uint8_t *indices, int64_t rows, int64_t cols, int n, int m, const int32_t *perm, uint8_t *keep);

/* Validate packed indices of a [rows, cols] weight: positions < m, strictly
 * ascending in each group, zero padding bits (TB_EDATA naming row and group). */
int tb_nm_check_indices(const uint8_t *indices, int64_t rows, int64_t cols, int n, int m);

/* ---- shard writer (streaming: declare everything, begin, then write in
 * declaration order; one weight in memory at a time) ---- */

typedef struct tb_pack_writer tb_pack_writer;

tb_pack_writer *tb_pack_writer_new(void);
void tb_pack_writer_free(tb_pack_writer *w);
/* file metadata; "tensorbit.kind", "format_version" and "tensorbit.tensors"
 * are set by the writer */
int tb_pack_writer_meta(tb_pack_writer *w, const char *key, const char *value);
/* A pruned weight: n, m = 0, 0 for unstructured (stored "masked"); permuted:
 * a "<W>.perm" follows; mask_source "given" or "sparsegpt". */
int tb_pack_declare(tb_pack_writer *w, const char *name, tb_dtype dt, int64_t rows, int64_t cols, int n, int m,
                    int permuted, const char *compensation, const char *mask_source);
/* A tensor copied as is. */
int tb_pack_declare_copy(tb_pack_writer *w, const char *name, tb_dtype dt, int ndim, const int64_t *shape);
int tb_pack_writer_begin(tb_pack_writer *w, FILE *fp, const char *label);
/* The next declared pruned weight: wf [rows, cols] f32 in the mask's column
 * order, rounded to its dtype; entries outside the mask are stored as 0 (or
 * not at all); mask->perm is written when declared permuted. */
int tb_pack_write(tb_pack_writer *w, const float *wf, const tb_mask *mask);
/* The next declared copied tensor's bytes (possibly in several calls). */
int tb_pack_write_copy(tb_pack_writer *w, const void *data, size_t nbytes);
int tb_pack_writer_finish(tb_pack_writer *w);

/* ---- shard reader ---- */

typedef enum { TB_PACKED_NM = 1, TB_PACKED_MASKED = 2 } tb_packed_kind;

typedef struct {
    char *name;          /* the weight's name in the model */
    tb_packed_kind kind;
    tb_dtype dtype;      /* the weight's dtype (of values, or of the dense tensor) */
    int64_t rows, cols;
    int n, m;            /* pattern; 0, 0 for unstructured */
    char *compensation;  /* as in the metadata */
    const st_tensor *values, *indices; /* TB_PACKED_NM */
    const st_tensor *dense, *mask;     /* TB_PACKED_MASKED */
    const st_tensor *perm;             /* NULL, or I32 [cols] (a checked permutation) */
} tb_packed;

typedef struct {
    st_file f;           /* every stored tensor, parts included */
    tb_packed *packed;   /* the pruned weights, sorted by name */
    int n_packed;
} tb_pack_file;

/* Open and validate a .tb shard: safetensors validity, the tensors JSON,
 * every part's dtype and shape, indices (tb_nm_check_indices), permutations.
 * Errors are TB_EDATA "path: tensor 'W': what" (or TB_EIO). */
int tb_pack_open(tb_pack_file *p, const char *path);
void tb_pack_close(tb_pack_file *p);

/* Is stored tensor t (one of p->f.tensors) a part of a pruned weight (values,
 * indices, perm, or a masked weight's dense data and mask)? The other stored
 * tensors are model tensors copied as they were. */
int tb_pack_is_part(const tb_pack_file *p, const st_tensor *t);

/* The pruned weight `name`, or NULL (not pruned, or not in the file). */
const tb_packed *tb_pack_find(const tb_pack_file *p, const char *name);

/* Any weight of the shard - packed, masked or copied as is - as a new dense
 * f32 array [rows, cols] (*numel set if not NULL). Packed weights come in
 * stored (permuted) column order, or in the model's order with unpermute. */
float *tb_pack_tensor_f32(const tb_pack_file *p, const char *name, int unpermute, int64_t *numel);

/* tb_pack_write of a weight trained in the model's column order: wf and keep
 * [rows, cols] (keep != 0: kept) are put into q's stored order (its
 * permutation, if any) and written under q's pattern; unkept entries are
 * written as exact zeros. */
int tb_pack_write_model_order(tb_pack_writer *w, const tb_packed *q, const float *wf, const uint8_t *keep);

#endif
