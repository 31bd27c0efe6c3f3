/* tb_nm.c - N:M and unstructured mask solvers, channel permutation search.
 * See tb_nm.h for the contracts and tb-nm(1) for the method. */
#include "tb_nm.h"
#include "tb_error.h"
#include "tb_pack.h" /* tb_unpermute_row */
#include "tb_threads.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static const char *const solver_names[TB_NM_SOLVER_COUNT] = {"topn", "optimal", "iterative"};

const char *tb_nm_solver_name(tb_nm_solver s)
{
    return (unsigned)s < TB_NM_SOLVER_COUNT ? solver_names[s] : "?";
}

int tb_nm_solver_parse(const char *s, tb_nm_solver *out)
{
    for (int i = 0; i < TB_NM_SOLVER_COUNT; i++)
        if (strcmp(s, solver_names[i]) == 0) { *out = (tb_nm_solver)i; return TB_OK; }
    return tb_fail(TB_EUSAGE, "unknown solver '%s' (topn, optimal, iterative)", s);
}

/* Geometry of a score matrix seen as output units x reduction channels. */
typedef struct {
    int64_t rows, cols, units, k;
    int k_dim;
} geom;

static geom make_geom(int64_t rows, int64_t cols, int k_dim)
{
    geom g = {rows, cols, k_dim ? rows : cols, k_dim ? cols : rows, k_dim};
    return g;
}
static inline int64_t gidx(const geom *g, int64_t unit, int64_t k)
{
    return g->k_dim ? unit * g->cols + k : k * g->cols + unit;
}
static inline void mask_put(tb_mask *m, const geom *g, int64_t unit, int64_t k, int keep)
{
    if (g->k_dim) tb_mask_set(m, unit, k, keep);
    else tb_mask_set(m, k, unit, keep);
}
static void gather(const geom *g, const float *s, int64_t unit, float *out)
{
    if (g->k_dim) memcpy(out, s + unit * g->cols, (size_t)g->k * sizeof *out);
    else
        for (int64_t k = 0; k < g->k; k++) out[k] = s[k * g->cols + unit];
}

/* Threads work on blocks of 8 output units: with k_dim 0 a unit is a mask
 * column, and 8 adjacent columns share mask bytes, so a block never shares
 * a byte with another thread's block. */
static int64_t n_blocks(int64_t units) { return (units + 7) / 8; }

/* ---------------------------------------------------------------- groups */

uint32_t tb_nm_topn_group(const float *v, int m, int n)
{
    /* Keep v[t] when fewer than n values precede it in the order (larger
     * value first, then lower index): the set the greedy loop below picks,
     * without its data-dependent branches, which mispredict on every other
     * comparison of real scores (60 ns a 2:4 group, 3.4 s of a 7B layer's
     * 54 M groups on one core; this takes a fifth). NaN has no place in
     * that order: the loop decides, as it always has. */
    if (m == 4 && n == 2) { /* 2:4, the pattern that matters: unrolled */
        if (v[0] == v[0] && v[1] == v[1] && v[2] == v[2] && v[3] == v[3]) {
            const float a = v[0], b = v[1], c = v[2], d = v[3];
            const int r0 = (b > a) + (c > a) + (d > a);
            const int r1 = (a >= b) + (c > b) + (d > b);
            const int r2 = (a >= c) + (b >= c) + (d > c);
            const int r3 = (a >= d) + (b >= d) + (c >= d);
            return (uint32_t)(r0 < 2) | (uint32_t)(r1 < 2) << 1 | (uint32_t)(r2 < 2) << 2 | (uint32_t)(r3 < 2) << 3;
        }
    } else if (m <= 8) {
        int nan = 0;
        for (int t = 0; t < m; t++) nan |= v[t] != v[t];
        if (!nan) {
            uint32_t k = 0;
            for (int t = 0; t < m; t++) {
                int r = 0;
                for (int u = 0; u < m; u++) r += (v[u] > v[t]) | ((v[u] == v[t]) & (u < t));
                k |= (uint32_t)(r < n) << t;
            }
            return k;
        }
    }
    uint32_t keep = 0;
    for (int i = 0; i < n; i++) {
        int best = -1;
        for (int t = 0; t < m; t++) {
            if (keep >> t & 1) continue;
            /* strict >: among equal values the first (lowest index) stays */
            if (best < 0 || v[t] > v[best]) best = t;
        }
        keep |= 1u << best;
    }
    return keep;
}

/* The C(m, n) keep sets of a group, listed once per (m, n) by Gosper's hack
 * (the next larger integer with the same popcount), in increasing numeric
 * order. Built on first use under a lock; read lock-free after. */
/* Gosper's hack: the next larger integer with the same number of set bits */
static inline uint32_t next_subset(uint32_t x)
{
    uint32_t lo = x & (~x + 1), r = x + lo;
    return (((r ^ x) >> 2) / lo) | r;
}

static _Atomic(uint16_t *) subset_lists[TB_NM_MAX_M + 1][TB_NM_MAX_M + 1];
static int subset_counts[TB_NM_MAX_M + 1][TB_NM_MAX_M + 1];
static pthread_mutex_t subset_lock = PTHREAD_MUTEX_INITIALIZER;

