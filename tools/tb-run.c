/* tb-run - run a model on the CPU: perplexity of a text file, generation, or
 * token windows sampled from the model (--sample-windows, tb_generate.h).
 *
 * Thin: the model, forward pass, perplexity protocol and sampling live in
 * kernels/cpu (tb_model.h), the tokenizer in formats/tb_tokenizer.h. This file
 * parses options, reads the text, reports progress and prints results.
 */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_generate.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_model.h"
#include "tb_opts.h"
#include "tb_threads.h"
#include "tb_tbm.h"
#include "tb_tokenizer.h"

static const char description[] =
    "Run a Llama-family model (llama, mistral, qwen2) on the CPU in f32 arithmetic,\n"
    "weights read in their stored dtype.\n";

static const char notes[] =
    "Perplexity protocol (the standard one of LLM pruning papers, PROTOCOL.md): the\n"
    "file's bytes are tokenized as they are (UTF-8, no line-ending translation) in\n"
    "one call with BOS prepended once; the ids are cut into non-overlapping windows\n"
    "of N tokens, the final partial window dropped; each window runs on its own from\n"
    "position 0; ppl = exp(mean over windows of the window's mean next-token NLL),\n"
    "sums in double precision. A window longer than the model's\n"
    "max_position_embeddings is refused.\n"
    "\n"
    "Sampling (as llama.cpp): the repetition penalty over the last 64 tokens, then,\n"
    "with --temp T > 0, top-k, top-p within those and min-p; without --temp the\n"
    "most likely token (greedy), so --top-k, --top-p and --min-p need --temp.\n"
    "\n"
    "--sample-windows PROMPTS writes distillation data from the model itself\n"
    "(tb-distill --extra-tokens): window i keeps the first --prefix tokens of\n"
    "window i mod W of PROMPTS (W windows) and continues them to --seq-len tokens\n"
    "sampled from the model (default --temp 1: the model's own distribution),\n"
    "EOS an ordinary token. Window i draws from its own generator (seed + i):\n"
    "same seed, same file, at any thread count. No text beyond PROMPTS' prefixes\n"
    "is used. The windows run in parallel, one thread each, on the CPU.\n";

#define MAX_STOPS 16
typedef struct {
    const char *model, *ppl_file, *prompt, *prompt_file;
    int seq_len, n_gen, json, threads;
    const char *compare, *base;
    const char *sample_windows, *output;
    long windows;
    int prefix;
    long max_windows;
    tb_sampling sampling;
    long seed;
    const char *stops[MAX_STOPS];
    int n_stops;
    tb_backend_opts dev;
    tb_backend *be;
} options;

static int add_stop(const char *opt, const char *arg, void *value)
{
    options *o = value;
    if (!*arg) return tb_fail(TB_EUSAGE, "%s: an empty stop string", opt);
    if (o->n_stops == MAX_STOPS) return tb_fail(TB_EUSAGE, "%s: at most %d stop strings", opt, MAX_STOPS);
    o->stops[o->n_stops++] = arg;
    return TB_OK;
}

static void encode_progress(void *ctx, size_t done, size_t total)
{
    (void)total;
    tb_progress_set(ctx, done);
}

/* tb_eval_ppl reports (0, total) first: the bar starts then, with the true count */
static void window_progress(void *ctx, int64_t done, int64_t total)
{
    if (done == 0) tb_progress_begin(ctx, "windows", (uint64_t)total);
    else tb_progress_set(ctx, (uint64_t)done);
}

/* Read and tokenize a whole file as the protocol says: bytes as they are, BOS once. */
static int tokenize_file(const tb_tokenizer *tok, const char *path, int32_t **ids, size_t *n)
{
    tb_mapped text;
    int rc = tb_map_file(path, &text);
    if (rc) return rc;
    tb_progress p;
    tb_progress_begin(&p, "tokenizing", text.size);
    rc = tb_tok_encode_progress(tok, (const char *)text.data, text.size, tb_tok_bos(tok) >= 0, ids, n,
                                encode_progress, &p);
    tb_progress_end(&p);
    tb_unmap(&text);
    if (rc) tb_err_context("%s", path);
    return rc;
}

