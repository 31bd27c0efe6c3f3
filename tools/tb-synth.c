/* tb-synth - a synthetic HF checkpoint: a config's real shapes, random
 * weights at transformers' init scale (formats/tb_synth.c). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_export.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_synth.h"

static const char usage[] =
    "usage: tb-synth CONFIG.json -o DIR [options]\n"
    "\n"
    "Write an HF checkpoint directory with the shapes of CONFIG.json (llama,\n"
    "mistral, qwen2) and random weights as transformers initialises them: linear\n"
    "weights and the embedding normal with std = initializer_range (0.02 when\n"
    "absent; the pad_token_id row zero), RMSNorm weights 1, biases 0. Written\n"
    "streaming, a block at a time: memory stays a few MB for any size. DIR gets\n"
    "model.safetensors, or shards of at most --max-shard-size with\n"
    "model.safetensors.index.json; config.json; generation_config.json; and a\n"
    "tokenizer covering every id of the vocabulary (the --tokenizer model's when\n"
    "it does, else a byte-level BPE written for the config). DIR is built under\n"
    "a temporary name and renamed at the end: a failed run leaves nothing.\n"
    "\n"
    "options:\n"
    "  -o, --output DIR        the checkpoint directory to create\n"
    "      --seed S            random seed (default 0); the output depends only on\n"
    "                          the config, S and the dtype, not on the thread count\n"
    "      --dtype T           bf16 (default), f16, f32\n"
    "      --tokenizer PATH    copy this model directory's tokenizer files (or this\n"
    "                          tokenizer.json) when its ids cover the vocabulary\n"
    "      --max-shard-size S  largest safetensors file (default 5GB; units B KB MB\n"
    "                          GB KiB MiB GiB)\n"
    "      --threads N         generator threads (default $TB_THREADS or all CPUs)\n"
    "      --force             replace DIR if it exists and is not empty\n"
    "      --quiet             no progress or summary\n"
    "      --progress          progress even when stderr is not a terminal\n"
    "  -h, --help              this help\n"
    "      --version           print the version\n"
    "\n"
    "exit status: 0 ok, 1 usage (also: DIR exists and is not empty), 2 bad input\n"
    "data (config), 3 I/O error (e.g. no space)\n";

static void on_bytes(void *ctx, uint64_t done, uint64_t total)
{
    tb_progress *p = ctx;
    p->total = total >> 20;
    tb_progress_set(p, done >> 20);
}

int main(int argc, char **argv)
{
    tb_log_init("tb-synth");
    tb_synth_opts o = {.dtype = TB_BF16};
    const char *out = NULL;
    int quiet = 0;
    enum { OPT_SEED = 256, OPT_DTYPE, OPT_TOKENIZER, OPT_SHARD, OPT_THREADS, OPT_FORCE, OPT_QUIET, OPT_PROGRESS,
           OPT_VERSION, OPT_DRY_RUN };
    static const struct option longopts[] = {
        {"output", required_argument, 0, 'o'},          {"seed", required_argument, 0, OPT_SEED},
        {"dtype", required_argument, 0, OPT_DTYPE},     {"tokenizer", required_argument, 0, OPT_TOKENIZER},
        {"max-shard-size", required_argument, 0, OPT_SHARD}, {"threads", required_argument, 0, OPT_THREADS},
        {"force", no_argument, 0, OPT_FORCE},           {"quiet", no_argument, 0, OPT_QUIET},
        {"progress", no_argument, 0, OPT_PROGRESS},     {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, OPT_VERSION},       {"dry-run", no_argument, 0, OPT_DRY_RUN},
        {0, 0, 0, 0},
    };
    int ch;
    long seed = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "ho:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'o': out = optarg; break;
        case OPT_SEED:
            if (tb_parse_long("--seed", optarg, 0, 0x7fffffffffffffffL, &seed)) return tb_usage_error("%s", tb_errmsg());
            o.seed = (uint64_t)seed;
            break;
        case OPT_DTYPE:
            if (!strcmp(optarg, "bf16")) o.dtype = TB_BF16;
            else if (!strcmp(optarg, "f16")) o.dtype = TB_F16;
            else if (!strcmp(optarg, "f32")) o.dtype = TB_F32;
            else return tb_usage_error("--dtype: '%s' is not bf16, f16 or f32", optarg);
            break;
        case OPT_TOKENIZER: o.tokenizer_from = optarg; break;
        case OPT_SHARD:
            if (tb_parse_size("--max-shard-size", optarg, &o.max_shard_bytes)) return tb_usage_error("%s", tb_errmsg());
            if (!o.max_shard_bytes) return tb_usage_error("--max-shard-size must be positive");
            break;
        case OPT_THREADS:
            if (tb_parse_int("--threads", optarg, 1, 256, &o.n_threads)) return tb_usage_error("%s", tb_errmsg());
            break;
        case OPT_FORCE: o.force = 1; break;
        case OPT_DRY_RUN: o.dry_run = 1; break;
        case OPT_QUIET: quiet = 1; tb_log_set_quiet(1); tb_log_set_progress(0); break;
        case OPT_PROGRESS: tb_log_set_progress(1); break;
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: printf("tb-synth %s\n", TB_VERSION); return 0;
        case '?':
            if (optopt) return tb_usage_error("option '-%c' needs a value or is unknown", optopt);
            return tb_usage_error("unknown option '%s'", argv[optind - 1]);
        default: return tb_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1) return tb_usage_error("expected one CONFIG.json");
    if (!out && !o.dry_run) return tb_usage_error("-o DIR is required");

    tb_progress prog;
    tb_progress_begin(&prog, "MiB", 0);
    o.on_bytes = on_bytes;
    o.ctx = &prog;
    tb_synth_summary s;
    if (o.dry_run) tb_log_set_progress(0);
    double t0 = tb_now();
    int rc = tb_synth_model(argv[optind], out, &o, &s);
    tb_progress_end(&prog);
    if (rc) return tb_report_error();
    if (o.dry_run) {
        printf("parameters: %lld\ntensors: %d\nbytes: %llu\nfiles: %d\n", s.params, s.n_tensors,
               (unsigned long long)s.bytes, s.n_files);
        return 0;
    }
    if (s.tokenizer_note[0]) tb_warn("%s: wrote a byte-level tokenizer instead", s.tokenizer_note);
    if (!quiet)
        tb_info("%lld parameters, %d tensors -> %s (%d file%s, %.1f MiB, tokenizer %s) in %.1f s", s.params,
                s.n_tensors, out, s.n_files, s.n_files == 1 ? "" : "s", s.bytes / 1048576.0,
                s.tokenizer_copied ? "copied" : "byte-level", tb_now() - t0);
    return 0;
}