static const uint16_t *subsets(int m, int n, int *count)
{
    uint16_t *l = atomic_load_explicit(&subset_lists[m][n], memory_order_acquire);
    if (!l) {
        pthread_mutex_lock(&subset_lock);
        l = atomic_load_explicit(&subset_lists[m][n], memory_order_relaxed);
        if (!l) {
            int c = 0;
            uint16_t *nl = malloc(12870 * sizeof *nl); /* C(16, 8), the largest */
            if (nl) {
                for (uint32_t x = (1u << n) - 1; x < 1u << m; x = next_subset(x)) nl[c++] = (uint16_t)x;
                subset_counts[m][n] = c;
                atomic_store_explicit(&subset_lists[m][n], nl, memory_order_release);
            }
            l = nl;
        }
        pthread_mutex_unlock(&subset_lock);
    }
    *count = l ? subset_counts[m][n] : 0;
    return l;
}

uint32_t tb_nm_optimal_group(const float *v, int m, int n, tb_nm_objective obj, void *ctx)
{
    int count;
    const uint16_t *list = subsets(m, n, &count);
    /* separable objective: sum of kept scores from two 256-entry tables of
     * partial sums (elements 0-7 and 8-15), O(1) per subset */
    double lo[256], hi[256];
    if (!obj) {
        lo[0] = hi[0] = 0;
        for (unsigned x = 1; x < 256; x++) {
            int t = __builtin_ctz(x);
            lo[x] = lo[x & (x - 1)] + (t < m ? v[t] : 0.0);
            hi[x] = hi[x & (x - 1)] + (t + 8 < m ? v[t + 8] : 0.0);
        }
    }
    /* a later set must beat the best by a relative 1e-12: sets whose values
     * differ only by rounding (equal scores summed in another order) count
     * as equal, and the earlier, lower-index one stays, as in topn */
    uint32_t first = (1u << n) - 1, best_keep = first;
    double best = obj ? obj(ctx, v, first) : lo[first & 255] + hi[first >> 8];
    double bar = best + 1e-12 * fabs(best);
    if (!list) { /* no memory for the list: the same sets, enumerated here */
        for (uint32_t x = next_subset(first); x < 1u << m; x = next_subset(x)) {
            double val = obj ? obj(ctx, v, x) : lo[x & 255] + hi[x >> 8];
            if (val > bar) { best = val; best_keep = x; bar = best + 1e-12 * fabs(best); }
        }
        return best_keep;
    }
    for (int i = 1; i < count; i++) {
        uint32_t x = list[i];
        double val = obj ? obj(ctx, v, x) : lo[x & 255] + hi[x >> 8];
        if (val > bar) { best = val; best_keep = x; bar = best + 1e-12 * fabs(best); }
    }
    return best_keep;
}

/* ---------------------------------------------------------------- N:M */

/* The joint objective's state for one unit: d the pruned weights (w where
 * pruned, 0 where kept) and r = G d, kept exact under every accepted change,
 * so a group change is priced in O(M^2):
 *   E(d + delta) - E(d) = 2 delta . r + delta^T G delta   (delta on M entries) */
typedef struct {
    int m;
    double wg[TB_NM_MAX_M], dg[TB_NM_MAX_M], rg[TB_NM_MAX_M], gg[TB_NM_MAX_M * TB_NM_MAX_M];
} joint_group;

static double joint_delta(const joint_group *j, uint32_t keep)
{
    double delta[TB_NM_MAX_M], de = 0;
    for (int t = 0; t < j->m; t++) delta[t] = (keep >> t & 1 ? 0.0 : j->wg[t]) - j->dg[t];
    for (int t = 0; t < j->m; t++) {
        if (delta[t] == 0) continue;
        double gd = 0;
        for (int u = 0; u < j->m; u++) gd += j->gg[t * j->m + u] * delta[u];
        de += delta[t] * (2 * j->rg[t] + gd);
    }
    return de;
}

static double joint_objective(void *ctx, const float *vals, uint32_t keep)
{
    (void)vals;
    return -joint_delta(ctx, keep);
}

typedef struct {
    const tb_nm_opts *o;
    const float *s;
    geom g;
    tb_mask *mask;
    double kept[256], total[256], err0[256], err[256];
    int64_t changed[256];
    int oom;
} solve_ctx;

