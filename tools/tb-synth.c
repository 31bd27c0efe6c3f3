/* tb-synth - a synthetic HF checkpoint: a config's real shapes, random
 * weights at transformers' init scale (formats/tb_synth.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_export.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_synth.h"

static const char description[] =
    "Write an HF checkpoint directory with the shapes of CONFIG.json (llama,\n"
    "mistral, qwen2) and random weights as transformers initialises them: linear\n"
    "weights and the embedding normal with std = initializer_range (0.02 when\n"
    "absent; the pad_token_id row zero), RMSNorm weights 1, biases 0. Written\n"
    "streaming, a block at a time: memory stays a few MB for any size. DIR gets\n"
    "model.safetensors, or shards of at most --max-shard-size with\n"
    "model.safetensors.index.json; config.json; generation_config.json; and a\n"
    "tokenizer covering every id of the vocabulary (the --tokenizer model's when\n"
    "it does, else a byte-level BPE written for the config). DIR is built under\n"
    "a temporary name and renamed at the end: a failed run leaves nothing.\n";

static const char *const dtype_names[] = {"bf16", "f16", "f32", NULL};
static const int dtype_values[] = {TB_BF16, TB_F16, TB_F32};

static int parse_shard_size(const char *opt, const char *arg, void *value)
{
    int rc = tb_parse_size(opt, arg, value);
    if (!rc && !*(uint64_t *)value) return tb_fail(TB_EUSAGE, "%s: must be positive", opt);
    return rc;
}

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
    const char *out = NULL, *config = NULL;
    long seed = 0;
    int dtype = 0;
    const tb_option table[] = {
        TB_OPT_OUTPUT(&out, "DIR", TB_OPTF_NO_DASH, "the checkpoint directory to create"),
        TB_OPT_LONG(0, "seed", &seed, "S", 0, 9.3e18, "random seed (default 0); the output depends only on\n"
                                                     "the config, S and the dtype, not on the thread count"),
        TB_OPT_CHOICE(0, "dtype", &dtype, dtype_names, "bf16 (default), f16, f32"),
        TB_OPT_FILE(0, "tokenizer", &o.tokenizer_from, "PATH", "copy this model directory's tokenizer files (or this\n"
                                                               "tokenizer.json) when its ids cover the vocabulary"),
        TB_OPT_CALLBACK(0, "max-shard-size", &o.max_shard_bytes, "SIZE", parse_shard_size,
                        "largest safetensors file (default 5GB; units B KB MB\n"
                        "GB KiB MiB GiB)"),
        TB_OPT_FLAG(0, "dry-run", &o.dry_run, "write nothing: print the parameter, tensor, byte and file\n"
                                              "counts the checkpoint would have"),
        TB_OPT_FORCE(&o.force, "replace DIR if it exists and is not empty"),
        TB_OPT_THREADS(&o.n_threads),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-synth", .usage = "tb-synth CONFIG.json -o DIR [options]",
                            .description = description, .options = table, .args = "CONFIG.json", .max_args = 1,
                            .notes = "DIR existing and not empty is a usage error (1) unless --force; a bad\n"
                                     "config is bad data (2); no space is I/O (3).\n"};
    char **args;
    int n_args;
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, &args, &n_args);
    if (n_args) config = args[0];
    if (!config) return tb_usage_error("missing CONFIG.json");
    if (!out && !o.dry_run) return tb_usage_error("missing -o/--output DIR");
    o.seed = (uint64_t)seed;
    o.dtype = dtype_values[dtype];

    tb_progress prog;
    tb_progress_begin(&prog, "MiB", 0);
    o.on_bytes = on_bytes;
    o.ctx = &prog;
    tb_synth_summary s;
    if (o.dry_run) tb_log_set_progress(0);
    double t0 = tb_now();
    int rc = tb_synth_model(config, out, &o, &s);
    tb_progress_end(&prog);
    if (rc) return tb_report_error();
    if (o.dry_run) {
        printf("parameters: %lld\ntensors: %d\nbytes: %llu\nfiles: %d\n", s.params, s.n_tensors,
               (unsigned long long)s.bytes, s.n_files);
        return 0;
    }
    if (s.tokenizer_note[0]) tb_warn("%s: wrote a byte-level tokenizer instead", s.tokenizer_note);
    tb_info("%lld parameters, %d tensors -> %s (%d file%s, %.1f MiB, tokenizer %s) in %.1f s", s.params,
                s.n_tensors, out, s.n_files, s.n_files == 1 ? "" : "s", s.bytes / 1048576.0,
            s.tokenizer_copied ? "copied" : "byte-level", tb_now() - t0);
    return 0;
}
