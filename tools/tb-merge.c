/* tb-merge - join .tb shards into a .tbm model index (see tb_tbm.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_tbm.h"

static const char description[] =
    "Build the JSON index of a pruned model: the source model's config, its\n"
    "tokenizer files (copied beside OUT.tbm), every shard with its size and\n"
    "SHA-256, every tensor with its shard, kind (dense, nm, masked) and byte\n"
    "offsets, and the recipe: the metadata (every option) of each stage whose\n"
    "file the shards name (tb-pack, tb-nm, tb-score, tb-fisher). Shards hold each\n"
    "model tensor exactly once and together every tensor the config implies; a\n"
    "shard outside OUT.tbm's directory is recorded by its relative path, or\n"
    "copied beside it with --copy.\n";

int main(int argc, char **argv)
{
    tb_log_init("tb-merge");
    const char *model = NULL, *out = NULL;
    int partial = 0, copy = 0;
    const tb_option options[] = {
        TB_OPT_MODEL(&model, "the HF checkpoint the shards were made from"),
        TB_OPT_OUTPUT(&out, "FILE", TB_OPTF_REQUIRED | TB_OPTF_NO_DASH, "the .tbm (written atomically)"),
        TB_OPT_FLAG(0, "partial", &partial, "allow tensors in no shard: they are read from MODEL\n"
                                            "(recorded as the index's base), for a partially pruned\n"
                                            "model in sequential layer-wise pruning"),
        TB_OPT_FLAG(0, "copy", &copy, "copy shards from other directories beside OUT.tbm (else\n"
                                      "they are recorded by their path relative to it)"),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-merge", .usage = "tb-merge -m MODEL -o OUT.tbm SHARD.tb...",
                            .description = description, .options = options, .args = "SHARD.tb...",
                            .min_args = 1, .max_args = -1};
    char **shards;
    int n_shards;
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, &shards, &n_shards);
    for (int i = 0; i < n_shards; i++)
        if (!strcmp(shards[i], "-"))
            return tb_usage_error("SHARD '-': a shard is indexed by its path, so it cannot be a stream: "
                                  "write it to a file beside OUT.tbm first");
    for (int i = 0; i < n_shards; i++)
        if (tb_check_input(shards[i], TB_WANT_SAFETENSORS, "a .tb shard (safetensors)", "make shards with tb-pack"))
            return tb_report_error();
    char *cmdline = tb_join_args(argc, argv);
    if (!cmdline) return tb_report_error();
    int rc = tb_tbm_merge(out, model, (const char *const *)shards, n_shards, cmdline, partial, copy);
    free(cmdline);
    if (rc) return tb_report_error();
    tb_info("%d shard%s -> %s", n_shards, n_shards == 1 ? "" : "s", out);
    return 0;
}