/* Iterative refinement of one unit's keep sets (see tb_nm.h). */
static void refine_unit(solve_ctx *c, int64_t unit, const float *vals, uint32_t *keep, double *wrow, double *d, double *r,
                        int tid)
{
    const tb_nm_opts *o = c->o;
    int64_t K = c->g.k, G = K / o->m;
    const double *gram = o->gram;
    for (int64_t k = 0; k < K; k++) {
        wrow[k] = o->w[gidx(&c->g, unit, k)];
        d[k] = keep[k / o->m] >> (k % o->m) & 1 ? 0.0 : wrow[k];
    }
    /* r = G d as a sum of rows of G (G symmetric) over the pruned channels
     * only: half the work of a dense product at 50%, and an axpy, which
     * vectorises where a dot-product reduction would not */
    memset(r, 0, (size_t)K * sizeof *r);
    for (int64_t j = 0; j < K; j++) {
        if (d[j] == 0) continue;
        const double *gj = gram + j * K;
        double dj = d[j];
        for (int64_t i = 0; i < K; i++) r[i] += dj * gj[i];
    }
    double e = 0;
    for (int64_t i = 0; i < K; i++) e += d[i] * r[i];
    c->err0[tid] += e;
    int sweeps = o->max_sweeps > 0 ? o->max_sweeps : 10;
    joint_group j;
    j.m = o->m;
    for (int sw = 0; sw < sweeps; sw++) {
        int any = 0;
        for (int64_t grp = 0; grp < G; grp++) {
            int64_t base = grp * o->m;
            for (int t = 0; t < o->m; t++) {
                j.wg[t] = wrow[base + t];
                j.dg[t] = d[base + t];
                j.rg[t] = r[base + t];
                for (int u = 0; u < o->m; u++) j.gg[t * o->m + u] = gram[(base + t) * K + base + u];
            }
            uint32_t best = tb_nm_optimal_group(vals + base, o->m, o->n, joint_objective, &j);
            if (best == keep[grp]) continue;
            double de = joint_delta(&j, best);
            /* strict decrease beyond rounding: no cycling between equals */
            if (!(de < -1e-12 * fabs(e))) continue;
            for (int t = 0; t < o->m; t++) {
                double nd = best >> t & 1 ? 0.0 : wrow[base + t], delta = nd - d[base + t];
                if (delta == 0) continue;
                const double *gcol = gram + (base + t) * K; /* G symmetric: row = column */
                for (int64_t i = 0; i < K; i++) r[i] += gcol[i] * delta;
                d[base + t] = nd;
            }
            e += de;
            keep[grp] = best;
            any = 1;
        }
        if (!any) break;
    }
    /* report the error recomputed from the maintained r (= G d) */
    double ef = 0;
    for (int64_t i = 0; i < K; i++) ef += d[i] * r[i];
    c->err[tid] += ef;
}

static void solve_blocks(void *vctx, int64_t b0, int64_t b1, int tid)
{
    solve_ctx *c = vctx;
    const tb_nm_opts *o = c->o;
    int64_t K = c->g.k, G = K / o->m;
    int iter = o->solver == TB_NM_ITERATIVE;
    float *vals = malloc((size_t)K * sizeof *vals);
    uint32_t *keep = malloc((size_t)G * sizeof *keep), *start = malloc((size_t)G * sizeof *start);
    double *work = iter ? malloc((size_t)K * 3 * sizeof *work) : NULL;
    if (!vals || !keep || !start || (iter && !work)) {
        c->oom = 1;
        goto out;
    }
    for (int64_t unit = b0 * 8; unit < b1 * 8 && unit < c->g.units; unit++) {
        gather(&c->g, c->s, unit, vals);
        for (int64_t grp = 0; grp < G; grp++)
            keep[grp] = o->solver == TB_NM_OPTIMAL ? tb_nm_optimal_group(vals + grp * o->m, o->m, o->n, NULL, NULL)
                                                   : tb_nm_topn_group(vals + grp * o->m, o->m, o->n);
        if (iter) {
            memcpy(start, keep, (size_t)G * sizeof *keep);
            refine_unit(c, unit, vals, keep, work, work + K, work + 2 * K, tid);
            for (int64_t grp = 0; grp < G; grp++) c->changed[tid] += keep[grp] != start[grp];
        }
        if (c->g.k_dim) {
            /* a mask row, its bytes built whole (the row starts all 0); the
             * sums in the order of k as below. No k / m per element: a
             * division by a variable cost more than choosing the group */
            uint8_t *row = c->mask->bits + unit * c->mask->row_bytes, byte = 0;
            double total = c->total[tid], kept = c->kept[tid];
            for (int64_t grp = 0, k = 0; grp < G; grp++)
                for (int t = 0; t < o->m; t++, k++) {
                    const int kp = keep[grp] >> t & 1;
                    byte |= (uint8_t)(kp << (k & 7));
                    if ((k & 7) == 7 || k == K - 1) {
                        row[k >> 3] = byte;
                        byte = 0;
                    }
                    total += vals[k];
                    if (kp) kept += vals[k];
                }
            c->total[tid] = total;
            c->kept[tid] = kept;
        } else {
            for (int64_t k = 0; k < K; k++) {
                int kp = keep[k / o->m] >> (k % o->m) & 1;
                mask_put(c->mask, &c->g, unit, k, kp);
                c->total[tid] += vals[k];
                if (kp) c->kept[tid] += vals[k];
            }
        }
    }
out:
    free(vals);
    free(keep);
    free(start);
    free(work);
}

static int check_nm(int n, int m, int k_dim, int64_t rows, int64_t cols)
{
    if (m < 2 || m > TB_NM_MAX_M || n < 1 || n >= m)
        return tb_fail(TB_EUSAGE, "N:M %d:%d: need 1 <= N < M <= %d", n, m, TB_NM_MAX_M);
    if (k_dim != 0 && k_dim != 1) return tb_fail(TB_EUSAGE, "k_dim %d (must be 0 or 1)", k_dim);
    int64_t K = k_dim ? cols : rows;
    if (K % m) return tb_fail(TB_EDATA, "dim %d (%lld) not divisible by M=%d", k_dim, (long long)K, m);
    return TB_OK;
}

