/* tb_compensate.c - the compensation solvers of tb-pack (see tb_compensate.h).
 *
 * Threading pattern shared by the solvers: tb_parallel_for over rows; each
 * thread allocates its scratch once, records the first failure of its chunk
 * (tb_par_error) and its counters in its own slot; the caller then reports
 * the lowest failing row (tb_par_error_collect). */
#include "tb_compensate.h"
#include "tb_error.h"
#include "tb_linalg.h"
#include "tb_threads.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS TB_MAX_THREADS

typedef struct {
    tb_par_error err;
    int64_t raised, eigen;
    double sum;
} slot;

static slot *slots_new(void) { return tb_calloc(MAX_THREADS, sizeof(slot)); }

static void slot_fail(slot *s, int64_t row) { tb_par_error_set(&s->err, row); }

static void slot_solved(slot *s, const tb_solve_info *info)
{
    s->raised += info->raises > 0 && !info->eigen;
    s->eigen += info->eigen;
}

/* fold the slots into st; re-raise the lowest failing row on this thread */
static int slots_collect(slot *sl, tb_comp_stats *st)
{
    for (int t = 0; st && t < MAX_THREADS; t++) {
        st->raised += sl[t].raised;
        st->eigen += sl[t].eigen;
    }
    int rc = tb_par_error_collect(&sl[0].err, MAX_THREADS, sizeof sl[0], "row");
    free(sl);
    return rc;
}

static int gram_check(const double *g, int64_t n, double *mean_diag)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            if (!isfinite(g[i * n + j]))
                return tb_fail(TB_EDATA, "Gram matrix: non-finite value at (%lld, %lld)", (long long)i, (long long)j);
    for (int64_t i = 0; i < n; i++) s += g[i * n + i];
    *mean_diag = n ? s / (double)n : 0;
    return TB_OK;
}

/* ------------------------------------------------------------ none, redist */

void tb_comp_mask(float *w, const tb_mask *mask)
{
    for (int64_t r = 0; r < mask->rows; r++)
        for (int64_t c = 0; c < mask->cols; c++)
            if (!tb_mask_get(mask, r, c)) w[r * mask->cols + c] = 0.0f;
}

int tb_comp_redist(float *w, const tb_mask *mask, int group, int uniform, tb_comp_stats *st)
{
    int64_t cols = mask->cols, g = group > 0 ? group : cols;
    if (cols % g) return tb_fail(TB_EUSAGE, "redist: %lld columns not divisible by group %lld", (long long)cols, (long long)g);
    for (int64_t r = 0; r < mask->rows; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += g) {
            float *wg = w + r * cols + c0;
            double pruned = 0, kept_abs = 0;
            int64_t n_kept = 0;
            for (int64_t j = 0; j < g; j++) {
                if (tb_mask_get(mask, r, c0 + j)) { kept_abs += fabs(wg[j]); n_kept++; }
                else pruned += wg[j];
            }
            if (!n_kept) {
                if (pruned != 0 && st) st->empty_groups++;
            } else if (pruned != 0) {
                int prop = !uniform && kept_abs > 0;
                for (int64_t j = 0; j < g; j++)
                    if (tb_mask_get(mask, r, c0 + j))
                        wg[j] = (float)(wg[j] + (prop ? pruned * fabs(wg[j]) / kept_abs : pruned / (double)n_kept));
            }
            for (int64_t j = 0; j < g; j++)
                if (!tb_mask_get(mask, r, c0 + j)) wg[j] = 0.0f;
        }
    return TB_OK;
}

/* ---------------------------------------------------------------------- obs */

typedef struct {
    float *w;
    const tb_mask *mask;
    const void *grad;
    tb_dtype dt;
    int k, block;
    const int32_t *perm;
    double lambda;
    slot *sl;
} obs_job;

