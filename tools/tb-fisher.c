/* tb-fisher - calibration statistics: empirical Fisher diagonal, Gram matrices
 * of linear inputs, and per-window gradient samples (see tb_calib.h). */
#include <getopt.h>
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
#include "tb_tokenizer.h"
#include "tb_tokens.h"

static const char usage[] =
    "usage: tb-fisher -m MODEL -t TOKENS -o OUT.fisher [options]\n"
    "\n"
    "Calibration statistics of a Llama/Mistral decoder on token windows, written\n"
    "as safetensors (layout in tb_fisher.h and tb-fisher(1)):\n"
    "  fisher.<W>           empirical Fisher diagonal: mean over windows of the\n"
    "                       squared gradient of the window's mean next-token NLL\n"
    "  gram.<module>.input  sum over all tokens of x x^T (f64) for each distinct\n"
    "                       linear input (q/k/v share one, gate/up share one)\n"
    "  grad.<W>             --grad-samples K: the gradients of K windows spread\n"
    "                       evenly over the run, bf16 [K, rows, cols]\n"
    "\n"
    "options:\n"
    "  -m, --model DIR       HF checkpoint directory (config.json + safetensors)\n"
    "  --base DIR            the base checkpoint of a partial .tbm given as -m, when\n"
    "                        outside the .tbm's directory\n"
    "  -t, --tokens FILE     token windows: safetensors 'input_ids' [windows, seq_len]\n"
    "                        (I32 or I64), e.g. from tb-tokenize --windows\n"
    "  --text FILE           or calibration text, tokenized here (BOS first) and cut\n"
    "                        into --windows N (128) windows of --seq-len T (512)\n"
    "                        with --seed S (0), exactly as tb-tokenize --bos\n"
    "                        --windows N --seq-len T --seed S draws them\n"
    "  -o, --output FILE     the .fisher file (written atomically)\n"
    "  --stats LIST          comma-separated: fisher, gram, or none (default:\n"
    "                        fisher,gram; none only with --acts-out)\n"
    "  --grad-samples K      gradient samples to keep, 0..256 (default 0; tb-pack\n"
    "                        --compensate obs wants 8-32)\n"
    "  --max-windows N       use only the first N windows\n"
    "  --layers A:B          Gram matrices of decoder layers A..B-1 only\n"
    "\n"
    "sequential (layer-wise) mode, so each layer is calibrated on what the pruned\n"
    "layers before it produce, one Makefile step per layer:\n"
    "  --acts-in FILE        residual stream entering layer A (F32 'hidden'\n"
    "                        [windows, seq_len, hidden], from an earlier --acts-out);\n"
    "                        without it layer A must be 0 and -t gives the tokens\n"
    "  --acts-out FILE       save the stream leaving layer B-1 (entering B)\n"
    "  Only layers A..B-1 run; --stats gram or none (Fisher needs the whole model).\n"
    "  --threads N           threads (default: $TB_THREADS or all cores)\n"
    TB_BACKEND_OPTIONS_HELP
    "  --quiet, --progress   progress bar off / on even when stderr is no terminal\n"
    "  -h, --help, --version\n"
    "\n"
    "memory: the model's mapping, one window's activations and their gradients,\n"
    "plus the statistics: 4 bytes x linear parameters (Fisher), 8 bytes x in^2\n"
    "per distinct linear input (Gram), 2 bytes x K x linear parameters (samples).\n"
    "\n"
    "exit status: 0 ok, 1 usage, 2 bad input data (incl. a NaN/Inf gradient,\n"
    "named by tensor and window), 3 I/O error\n";

typedef struct {
    const char *model, *tokens, *text, *output, *acts_in, *acts_out;
    int fisher, gram, grad_samples, threads, layer_a, layer_b, text_windows, text_seq_len;
    uint64_t text_seed;
    long max_windows;
    tb_backend_opts dev;
} options;

