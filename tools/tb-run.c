/* tb-run - run a model on the CPU: perplexity of a text file, or generation.
 *
 * Thin: the model, forward pass, perplexity protocol and sampling live in
 * kernels/cpu (tb_model.h), the tokenizer in formats/tb_tokenizer.h. This file
 * parses options, reads the text, reports progress and prints results.
 */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_model.h"
#include "tb_opts.h"
#include "tb_threads.h"
#include "tb_tokenizer.h"

static const char usage[] =
    "usage: tb-run -m MODEL --ppl FILE [--seq-len N] [--max-windows K] [--json]\n"
    "       tb-run -m MODEL --prompt TEXT [-n N] [--temp T] [--top-p P] [--seed S]\n"
    "\n"
    "Run a Llama-family model (llama, mistral, qwen2) on the CPU in f32 arithmetic,\n"
    "weights read in their stored dtype.\n"
    "\n"
    "  -m, --model MODEL   HF checkpoint directory (config.json, model.safetensors or\n"
    "                      a sharded index, tokenizer.json), or a pruned model's\n"
    "                      .tbm index from tb-merge (N:M weights run packed)\n"
    "  --base DIR          the base checkpoint a partial .tbm (tb-merge --partial)\n"
    "                      reads its other tensors from, when outside the .tbm's\n"
    "                      directory (a path inside a file is not trusted)\n"
    "\n"
    "perplexity:\n"
    "  --ppl FILE          perplexity of the text in FILE (- for stdin), printed as\n"
    "                      'ppl: X' on the last line of stdout\n"
    "  --seq-len N         window length in tokens (default 512)\n"
    "  --max-windows K     evaluate only the first K windows (default all)\n"
    "  --compare REF       with --ppl: also run the reference model REF (the dense\n"
    "                      model) on the same windows and print its fidelity:\n"
    "                      'kl: X' (mean KL(REF || MODEL) of the next-token\n"
    "                      distributions over every position, nats), 'top1: Y'\n"
    "                      (fraction of positions whose most likely tokens agree)\n"
    "                      and 'ppl_ref: Z' before 'ppl: X'\n"
    "  --json              print one JSON object instead: ppl, mean_nll, windows,\n"
    "                      tokens, seq_len, tokens_per_second, seconds\n"
    "\n"
    "  Protocol (the standard one of LLM pruning papers): the file's bytes are\n"
    "  tokenized as they are (UTF-8, no line-ending translation) in one call with\n"
    "  BOS prepended once; the ids are cut into non-overlapping windows of N tokens,\n"
    "  the final partial window dropped; each window runs on its own from position\n"
    "  0; ppl = exp(mean over windows of the window's mean next-token NLL), sums in\n"
    "  double precision.\n"
    "\n"
    "generation:\n"
    "  --prompt TEXT       continue TEXT (BOS prepended), streaming the text to stdout\n"
    "  -n N                tokens to generate (default 128); stops early at EOS\n"
    "  --temp T            temperature (default 0: greedy, deterministic)\n"
    "  --top-p P           nucleus sampling: draw from the most likely tokens\n"
    "                      holding mass P (default 1: all)\n"
    "  --seed S            random seed for sampling (default 0): same seed, same text\n"
    "\n"
    "  --threads N         worker threads (default $TB_THREADS, else all CPUs)\n"
    TB_BACKEND_OPTIONS_HELP
    "  --quiet             no progress or summary on stderr\n"
    "  --progress          progress bars even when stderr is not a terminal\n"
    "  -h, --help          this help\n"
    "  --version           print the version\n"
    "\n"
    "exit status: 0 ok, 1 usage, 2 bad input data (e.g. a text shorter than one\n"
    "window, invalid UTF-8, a malformed model), 3 I/O error\n";

typedef struct {
    const char *model, *ppl_file, *prompt;
    int seq_len, n_gen, json, threads;
    const char *compare;
    long max_windows;
    double temp, top_p;
    long seed;
    tb_backend_opts dev;
    tb_backend *be;
} options;

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
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenize_file(tok, o->ppl_file, &ids, &n);
    if (rc) return rc;
    if (o->seq_len > m->cfg.max_position_embeddings)
        tb_warn("--seq-len %d exceeds the model's max_position_embeddings (%d)", o->seq_len,
                m->cfg.max_position_embeddings);
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