static int print_json(const options *o, const tb_ppl_result *r, const tb_fidelity *fid)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "ppl", r->ppl);
    if (fid) {
        cJSON_AddNumberToObject(j, "kl", fid->kl);
        cJSON_AddNumberToObject(j, "top1", fid->top1);
        cJSON_AddNumberToObject(j, "ppl_ref", fid->ppl_ref);
    }
    cJSON_AddNumberToObject(j, "mean_nll", r->mean_nll);
    cJSON_AddNumberToObject(j, "windows", (double)r->windows);
    cJSON_AddNumberToObject(j, "tokens", (double)r->tokens);
    cJSON_AddNumberToObject(j, "seq_len", o->seq_len);
    cJSON_AddNumberToObject(j, "tokens_per_second", r->seconds > 0 ? (double)r->tokens / r->seconds : 0.0);
    cJSON_AddNumberToObject(j, "seconds", r->seconds);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s) return tb_fail(TB_EIO, "out of memory printing JSON");
    printf("%s\n", s);
    free(s);
    return TB_OK;
}

static int run_ppl(const options *o, const tb_model *m, const tb_tokenizer *tok)
{
    if (o->seq_len > m->cfg.max_position_embeddings)
        return tb_fail(TB_EUSAGE, "--seq-len %d exceeds the model's max_position_embeddings (%d): use --seq-len %d",
                       o->seq_len, m->cfg.max_position_embeddings, m->cfg.max_position_embeddings);
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenize_file(tok, o->ppl_file, &ids, &n);
    if (rc) return rc;
    tb_forward f;
    tb_forward_opts fo = {.max_seq = o->seq_len, .max_tokens = o->seq_len, .n_threads = o->threads,
                          .backend = o->be};
    if ((rc = tb_forward_init(&f, m, &fo))) {
        free(ids);
        return rc;
    }
    tb_progress p = {0};
    tb_ppl_result r;
    tb_fidelity fid;
    tb_model ref_model;
    tb_forward ref;
    int have_ref = 0;
    if (o->compare) {
        if ((rc = tb_model_open(&ref_model, o->compare))) goto done;
        if ((rc = tb_forward_init(&ref, &ref_model, &fo))) {
            tb_model_close(&ref_model);
            goto done;
        }
        have_ref = 1;
        rc = tb_eval_ppl_compare(&f, &ref, ids, (int64_t)n, o->seq_len, o->max_windows, window_progress, &p, &r, &fid);
    } else {
        rc = tb_eval_ppl(&f, ids, (int64_t)n, o->seq_len, o->max_windows, window_progress, &p, &r);
    }
    tb_progress_end(&p);
    if (rc) tb_err_context("%s", o->ppl_file);
    if (!rc) {
        tb_info("%s: %zu tokens, %lld windows of %d, %.1f s, %.0f tokens/s (%s)", o->ppl_file, n,
                (long long)r.windows, o->seq_len, r.seconds, (double)r.tokens / r.seconds, o->be->desc);
        if (o->json) {
            rc = print_json(o, &r, have_ref ? &fid : NULL);
        } else {
            if (have_ref) printf("kl: %.4f\ntop1: %.4f\nppl_ref: %.4f\n", fid.kl, fid.top1, fid.ppl_ref);
            printf("ppl: %.4f\n", r.ppl);
        }
    }
    if (have_ref) {
        tb_forward_free(&ref);
        tb_model_close(&ref_model);
    }
done:
    tb_forward_free(&f);
    free(ids);
    return rc;
}

static int emit(const char *s, size_t n)
{
    if (n && fwrite(s, 1, n, stdout) != n) return tb_fail(TB_EIO, "<stdout>: write error");
    fflush(stdout); /* streaming: show each token as it comes */
    return TB_OK;
}

/* Generated text waits here only while its end could begin a stop string, so
 * that a stop string is never printed and everything else streams. */
typedef struct {
    char *buf;
    size_t len, cap;
    int stopped;
} stop_filter;