int tb_nm_solve(const tb_nm_opts *o, const float *s, int64_t rows, int64_t cols, tb_mask *mask, tb_nm_stats *st)
{
    int rc = check_nm(o->n, o->m, o->k_dim, rows, cols);
    if (rc) return rc;
    if (o->solver == TB_NM_ITERATIVE && (!o->w || !o->gram))
        return tb_fail(TB_EUSAGE, "the iterative solver needs the weight and the Gram matrix");
    if (mask->rows != rows || mask->cols != cols) return tb_fail(TB_EUSAGE, "mask shape differs from the scores'");
    solve_ctx *c = calloc(1, sizeof *c);
    if (!c) return tb_fail(TB_EIO, "out of memory");
    c->o = o;
    c->s = s;
    c->g = make_geom(rows, cols, o->k_dim);
    c->mask = mask;
    tb_parallel_for(o->n_threads > 0 ? o->n_threads : 1, n_blocks(c->g.units), solve_blocks, c);
    if (c->oom) { free(c); return tb_fail(TB_EIO, "out of memory (solver buffers)"); }
    if (st) {
        memset(st, 0, sizeof *st);
        for (int t = 0; t < 256; t++) {
            st->kept += c->kept[t];
            st->total += c->total[t];
            st->err_start += c->err0[t];
            st->err += c->err[t];
            st->changed_groups += c->changed[t];
        }
    }
    free(c);
    return TB_OK;
}

double tb_nm_joint_error(const float *w, const double *gram, int64_t rows, int64_t cols, int k_dim, const tb_mask *mask)
{
    geom g = make_geom(rows, cols, k_dim);
    double *d = malloc((size_t)g.k * sizeof *d), e = 0;
    if (!d) return NAN;
    for (int64_t u = 0; u < g.units; u++) {
        for (int64_t k = 0; k < g.k; k++) {
            int kp = k_dim ? tb_mask_get(mask, u, k) : tb_mask_get(mask, k, u);
            d[k] = kp ? 0.0 : w[gidx(&g, u, k)];
        }
        for (int64_t i = 0; i < g.k; i++) {
            if (d[i] == 0) continue;
            double acc = 0;
            for (int64_t k = 0; k < g.k; k++) acc += gram[i * g.k + k] * d[k];
            e += d[i] * acc;
        }
    }
    free(d);
    return e;
}

double tb_nm_kept(const float *s, const tb_mask *mask, double *total)
{
    double kept = 0, all = 0;
    for (int64_t r = 0; r < mask->rows; r++)
        for (int64_t c = 0; c < mask->cols; c++) {
            double v = s[r * mask->cols + c];
            all += v;
            if (tb_mask_get(mask, r, c)) kept += v;
        }
    if (total) *total = all;
    return kept;
}

/* ---------------------------------------------------------------- unstructured */

/* Radix selection over order-preserving 32-bit keys of f32 scores: three
 * histogram passes (11, 11, 10 bits) find the key of the n_prune-th smallest
 * element, in O(n) time and O(1) extra memory, exactly. */
static inline uint32_t fkey(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

static const int r_shift[3] = {21, 10, 0}, r_bits[3] = {11, 11, 10};

typedef struct {
    uint32_t prefix, hi_mask, digit_mask;
    int shift;
    int64_t hist[2048];
} rpass;

static void rpass_init(rpass *p, int pass, uint32_t prefix)
{
    p->shift = r_shift[pass];
    p->digit_mask = (1u << r_bits[pass]) - 1;
    int top = r_shift[pass] + r_bits[pass];
    p->hi_mask = top >= 32 ? 0 : ~((1u << top) - 1);
    p->prefix = prefix & p->hi_mask;
    memset(p->hist, 0, sizeof p->hist);
}

static void rpass_add(rpass *p, const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t key = fkey(v[i]);
        if ((key & p->hi_mask) == p->prefix) p->hist[(key >> p->shift) & p->digit_mask]++;
    }
}

/* digit holding rank *rank (0-based among the pass's elements); leaves the
 * rank within that digit's bucket and returns the bucket's size */
static int64_t rpass_pick(const rpass *p, int64_t *rank, uint32_t *prefix)
{
    int64_t cum = 0;
    for (uint32_t d = 0; d <= p->digit_mask; d++) {
        if (*rank < cum + p->hist[d]) {
            *rank -= cum;
            *prefix |= d << p->shift;
            return p->hist[d];
        }
        cum += p->hist[d];
    }
    return 0; /* rank past the end: callers clamp n_prune first */
}

static void select_array(const float *v, int64_t n, int64_t n_prune, tb_pool_threshold *thr)
{
    memset(thr, 0, sizeof *thr);
    thr->n_prune = n_prune < n ? n_prune : n;
    if (thr->n_prune <= 0) return;
    int64_t rank = thr->n_prune - 1; /* the largest pruned element */
    uint32_t prefix = 0;
    rpass p;
    for (int pass = 0; pass < 3; pass++) {
        rpass_init(&p, pass, prefix);
        rpass_add(&p, v, n);
        thr->ties_total = rpass_pick(&p, &rank, &prefix);
    }
    thr->key = prefix;
    thr->ties_prune = rank + 1;
}

