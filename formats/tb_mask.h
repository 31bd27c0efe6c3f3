/* tb_mask.h - pruning masks (tb-nm output, tb-pack input).
 *
 * A mask file is safetensors. For each pruned weight W (2-D, as stored in the
 * checkpoint) it holds:
 *   "<weight name>"       U8  [rows, ceil(cols / 8)]  keep bits, row-major,
 *                          bit (c % 8) of byte c / 8 is element (r, c),
 *                          least significant bit first; 1 = keep, 0 = pruned.
 *   "<weight name>.perm"  I32 [K] (optional) a permutation of the reduction
 *                          dimension: position j of the permuted weight holds
 *                          original input channel perm[j]. The mask applies to
 *                          the permuted weight; the permutation is undone at
 *                          run and export time (see tb-nm(1)).
 * and file metadata (all strings):
 *   "tensorbit.kind" = "mask", "tensorbit.version",
 *   "pattern" = "2:4" | "4:8" | ... | "unstructured",
 *   "sparsity" = fraction pruned (unstructured), "k_dim" = "1" (groups along
 *   the last dim: nn.Linear [out, in]) or "0" (weights stored [in, out]),
 *   "solver", "scores" (the scores file's name), and the command line.
 *
 * N:M groups are M consecutive elements along the reduction dimension k_dim.
 * Ownership: tb_mask_* allocate `bits` and `perm`; tb_mask_free releases them.
 */
#ifndef TB_MASK_H
#define TB_MASK_H

#include <stdint.h>

#include "tb_safetensors.h"

typedef struct {
    int64_t rows, cols;   /* the weight's stored shape */
    int64_t row_bytes;    /* ceil(cols / 8) */
    uint8_t *bits;        /* rows * row_bytes */
    int32_t *perm;        /* NULL, or [k_dim == 1 ? cols : rows] */
} tb_mask;

int tb_mask_alloc(tb_mask *m, int64_t rows, int64_t cols); /* all bits 0 (prune everything) */
void tb_mask_free(tb_mask *m);

static inline int tb_mask_get(const tb_mask *m, int64_t r, int64_t c)
{
    return (m->bits[r * m->row_bytes + (c >> 3)] >> (c & 7)) & 1;
}
static inline void tb_mask_set(tb_mask *m, int64_t r, int64_t c, int keep)
{
    uint8_t *b = &m->bits[r * m->row_bytes + (c >> 3)];
    *b = keep ? (uint8_t)(*b | (1u << (c & 7))) : (uint8_t)(*b & ~(1u << (c & 7)));
}

/* Read the mask of `weight_name` from an open mask file; checks that it is U8
 * [rows, ceil(cols / 8)] with zero padding bits (TB_EDATA "mask for 'x' is
 * U8 [a, b], weight [c, d] needs [c, ceil(d/8)]").
 * When "<W>.perm" is present it is read too (out->perm), its length taken
 * from the file's "k_dim" metadata (cols unless k_dim is "0"). */
int tb_mask_read(const st_file *f, const char *weight_name, int64_t rows, int64_t cols, tb_mask *out);

/* Read "<weight_name>.perm" of length k into a new array (caller frees).
 * *perm = NULL and TB_OK when the file has none; TB_EDATA when it is not I32
 * [k] or not a permutation of 0..k-1 (names the tensor and the bad index). */
int tb_mask_read_perm(const st_file *f, const char *weight_name, int64_t k, int32_t **perm);

/* Number of kept (1) bits. */
int64_t tb_mask_count_kept(const tb_mask *m);

/* ---- writing (streaming, through st_writer) ----
 * Declare before st_writer_begin, in the order they will be written:
 * "<W>" U8 [rows, ceil(cols/8)], then "<W>.perm" I32 [perm_len] when
 * perm_len > 0. tb_mask_write then streams exactly those tensors. */
int tb_mask_declare(st_writer *w, const char *weight_name, int64_t rows, int64_t cols, int64_t perm_len);
int tb_mask_write(st_writer *w, const tb_mask *m, int64_t perm_len);

#endif