static int filter_push(stop_filter *f, const options *o, const char *s, size_t n)
{
    if (!o->n_stops) return emit(s, n);
    if (f->len + n + 1 > f->cap) {
        size_t cap = (f->len + n + 1) * 2;
        char *b = tb_realloc(f->buf, cap);
        if (!b) return TB_EIO;
        f->buf = b;
        f->cap = cap;
    }
    memcpy(f->buf + f->len, s, n);
    f->len += n;
    f->buf[f->len] = 0;
    size_t hold = 0; /* the longest tail that is a prefix of a stop string */
    for (int i = 0; i < o->n_stops; i++) {
        const char *hit = strstr(f->buf, o->stops[i]);
        if (hit) {
            f->stopped = 1;
            f->len = (size_t)(hit - f->buf);
            int rc = emit(f->buf, f->len);
            f->len = 0;
            return rc;
        }
        size_t sl = strlen(o->stops[i]);
        for (size_t k = sl - 1; k > hold; k--)
            if (k <= f->len && !memcmp(f->buf + f->len - k, o->stops[i], k)) {
                hold = k;
                break;
            }
    }
    int rc = emit(f->buf, f->len - hold);
    memmove(f->buf, f->buf + f->len - hold, hold);
    f->len = hold;
    return rc;
}

#define REPEAT_LAST_N 64

static int run_generate(const options *o, const tb_model *m, const tb_tokenizer *tok)
{
    int32_t *ids = NULL;
    size_t n_prompt = 0;
    int32_t bos = tb_tok_bos(tok);
    const char *label = o->prompt_file ? o->prompt_file : "--prompt";
    int rc = tb_tok_encode(tok, o->prompt, strlen(o->prompt), bos >= 0, &ids, &n_prompt);
    if (rc) return tb_err_context("%s", label);
    if (n_prompt == 0) {
        free(ids);
        return tb_fail(TB_EDATA, "%s: empty, and the model has no BOS token to start from", label);
    }
    int n_gen = o->n_gen;
    int limit = m->cfg.max_position_embeddings;
    if ((int64_t)n_prompt + n_gen > limit) {
        if ((int64_t)n_prompt >= limit) {
            free(ids);
            return tb_fail(TB_EDATA, "%s: %zu tokens, the model's max_position_embeddings is %d", label, n_prompt, limit);
        }
        n_gen = limit - (int)n_prompt;
        tb_warn("generating %d tokens: the model has %d positions", n_gen, limit);
    }
    int32_t *all = tb_realloc(ids, (n_prompt + (size_t)n_gen + 1) * sizeof *all);
    tb_prob *work = tb_malloc((size_t)m->cfg.vocab_size * sizeof *work);
    float *logits = tb_malloc((size_t)m->cfg.vocab_size * sizeof *logits);
    if (!all || !work || !logits) {
        free(all ? all : ids);
        free(work);
        free(logits);
        return TB_EIO;
    }
    tb_forward f;
    tb_forward_opts fo = {.max_seq = (int)n_prompt + n_gen, .max_tokens = (int)n_prompt, .n_threads = o->threads,
                          .backend = o->be};
    if ((rc = tb_forward_init(&f, m, &fo))) {
        free(all);
        free(work);
        free(logits);
        return rc;
    }
    tb_rng rng;
    tb_rng_seed(&rng, (uint64_t)o->seed);
    tb_tok_stream st;
    tb_tok_stream_init(&st);
    stop_filter sf = {0};
    const char *piece;
    size_t len;
    /* echo the prompt through the same stream, so that the decoder's spacing
     * rules see the whole text; BOS is not text */
    for (size_t i = (bos >= 0 && all[0] == bos) ? 1 : 0; i < n_prompt && !rc; i++)
        if (!(rc = tb_tok_stream_push(tok, &st, all[i], &piece, &len))) rc = emit(piece, len);

    double t0 = tb_now();
    int made = 0;
    int pos = (int)n_prompt;
    if (!rc) rc = tb_forward_run(&f, all, (int)n_prompt, 0);
    double t_prompt = tb_now() - t0;
    if (!rc) rc = tb_forward_get_logits(&f, (int)n_prompt - 1, logits);
    while (!rc && made < n_gen && !sf.stopped) {
        int n_recent = pos < REPEAT_LAST_N ? pos : REPEAT_LAST_N;
        int32_t next = tb_sample_with(logits, m->cfg.vocab_size, &o->sampling, all + pos - n_recent, n_recent, &rng, work);
        if (tb_tok_is_eos(tok, next)) break;
        all[pos] = next;
        made++;
        if ((rc = tb_tok_stream_push(tok, &st, next, &piece, &len)) || (rc = filter_push(&sf, o, piece, len))) break;
        if (made == n_gen || sf.stopped) break;
        rc = tb_forward_run(&f, &all[pos], 1, pos);
        if (!rc) rc = tb_forward_get_logits(&f, 0, logits);
        pos++;
    }
    if (!rc && !sf.stopped && !(rc = tb_tok_stream_flush(tok, &st, &piece, &len)) && !(rc = filter_push(&sf, o, piece, len)))
        rc = emit(sf.buf, sf.len);
    if (!rc) rc = emit("\n", 1);
    double t_gen = tb_now() - t0 - t_prompt;
    if (!rc) {
        tb_info("prompt: %zu tokens in %.3f s (%.1f tokens/s)", n_prompt, t_prompt,
                t_prompt > 0 ? (double)n_prompt / t_prompt : 0.0);
        tb_info("generation: %d tokens in %.3f s (%.1f tokens/s)%s", made, t_gen, t_gen > 0 ? made / t_gen : 0.0,
                sf.stopped ? ", ended by a stop string" : "");
    }
    free(sf.buf);
    tb_tok_stream_free(&st);
    tb_forward_free(&f);
    free(all);
    free(work);
    free(logits);
    return rc;
}

