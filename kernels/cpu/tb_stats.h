/* tb_stats.h - whole-tensor statistics and N:M pattern conformity.
 * Both stream over the tensor in chunks (any dtype, converted to f64/f32 on
 * the fly) so a mmapped multi-GB tensor is never copied whole. */
#ifndef TB_STATS_H
#define TB_STATS_H

#include <stdint.h>

#include "tb_dtype.h"

typedef struct {
    double min, max, mean, std; /* over finite values; sums in f64 */
    int64_t count, zeros, nans, infs;
} tb_tensor_stats;

void tb_stats_compute(const tb_array *t, tb_tensor_stats *s);

/* Fraction of groups of M consecutive elements along the last (input, GEMM
 * reduction) dimension that hold at most N nonzeros. Requires ndim >= 1 and
 * the last dim divisible by M; else TB_EDATA naming the tensor and dim. */
int tb_nm_conformity(const tb_array *t, int n, int m, double *fraction, int64_t *groups);
/* how many of the n_groups consecutive groups of m values in x hold at most n nonzeros */
int64_t tb_nm_groups_within(const float *x, int64_t n_groups, int n, int m);

#endif
