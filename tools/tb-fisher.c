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
#include "tb_io.h"
#include "tb_log.h"
#include "tb_model.h"
#include "tb_opts.h"
#include "tb_threads.h"
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
    "  -t, --tokens FILE     token windows: safetensors 'input_ids' [windows, seq_len]\n"
    "                        (I32 or I64), e.g. from tb-tokenize --windows\n"
    "  -o, --output FILE     the .fisher file (written atomically)\n"
    "  --stats LIST          comma-separated: fisher, gram (default: fisher,gram)\n"
    "  --grad-samples K      gradient samples to keep, 0..256 (default 0; tb-pack\n"
    "                        --compensate obs wants 8-32)\n"
    "  --max-windows N       use only the first N windows\n"
    "  --layers A:B          Gram matrices of decoder layers A..B-1 only\n"
    "  --threads N           threads (default: $TB_THREADS or all cores)\n"
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
    const char *model, *tokens, *output;
    int fisher, gram, grad_samples, threads, layer_a, layer_b;
    long max_windows;
} options;

static int parse_stats(const char *s, options *o)
{
    o->fisher = o->gram = 0;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (!strcmp(tok, "fisher")) o->fisher = 1;
        else if (!strcmp(tok, "gram")) o->gram = 1;
        else return tb_fail(TB_EUSAGE, "--stats: unknown statistic '%s' (fisher, gram)", tok);
    }
    if (!o->fisher && !o->gram) return tb_fail(TB_EUSAGE, "--stats: nothing to compute");
    return TB_OK;
}

static int run(const options *o, const char *cmdline)
{
    tb_model m;
    int rc = tb_model_open(&m, o->model);
    if (rc) return rc;
    tb_tokens tk;
    if ((rc = tb_tokens_load(&tk, o->tokens, m.cfg.vocab_size, m.cfg.max_position_embeddings))) {
        tb_model_close(&m);
        return rc;
    }
    int64_t windows = o->max_windows > 0 && o->max_windows < tk.windows ? o->max_windows : tk.windows;
    int layer_b = o->layer_b > 0 ? o->layer_b : m.cfg.n_layers;
    if (o->layer_a >= m.cfg.n_layers || layer_b > m.cfg.n_layers) {
        rc = tb_fail(TB_EUSAGE, "--layers %d:%d outside the model's %d layers", o->layer_a, layer_b, m.cfg.n_layers);
        goto done_tokens;
    }
    /* fail on an unwritable output before hours of work, not after */
    tb_outfile probe;
    if ((rc = tb_out_open(&probe, o->output))) goto done_tokens;
    tb_out_abort(&probe);

    int need_grad = o->fisher || o->grad_samples > 0;
    tb_forward f;
    tb_forward_opts fo = {.max_seq = tk.seq_len, .max_tokens = tk.seq_len, .keep_acts = need_grad,
                          .n_threads = o->threads};
    if ((rc = tb_forward_init(&f, &m, &fo))) goto done_tokens;
    tb_backward b = {0};
    if (need_grad && (rc = tb_backward_init(&b, &f))) goto done_forward;
    tb_calib c;
    tb_calib_opts co = {.fisher = o->fisher, .gram = o->gram, .grad_samples = o->grad_samples,
                        .total_windows = windows, .layer_begin = o->layer_a, .layer_end = layer_b};
    if ((rc = tb_calib_init(&c, &m, tk.seq_len, &co))) goto done_backward;

    char sha[65];
    tb_ckpt_sha256(&m.ckpt, sha);
    tb_progress prog;
    tb_progress_begin(&prog, "windows", (uint64_t)windows);
    double t0 = tb_now(), loss_sum = 0;
    for (int64_t w = 0; w < windows && !rc; w++) {
        double loss;
        rc = tb_calib_window(&c, &f, &b, tk.ids + w * tk.seq_len, tk.seq_len, &loss);
        loss_sum += loss;
        tb_progress_set(&prog, (uint64_t)w + 1);
    }
    tb_progress_end(&prog);
    double secs = tb_now() - t0;
    if (!rc) {
        char nwin[32], seq[32], ntok[32], kk[32], secs_s[32], loss_s[32];
        snprintf(nwin, sizeof nwin, "%lld", (long long)windows);
        snprintf(seq, sizeof seq, "%d", tk.seq_len);
        snprintf(ntok, sizeof ntok, "%lld", (long long)c.tokens);
        snprintf(kk, sizeof kk, "%d", c.o.grad_samples);
        snprintf(secs_s, sizeof secs_s, "%.3f", secs);
        snprintf(loss_s, sizeof loss_s, "%.6f", loss_sum / (double)windows);
        const char *meta[] = {"tensorbit.kind", "fisher",   "tensorbit.version", TB_VERSION, "model", o->model,
                              "model_sha256",   sha,        "tokens_file",       o->tokens,  "windows", nwin,
                              "seq_len",        seq,        "tokens",            ntok,       "grad_samples", kk,
                              "mean_nll",       loss_s,     "seconds",           secs_s,     "command", cmdline};
        rc = tb_calib_write(&c, o->output, meta, (int)(sizeof meta / sizeof meta[0] / 2));
        if (!rc)
            tb_info("%lld windows x %d tokens in %.1f s (%.0f tokens/s), mean NLL %.4f -> %s", (long long)windows,
                    tk.seq_len, secs, (double)c.tokens / secs, loss_sum / (double)windows, o->output);
    }
    tb_calib_free(&c);
done_backward:
    tb_backward_free(&b);
done_forward:
    tb_forward_free(&f);
done_tokens:
    tb_tokens_free(&tk);
    tb_model_close(&m);
    return rc;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-fisher");
    options o = {.fisher = 1, .gram = 1, .threads = tb_default_threads()};
    enum { OPT_STATS = 256, OPT_SAMPLES, OPT_MAXWIN, OPT_LAYERS, OPT_THREADS, OPT_QUIET, OPT_PROGRESS, OPT_VERSION };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},          {"tokens", required_argument, 0, 't'},
        {"output", required_argument, 0, 'o'},         {"stats", required_argument, 0, OPT_STATS},
        {"grad-samples", required_argument, 0, OPT_SAMPLES}, {"max-windows", required_argument, 0, OPT_MAXWIN},
        {"layers", required_argument, 0, OPT_LAYERS},  {"threads", required_argument, 0, OPT_THREADS},
        {"quiet", no_argument, 0, OPT_QUIET},          {"progress", no_argument, 0, OPT_PROGRESS},
        {"help", no_argument, 0, 'h'},                 {"version", no_argument, 0, OPT_VERSION},
        {0, 0, 0, 0},
    };
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "m:t:o:h", longopts, NULL)) != -1) {
        int rc = TB_OK;
        switch (ch) {
        case 'm': o.model = optarg; break;
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
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: printf("tb-fisher %s\n", TB_VERSION); return 0;
        default: return tb_usage_error("unknown option '%s'", argv[optind - 1]);
        }
        if (rc) return tb_usage_error("%s", tb_errmsg());
    }
    if (optind != argc) return tb_usage_error("unexpected argument '%s'", argv[optind]);
    if (!o.model || !o.tokens || !o.output) return tb_usage_error("-m MODEL, -t TOKENS and -o OUT are required");
    char cmdline[2048] = "";
    for (int i = 0; i < argc; i++) {
        size_t k = strlen(cmdline);
        snprintf(cmdline + k, sizeof cmdline - k, "%s%s", i ? " " : "", argv[i]);
    }
    return run(&o, cmdline) ? tb_report_error() : 0;
}
