/* tb_generate.c - token windows sampled from a model (tb_generate.h). */
#include "tb_generate.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_threads.h"

#define REPEAT_LAST_N 64 /* as tb-run's generation */

typedef struct {
    const tb_model *m;
    const tb_tokens *prompts;
    const tb_gen_opts *o;
    int32_t *out;
    tb_progress_fn progress;
    void *progress_ctx;
    pthread_mutex_t lock;
    int64_t done;
} gen_job;

/* one window: prefill the prefix, then sample token after token */
static int gen_window(gen_job *j, tb_forward *f, int64_t i, float *logits, tb_prob *work)
{
    const tb_gen_opts *o = j->o;
    const int V = j->m->cfg.vocab_size, T = o->seq_len, P = o->prefix;
    int32_t *w = j->out + i * T;
    memcpy(w, j->prompts->ids + (i % j->prompts->windows) * j->prompts->seq_len, (size_t)P * sizeof *w);
    tb_rng rng;
    tb_rng_seed(&rng, o->seed + (uint64_t)i * 0xD1B54A32D192ED03ull);
    int rc = tb_forward_run(f, w, P, 0);
    if (!rc) rc = tb_forward_get_logits(f, P - 1, logits);
    for (int pos = P; !rc && pos < T; pos++) {
        int recent = pos < REPEAT_LAST_N ? pos : REPEAT_LAST_N;
        w[pos] = tb_sample_with(logits, V, &o->sampling, w + pos - recent, recent, &rng, work);
        if (pos + 1 == T) break;
        if (!(rc = tb_forward_run(f, &w[pos], 1, pos))) rc = tb_forward_get_logits(f, 0, logits);
    }
    return rc;
}

static int gen_range(void *ctx, int64_t begin, int64_t end, int thread_id)
{
    (void)thread_id;
    gen_job *j = ctx;
    if (begin >= end) return TB_OK;
    const int V = j->m->cfg.vocab_size;
    tb_forward f;
    tb_forward_opts fo = {.max_seq = j->o->seq_len, .max_tokens = j->o->prefix, .n_threads = 1};
    int rc = tb_forward_init(&f, j->m, &fo);
    if (rc) return rc;
    float *logits = tb_malloc((size_t)V * sizeof *logits);
    tb_prob *work = tb_malloc((size_t)V * sizeof *work);
    if (!logits || !work) rc = TB_EIO;
    for (int64_t i = begin; !rc && i < end; i++) {
        if ((rc = gen_window(j, &f, i, logits, work))) {
            tb_err_context("window %lld", (long long)i);
            break;
        }
        if (j->progress) {
            pthread_mutex_lock(&j->lock);
            j->progress(j->progress_ctx, ++j->done, j->o->windows);
            pthread_mutex_unlock(&j->lock);
        }
    }
    free(logits);
    free(work);
    tb_forward_free(&f);
    return rc;
}

int tb_generate_windows(const tb_model *m, const tb_tokens *prompts, const tb_gen_opts *o, tb_progress_fn progress,
                        void *progress_ctx, tb_tokens *out)
{
    memset(out, 0, sizeof *out);
    if (prompts->windows < 1) return tb_fail(TB_EUSAGE, "generate: no prompt windows");
    if (o->windows < 1) return tb_fail(TB_EUSAGE, "generate: %lld windows", (long long)o->windows);
    if (o->prefix < 1 || o->prefix > prompts->seq_len)
        return tb_fail(TB_EUSAGE, "generate: prefix %d outside [1, %d] (the prompt windows' length)", o->prefix,
                       prompts->seq_len);
    if (o->seq_len <= o->prefix)
        return tb_fail(TB_EUSAGE, "generate: window length %d leaves nothing to sample after the %d-token prefix",
                       o->seq_len, o->prefix);
    if (o->seq_len > m->cfg.max_position_embeddings)
        return tb_fail(TB_EUSAGE, "generate: window length %d exceeds the model's max_position_embeddings (%d)",
                       o->seq_len, m->cfg.max_position_embeddings);
    int32_t *ids = tb_malloc((size_t)o->windows * (size_t)o->seq_len * sizeof *ids);
    if (!ids) return TB_EIO;
    gen_job j = {.m = m, .prompts = prompts, .o = o, .out = ids, .progress = progress, .progress_ctx = progress_ctx};
    pthread_mutex_init(&j.lock, NULL);
    if (progress) progress(progress_ctx, 0, o->windows);
    int threads = o->n_threads < 1 ? 1 : o->n_threads;
    if (threads > o->windows) threads = (int)o->windows;
    int rc = tb_parallel_try(threads, o->windows, gen_range, &j);
    pthread_mutex_destroy(&j.lock);
    if (rc) {
        free(ids);
        return rc;
    }
    *out = (tb_tokens){.ids = ids, .windows = o->windows, .seq_len = o->seq_len};
    return TB_OK;
}