/* sample k, row r, columns c0..c0+n-1 of the mask's order, as f64 */
static void grad_gather(const obs_job *j, int k, int64_t r, int64_t c0, int n, double *dst)
{
    int64_t cols = j->mask->cols;
    size_t base = (size_t)(((int64_t)k * j->mask->rows + r) * cols);
    if (!j->perm) {
        tb_to_f64(j->dt, j->grad, base + (size_t)c0, (size_t)n, dst);
        return;
    }
    for (int i = 0; i < n; i++) tb_to_f64(j->dt, j->grad, base + (size_t)j->perm[c0 + i], 1, dst + i);
}

static void obs_fisher_sum(void *ctx, int64_t begin, int64_t end, int tid)
{
    obs_job *j = ctx;
    int64_t cols = j->mask->cols;
    double *g = tb_malloc((size_t)cols * sizeof *g + 1);
    if (!g) { slot_fail(&j->sl[tid], -1); return; }
    double s = 0;
    for (int64_t r = begin; r < end; r++)
        for (int k = 0; k < j->k; k++) {
            grad_gather(j, k, r, 0, (int)cols, g);
            for (int64_t c = 0; c < cols; c++) s += g[c] * g[c];
        }
    j->sl[tid].sum = s;
    free(g);
}

static void obs_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    obs_job *j = ctx;
    slot *sl = &j->sl[tid];
    int64_t cols = j->mask->cols;
    int bmax = j->block, k = j->k;
    double *g = tb_malloc((size_t)k * bmax * sizeof *g + 1), *hinv = tb_malloc((size_t)bmax * bmax * sizeof *hinv);
    double *work = tb_malloc(tb_woodbury_work(k, bmax) * sizeof *work + 1), *wb = tb_malloc((size_t)bmax * sizeof *wb);
    int *pruned = tb_malloc((size_t)bmax * sizeof *pruned);
    if (!g || !hinv || !work || !wb || !pruned) { slot_fail(sl, begin); goto out; }
    for (int64_t r = begin; r < end && !sl->err.rc; r++) {
        float *w = j->w + r * cols;
        for (int64_t c0 = 0; c0 < cols; c0 += bmax) {
            int nb = (int)(cols - c0 < bmax ? cols - c0 : bmax), np = 0;
            for (int i = 0; i < nb; i++)
                if (!tb_mask_get(j->mask, r, c0 + i)) pruned[np++] = i;
            if (!np) continue;
            for (int s = 0; s < k; s++) grad_gather(j, s, r, c0, nb, g + (size_t)s * nb);
            if (tb_woodbury_inverse(g, k, nb, j->lambda, 1.0 / k, hinv, work)) { slot_fail(sl, r); break; }
            for (int i = 0; i < nb; i++) wb[i] = w[c0 + i];
            /* greedy OBS: remove the cheapest remaining pruned weight first */
            while (np) {
                int best = -1;
                double best_cost = 0;
                for (int t = 0; t < np; t++) {
                    int q = pruned[t];
                    double hqq = hinv[(size_t)q * nb + q];
                    double cost = hqq > 0 ? wb[q] * wb[q] / hqq : HUGE_VAL;
                    if (best < 0 || cost < best_cost) { best = t; best_cost = cost; }
                }
                int q = pruned[best];
                double hqq = hinv[(size_t)q * nb + q];
                if (hqq > 0 && wb[q] != 0) {
                    double f = -wb[q] / hqq; /* dw = f * H^-1[:, q] */
                    const double *hq = hinv + (size_t)q * nb; /* symmetric: row q = column q */
                    for (int i = 0; i < nb; i++) wb[i] += f * hq[i];
                }
                wb[q] = 0;
                tb_sm_downdate(hinv, nb, q); /* leaves hinv as is if hqq <= 0 (rounding) */
                pruned[best] = pruned[--np];
            }
            for (int i = 0; i < nb; i++) {
                if (!isfinite(wb[i])) {
                    tb_fail(TB_EDATA, "columns %lld..%lld: non-finite OBS update", (long long)c0, (long long)(c0 + nb - 1));
                    slot_fail(sl, r);
                    break;
                }
                w[c0 + i] = tb_mask_get(j->mask, r, c0 + i) ? (float)wb[i] : 0.0f;
            }
            if (sl->err.rc) break;
        }
    }
