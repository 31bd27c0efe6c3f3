/* tb-merge - join .tb shards into a .tbm model index (see tb_tbm.h). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_tbm.h"

static const char usage[] =
    "usage: tb-merge -m MODEL_DIR -o OUT.tbm SHARD.tb...\n"
    "\n"
    "Build the JSON index of a pruned model: the source model's config, its\n"
    "tokenizer files (copied beside OUT.tbm), every shard with its size and\n"
    "SHA-256, every tensor with its shard, kind (dense, nm, masked) and byte\n"
    "offsets, and the recipe: the metadata (every option) of each stage whose\n"
    "file the shards name (tb-pack, tb-nm, tb-score, tb-fisher). Shards must be in\n"
    "OUT.tbm's directory, hold each model tensor exactly once, and together hold\n"
    "every tensor the config implies.\n"
    "\n"
    "options:\n"
    "  -m, --model DIR   the HF checkpoint the shards were made from\n"
    "  -o, --output FILE the .tbm (written atomically)\n"
    "  --partial         allow tensors in no shard: they are read from MODEL_DIR\n"
    "                    (recorded as the index's base), for a partially pruned\n"
    "                    model in sequential layer-wise pruning\n"
    "  --quiet           no messages\n"
    "  -h, --help, --version\n"
    "\n"
    "exit status: 0 ok, 1 usage, 2 bad input data, 3 I/O error\n";

int main(int argc, char **argv)
{
    tb_log_init("tb-merge");
    const char *model = NULL, *out = NULL;
    int partial = 0;
    enum { OPT_QUIET = 256, OPT_VERSION, OPT_PARTIAL };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'}, {"output", required_argument, 0, 'o'},
        {"quiet", no_argument, 0, OPT_QUIET}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, OPT_VERSION}, {"partial", no_argument, 0, OPT_PARTIAL}, {0, 0, 0, 0},
    };
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "m:o:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm': model = optarg; break;
        case 'o': out = optarg; break;
        case OPT_QUIET: tb_log_set_quiet(1); break;
        case OPT_PARTIAL: partial = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: printf("tb-merge %s\n", TB_VERSION); return 0;
        default: return tb_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (!model || !out) return tb_usage_error("-m MODEL_DIR and -o OUT.tbm are required");
    if (optind >= argc) return tb_usage_error("no shards given");
    char *cmdline = tb_join_args(argc, argv);
    if (!cmdline) return tb_report_error();
    int rc = tb_tbm_merge(out, model, (const char *const *)(argv + optind), argc - optind, cmdline, partial);
    free(cmdline);
    if (rc) return tb_report_error();
    tb_info("%d shard%s -> %s", argc - optind, argc - optind == 1 ? "" : "s", out);
    return 0;
}
