/* tb-fisher - calibration statistics: empirical Fisher diagonal, Gram matrices
 * of linear inputs, and per-window gradient samples (see tb_calib.h). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_backward.h"
#include "tb_calib.h"
#include "tb_error.h"
#include "tb_fisher.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_model.h"
#include "tb_opts.h"
#include "tb_threads.h"
#include "tb_tbm.h"
#include "tb_tokenizer.h"
#include "tb_tokens.h"

static const char description[] =
    "Calibration statistics of a Llama/Mistral decoder on token windows, written\n"
    "as safetensors (layout in tb_fisher.h and tb-fisher(1)):\n"
    "  fisher.<W>           empirical Fisher diagonal: mean over windows of the\n"
    "                       squared gradient of the window's mean next-token NLL\n"
    "  gram.<module>.input  sum over all tokens of x x^T (f64) for each distinct\n"
    "                       linear input (q/k/v share one, gate/up share one)\n"
    "  grad.<W>             --grad-samples K: the gradients of K windows spread\n"
    "                       evenly over the run, bf16 [K, rows, cols]\n";

static const char notes[] =
    "memory: the model's mapping, one window's activations and their gradients,\n"
    "plus the statistics: 4 bytes x linear parameters (Fisher), 8 bytes x in^2\n"
    "per distinct linear input (Gram), 2 bytes x K x linear parameters (samples).\n"
    "A NaN/Inf gradient is bad data (2), named by tensor and window.\n";

typedef struct {
    const char *model, *tokens, *text, *output, *acts_in, *acts_out;
    int fisher, gram, grad_samples, threads, layer_a, layer_b, text_windows, text_seq_len, json;
    int gram_from;    /* --gram-from: Grams of layers [gram_from, B) only (-1: A) */
    int acts_out_at;  /* --acts-out-at: the stream saved enters this layer (-1: B) */
    uint64_t text_seed;
    long max_windows;
    tb_backend_opts dev;
} options;

static int parse_stats(const char *opt, const char *s, void *value)
{
    options *o = value;
    o->fisher = o->gram = 0;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (!strcmp(tok, "fisher")) o->fisher = 1;
        else if (!strcmp(tok, "gram")) o->gram = 1;
        else if (!strcmp(tok, "none")) continue;
        else return tb_fail(TB_EUSAGE, "%s: '%s' is not one of fisher, gram, none", opt, tok);
    }
    return TB_OK;
}

/* --text: tokenize (BOS first) and draw windows, as tb-tokenize would. */
static int text_windows(const options *o, const tb_model *m, tb_tokens *tk)
{
    tb_tokenizer *tok;
    int rc = tb_tok_load(&tok, tb_model_tokenizer_path(m));
    if (rc) return rc;
    char *text = NULL;
    size_t len = 0, n = 0;
    int32_t *ids = NULL;
    if (!(rc = tb_read_text(o->text, &text, &len)) && !(rc = tb_tok_encode(tok, text, len, 1, &ids, &n)))
        rc = tb_tokens_draw(tk, ids, n, o->text_windows, o->text_seq_len, o->text_seed, o->text);
    if (rc == TB_EDATA && !strstr(tb_errmsg(), o->text)) tb_err_context("%s", o->text);
    free(ids);
    free(text);
    tb_tok_free(tok);
    if (!rc && tk->seq_len > m->cfg.max_position_embeddings)
        rc = tb_fail(TB_EDATA, "%s: windows of %d tokens exceed max_position_embeddings (%d)", o->text, tk->seq_len,
                     m->cfg.max_position_embeddings);
    return rc;
}

/* tb_calib_layers_at's callback: one window of the stream entering sv->layer
 * onto the --acts-out file */
typedef struct {
    tb_forward *f;
    int layer, seq_len;
    float *hostwin;
    st_writer *sout;
    size_t window_floats;
} stream_save;

static int save_stream(void *ctx)
{
    stream_save *sv = ctx;
    int rc = tb_forward_get_stream(sv->f, sv->layer, sv->hostwin, sv->seq_len);
    return rc ? rc : st_writer_write(sv->sout, sv->hostwin, sv->window_floats * sizeof(float));
}