static int run_generate(const options *o, const tb_model *m, const tb_tokenizer *tok)
{
    int32_t *ids = NULL;
    size_t n_prompt = 0;
    int32_t bos = tb_tok_bos(tok);
    int rc = tb_tok_encode(tok, o->prompt, strlen(o->prompt), bos >= 0, &ids, &n_prompt);
    if (rc) return tb_err_context("--prompt");
    if (n_prompt == 0) {
        free(ids);
        return tb_fail(TB_EDATA, "--prompt: empty, and the model has no BOS token to start from");
    }
    int n_gen = o->n_gen;
    int limit = m->cfg.max_position_embeddings;
    if ((int64_t)n_prompt + n_gen > limit) {
        if ((int64_t)n_prompt >= limit) {
            free(ids);
            return tb_fail(TB_EDATA, "--prompt: %zu tokens, the model's max_position_embeddings is %d", n_prompt, limit);
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
    if (!rc) rc = tb_forward_get_logits(&f, (int)n_prompt - 1, logits);
    while (!rc && made < n_gen) {
        int32_t next = tb_sample(logits, m->cfg.vocab_size, o->temp, o->top_p, &rng, work);
        if (tb_tok_is_eos(tok, next)) break;
        all[pos] = next;
        made++;
        if ((rc = tb_tok_stream_push(tok, &st, next, &piece, &len)) || (rc = emit(piece, len))) break;
        if (made == n_gen) break;
        rc = tb_forward_run(&f, &all[pos], 1, pos);
        if (!rc) rc = tb_forward_get_logits(&f, 0, logits);
        pos++;
    }
    if (!rc && !(rc = tb_tok_stream_flush(tok, &st, &piece, &len)) && !(rc = emit(piece, len))) rc = emit("\n", 1);
    double dt = tb_now() - t0;
    if (!rc) tb_info("%zu prompt tokens, %d generated in %.2f s (%.1f tokens/s)", n_prompt, made, dt,
                     dt > 0 ? made / dt : 0.0);
    tb_tok_stream_free(&st);
    tb_forward_free(&f);
    free(all);
    free(work);
    free(logits);
    return rc;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-run");
    options o = {.seq_len = 512, .n_gen = 128, .threads = tb_default_threads(), .top_p = 1.0,
                 .dev = {.device = TB_DEVICE_AUTO}};
    enum { OPT_PPL = 256, OPT_SEQ, OPT_MAXW, OPT_JSON, OPT_THREADS, OPT_PROMPT, OPT_TEMP, OPT_TOPP, OPT_SEED,
           OPT_QUIET, OPT_PROGRESS, OPT_VERSION, OPT_COMPARE, OPT_DEVICE, OPT_GPU, OPT_PRECISION, OPT_BASE };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},       {"ppl", required_argument, 0, OPT_PPL},
        {"base", required_argument, 0, OPT_BASE},
        {"seq-len", required_argument, 0, OPT_SEQ}, {"max-windows", required_argument, 0, OPT_MAXW},
        {"json", no_argument, 0, OPT_JSON},         {"threads", required_argument, 0, OPT_THREADS},
        {"prompt", required_argument, 0, OPT_PROMPT}, {"temp", required_argument, 0, OPT_TEMP},
        {"top-p", required_argument, 0, OPT_TOPP},  {"seed", required_argument, 0, OPT_SEED},
        {"quiet", no_argument, 0, OPT_QUIET},       {"progress", no_argument, 0, OPT_PROGRESS},
        {"help", no_argument, 0, 'h'},              {"version", no_argument, 0, OPT_VERSION},
        {"compare", required_argument, 0, OPT_COMPARE},
        {"device", required_argument, 0, OPT_DEVICE}, {"gpu", required_argument, 0, OPT_GPU},
        {"precision", required_argument, 0, OPT_PRECISION},
        {0, 0, 0, 0},
    };
    int c, bad = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:n:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model = optarg; break;
        case OPT_BASE:
            if (tb_tbm_allow_base(optarg)) return tb_report_error();
            break;
        case OPT_PPL: o.ppl_file = optarg; break;
        case OPT_COMPARE: o.compare = optarg; break;
        case OPT_SEQ: bad = tb_parse_int("--seq-len", optarg, 2, 1 << 20, &o.seq_len); break;
        case OPT_MAXW: bad = tb_parse_long("--max-windows", optarg, 1, 1L << 40, &o.max_windows); break;
        case OPT_JSON: o.json = 1; break;
        case OPT_THREADS: bad = tb_parse_int("--threads", optarg, 1, 256, &o.threads); break;
        case OPT_PROMPT: o.prompt = optarg; break;
        case 'n': bad = tb_parse_int("-n", optarg, 0, 1 << 20, &o.n_gen); break;
        case OPT_TEMP: bad = tb_parse_double("--temp", optarg, 0, 100, &o.temp); break;
        case OPT_TOPP: bad = tb_parse_double("--top-p", optarg, 1e-9, 1, &o.top_p); break;
        case OPT_SEED: bad = tb_parse_long("--seed", optarg, 0, 0x7fffffffffffffffL, &o.seed); break;
        case OPT_QUIET: tb_log_set_quiet(1); tb_log_set_progress(0); break;
        case OPT_PROGRESS: tb_log_set_progress(1); break;
        case OPT_DEVICE: bad = tb_backend_parse_option(&o.dev, "--device", optarg); break;
        case OPT_GPU: bad = tb_backend_parse_option(&o.dev, "--gpu", optarg); break;
        case OPT_PRECISION: bad = tb_backend_parse_option(&o.dev, "--precision", optarg); break;
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: printf("tb-run %s\n", TB_VERSION); return 0;
        case ':': return tb_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return tb_usage_error("unknown option '%s'", argv[optind - 1]);
        }
        if (bad) return tb_usage_error("%s", tb_errmsg());
    }
    if (optind < argc) return tb_usage_error("unexpected argument '%s'", argv[optind]);
    if (!o.model) return tb_usage_error("-m MODEL is required");
    if (!o.ppl_file == !o.prompt) return tb_usage_error("give one of --ppl FILE or --prompt TEXT");
    if (o.prompt && (o.json || o.max_windows || o.compare))
        return tb_usage_error("--json, --max-windows and --compare go with --ppl");

    tb_model m;
    tb_tokenizer *tok = NULL;
    int rc = tb_model_open(&m, o.model);
    if (rc) return tb_report_error();
    if ((rc = tb_tok_load(&tok, tb_model_tokenizer_path(&m)))) {
        tb_model_close(&m);
        return tb_report_error();
    }
    tb_backend be;
    o.dev.n_threads = o.threads;
    if ((rc = tb_backend_open(&be, &o.dev))) {
        tb_tok_free(tok);
        tb_model_close(&m);
        return tb_report_error();
    }
    o.be = &be;
    rc = o.ppl_file ? run_ppl(&o, &m, tok) : run_generate(&o, &m, tok);
    tb_backend_close(&be);
    tb_tok_free(tok);
    tb_model_close(&m);
    return rc ? tb_report_error() : 0;
}