out:
    free(g);
    free(hinv);
    free(work);
    free(wb);
    free(pruned);
}

int tb_comp_obs(float *w, const tb_mask *mask, const void *grad, tb_dtype grad_dt, int k, const int32_t *perm,
                int block, double damp, int n_threads, tb_comp_stats *st)
{
    if (k < 1 || block < 1 || !(damp > 0))
        return tb_fail(TB_EUSAGE, "obs: needs K >= 1 samples (got %d), block >= 1 (got %d), damp > 0 (got %g)", k, block, damp);
    slot *sl = slots_new();
    if (!sl) return TB_EIO;
    obs_job j = {w, mask, grad, grad_dt, k, block, perm, 0, sl};
    tb_parallel_for(n_threads, mask->rows, obs_fisher_sum, &j);
    double sum = 0;
    for (int t = 0; t < MAX_THREADS; t++) sum += sl[t].sum;
    double n = (double)mask->rows * (double)mask->cols * k;
    if (!isfinite(sum)) {
        tb_fail(TB_EDATA, "gradient samples: non-finite values");
        slot_fail(&sl[0], -1);
        return slots_collect(sl, st);
    }
    /* all-zero gradients: H = lambda I whatever lambda is, OBS becomes masking */
    j.lambda = sum > 0 && n > 0 ? damp * sum / n : 1.0;
    if (st) st->lambda = j.lambda;
    int rc = slots_collect(sl, st);
    if (rc) return rc;
    if (!(j.sl = slots_new())) return TB_EIO;
    tb_parallel_for(n_threads, mask->rows, obs_rows, &j);
    return slots_collect(j.sl, st);
}

/* -------------------------------------------------------------------- recon */

typedef struct {
    float *w;
    const tb_mask *mask;
    const double *g;
    double lambda;
    slot *sl;
} recon_job;

static void recon_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    recon_job *j = ctx;
    slot *sl = &j->sl[tid];
    int64_t cols = j->mask->cols, kmax = 0;
    /* the system of a row is |S| x |S|: size it by the largest kept set of
     * these rows, not cols x cols (at 2:4, a quarter of the memory; down_proj
     * of a 7B model: 2 x 0.4 GB per thread instead of 2 x 1.6 GB) */
    for (int64_t r = begin; r < end; r++) {
        int64_t k = 0;
        for (int64_t c = 0; c < cols; c++) k += tb_mask_get(j->mask, r, c);
        if (k > kmax) kmax = k;
    }
    int *kept = tb_malloc((size_t)cols * sizeof *kept + 1), *pr = tb_malloc((size_t)cols * sizeof *pr + 1);
    double *a = tb_malloc((size_t)(kmax * kmax) * sizeof *a + 1), *b = tb_malloc((size_t)cols * sizeof *b + 1);
    double *work = tb_malloc(tb_sym_solve_work((int)kmax) * sizeof *work + 1);
    if (!kept || !pr || !a || !b || !work) { slot_fail(sl, begin); goto out; }
    for (int64_t r = begin; r < end; r++) {
        float *w = j->w + r * cols;
        int ns = 0, np = 0, moved = 0;
        for (int64_t c = 0; c < cols; c++) {
            if (tb_mask_get(j->mask, r, c)) kept[ns++] = (int)c;
            else { pr[np++] = (int)c; moved |= w[c] != 0; }
        }
        if (ns && moved) {
            /* b = G_SP w_P, A = G_SS; solve (A + lambda I) d = b; w_S += d */
            int nz = 0;
            for (int s = 0; s < ns; s++) {
                const double *gs = j->g + (size_t)kept[s] * cols;
                double acc = 0;
                for (int p = 0; p < np; p++) acc += gs[pr[p]] * w[pr[p]];
                b[s] = acc;
                nz |= acc != 0;
                for (int t = 0; t < ns; t++) a[(size_t)s * ns + t] = gs[kept[t]];
            }
            if (nz) { /* b = 0: the pruned weights never met a nonzero input */
                tb_solve_info info;
                if (tb_sym_solve(a, ns, j->lambda, b, 1, work, &info)) { slot_fail(sl, r); break; }
                slot_solved(sl, &info);
                for (int s = 0; s < ns; s++) w[kept[s]] = (float)(w[kept[s]] + b[s]);
            }
        }
        for (int p = 0; p < np; p++) w[pr[p]] = 0.0f;
    }