static int run(const options *o, const char *cmdline)
{
    const int sequential = o->acts_in || o->acts_out;
    tb_model m;
    int rc = tb_model_open(&m, o->model);
    if (rc) return rc;
    tb_tokens tk = {0};
    st_file stream_file;
    const st_tensor *stream = NULL; /* the stream entering layer A (--acts-in) */
    st_writer *sout = NULL;
    tb_outfile out_acts = {0};
    int64_t windows = 0;
    int seq_len = 0;
    int layer_b = o->layer_b > 0 ? o->layer_b : m.cfg.n_layers;
    if (o->layer_a >= m.cfg.n_layers || layer_b > m.cfg.n_layers) {
        rc = tb_fail(TB_EUSAGE, "--layers %d:%d outside the model's %d layers", o->layer_a, layer_b, m.cfg.n_layers);
        goto done_model;
    }
    if (o->acts_in) {
        if ((rc = tb_stream_open(&stream_file, o->acts_in, m.cfg.hidden_size, o->layer_a, &stream))) goto done_model;
        windows = stream->shape[0];
        seq_len = (int)stream->shape[1];
    } else {
        if (o->text) rc = text_windows(o, &m, &tk);
        else rc = tb_tokens_load(&tk, o->tokens, m.cfg.vocab_size, m.cfg.max_position_embeddings);
        if (rc) goto done_model;
        windows = tk.windows;
        seq_len = tk.seq_len;
    }
    if (o->max_windows > 0 && o->max_windows < windows) windows = o->max_windows;
    /* fail on an unwritable output before hours of work, not after */
    tb_outfile probe;
    if (o->output) {
        if ((rc = tb_out_open(&probe, o->output))) goto done_inputs;
        tb_out_abort(&probe);
    }
    char sha[65];
    /* of the weights this run reads (formats/tb_fisher.h): layers 0..B, or A..B
     * from a stream; not the whole checkpoint, which at 7B is 14.5 GB a run */
    tb_model_sha256_layers(&m, o->acts_in ? o->layer_a : 0, layer_b, sha);
    const int gram_from = o->gram_from >= 0 ? o->gram_from : o->layer_a;
    const int acts_at = o->acts_out_at >= 0 ? o->acts_out_at : layer_b;
    if (sequential && (gram_from < o->layer_a || gram_from >= layer_b || acts_at <= o->layer_a || acts_at > layer_b)) {
        rc = tb_fail(TB_EUSAGE, "--gram-from %d and --acts-out-at %d must lie inside --layers %d:%d", gram_from, acts_at,
                     o->layer_a, layer_b);
        goto done_inputs;
    }
    if (o->acts_out) {
        char lay[16], sha_s[65]; /* the stream's: of the layers before it */
        tb_model_sha256_layers(&m, o->acts_in ? o->layer_a : 0, acts_at, sha_s);
        snprintf(lay, sizeof lay, "%d", acts_at);
        if (!(sout = st_writer_new())) { rc = TB_EIO; goto done_inputs; }
        int64_t shape[3] = {windows, seq_len, m.cfg.hidden_size};
        if ((rc = st_writer_meta(sout, "tensorbit.kind", "stream")) || (rc = st_writer_meta(sout, "layer", lay)) ||
            (rc = st_writer_meta(sout, "model_sha256", sha_s)) || (rc = st_writer_meta(sout, "command", cmdline)) ||
            (rc = st_writer_add(sout, "hidden", TB_F32, 3, shape)) || (rc = tb_out_open(&out_acts, o->acts_out)))
            goto done_inputs;
        if ((rc = st_writer_begin(sout, out_acts.fp, o->acts_out))) goto done_inputs;
    }

    int need_grad = o->fisher || o->grad_samples > 0;
    tb_backend be = {0};
    tb_backend_opts bo = o->dev;
    bo.n_threads = o->threads;
    const size_t window_floats = (size_t)seq_len * m.cfg.hidden_size;
    float *hostwin = NULL; /* a stream window on its way between the file and the backend */
    if ((rc = tb_backend_open(&be, &bo))) goto done_inputs;
    if (sequential && !(hostwin = tb_malloc(window_floats * sizeof(float)))) {
        rc = TB_EIO;
        goto done_backend;
    }
    tb_forward f;
    tb_forward_opts fo = {.max_seq = seq_len, .max_tokens = seq_len, .keep_acts = need_grad, .n_threads = o->threads,
                          .backend = &be};
    /* Gram matrices of layers [A, B) alone need only the layers up to B:
     * embed, run [0, B), no head (at 7B that is one layer, not 32) */
    const int prefix = !sequential && !need_grad && layer_b < m.cfg.n_layers;
    if (sequential || prefix) { /* only the layers this run goes through */
        fo.layer_begin = sequential ? o->layer_a : 0;
        fo.layer_end = layer_b;
    }
    if ((rc = tb_forward_init(&f, &m, &fo))) goto done_backend;
    tb_backward b = {0};
    if (need_grad && (rc = tb_backward_init(&b, &f))) goto done_forward;
    tb_calib c;
    tb_calib_opts co = {.fisher = o->fisher, .gram = o->gram, .grad_samples = o->grad_samples,
                        .total_windows = windows, .layer_begin = sequential ? gram_from : o->layer_a, .layer_end = layer_b,
                        .backend = &be};
    if ((rc = tb_calib_init(&c, &m, seq_len, &co))) goto done_backward;

    tb_progress prog;
    tb_progress_begin(&prog, "windows", (uint64_t)windows);
    double t0 = tb_now(), loss_sum = 0;
    for (int64_t w = 0; w < windows && !rc; w++) {
        if (prefix) {
            rc = tb_forward_embed(&f, tk.ids + w * seq_len, seq_len);
            if (!rc) rc = tb_calib_layers(&c, &f, seq_len, 0, layer_b);
        } else if (!sequential) {
            double loss;
            rc = tb_calib_window(&c, &f, &b, tk.ids + w * seq_len, seq_len, &loss);
            loss_sum += loss;
        } else {
            if (o->acts_in) {
                tb_to_f32(TB_F32, stream->data, (size_t)w * window_floats, window_floats, hostwin);
                rc = tb_forward_set_stream(&f, o->layer_a, hostwin, seq_len);
            } else {
                rc = tb_forward_embed(&f, tk.ids + w * seq_len, seq_len);
            }
            /* the stream entering acts_at is saved when the run reaches it */
            stream_save sv = {&f, acts_at, seq_len, hostwin, sout, window_floats};
            if (!rc) rc = tb_calib_layers_at(&c, &f, seq_len, o->layer_a, acts_at, layer_b, sout ? save_stream : NULL, &sv);
        }
        tb_progress_set(&prog, (uint64_t)w + 1);
    }
    tb_progress_end(&prog);
    double secs = tb_now() - t0;
    if (!rc && sout && !(rc = st_writer_finish(sout))) rc = tb_out_commit(&out_acts);
    if (!rc && o->output) {
        char nwin[32], seq[32], ntok[32], kk[32], secs_s[32], loss_s[32], la[16], lb[16];
        snprintf(nwin, sizeof nwin, "%lld", (long long)windows);
        snprintf(seq, sizeof seq, "%d", seq_len);
        snprintf(ntok, sizeof ntok, "%lld", (long long)c.tokens);
        snprintf(kk, sizeof kk, "%d", c.o.grad_samples);
        snprintf(secs_s, sizeof secs_s, "%.3f", secs);
        snprintf(loss_s, sizeof loss_s, "%.6f", sequential || prefix ? 0.0 : loss_sum / (double)windows);
        snprintf(la, sizeof la, "%d", sequential ? gram_from : o->layer_a);
        snprintf(lb, sizeof lb, "%d", layer_b);
        const char *meta[] = {"tensorbit.kind", "fisher",   "tensorbit.version", TB_VERSION, "model", o->model,
                              "model_sha256",   sha,        "tokens_file", o->tokens ? o->tokens : o->text ? o->text : o->acts_in,
                              "windows",        nwin,       "seq_len",           seq,        "tokens", ntok,
                              "grad_samples",   kk,         "mean_nll",          loss_s,     "seconds", secs_s,
                              "layer_begin",    la,         "layer_end",         lb,         "command", cmdline};
        rc = tb_calib_write(&c, o->output, meta, (int)(sizeof meta / sizeof meta[0] / 2));
    }
    if (!rc && o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "windows", (double)windows);
        cJSON_AddNumberToObject(j, "seq_len", seq_len);
        cJSON_AddNumberToObject(j, "tokens", (double)c.tokens);
        if (sequential || prefix) cJSON_AddNullToObject(j, "mean_nll"); /* no loss without the head */
        else cJSON_AddNumberToObject(j, "mean_nll", loss_sum / (double)windows);
        cJSON_AddNumberToObject(j, "seconds", secs);
        cJSON_AddNumberToObject(j, "tokens_per_second", secs > 0 ? (double)c.tokens / secs : 0.0);
        rc = tb_json_print(j);
    }
    if (!rc)
        tb_info("%lld windows x %d tokens in %.1f s (%.0f tokens/s, %s)%s", (long long)windows, seq_len, secs,
                (double)c.tokens / secs, be.desc, o->output ? "" : ", stream saved");
    tb_calib_free(&c);