/* keep decision for one element, given its tie ordinal so far (updated) */
static inline int keep_elem(const tb_pool_threshold *thr, float v, int64_t *tie_ord)
{
    if (thr->n_prune <= 0) return 1;
    uint32_t key = fkey(v);
    if (key < thr->key) return 0;
    if (key > thr->key) return 1;
    int64_t q = (*tie_ord)++;
    return q < thr->ties_total - thr->ties_prune; /* the last ties go */
}

typedef struct {
    const float *s;
    geom g;
    double sparsity;
    tb_mask *mask;
    int oom;
} unstr_ctx;

static void unstr_blocks(void *vctx, int64_t b0, int64_t b1, int tid)
{
    (void)tid;
    unstr_ctx *c = vctx;
    float *vals = malloc((size_t)c->g.k * sizeof *vals + 1);
    if (!vals) { c->oom = 1; return; }
    int64_t n_prune = llround(c->sparsity * (double)c->g.k);
    for (int64_t unit = b0 * 8; unit < b1 * 8 && unit < c->g.units; unit++) {
        gather(&c->g, c->s, unit, vals);
        tb_pool_threshold thr;
        select_array(vals, c->g.k, n_prune, &thr);
        int64_t ord = 0;
        for (int64_t k = 0; k < c->g.k; k++) mask_put(c->mask, &c->g, unit, k, keep_elem(&thr, vals[k], &ord));
    }
    free(vals);
}

int tb_unstructured_units(const float *s, int64_t rows, int64_t cols, int k_dim, double sparsity, int n_threads,
                          tb_mask *mask)
{
    if (!(sparsity >= 0 && sparsity <= 1)) return tb_fail(TB_EUSAGE, "sparsity %g not in [0, 1]", sparsity);
    if (k_dim != 0 && k_dim != 1) return tb_fail(TB_EUSAGE, "k_dim %d (must be 0 or 1)", k_dim);
    unstr_ctx c = {s, make_geom(rows, cols, k_dim), sparsity, mask, 0};
    tb_parallel_for(n_threads > 0 ? n_threads : 1, n_blocks(c.g.units), unstr_blocks, &c);
    return c.oom ? tb_fail(TB_EIO, "out of memory") : TB_OK;
}

#define CHUNK 4096

int tb_pool_select(const tb_array *t, int n, int64_t n_prune, tb_pool_threshold *thr, int64_t *ties_before)
{
    memset(thr, 0, sizeof *thr);
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += t[i].numel;
    thr->n_prune = n_prune < total ? n_prune : total;
    for (int i = 0; i < n; i++) ties_before[i] = 0;
    if (thr->n_prune <= 0) return TB_OK;
    float buf[CHUNK];
    int64_t rank = thr->n_prune - 1;
    uint32_t prefix = 0;
    rpass *p = malloc(sizeof *p);
    if (!p) return tb_fail(TB_EIO, "out of memory");
    for (int pass = 0; pass < 3; pass++) {
        rpass_init(p, pass, prefix);
        for (int i = 0; i < n; i++)
            for (int64_t off = 0; off < t[i].numel; off += CHUNK) {
                int64_t k = t[i].numel - off < CHUNK ? t[i].numel - off : CHUNK;
                tb_to_f32(t[i].dtype, t[i].data, (size_t)off, (size_t)k, buf);
                rpass_add(p, buf, k);
            }
        thr->ties_total = rpass_pick(p, &rank, &prefix);
    }
    free(p);
    thr->key = prefix;
    thr->ties_prune = rank + 1;
    /* ties per tensor, so each tensor knows its ties' ordinals in the pool */
    int64_t before = 0;
    for (int i = 0; i < n; i++) {
        ties_before[i] = before;
        for (int64_t off = 0; off < t[i].numel; off += CHUNK) {
            int64_t k = t[i].numel - off < CHUNK ? t[i].numel - off : CHUNK;
            tb_to_f32(t[i].dtype, t[i].data, (size_t)off, (size_t)k, buf);
            for (int64_t j = 0; j < k; j++) before += fkey(buf[j]) == thr->key;
        }
    }
    return TB_OK;
}

int tb_pool_mask(const tb_array *t, const tb_pool_threshold *thr, int64_t ties_before, tb_mask *mask)
{
    if (t->ndim != 2 || t->shape[0] != mask->rows || t->shape[1] != mask->cols)
        return tb_fail(TB_EUSAGE, "tensor '%s': mask shape differs", t->name);
    float buf[CHUNK];
    int64_t ord = ties_before, cols = mask->cols;
    for (int64_t off = 0; off < t->numel; off += CHUNK) {
        int64_t k = t->numel - off < CHUNK ? t->numel - off : CHUNK;
        tb_to_f32(t->dtype, t->data, (size_t)off, (size_t)k, buf);
        for (int64_t j = 0; j < k; j++) {
            int64_t e = off + j;
            tb_mask_set(mask, e / cols, e % cols, keep_elem(thr, buf[j], &ord));
        }
    }
    return TB_OK;
}

/* ---------------------------------------------------------------- permutation */

void tb_permute_apply(const void *in, void *out, size_t elem_size, int64_t rows, int64_t cols, int k_dim,
                      const int32_t *perm)
{
    const char *src = in;
    char *dst = out;
    if (k_dim) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < cols; j++)
                memcpy(dst + (size_t)(r * cols + j) * elem_size, src + (size_t)(r * cols + perm[j]) * elem_size, elem_size);
    } else {
        size_t row_bytes = (size_t)cols * elem_size;
        for (int64_t j = 0; j < rows; j++) memcpy(dst + (size_t)j * row_bytes, src + (size_t)perm[j] * row_bytes, row_bytes);
    }
}