out:
    free(kept);
    free(pr);
    free(a);
    free(b);
    free(work);
}

int tb_comp_recon(float *w, const tb_mask *mask, const double *gram, double damp, int n_threads, tb_comp_stats *st)
{
    double mean_diag;
    int rc = gram_check(gram, mask->cols, &mean_diag);
    if (rc) return rc;
    recon_job j = {w, mask, gram, damp * mean_diag, slots_new()};
    if (!j.sl) return TB_EIO;
    if (st) st->lambda = j.lambda;
    tb_parallel_for(n_threads, mask->rows, recon_rows, &j);
    return slots_collect(j.sl, st);
}

/* ---------------------------------------------------------------- sparsegpt */

typedef struct {
    float *w;
    tb_mask *mask;
    int n, m, block, reselect;
    const double *u; /* upper Cholesky factor of H^-1: H^-1 = U^T U */
    const uint8_t *dead;
    slot *sl;
} sgpt_job;

/* indices of the `count` smallest of score[0..len) (ties: lower index), marked in out[] */
static void mark_smallest(const double *score, int len, int count, uint8_t *out)
{
    memset(out, 0, (size_t)len);
    for (int c = 0; c < count; c++) {
        int best = -1;
        for (int i = 0; i < len; i++)
            if (!out[i] && (best < 0 || score[i] < score[best])) best = i;
        out[best] = 1;
    }
}

/* Rows [begin, end) at once: their weights in f64 and the block errors. */
static void sgpt_chunk(sgpt_job *j, slot *sl, int64_t begin, int64_t end)
{
    int64_t cols = j->mask->cols, nr = end - begin;
    int bs = j->block;
    const double *u = j->u;
    double *wc = tb_malloc((size_t)(nr * cols) * sizeof *wc + 1);  /* the chunk's weights, f64 */
    double *err = tb_malloc((size_t)(nr * bs) * sizeof *err + 1);  /* scaled errors of a block */
    double *score = tb_malloc((size_t)bs * sizeof *score + 1);
    uint8_t *prune = tb_malloc((size_t)bs + 1);
    if (!wc || !err || !score || !prune) { slot_fail(sl, begin); goto out; }
    for (int64_t i = 0; i < nr * cols; i++) wc[i] = j->dead[i % cols] ? 0.0 : j->w[begin * cols + i];
    for (int64_t i1 = 0; i1 < cols; i1 += bs) {
        int cnt = (int)(cols - i1 < bs ? cols - i1 : bs);
        for (int64_t rr = 0; rr < nr; rr++) {
            int64_t r = begin + rr;
            double *w1 = wc + rr * cols + i1, *e1 = err + rr * bs;
            /* which columns of the block to prune */
            if (!j->reselect) {
                for (int i = 0; i < cnt; i++) prune[i] = !tb_mask_get(j->mask, r, i1 + i);
            } else if (j->m == 0) {
                int np = 0;
                for (int i = 0; i < cnt; i++) {
                    double d = u[(i1 + i) * cols + i1 + i];
                    score[i] = w1[i] * w1[i] / (d * d);
                    np += !tb_mask_get(j->mask, r, i1 + i);
                }
                mark_smallest(score, cnt, np, prune);
            }
            for (int i = 0; i < cnt; i++) {
                int64_t c = i1 + i;
                if (j->reselect && j->m && i % j->m == 0) {
                    /* N:M groups are chosen when the sweep reaches them, from the weights as updated so far */
                    for (int t = 0; t < j->m; t++) {
                        double d = u[(c + t) * cols + c + t];
                        score[t] = w1[i + t] * w1[i + t] / (d * d);
                    }
                    mark_smallest(score, j->m, j->m - j->n, prune + i);
                }
                double d = u[c * cols + c];
                double e = prune[i] ? w1[i] / d : 0.0;
                e1[i] = e;
                if (e != 0) {
                    const double *ur = u + c * cols;
                    for (int t = i + 1; t < cnt; t++) w1[t] -= e * ur[i1 + t];
                }
                if (prune[i]) w1[i] = 0;
                if (j->reselect) tb_mask_set(j->mask, r, c, !prune[i]);
            }
        }
        /* lazy batch: the block's errors reach the columns to its right at once */
        int64_t rest = cols - i1 - cnt;
        if (rest > 0)
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)rest, cnt, -1.0, err, bs,
                        u + i1 * cols + i1 + cnt, (int)cols, 1.0, wc + i1 + cnt, (int)cols);
    }
    for (int64_t i = 0; i < nr * cols; i++) {
        if (!isfinite(wc[i])) {
            tb_fail(TB_EDATA, "non-finite SparseGPT update");
            slot_fail(sl, begin + i / cols);
            break;
        }
        j->w[begin * cols + i] = (float)wc[i];
    }
