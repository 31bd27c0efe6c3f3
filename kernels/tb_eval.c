/* tb_eval.c - perplexity by the protocol (PROTOCOL.md), fidelity, and token
 * sampling; the per-window losses run on the forward's backend. */
#include "tb_error.h"
#include "tb_log.h"
#include "tb_model.h"
#include "tb_ops.h"

#include <math.h>
#include <stdlib.h>

/* A NaN loss is an error, never a perplexity: name the weight responsible. */
static int nonfinite_loss(const tb_model *m, int64_t w)
{
    const st_tensor *t;
    int64_t at;
    const st_file *files[1024];
    int n = 0;
    for (int s = 0; s < m->ckpt.n_shards && n < 1024; s++) files[n++] = &m->ckpt.shards[s];
    for (int s = 0; m->is_tbm && s < m->tbm.n_shards && n < 1024; s++) files[n++] = &m->tbm.shards[s].f;
    for (int i = 0; i < n; i++)
        if (st_find_nonfinite(files[i], &t, &at))
            return tb_fail(TB_EDATA, "%s: tensor '%s': element %lld is not finite (window %lld's loss is NaN)",
                           files[i]->path, t->name, (long long)at, (long long)w);
    return tb_fail(TB_EDATA, "window %lld: the loss is not finite, though every weight is (an overflow in the forward pass)",
                   (long long)w);
}

int tb_eval_ppl_compare(tb_forward *f, tb_forward *ref, const int32_t *ids, int64_t n_ids, int seq_len,
                        int64_t max_windows, tb_progress_fn progress, void *progress_ctx, tb_ppl_result *r,
                        tb_fidelity *fid)
{
    const int V = f->m->cfg.vocab_size;
    if (ref && ref->m->cfg.vocab_size != V)
        return tb_fail(TB_EDATA, "the reference model has %d tokens, this one %d", ref->m->cfg.vocab_size, V);
    if (seq_len < 2 || seq_len > f->o.max_tokens || (ref && seq_len > ref->o.max_tokens))
        return tb_fail(TB_EUSAGE, "seq-len %d must be in [2, %d]", seq_len, f->o.max_tokens);
    int64_t windows = n_ids / seq_len;
    if (windows < 1)
        return tb_fail(TB_EDATA, "%lld tokens (with BOS), fewer than one window of %d", (long long)n_ids, seq_len);
    if (max_windows > 0 && windows > max_windows) windows = max_windows;
    if (ref && ref->be->ops != f->be->ops)
        return tb_fail(TB_EUSAGE, "the reference model runs on another backend (%s, not %s)", ref->be->ops->name,
                       f->be->ops->name);
    if (progress) progress(progress_ctx, 0, windows);
    double t0 = tb_now(), sum = 0, sum_ref = 0, kl = 0;
    int64_t same = 0;
    for (int64_t w = 0; w < windows; w++) {
        const int32_t *win = ids + w * seq_len;
        int rc = ref ? tb_forward_run(ref, win, seq_len, 0) : TB_OK;
        if (!rc) rc = tb_forward_run(f, win, seq_len, 0);
        if (rc) return rc;
        double nll = f->be->ops->nll(f->be, f->logits, win, seq_len, V) / (seq_len - 1);
        if (!isfinite(nll)) return nonfinite_loss(f->m, w);
        sum += nll;
        if (ref) {
            int64_t s = 0;
            sum_ref += ref->be->ops->nll(ref->be, ref->logits, win, seq_len, V) / (seq_len - 1);
            kl += f->be->ops->kl(f->be, ref->logits, f->logits, seq_len, V, &s);
            same += s;
        }
        if ((rc = f->be->ops->sync(f->be))) return rc;
        if (progress) progress(progress_ctx, w + 1, windows);
    }
    r->windows = windows;
    r->tokens = windows * seq_len;
    r->mean_nll = sum / (double)windows;
    r->ppl = exp(r->mean_nll);
    r->seconds = tb_now() - t0;
    if (ref) {
        fid->kl = kl / (double)r->tokens;
        fid->top1 = (double)same / (double)r->tokens;
        fid->ppl_ref = exp(sum_ref / (double)windows);
    }
    return TB_OK;
}

