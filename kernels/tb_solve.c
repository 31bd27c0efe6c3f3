/* tb_solve.c - compensation solves on the chosen backend (tb_solve.h). */
#include "tb_solve.h"
#include "tb_error.h"

#ifdef TB_HAVE_CUDA
#include "tb_cuda.h"
#endif

#include <stdlib.h>

#ifdef TB_HAVE_CUDA
/* the Gram tb_solve_gram_begin put on the GPU, and the host array it copies */
static struct {
    const double *host;
    int64_t cols;
    int gpu;
    tb_cuda_gram *dev;
} resident;

static const tb_cuda_gram *resident_for(const tb_backend *be, const double *gram, int64_t cols)
{
    return resident.dev && resident.host == gram && resident.cols == cols && resident.gpu == be->o.gpu ? resident.dev
                                                                                                        : NULL;
}

/* The mask's bits as one byte per weight (the GPU solve's form) and back, a
 * mask byte at a time: per element through tb_mask_get/_set this was ~2 x
 * 218 M calls for a 7B layer. */
static void keep_bytes_from_mask(const tb_mask *mask, uint8_t *keep)
{
    for (int64_t r = 0; r < mask->rows; r++) {
        const uint8_t *bits = mask->bits + r * mask->row_bytes;
        uint8_t *k = keep + r * mask->cols;
        int64_t c = 0;
        for (; c + 8 <= mask->cols; c += 8) {
            const unsigned b = bits[c >> 3];
            for (int i = 0; i < 8; i++) k[c + i] = (uint8_t)(b >> i & 1);
        }
        for (; c < mask->cols; c++) k[c] = (uint8_t)(bits[c >> 3] >> (c & 7) & 1);
    }
}

static void mask_from_keep_bytes(const uint8_t *keep, tb_mask *mask)
{
    for (int64_t r = 0; r < mask->rows; r++) {
        uint8_t *bits = mask->bits + r * mask->row_bytes;
        const uint8_t *k = keep + r * mask->cols;
        for (int64_t c0 = 0; c0 < mask->cols; c0 += 8) {
            unsigned b = 0;
            for (int64_t c = c0; c < c0 + 8 && c < mask->cols; c++) b |= (unsigned)(k[c] != 0) << (c - c0);
            bits[c0 >> 3] = (uint8_t)b; /* padding bits stay 0 */
        }
    }
}
#endif

int tb_solve_gram_begin(const tb_backend *be, const double *gram, int64_t cols)
{
    tb_solve_gram_end(be);
#ifdef TB_HAVE_CUDA
    if (be && be->o.device == TB_DEVICE_CUDA) {
        if (!(resident.dev = tb_cuda_gram_upload(be->o.gpu, gram, cols))) return tb_errcode();
        resident.host = gram;
        resident.cols = cols;
        resident.gpu = be->o.gpu;
    }
#else
    (void)be, (void)gram, (void)cols;
#endif
    return TB_OK;
}

void tb_solve_gram_end(const tb_backend *be)
{
    (void)be;
#ifdef TB_HAVE_CUDA
    tb_cuda_gram_free(resident.dev);
    resident.dev = NULL;
    resident.host = NULL;
#endif
}

int tb_solve_sparsegpt(const tb_backend *be, float *w, tb_mask *mask, int n, int m, const double *gram, double damp,
                       int block, int reselect, int n_threads, tb_comp_stats *st)
{
#ifdef TB_HAVE_CUDA
    if (be && be->o.device == TB_DEVICE_CUDA) {
        size_t cells = (size_t)mask->rows * (size_t)mask->cols;
        uint8_t *keep = tb_malloc(cells + 1);
        if (!keep) return TB_EIO;
        keep_bytes_from_mask(mask, keep);
        double lambda = 0;
        int raised = 0, eigen = 0;
        const tb_cuda_gram *g = resident_for(be, gram, mask->cols);
        int rc = g ? tb_cuda_sparsegpt_dev(w, keep, mask->rows, mask->cols, n, m, g, damp, block, reselect, &lambda,
                                           &raised, &eigen)
                   : tb_cuda_sparsegpt(be->o.gpu, w, keep, mask->rows, mask->cols, n, m, gram, damp, block,
                                       reselect, &lambda, &raised, &eigen);
        if (!rc && reselect) mask_from_keep_bytes(keep, mask);
        free(keep);
        if (!rc && st) {
            st->lambda = lambda;
            st->raised += raised && !eigen;
            st->eigen += eigen;
        }
        return rc;
    }
#endif
    return tb_comp_sparsegpt(w, mask, n, m, gram, damp, block, reselect, n_threads, st);
}

double tb_solve_output_error(const tb_backend *be, const float *w0, const float *w, int64_t rows, int64_t cols,
                             const double *gram, int n_threads)
{
#ifdef TB_HAVE_CUDA
    if (be && be->o.device == TB_DEVICE_CUDA) {
        const tb_cuda_gram *g = resident_for(be, gram, cols);
        double e = g ? tb_cuda_output_error_dev(w0, w, rows, cols, g)
                     : tb_cuda_output_error(be->o.gpu, w0, w, rows, cols, gram);
        if (e == e) return e; /* NaN: the GPU could not; the CPU can */
    }
#endif
    return tb_comp_output_error(w0, w, rows, cols, gram, n_threads);
}