static int parse_stats(const char *s, options *o)
{
    o->fisher = o->gram = 0;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (!strcmp(tok, "fisher")) o->fisher = 1;
        else if (!strcmp(tok, "gram")) o->gram = 1;
        else if (!strcmp(tok, "none")) continue;
        else return tb_fail(TB_EUSAGE, "--stats: unknown statistic '%s' (fisher, gram)", tok);
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
    if (o->acts_out) {
        char lay[16];
        snprintf(lay, sizeof lay, "%d", layer_b);
        if (!(sout = st_writer_new())) { rc = TB_EIO; goto done_inputs; }
        int64_t shape[3] = {windows, seq_len, m.cfg.hidden_size};
        if ((rc = st_writer_meta(sout, "tensorbit.kind", "stream")) || (rc = st_writer_meta(sout, "layer", lay)) ||
            (rc = st_writer_meta(sout, "model_sha256", sha)) || (rc = st_writer_meta(sout, "command", cmdline)) ||
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
                        .total_windows = windows, .layer_begin = o->layer_a, .layer_end = layer_b,
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
            if (!rc) rc = tb_calib_layers(&c, &f, seq_len, o->layer_a, layer_b);
            if (!rc && sout && !(rc = tb_forward_get_stream(&f, layer_b, hostwin, seq_len)))
                rc = st_writer_write(sout, hostwin, window_floats * sizeof(float));
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
        snprintf(la, sizeof la, "%d", o->layer_a);
        snprintf(lb, sizeof lb, "%d", layer_b);
        const char *meta[] = {"tensorbit.kind", "fisher",   "tensorbit.version", TB_VERSION, "model", o->model,
                              "model_sha256",   sha,        "tokens_file", o->tokens ? o->tokens : o->text ? o->text : o->acts_in,
                              "windows",        nwin,       "seq_len",           seq,        "tokens", ntok,
                              "grad_samples",   kk,         "mean_nll",          loss_s,     "seconds", secs_s,
                              "layer_begin",    la,         "layer_end",         lb,         "command", cmdline};
        rc = tb_calib_write(&c, o->output, meta, (int)(sizeof meta / sizeof meta[0] / 2));
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
    options o = {.fisher = 1, .gram = 1, .threads = tb_default_threads(), .text_windows = 128, .text_seq_len = 512,
                 .dev = {.device = TB_DEVICE_AUTO}};
    enum { OPT_ACTS_IN = 300, OPT_ACTS_OUT, OPT_TEXT, OPT_WINDOWS, OPT_SEQLEN, OPT_SEED };
    enum { OPT_STATS = 256, OPT_SAMPLES, OPT_MAXWIN, OPT_LAYERS, OPT_THREADS, OPT_QUIET, OPT_PROGRESS, OPT_VERSION,
           OPT_DEVICE, OPT_GPU, OPT_PRECISION, OPT_BASE };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},          {"tokens", required_argument, 0, 't'},
        {"base", required_argument, 0, OPT_BASE},
        {"output", required_argument, 0, 'o'},         {"stats", required_argument, 0, OPT_STATS},
        {"grad-samples", required_argument, 0, OPT_SAMPLES}, {"max-windows", required_argument, 0, OPT_MAXWIN},
        {"layers", required_argument, 0, OPT_LAYERS},  {"threads", required_argument, 0, OPT_THREADS},
        {"quiet", no_argument, 0, OPT_QUIET},          {"progress", no_argument, 0, OPT_PROGRESS},
        {"help", no_argument, 0, 'h'},                 {"version", no_argument, 0, OPT_VERSION},
        {"acts-in", required_argument, 0, OPT_ACTS_IN}, {"acts-out", required_argument, 0, OPT_ACTS_OUT},
        {"text", required_argument, 0, OPT_TEXT},       {"windows", required_argument, 0, OPT_WINDOWS},
        {"seq-len", required_argument, 0, OPT_SEQLEN},  {"seed", required_argument, 0, OPT_SEED},
        {"device", required_argument, 0, OPT_DEVICE},   {"gpu", required_argument, 0, OPT_GPU},
        {"precision", required_argument, 0, OPT_PRECISION},
        {0, 0, 0, 0},
    };
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "m:t:o:h", longopts, NULL)) != -1) {
        int rc = TB_OK;
        switch (ch) {
        case 'm': o.model = optarg; break;
        case OPT_BASE: rc = tb_tbm_allow_base(optarg); break;
        case 't': o.tokens = optarg; break;
        case 'o': o.output = optarg; break;
        case OPT_STATS: rc = parse_stats(optarg, &o); break;
        case OPT_SAMPLES: rc = tb_parse_int("--grad-samples", optarg, 0, 256, &o.grad_samples); break;
        case OPT_MAXWIN: rc = tb_parse_long("--max-windows", optarg, 1, 1L << 40, &o.max_windows); break;
        case OPT_LAYERS:
            if (sscanf(optarg, "%d:%d", &o.layer_a, &o.layer_b) != 2 || o.layer_a < 0 || o.layer_b <= o.layer_a)
                rc = tb_fail(TB_EUSAGE, "--layers: '%s' is not A:B with 0 <= A < B", optarg);
            break;
        case OPT_THREADS: rc = tb_parse_int("--threads", optarg, 1, 256, &o.threads); break;
        case OPT_QUIET: tb_log_set_quiet(1); tb_log_set_progress(0); break;
        case OPT_PROGRESS: tb_log_set_progress(1); break;
        case OPT_ACTS_IN: o.acts_in = optarg; break;
        case OPT_TEXT: o.text = optarg; break;
        case OPT_WINDOWS: rc = tb_parse_int("--windows", optarg, 1, 1 << 20, &o.text_windows); break;
        case OPT_SEQLEN: rc = tb_parse_int("--seq-len", optarg, 2, 1 << 20, &o.text_seq_len); break;
        case OPT_SEED: {
            long seed;
            rc = tb_parse_long("--seed", optarg, 0, 0x7fffffffffffffffL, &seed);
            o.text_seed = (uint64_t)seed;
            break;
        }
        case OPT_ACTS_OUT: o.acts_out = optarg; break;
        case OPT_DEVICE: rc = tb_backend_parse_option(&o.dev, "--device", optarg); break;
        case OPT_GPU: rc = tb_backend_parse_option(&o.dev, "--gpu", optarg); break;
        case OPT_PRECISION: rc = tb_backend_parse_option(&o.dev, "--precision", optarg); break;
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: printf("tb-fisher %s\n", TB_VERSION); return 0;
        default: return tb_usage_error("unknown option '%s'", argv[optind - 1]);
        }
        if (rc) return tb_usage_error("%s", tb_errmsg());
    }
    if (optind != argc) return tb_usage_error("unexpected argument '%s'", argv[optind]);
    if (!o.model) return tb_usage_error("-m MODEL is required");
    if (!o.tokens && !o.text && !o.acts_in) return tb_usage_error("-t TOKENS, --text FILE or --acts-in is required");
    if (o.tokens && o.text) return tb_usage_error("-t and --text exclude each other");
    if (o.acts_in || o.acts_out) {
        if (o.fisher || o.grad_samples) return tb_usage_error("sequential mode computes --stats gram or none, not the Fisher");
        if (o.layer_b == 0) return tb_usage_error("sequential mode needs --layers A:B");
        if (!o.acts_in && o.layer_a != 0) return tb_usage_error("--layers %d:%d needs --acts-in (the stream entering layer %d)", o.layer_a, o.layer_b, o.layer_a);
    } else if (!o.fisher && !o.gram) {
        return tb_usage_error("--stats: nothing to compute");
    }
    if (!o.output && !o.acts_out) return tb_usage_error("-o OUT (or --acts-out) is required");
    if (!o.gram && o.output && !o.fisher) return tb_usage_error("--stats none writes no -o file");
    char *cmdline = tb_join_args(argc, argv);
    if (!cmdline) return tb_report_error();
    int rc = run(&o, cmdline);
    free(cmdline);
    return rc ? tb_report_error() : 0;
}