int tb_eval_ppl(tb_forward *f, const int32_t *ids, int64_t n_ids, int seq_len, int64_t max_windows,
                tb_progress_fn progress, void *progress_ctx, tb_ppl_result *r)
{
    return tb_eval_ppl_compare(f, NULL, ids, n_ids, seq_len, max_windows, progress, progress_ctx, r, NULL);
}

/* ---- sampling ---- */

void tb_rng_seed(tb_rng *r, uint64_t seed)
{
    /* splitmix64 scrambles the seed so that nearby seeds give unrelated streams
     * and the xorshift state is never zero */
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    r->state = z ? z : 1;
}

double tb_rng_uniform(tb_rng *r)
{
    /* xorshift64*: small, fast, good enough for sampling */
    uint64_t x = r->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->state = x;
    return (double)((x * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
}

static int by_prob_desc(const void *pa, const void *pb)
{
    const tb_prob *a = pa, *b = pb;
    if (a->p != b->p) return a->p > b->p ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id); /* ties by id: the order is deterministic */
}

/* The repetition penalty of CTRL (Keskar et al. 2019), as llama.cpp applies it:
 * a recent token's logit is divided by the penalty when positive, multiplied
 * when negative. work[i].p holds the adjusted logits; ids mark what is done. */
static void penalised_logits(const float *logits, int n, const tb_sampling *s, const int32_t *recent, int n_recent,
                             tb_prob *work)
{
    for (int i = 0; i < n; i++) {
        work[i].p = logits[i];
        work[i].id = i;
    }
    if (s->repeat_penalty == 1.0) return;
    for (int k = 0; k < n_recent; k++) {
        int t = recent[k];
        if (t < 0 || t >= n || work[t].id < 0) continue; /* once per token */
        work[t].p = work[t].p > 0 ? (float)(work[t].p / s->repeat_penalty) : (float)(work[t].p * s->repeat_penalty);
        work[t].id = -1;
    }
    for (int k = 0; k < n_recent; k++)
        if (recent[k] >= 0 && recent[k] < n) work[recent[k]].id = recent[k];
}

int tb_sample_with(const float *logits, int n, const tb_sampling *s, const int32_t *recent, int n_recent, tb_rng *rng,
                   tb_prob *work)
{
    penalised_logits(logits, n, s, recent, n_recent, work);
    int best = 0;
    for (int i = 1; i < n; i++)
        if (work[i].p > work[best].p) best = i;
    if (s->temp <= 0) return best;

    /* softmax(l / temp), relative to the largest */
    double sum = 0, lmax = work[best].p;
    for (int i = 0; i < n; i++) {
        work[i].p = (float)exp(((double)work[i].p - lmax) / s->temp);
        sum += work[i].p;
    }
    int kept = n;
    double mass = sum;
    int top_k = s->top_k > 0 && s->top_k < n ? s->top_k : n;
    if (top_k < n || s->top_p < 1.0 || s->min_p > 0) {
        qsort(work, (size_t)n, sizeof *work, by_prob_desc);
        kept = top_k;
        mass = 0;
        for (int i = 0; i < kept; i++) mass += work[i].p;
        if (s->top_p < 1.0) { /* nucleus within the top k */
            double target = s->top_p * mass;
            mass = 0;
            for (kept = 0; kept < top_k;) {
                mass += work[kept++].p;
                if (mass >= target) break;
            }
        }
        if (s->min_p > 0) { /* min-p: drop tokens below min_p times the most likely (work[0].p = 1) */
            while (kept > 1 && work[kept - 1].p < s->min_p * work[0].p) mass -= work[--kept].p;
        }
    }
    double u = tb_rng_uniform(rng) * mass, acc = 0;
    for (int i = 0; i < kept; i++) {
        acc += work[i].p;
        if (u < acc) return work[i].id;
    }
    return work[kept - 1].id; /* u within rounding of the total */
}

int tb_sample(const float *logits, int n, double temp, double top_p, tb_rng *rng, tb_prob *work)
{
    if (temp <= 0 || !work) { /* greedy needs no work space */
        int best = 0;
        for (int i = 1; i < n; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    tb_sampling s = {.temp = temp, .top_p = top_p, .repeat_penalty = 1.0};
    return tb_sample_with(logits, n, &s, NULL, 0, rng, work);
}