done_backward:
    tb_backward_free(&b);
done_forward:
    tb_forward_free(&f);
done_backend:
    free(hostwin);
    tb_backend_close(&be);
done_inputs:
    if (out_acts.fp) tb_out_abort(&out_acts);
    st_writer_free(sout);
    if (stream) st_close(&stream_file);
    tb_tokens_free(&tk);
done_model:
    tb_model_close(&m);
    return rc;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-fisher");
    options o = {.fisher = 1, .gram = 1, .gram_from = -1, .acts_out_at = -1, .threads = tb_default_threads(), .text_windows = 128, .text_seq_len = 512,
                 .dev = {.device = TB_DEVICE_AUTO}};
    tb_layer_range layers = {0};
    long seed = 0;
    const char *base = NULL;
    const tb_option table[] = {
        TB_OPT_MODEL(&o.model, "HF checkpoint directory (config.json + safetensors)"),
        TB_OPT_FILE(0, "base", &base, "DIR", "the base checkpoint of a partial .tbm (tb-merge --partial),\n"
"when outside the .tbm's directory (a path inside a file\n"
"is not trusted)"),
        TB_OPT_TOKENS(&o.tokens, "use --text FILE, or tb-tokenize --windows", "token windows: safetensors 'input_ids' [windows, seq_len]\n"
                                 "(I32 or I64), e.g. from tb-tokenize --windows"),
        TB_OPT_INPUT(0, "text", &o.text, "FILE", TB_WANT_TEXT, "text", "give token windows with -t", "or calibration text, tokenized here (BOS first) and cut\n"
                                               "into --windows N (128) windows of --seq-len T (512)\n"
                                               "with --seed S (0), exactly as tb-tokenize --bos\n"
                                               "--windows N --seq-len T --seed S draws them"),
        TB_OPT_INT(0, "windows", &o.text_windows, "N", 1, 1 << 20, "with --text: how many windows (default 128)"),
        TB_OPT_INT(0, "seq-len", &o.text_seq_len, "T", 2, 1 << 20, "with --text: window length (default 512)"),
        TB_OPT_LONG(0, "seed", &seed, "S", 0, 9.3e18, "with --text: the windows' random seed (default 0)"),
        TB_OPT_OUTPUT(&o.output, "FILE", 0, "the .fisher file (written atomically; - for stdout)"),
        TB_OPT_CALLBACK(0, "stats", &o, "LIST", parse_stats, "comma-separated: fisher, gram, or none (default:\n"
                                                              "fisher,gram; none only with --acts-out)"),
        TB_OPT_INT(0, "grad-samples", &o.grad_samples, "K", 0, 256, "gradient samples to keep, 0..256 (default 0; tb-pack\n"
                                                                    "--compensate obs wants 8-32)"),
        TB_OPT_LONG(0, "max-windows", &o.max_windows, "N", 1, 1L << 40, "use only the first N windows"),
        TB_OPT_LAYERS(&layers, "decoder layers A..B only (A-B inclusive, A:B = A..B-1, or A):\n"
                               "their Gram matrices; in sequential mode the layers that run"),
        TB_OPT_GROUP("sequential (layer-wise) mode, so each layer is calibrated on what the pruned\n"
                     "layers before it produce, one Makefile step per layer; only the --layers run,\n"
                     "--stats gram or none (the Fisher needs the whole model):"),
        TB_OPT_INPUT(0, "acts-in", &o.acts_in, "FILE", TB_WANT_SAFETENSORS, "a layer stream (safetensors)",
                     "make it with tb-fisher --acts-out", "residual stream entering the first layer (F32 'hidden'\n"
                                                     "[windows, seq_len, hidden], from an earlier --acts-out);\n"
                                                     "without it the first layer must be 0 and -t gives the tokens"),
        TB_OPT_FILE(0, "acts-out", &o.acts_out, "FILE", "save the stream leaving the last layer"),
        TB_OPT_INT(0, "acts-out-at", &o.acts_out_at, "L", 1, 1000000,
                   "save the stream entering layer L instead (A < L <= B),\n"
                   "while the layers after it still run"),
        TB_OPT_INT(0, "gram-from", &o.gram_from, "L", 0, 1000000,
                   "Gram matrices of layers L..B only (the layers before\n"
                   "run for their output). With --acts-out-at L, a pruned\n"
                   "layer's stream and the next dense layer's Grams in one\n"
                   "pass: -m partial.L.tbm --layers L:L+2 --acts-out-at L+1\n"
                   "--gram-from L+1 (examples/Makefile)"),
        TB_OPT_GROUP(""),
        TB_OPT_JSON(&o.json, "print one JSON object on stdout: windows, seq_len, tokens,\n"
                             "mean_nll (the dense model's loss on the windows; null\n"
                             "when the head does not run), seconds, tokens_per_second"),
        TB_OPT_THREADS(&o.threads),
        TB_OPT_DEVICE(&o.dev),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-fisher", .usage = "tb-fisher -m MODEL -t TOKENS -o OUT.fisher [options]",
                            .description = description, .options = table, .notes = notes};
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, NULL, NULL);
    o.text_seed = (uint64_t)seed;
    if (base && tb_tbm_allow_base(base)) return tb_report_error();
    if (layers.set) {
        o.layer_a = layers.lo;
        o.layer_b = layers.hi + 1;
    }
    if ((tb_opt_given(&o.text_windows) || tb_opt_given(&o.text_seq_len) || tb_opt_given(&seed)) && !o.text)
        return tb_usage_error("--windows, --seq-len and --seed go with --text");
    if (!o.tokens && !o.text && !o.acts_in) return tb_usage_error("-t TOKENS, --text FILE or --acts-in is required");
    if (o.tokens && o.text) return tb_usage_error("-t and --text exclude each other");
    if (o.acts_in || o.acts_out) {
        if (o.fisher || o.grad_samples) return tb_usage_error("sequential mode computes --stats gram or none, not the Fisher");
        if (o.layer_b == 0) return tb_usage_error("sequential mode (--acts-in, --acts-out) needs --layers A-B");
        if (o.acts_out_at >= 0 && !o.acts_out) return tb_usage_error("--acts-out-at goes with --acts-out FILE");
        if (o.gram_from >= 0 && !o.gram) return tb_usage_error("--gram-from goes with --stats gram");
        if (!o.acts_in && o.layer_a != 0)
            return tb_usage_error("--layers %d-%d needs --acts-in (the stream entering layer %d)", o.layer_a,
                                  o.layer_b - 1, o.layer_a);
    } else if (o.gram_from >= 0 || o.acts_out_at >= 0) {
        return tb_usage_error("--gram-from and --acts-out-at are sequential mode's (--acts-in or --acts-out)");
    } else if (!o.fisher && !o.gram) {
        return tb_usage_error("--stats: nothing to compute");
    }
    if (!o.output && !o.acts_out) return tb_usage_error("missing -o/--output FILE (or --acts-out FILE)");
    if (!o.gram && o.output && !o.fisher) return tb_usage_error("--stats none writes no -o file");
    if (o.json && o.output && !strcmp(o.output, "-")) return tb_usage_error("--json prints to stdout, so -o - cannot: give -o FILE");
    char *cmdline = tb_join_args(argc, argv);
    if (!cmdline) return tb_report_error();
    int rc = run(&o, cmdline);
    free(cmdline);
    return rc ? tb_report_error() : 0;
}
