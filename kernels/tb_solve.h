/* tb_solve.h - the compensation solves of tb-pack on the chosen backend.
 *
 * The CPU solvers are kernels/cpu/tb_compensate.h (the reference); the CUDA
 * build adds GPU twins of those worth it at scale (SparseGPT: ~cols^3 + 2 rows
 * cols^2 f64 per weight, seconds for a 7B layer on a GPU, minutes on a CPU).
 * Same arguments and results as the CPU function; other solvers, and the CPU
 * backend, run the CPU code. */
#ifndef TB_SOLVE_H
#define TB_SOLVE_H

#include "tb_backend.h"
#include "tb_compensate.h"

int tb_solve_sparsegpt(const tb_backend *be, float *w, tb_mask *mask, int n, int m, const double *gram, double damp,
                       int block, int reselect, int n_threads, tb_comp_stats *st);

/* tb_comp_output_error on the backend (a DGEMM on CUDA). */
double tb_solve_output_error(const tb_backend *be, const float *w0, const float *w, int64_t rows, int64_t cols,
                             const double *gram, int n_threads);

/* Optional, for a caller that makes several of the calls above on one Gram
 * (tb-pack: a solve and three output-error reports per weight): between
 * _begin and _end a CUDA backend keeps `gram` [cols, cols] on the GPU, and
 * the calls that pass this same pointer use that copy, so G crosses the bus
 * once; the caller must not change G meanwhile. One Gram at a time, one
 * thread. TB_OK, or the upload's error (the calls still work without it,
 * moving G each). The CPU backend does nothing. */
int tb_solve_gram_begin(const tb_backend *be, const double *gram, int64_t cols);
void tb_solve_gram_end(const tb_backend *be);

#endif