int tb_permute_cols_inplace(float *w, int64_t rows, int64_t cols, const int32_t *perm, int undo)
{
    float *row = tb_malloc((size_t)cols * sizeof *row + 1);
    if (!row) return TB_EIO;
    for (int64_t r = 0; r < rows; r++) {
        float *x = w + r * cols;
        memcpy(row, x, (size_t)cols * sizeof *row);
        if (undo) tb_unpermute_row(row, x, cols, perm);
        else tb_permute_apply(row, x, sizeof *row, 1, cols, 1, perm);
    }
    free(row);
    return TB_OK;
}

void tb_permute_invert(const int32_t *perm, int32_t *inv, int64_t k)
{
    for (int64_t j = 0; j < k; j++) inv[perm[j]] = (int32_t)j;
}

int tb_permute_check(const int32_t *perm, int64_t k)
{
    uint8_t *seen = calloc((size_t)k + 1, 1);
    if (!seen) return tb_fail(TB_EIO, "out of memory");
    int rc = TB_OK;
    for (int64_t j = 0; j < k && !rc; j++) {
        if (perm[j] < 0 || perm[j] >= k || seen[perm[j]])
            rc = tb_fail(TB_EDATA, "permutation index %lld: %d is %s", (long long)j, perm[j],
                         perm[j] < 0 || perm[j] >= k ? "out of range" : "repeated");
        else seen[perm[j]] = 1;
    }
    free(seen);
    return rc;
}

/* sum of the n largest of v[0..m-1] */
static double topn_sum(const float *v, int m, int n)
{
    uint32_t keep = tb_nm_topn_group(v, m, n);
    double s = 0;
    for (int t = 0; t < m; t++)
        if (keep >> t & 1) s += v[t];
    return s;
}

double tb_nm_kept_topn(const float *s, int64_t rows, int64_t cols, int k_dim, int n, int m, const int32_t *perm)
{
    geom g = make_geom(rows, cols, k_dim);
    double kept = 0;
    float v[TB_NM_MAX_M];
    for (int64_t u = 0; u < g.units; u++)
        for (int64_t base = 0; base < g.k; base += m) {
            for (int t = 0; t < m; t++) v[t] = s[gidx(&g, u, perm ? perm[base + t] : base + t)];
            kept += topn_sum(v, m, n);
        }
    return kept;
}

/* Search state. Channel k's scores over all units are the contiguous column
 * C[k * units ...]; group g holds channels grp[g * m ...]; for every group
 * and unit, nth / nth1 are its n-th and (n+1)-th largest scores, which is all
 * a swap's gain needs:
 *   group loses a:  if a >= nth: kept += nth1 - a, new n-th = nth1
 *                   else         kept unchanged, new n-th = nth
 *   group gains b:  kept += max(0, b - new n-th). */
typedef struct {
    int64_t units, k, groups;
    int n, m;
    float *col, *nth, *nth1;
    int32_t *grp, *pairs;
    double eps;
    int64_t swaps[256];
} perm_state;

static void sort_desc(float *v, int m)
{
    for (int i = 1; i < m; i++) {
        float x = v[i];
        int j = i - 1;
        while (j >= 0 && v[j] < x) { v[j + 1] = v[j]; j--; }
        v[j + 1] = x;
    }
}

static void group_stats(perm_state *p, int64_t g)
{
    const float *c[TB_NM_MAX_M];
    for (int t = 0; t < p->m; t++) c[t] = p->col + (int64_t)p->grp[g * p->m + t] * p->units;
    float v[TB_NM_MAX_M];
    for (int64_t u = 0; u < p->units; u++) {
        for (int t = 0; t < p->m; t++) v[t] = c[t][u];
        sort_desc(v, p->m);
        p->nth[g * p->units + u] = v[p->n - 1];
        p->nth1[g * p->units + u] = v[p->n];
    }
}

static double grouping_kept(perm_state *p)
{
    double kept = 0;
    float v[TB_NM_MAX_M];
    for (int64_t g = 0; g < p->groups; g++)
        for (int64_t u = 0; u < p->units; u++) {
            for (int t = 0; t < p->m; t++) v[t] = p->col[(int64_t)p->grp[g * p->m + t] * p->units + u];
            kept += topn_sum(v, p->m, p->n);
        }
    return kept;
}

static inline float minf(float x, float y) { return x < y ? x : y; }
static inline float maxf(float x, float y) { return x > y ? x : y; }

/* One unit's gain when a leaves a group (n-th, (n+1)-th largest t >= u) and
 * b enters it. A member a is either in the top n (a >= t, so a >= u) or not
 * (a <= u), hence branch-free: kept changes by min(0, u - a), the new n-th is
 * u + t - clamp(a, u, t), and b adds max(0, b - new n-th). Data-dependent
 * branches here would mispredict half the time. */
static inline float leave_enter(float a, float b, float t, float u)
{
    float nth = u + t - minf(maxf(a, u), t);
    return minf(0.0f, u - a) + maxf(0.0f, b - nth);
}