out:
    free(wc);
    free(err);
    free(score);
    free(prune);
}

/* A thread's rows in chunks of SGPT_CHUNK_ROWS: the f64 copy is chunk x cols
 * (4096 x 14336 x 8 = 470 MB for a 7B down_proj at once; 59 MB per chunk),
 * and each chunk's lazy updates are still one gemm of 256 rows. */
#define SGPT_CHUNK_ROWS 256
static void sgpt_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    sgpt_job *j = ctx;
    for (int64_t r = begin; r < end; r += SGPT_CHUNK_ROWS)
        sgpt_chunk(j, &j->sl[tid], r, end - r < SGPT_CHUNK_ROWS ? end : r + SGPT_CHUNK_ROWS);
}

int tb_comp_sparsegpt(float *w, tb_mask *mask, int n, int m, const double *gram, double damp, int block,
                      int reselect, int n_threads, tb_comp_stats *st)
{
    int64_t cols = mask->cols;
    if (block < 1 || (m && (block % m || cols % m)))
        return tb_fail(TB_EUSAGE, "sparsegpt: block %d and columns %lld must be multiples of M=%d", block, (long long)cols, m);
    double mean_diag;
    int rc = gram_check(gram, cols, &mean_diag);
    if (rc) return rc;
    double *u = tb_malloc((size_t)(cols * cols) * sizeof *u + 1);
    uint8_t *dead = tb_calloc((size_t)cols + 1, 1);
    if (!u || !dead) { free(u); free(dead); return TB_EIO; }
    /* an input that is always 0 carries no information: as SparseGPT, its
     * weights become 0 (they never mattered) and its diagonal entry of H
     * counts as 1 in the damping's mean. Its row and column of G are 0, so
     * H + lambda I is block diagonal with that entry apart: the factor and
     * the inverse of every other entry are the same whatever it holds, and
     * H^-1 is computed from the (mapped) Gram itself, without a copy of H
     * (one cols x cols f64 matrix in memory, not two: 1.6 GB at 7B). */
    double s = 0;
    int64_t n_dead = 0;
    for (int64_t i = 0; i < cols; i++) {
        if (gram[i * cols + i] == 0) { dead[i] = 1; n_dead++; s += 1; }
        else s += gram[i * cols + i];
    }
    for (int64_t i = 0; i < cols && n_dead; i++)
        for (int64_t k = 0; dead[i] && k < cols; k++)
            if (gram[i * cols + k] != 0) {
                free(u);
                free(dead);
                return tb_fail(TB_EDATA, "Gram column %lld has a zero diagonal but a nonzero entry (%lld)", (long long)i,
                               (long long)k);
            }
    double lambda = damp * s / (double)(cols ? cols : 1);
    if (st) st->lambda = lambda;
    /* undamped (--damp 0), a dead entry needs its 1 to be factored: copy */
    const double *a = gram;
    double *h = NULL;
    if (n_dead && !(lambda > 0)) {
        if (!(h = tb_malloc((size_t)(cols * cols) * sizeof *h + 1))) { free(u); free(dead); return TB_EIO; }
        memcpy(h, gram, (size_t)(cols * cols) * sizeof *h);
        for (int64_t i = 0; i < cols; i++)
            if (dead[i]) h[i * cols + i] = 1;
        a = h;
    }
    tb_solve_info info;
    rc = tb_sym_inverse(a, (int)cols, lambda, u, &info);
    free(h);
    if (!rc && st) {
        st->raised += info.raises > 0 && !info.eigen;
        st->eigen += info.eigen;
    }
    if (!rc && LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', (int)cols, u, (int)cols) != 0)
        rc = tb_fail(TB_EDATA, "Cholesky factor of H^-1 failed (try a larger --damp)");
    if (!rc) {
        sgpt_job j = {w, mask, n, m, block, reselect, u, dead, slots_new()};
        if (!j.sl) rc = TB_EIO;
        else {
            tb_parallel_for(n_threads, mask->rows, sgpt_rows, &j);
            rc = slots_collect(j.sl, NULL);
        }
    }
    free(u);
    free(dead);
    return rc;
}

/* ------------------------------------------------------------ output error */

typedef struct {
    const float *w0, *w;
    int64_t cols;
    const double *g;
    slot *sl;
} err_job;

/* Rows a DSYMM takes at once: the Gram is read once per block of rows, not
 * once per row (a DSYMV per row reads all cols^2 f64 for 2 cols^2 flops:
 * memory-bound, 1.6 GB a row for a 7B down_proj). */
enum { ERR_BLOCK = 64 };

static void err_rows(void *ctx, int64_t begin, int64_t end, int tid)
{
    err_job *j = ctx;
    int64_t cols = j->cols;
    size_t cells = (size_t)ERR_BLOCK * (size_t)cols;
    double *e = tb_malloc(cells * sizeof *e + 1), *y = tb_malloc(cells * sizeof *y + 1);
    if (!e || !y) { j->sl[tid].sum = NAN; free(e); free(y); return; }
    double s = 0;
    for (int64_t r0 = begin; r0 < end; r0 += ERR_BLOCK) {
        const int64_t nb = end - r0 < ERR_BLOCK ? end - r0 : ERR_BLOCK;
        for (int64_t r = r0; r < r0 + nb; r++)
            for (int64_t c = 0; c < cols; c++)
                e[(r - r0) * cols + c] = (double)j->w0[r * cols + c] - (j->w ? j->w[r * cols + c] : 0.0f);
        /* Y = E G (G's upper triangle), then sum over rows of e . y */
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)nb, (int)cols, 1.0, j->g, (int)cols, e, (int)cols,
                    0.0, y, (int)cols);
        for (int64_t i = 0; i < nb; i++) s += cblas_ddot((int)cols, e + i * cols, 1, y + i * cols, 1);
    }
    j->sl[tid].sum = s;
    free(e);
    free(y);
}

double tb_comp_output_error(const float *w0, const float *w, int64_t rows, int64_t cols, const double *gram,
                            int n_threads)
{
    slot *sl = slots_new();
    if (!sl) return NAN;
    err_job j = {w0, w, cols, gram, sl};
    tb_parallel_for(n_threads, rows, err_rows, &j);
    double s = 0;
    for (int t = 0; t < MAX_THREADS; t++) s += sl[t].sum;
    free(sl);
    return s;
}
