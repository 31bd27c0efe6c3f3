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

/* Read the mask of `weight_name` from an open mask file; checks that its shape
 * matches rows x cols (TB_EDATA "mask for 'x' is [a, b], weight is [c, d]"). */
int tb_mask_read(const st_file *f, const char *weight_name, int64_t rows, int64_t cols, tb_mask *out);

#endif