static inline float unit_gain(float a, float b, float t1, float u1, float t2, float u2)
{
    return leave_enter(a, b, t1, u1) + leave_enter(b, a, t2, u2);
}

/* gain of swapping channel ca (in g1) with cb (in g2), summed over units */
static double swap_gain(const perm_state *p, int64_t g1, int64_t g2, const float *ca, const float *cb)
{
    const float *t1 = p->nth + g1 * p->units, *u1 = p->nth1 + g1 * p->units;
    const float *t2 = p->nth + g2 * p->units, *u2 = p->nth1 + g2 * p->units;
    /* 8 independent f32 lanes (branch-free), so the compiler vectorises
     * without reassociating one sum; lanes flushed to f64 every 256 units */
    double gain = 0;
    int64_t u = 0;
    while (u < p->units) {
        int64_t end = u + 256 < p->units ? u + 256 : p->units;
        float lane[8] = {0};
        for (; u + 8 <= end; u += 8)
            for (int j = 0; j < 8; j++) lane[j] += unit_gain(ca[u + j], cb[u + j], t1[u + j], u1[u + j], t2[u + j], u2[u + j]);
        for (; u < end; u++) lane[0] += unit_gain(ca[u], cb[u], t1[u], u1[u], t2[u], u2[u]);
        for (int j = 0; j < 8; j++) gain += lane[j];
    }
    return gain;
}

static void refine_pairs(void *vctx, int64_t i0, int64_t i1, int tid)
{
    perm_state *p = vctx;
    for (int64_t i = i0; i < i1; i++) {
        int64_t g1 = p->pairs[2 * i], g2 = p->pairs[2 * i + 1];
        /* best-improvement swaps until none helps; each accepted swap raises
         * the objective, and m*m bounds the work per pair and round */
        for (int it = 0; it < p->m * p->m; it++) {
            double best = p->eps;
            int ba = -1, bb = -1;
            for (int ta = 0; ta < p->m; ta++) {
                const float *ca = p->col + (int64_t)p->grp[g1 * p->m + ta] * p->units;
                for (int tb = 0; tb < p->m; tb++) {
                    const float *cb = p->col + (int64_t)p->grp[g2 * p->m + tb] * p->units;
                    double gain = swap_gain(p, g1, g2, ca, cb);
                    if (gain > best) { best = gain; ba = ta; bb = tb; }
                }
            }
            if (ba < 0) break;
            int32_t tmp = p->grp[g1 * p->m + ba];
            p->grp[g1 * p->m + ba] = p->grp[g2 * p->m + bb];
            p->grp[g2 * p->m + bb] = tmp;
            group_stats(p, g1);
            group_stats(p, g2);
            p->swaps[tid]++;
        }
    }
}

