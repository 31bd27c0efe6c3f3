/* tb-export - write a pruned model (.tbm) as a HuggingFace checkpoint:
 * dense with exact zeros (transformers loads it unchanged), or the
 * compressed-tensors 2:4 bitmask layout. The work is in formats/tb_export.c. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_export.h"
#include "tb_log.h"
#include "tb_tbm.h"

static const char usage[] =
    "usage: tb-export MODEL.tbm -o DIR [options]\n"
    "\n"
    "Write the pruned model MODEL.tbm (tb-merge) as an HF checkpoint directory:\n"
    "config.json (the source model's), the tokenizer and generation files, and\n"
    "model.safetensors (or model-0000i-of-0000n.safetensors shards with\n"
    "model.safetensors.index.json). DIR is built under a temporary name beside it\n"
    "and renamed at the end: a failed run leaves nothing.\n"
    "\n"
    "options:\n"
    "  -o, --output DIR        the checkpoint directory to create\n"
    "      --base DIR          the base checkpoint of a partial .tbm, when outside\n"
    "                          the .tbm's directory (a path in a file is not trusted)\n"
    "      --format F          dense (default): every tensor dense, pruned weights\n"
    "                          unpacked with their channel permutation undone, pruned\n"
    "                          entries exact zeros; transformers loads it as is\n"
    "                          compressed-tensors: the weights that are 2:4 in the\n"
    "                          model's column order in the sparse-24-bitmask layout of\n"
    "                          compressed-tensors 0.14 (<module>.compressed, .bitmask,\n"
    "                          .shape; config.json gains quantization_config), every\n"
    "                          other tensor dense\n"
    "                          compressed-tensors-bitmask: every pruned weight (any\n"
    "                          pattern, permuted or not) as sparse-bitmask\n"
    "                          (+ .row_offsets); read by compressed-tensors <= 0.14's\n"
    "                          decompressor, not by transformers or vLLM\n"
    "      --dtype T           bf16, f16, f32: float tensors converted to T (config's\n"
    "                          dtype follows); source (default): each its own dtype,\n"
    "                          exact\n"
    "      --max-shard-size S  largest safetensors file before sharding (default 5GB;\n"
    "                          units B KB MB GB KiB MiB GiB)\n"
    "      --force             replace DIR if it exists and is not empty\n"
    "      --no-verify         skip the SHA-256 check of the shards against the index\n"
    "      --quiet             no progress or summary\n"
    "      --progress          progress even when stderr is not a terminal\n"
    "  -h, --help              this help\n"
    "      --version           print the version\n"
    "\n"
    "exit status: 0 ok, 1 usage (also: DIR exists and is not empty), 2 bad input\n"
    "data (e.g. a shard whose checksum does not match), 3 I/O error (e.g. a\n"
    "missing shard, no space)\n";

static void on_tensor(void *ctx, const char *name, int done, int total)
{
    (void)name;
    (void)total;
    tb_progress_set(ctx, (uint64_t)done);
}

int main(int argc, char **argv)
{
    tb_log_init("tb-export");
    tb_export_opts o = {.format = TB_EXPORT_DENSE, .dtype = -1};
    const char *out = NULL;
    int verify = 1, quiet = 0;
    enum { OPT_FORMAT = 256, OPT_DTYPE, OPT_SHARD, OPT_FORCE, OPT_NO_VERIFY, OPT_QUIET, OPT_PROGRESS, OPT_VERSION, OPT_BASE };
    static const struct option longopts[] = {
        {"output", required_argument, 0, 'o'},        {"format", required_argument, 0, OPT_FORMAT},
        {"base", required_argument, 0, OPT_BASE},
        {"dtype", required_argument, 0, OPT_DTYPE},   {"max-shard-size", required_argument, 0, OPT_SHARD},
        {"force", no_argument, 0, OPT_FORCE},         {"no-verify", no_argument, 0, OPT_NO_VERIFY},
        {"quiet", no_argument, 0, OPT_QUIET},         {"progress", no_argument, 0, OPT_PROGRESS},
        {"help", no_argument, 0, 'h'},                {"version", no_argument, 0, OPT_VERSION},
        {0, 0, 0, 0},
    };
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "ho:", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case OPT_BASE:
            if (tb_tbm_allow_base(optarg)) return tb_report_error();
            break;
        case OPT_FORMAT:
            if (!strcmp(optarg, "dense")) o.format = TB_EXPORT_DENSE;
            else if (!strcmp(optarg, "compressed-tensors")) o.format = TB_EXPORT_CT24;
            else if (!strcmp(optarg, "compressed-tensors-bitmask")) o.format = TB_EXPORT_CTBITMASK;
            else return tb_usage_error("--format: '%s' is not dense, compressed-tensors or compressed-tensors-bitmask", optarg);
            break;
        case OPT_DTYPE:
            if (!strcmp(optarg, "bf16")) o.dtype = TB_BF16;
            else if (!strcmp(optarg, "f16")) o.dtype = TB_F16;
            else if (!strcmp(optarg, "f32")) o.dtype = TB_F32;
            else if (!strcmp(optarg, "source")) o.dtype = -1;
            else return tb_usage_error("--dtype: '%s' is not bf16, f16, f32 or source", optarg);
            break;
        case OPT_SHARD:
            if (tb_parse_size("--max-shard-size", optarg, &o.max_shard_bytes)) return tb_usage_error("%s", tb_errmsg());
            break;
        case OPT_FORCE: o.force = 1; break;
        case OPT_NO_VERIFY: verify = 0; break;
        case OPT_QUIET: quiet = 1; tb_log_set_quiet(1); tb_log_set_progress(0); break;
        case OPT_PROGRESS: tb_log_set_progress(1); break;
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: printf("tb-export %s\n", TB_VERSION); return 0;
        case '?':
            if (optopt) return tb_usage_error("option '-%c' needs a value or is unknown", optopt);
            return tb_usage_error("unknown option '%s'", argv[optind - 1]);
        default: return tb_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1) return tb_usage_error("expected one MODEL.tbm");
    if (!out) return tb_usage_error("-o DIR is required");

    tb_tbm t;
    if (tb_tbm_open(&t, argv[optind], verify)) return tb_report_error();
    tb_progress prog;
    tb_progress_begin(&prog, "tensors",
                      (uint64_t)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(t.json, "tensors")));
    o.on_tensor = on_tensor;
    o.ctx = &prog;
    tb_export_summary s;
    int rc = tb_export_model(&t, out, &o, &s);
    tb_progress_end(&prog);
    tb_tbm_close(&t);
    if (rc) return tb_report_error();
    if (s.why_not_24[0])
        tb_warn("%s: kept dense, as every pruned weight not 2:4 in the model's column order", s.why_not_24);
    if (!quiet) {
        char comp[96] = "";
        if (s.n_compressed) snprintf(comp, sizeof comp, ", %d as %s", s.n_compressed, s.sparsity_format);
        tb_info("%d tensors (%d pruned%s), %.1f%% zeros -> %s (%d file%s, %.1f MiB)", s.n_tensors, s.n_pruned, comp,
                100 * s.global_sparsity, out, s.n_files, s.n_files == 1 ? "" : "s", s.bytes / 1048576.0);
    }
    return 0;
}