static void sample_progress(void *ctx, int64_t done, int64_t total)
{
    if (done == 0) tb_progress_begin(ctx, "windows", (uint64_t)total);
    else tb_progress_set(ctx, (uint64_t)done);
}

/* --sample-windows: the model continues the prompt windows' prefixes */
static int run_sample(const options *o, const tb_model *m)
{
    tb_tokens prompts, gen;
    int rc = tb_tokens_load(&prompts, o->sample_windows, m->cfg.vocab_size, m->cfg.max_position_embeddings);
    if (rc) return rc;
    tb_outfile probe; /* refuse an unwritable output before the work */
    if ((rc = tb_out_open(&probe, o->output))) {
        tb_tokens_free(&prompts);
        return rc;
    }
    tb_out_abort(&probe);
    tb_gen_opts g = {.windows = o->windows ? o->windows : prompts.windows,
                     .seq_len = tb_opt_given(&o->seq_len) ? o->seq_len : prompts.seq_len,
                     .prefix = o->prefix, .sampling = o->sampling, .seed = (uint64_t)o->seed,
                     .n_threads = o->threads};
    tb_progress p = {0};
    double t0 = tb_now();
    rc = tb_generate_windows(m, &prompts, &g, sample_progress, &p, &gen);
    tb_progress_end(&p);
    double secs = tb_now() - t0;
    tb_tokens_free(&prompts);
    if (rc) return tb_err_context("%s", o->sample_windows);
    char nwin[32], tlen[32], pre[32], seed[32], temp[32], top_p[32];
    snprintf(nwin, sizeof nwin, "%lld", (long long)gen.windows);
    snprintf(tlen, sizeof tlen, "%d", gen.seq_len);
    snprintf(pre, sizeof pre, "%d", g.prefix);
    snprintf(seed, sizeof seed, "%ld", o->seed);
    snprintf(temp, sizeof temp, "%g", g.sampling.temp);
    snprintf(top_p, sizeof top_p, "%g", g.sampling.top_p);
    const char *meta[] = {"generator", o->model, "prompts", o->sample_windows, "windows", nwin, "seq_len", tlen,
                          "prefix", pre, "seed", seed, "temp", temp, "top_p", top_p};
    st_entry e = {.name = "input_ids", .dtype = TB_I32, .ndim = 2, .shape = {gen.windows, gen.seq_len}, .data = gen.ids};
    rc = st_save(o->output, &e, 1, meta, (int)(sizeof meta / sizeof meta[0] / 2));
    if (!rc)
        tb_info("%lld windows of %d tokens (prefix %d) in %.1f s, %.0f tokens/s sampled -> %s",
                (long long)gen.windows, gen.seq_len, g.prefix, secs,
                secs > 0 ? (double)gen.windows * (gen.seq_len - g.prefix) / secs : 0.0, o->output);
    tb_tokens_free(&gen);
    return rc;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-run");
    options o = {.seq_len = 512, .n_gen = 128, .prefix = 32, .threads = tb_default_threads(),
                 .sampling = {.top_p = 1.0, .repeat_penalty = 1.0}, .dev = {.device = TB_DEVICE_AUTO}};
    const tb_option table[] = {
        TB_OPT_MODEL(&o.model, "HF checkpoint directory (config.json, model.safetensors or\n"
                               "a sharded index, tokenizer.json), or a pruned model's\n"
                               ".tbm index from tb-merge (N:M weights run packed)"),
        TB_OPT_FILE(0, "base", &o.base, "DIR", "the base checkpoint of a partial .tbm (tb-merge --partial),\n"
"when outside the .tbm's directory (a path inside a file\n"
"is not trusted)"),
        TB_OPT_GROUP("perplexity:"),
        TB_OPT_INPUT(0, "ppl", &o.ppl_file, "FILE", TB_WANT_TEXT, "text", "give the text itself (e.g. examples/data/wikitext2-test.txt)",
                     "perplexity of the text in FILE (- for stdin), printed as\n"
                                                  "'ppl: X' on the last line of stdout"),
        TB_OPT_INT(0, "seq-len", &o.seq_len, "N", 2, 1 << 20, "window length in tokens (default 512)"),
        TB_OPT_LONG(0, "max-windows", &o.max_windows, "K", 1, 1L << 40, "evaluate only the first K windows (default all)"),
        TB_OPT_INPUT(0, "compare", &o.compare, "REF", TB_WANT_MODEL, TB_OPT_WHAT_MODEL, NULL, "also run the reference model REF (the dense model) on the\n"
                                                    "same windows and print its fidelity: 'kl: X' (mean\n"
                                                    "KL(REF || MODEL) of the next-token distributions over every\n"
                                                    "position, nats), 'top1: Y' (fraction of positions whose\n"
                                                    "most likely tokens agree) and 'ppl_ref: Z' before 'ppl: X'"),
        TB_OPT_JSON(&o.json, "print one JSON object instead: ppl, mean_nll, windows,\n"
                             "tokens, seq_len, tokens_per_second, seconds (and kl,\n"
                             "top1, ppl_ref with --compare)"),
        TB_OPT_GROUP("generation:"),
        TB_OPT_STRING('p', "prompt", &o.prompt, "TEXT", "continue TEXT (BOS prepended), streaming the text to\n"
                                                      "stdout; - reads the prompt from stdin"),
        TB_OPT_INPUT('f', "file", &o.prompt_file, "FILE", TB_WANT_TEXT, "a prompt (text)", NULL, "the prompt is the text of FILE (- for stdin)"),
        TB_OPT_INT('n', "n-predict", &o.n_gen, "N", 0, 1 << 20, "tokens to generate (default 128); stops early at EOS"),
        TB_OPT_DOUBLE(0, "temp", &o.sampling.temp, "T", 0, 100, "temperature (default 0: greedy, deterministic)"),
        TB_OPT_INT(0, "top-k", &o.sampling.top_k, "K", 0, 1 << 30, "draw from the K most likely tokens (default 0: all)"),
        TB_OPT_DOUBLE(0, "top-p", &o.sampling.top_p, "P", 1e-9, 1, "nucleus: draw from the most likely tokens holding mass P\n"
                                                                    "(default 1: all)"),
        TB_OPT_DOUBLE(0, "min-p", &o.sampling.min_p, "P", 0, 1, "drop tokens less likely than P times the most likely\n"
                                                                 "(default 0: off)"),
        TB_OPT_DOUBLE(0, "repeat-penalty", &o.sampling.repeat_penalty, "R", 1e-3, 100,
                      "divide the logits of the last 64 tokens by R (default 1: off)"),
        TB_OPT_CALLBACK(0, "stop", &o, "STR", add_stop, "stop when the text generated ends with STR (which is not\n"
                                                         "printed); repeat for several"),
        TB_OPT_LONG(0, "seed", &o.seed, "S", 0, (double)LONG_MAX, "random seed for sampling (default 0): same seed, same text"),
        TB_OPT_GROUP("sampled windows (distillation data):"),
        TB_OPT_INPUT(0, "sample-windows", &o.sample_windows, "PROMPTS", TB_WANT_SAFETENSORS, "token windows (safetensors)",
                     "make them with tb-tokenize --windows",
                     "continue the first --prefix tokens of each window of\n"
                     "PROMPTS (safetensors input_ids) with tokens sampled from\n"
                     "the model (default --temp 1) up to --seq-len (default\n"
                     "PROMPTS' length); writes the windows to -o (same format)"),
        TB_OPT_LONG(0, "windows", &o.windows, "N", 1, 1L << 40, "windows to write (default PROMPTS' count; window i\n"
                                                               "continues prompt i mod count)"),
        TB_OPT_INT(0, "prefix", &o.prefix, "P", 1, 1 << 20, "tokens kept from each prompt window (default 32)"),
        TB_OPT_OUTPUT(&o.output, "FILE", TB_OPTF_NO_DASH, "where --sample-windows writes (written atomically)"),
        TB_OPT_GROUP(""),
        TB_OPT_THREADS(&o.threads),
        TB_OPT_DEVICE(&o.dev),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {
        .name = "tb-run",
        .usage = "tb-run -m MODEL --ppl FILE [--seq-len N] [--max-windows K] [--compare REF] [--json]\n"
                 "tb-run -m MODEL (-p TEXT | -f FILE) [-n N] [--temp T [--top-k K] [--top-p P] [--min-p P]]\n"
                 "tb-run -m MODEL --sample-windows PROMPTS -o OUT [--windows N] [--prefix P] [--seq-len L] [--seed S]",
        .description = description, .options = table, .notes = notes};
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, NULL, NULL);
    if (o.prompt && o.prompt_file) return tb_usage_error("-p/--prompt and -f/--file exclude each other");
    if (!!o.ppl_file + !!(o.prompt || o.prompt_file) + !!o.sample_windows != 1)
        return tb_usage_error("give one of --ppl FILE, -p TEXT, -f FILE or --sample-windows PROMPTS");
    if (!o.sample_windows && (o.output || o.windows || tb_opt_given(&o.prefix)))
        return tb_usage_error("-o, --windows and --prefix go with --sample-windows");
    if (o.sample_windows && !o.output) return tb_usage_error("--sample-windows needs -o FILE");
    if (o.sample_windows && (o.json || o.max_windows || o.compare || o.n_stops || tb_opt_given(&o.n_gen)))
        return tb_usage_error("--json, --max-windows, --compare, -n and --stop do not go with --sample-windows");
    if (o.sample_windows && !tb_opt_given(&o.sampling.temp)) o.sampling.temp = 1.0; /* the model's own distribution */
    if (!o.ppl_file && !o.sample_windows && (o.json || o.max_windows || o.compare || tb_opt_given(&o.seq_len)))
        return tb_usage_error("--json, --seq-len, --max-windows and --compare go with --ppl");
    if (o.ppl_file && (o.n_stops || tb_opt_given(&o.n_gen) || tb_opt_given(&o.sampling.temp)))
        return tb_usage_error("-n, --temp and --stop go with -p or -f (generation)");
    if (o.sampling.temp <= 0) {
        const char *needs = o.sampling.top_k ? "--top-k" : o.sampling.top_p < 1 ? "--top-p"
                          : o.sampling.min_p > 0 ? "--min-p" : NULL;
        if (needs) return tb_usage_error("%s samples, but without --temp T (> 0) generation is greedy: add --temp 0.8", needs);
    }
    if (o.base && tb_tbm_allow_base(o.base)) return tb_report_error();
    char *prompt_text = NULL;
    if (o.prompt_file || (o.prompt && !strcmp(o.prompt, "-"))) {
        size_t len;
        const char *path = o.prompt_file ? o.prompt_file : "-";
        if (tb_read_text(path, &prompt_text, &len)) return tb_report_error();
        o.prompt = prompt_text;
    }

    tb_model m;
    tb_tokenizer *tok = NULL;
    int rc = tb_model_open(&m, o.model);
    if (rc) {
        free(prompt_text);
        return tb_report_error();
    }
    if ((rc = tb_tok_load(&tok, tb_model_tokenizer_path(&m)))) {
        tb_model_close(&m);
        free(prompt_text);
        return tb_report_error();
    }
    tb_backend be;
    o.dev.n_threads = o.threads;
    if ((rc = tb_backend_open(&be, &o.dev))) {
        tb_tok_free(tok);
        tb_model_close(&m);
        free(prompt_text);
        return tb_report_error();
    }
    o.be = &be;
    rc = o.sample_windows ? run_sample(&o, &m) : o.ppl_file ? run_ppl(&o, &m, tok) : run_generate(&o, &m, tok);
    tb_backend_close(&be);
    free(prompt_text);
    tb_tok_free(tok);
    tb_model_close(&m);
    return rc ? tb_report_error() : 0;
}