static void stats_range(void *vctx, int64_t g0, int64_t g1, int tid)
{
    (void)tid;
    for (int64_t g = g0; g < g1; g++) group_stats(vctx, g);
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct {
    double total;
    int32_t k;
} chan_total;
static int cmp_channel_desc(const void *a, const void *b)
{
    const chan_total *x = a, *y = b;
    if (x->total != y->total) return x->total > y->total ? -1 : 1;
    return x->k < y->k ? -1 : x->k > y->k;
}
static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

int tb_permute_search(const float *s, int64_t rows, int64_t cols, int k_dim, int n, int m, const tb_perm_opts *o,
                      int32_t *perm, tb_perm_stats *st)
{
    int rc = check_nm(n, m, k_dim, rows, cols);
    if (rc) return rc;
    geom g = make_geom(rows, cols, k_dim);
    perm_state *p = calloc(1, sizeof *p);
    if (!p) return tb_fail(TB_EIO, "out of memory");
    p->units = g.units;
    p->k = g.k;
    p->groups = g.k / m;
    p->n = n;
    p->m = m;
    p->col = malloc((size_t)(g.k * g.units) * sizeof(float) + 1);
    p->nth = malloc((size_t)(p->groups * g.units) * sizeof(float) + 1);
    p->nth1 = malloc((size_t)(p->groups * g.units) * sizeof(float) + 1);
    p->grp = malloc((size_t)g.k * sizeof(int32_t) + 1);
    p->pairs = malloc((size_t)p->groups * sizeof(int32_t) + 1);
    chan_total *chan = calloc((size_t)g.k + 1, sizeof *chan);
    tb_perm_stats local;
    if (!st) st = &local;
    memset(st, 0, sizeof *st);
    if (!p->col || !p->nth || !p->nth1 || !p->grp || !p->pairs || !chan) {
        rc = tb_fail(TB_EIO, "out of memory (permutation search on [%lld, %lld])", (long long)rows, (long long)cols);
        goto out;
    }
    double total = 0;
    for (int64_t k = 0; k < g.k; k++)
        for (int64_t u = 0; u < g.units; u++) {
            float v = s[gidx(&g, u, k)];
            p->col[k * g.units + u] = v;
            chan[k].total += v;
        }
    for (int64_t k = 0; k < g.k; k++) {
        chan[k].k = (int32_t)k;
        total += chan[k].total;
    }
    /* gains below this are rounding (f32 terms summed over all units) */
    p->eps = 1e-6 * fabs(total) / (double)g.k;

    /* identity */
    for (int64_t k = 0; k < g.k; k++) p->grp[k] = (int32_t)k;
    st->kept_identity = grouping_kept(p);
    /* greedy seed: channels by total importance, dealt to groups in snake
     * order (0..G-1, G-1..0, ...), so the heaviest channels land in different
     * groups and compete less for the N kept slots of a group */
    qsort(chan, (size_t)g.k, sizeof *chan, cmp_channel_desc);
    for (int64_t i = 0; i < g.k; i++) {
        int64_t round = i / p->groups, pos = i % p->groups;
        int64_t grp = round % 2 == 0 ? pos : p->groups - 1 - pos;
        p->grp[grp * m + round] = chan[i].k;
    }
    st->kept_seed = grouping_kept(p);
    if (st->kept_seed < st->kept_identity)
        for (int64_t k = 0; k < g.k; k++) p->grp[k] = (int32_t)k;
    int nt = o && o->n_threads > 0 ? o->n_threads : 1;
    tb_parallel_for(nt, p->groups, stats_range, p);

    /* swap rounds: a random perfect matching of the groups, each pair refined
     * independently (disjoint, so in parallel and deterministic) */
    int rounds = o && o->rounds > 0 ? o->rounds : 100, idle = 0;
    uint64_t rng = o ? o->seed : 0;
    for (int r = 0; r < rounds && p->groups >= 2; r++) {
        for (int64_t i = 0; i < p->groups; i++) p->pairs[i] = (int32_t)i;
        for (int64_t i = p->groups - 1; i > 0; i--) {
            int64_t j = (int64_t)(splitmix64(&rng) % (uint64_t)(i + 1));
            int32_t t = p->pairs[i];
            p->pairs[i] = p->pairs[j];
            p->pairs[j] = t;
        }
        int64_t before = 0, after = 0;
        for (int t = 0; t < 256; t++) before += p->swaps[t];
        tb_parallel_for(nt, p->groups / 2, refine_pairs, p);
        for (int t = 0; t < 256; t++) after += p->swaps[t];
        st->rounds = r + 1;
        /* three rounds in a row without a swap: the pairings keep missing
         * improvements, so the grouping is (locally) settled */
        idle = after == before ? idle + 1 : 0;
        if (idle >= 3) break;
    }
    for (int t = 0; t < 256; t++) st->swaps += (int)p->swaps[t];
    for (int64_t grp = 0; grp < p->groups; grp++) qsort(p->grp + grp * m, (size_t)m, sizeof(int32_t), cmp_i32);
    memcpy(perm, p->grp, (size_t)g.k * sizeof *perm);
    st->kept = tb_nm_kept_topn(s, rows, cols, k_dim, n, m, perm);
    if (st->kept < st->kept_identity) { /* rounding could only make it a tie: keep the identity */
        for (int64_t k = 0; k < g.k; k++) perm[k] = (int32_t)k;
        st->kept = st->kept_identity;
    }
out:
    free(p->col);
    free(p->nth);
    free(p->nth1);
    free(p->grp);
    free(p->pairs);
    free(p);
    free(chan);
    return rc;
}

int tb_permute_search_heads(const float *s, int64_t rows, int64_t cols, int n_heads, int n_kv_heads, int head_dim,
                            int n, int m, const tb_perm_opts *o, int32_t *perm, tb_perm_stats *st)
{
    if (n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 || n_heads % n_kv_heads ||
        (int64_t)n_heads * head_dim != cols)
        return tb_fail(TB_EUSAGE, "per-head permutation: %lld columns are not %d heads x %d (%d KV heads)",
                       (long long)cols, n_heads, head_dim, n_kv_heads);
    int64_t per = n_heads / n_kv_heads, units = rows * per;
    int rc = check_nm(n, m, 1, units, head_dim);
    if (rc) return rc;
    float *sg = malloc((size_t)(units * head_dim) * sizeof *sg + 1);
    int32_t *pg = malloc((size_t)head_dim * sizeof *pg + 1);
    if (!sg || !pg) {
        free(sg);
        free(pg);
        return tb_fail(TB_EIO, "out of memory (per-head permutation search on [%lld, %lld])", (long long)rows,
                       (long long)cols);
    }
    tb_perm_stats total = {0}, one;
    for (int g = 0; g < n_kv_heads && !rc; g++) {
        /* unit (r, q) of the group: row r of o_proj over query head g * per + q */
        for (int64_t r = 0; r < rows; r++)
            for (int64_t q = 0; q < per; q++)
                memcpy(sg + (r * per + q) * head_dim, s + r * cols + (g * per + q) * head_dim,
                       (size_t)head_dim * sizeof *sg);
        rc = tb_permute_search(sg, units, head_dim, 1, n, m, o, pg, &one);
        if (rc) break;
        for (int64_t q = 0; q < per; q++) {
            int64_t base = (g * per + q) * head_dim;
            for (int j = 0; j < head_dim; j++) perm[base + j] = (int32_t)(base + pg[j]);
        }
        total.kept_identity += one.kept_identity;
        total.kept_seed += one.kept_seed;
        total.kept += one.kept;
        total.swaps += one.swaps;
        total.rounds = one.rounds > total.rounds ? one.rounds : total.rounds;
    }
    if (!rc && st) *st = total;
    free(sg);
    free(pg);
    return rc;
}
