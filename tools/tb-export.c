/* tb-export - write a pruned model (.tbm) as a HuggingFace checkpoint:
 * dense with exact zeros (transformers loads it unchanged), or the
 * compressed-tensors 2:4 bitmask layout. The work is in formats/tb_export.c. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_export.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_tbm.h"

static const char description[] =
    "Write the pruned model MODEL.tbm (tb-merge) as an HF checkpoint directory:\n"
    "config.json (the source model's), the tokenizer and generation files, and\n"
    "model.safetensors (or model-0000i-of-0000n.safetensors shards with\n"
    "model.safetensors.index.json). DIR is built under a temporary name beside it\n"
    "and renamed at the end: a failed run leaves nothing.\n";

static const char *const format_names[] = {"dense", "compressed-tensors", "compressed-tensors-bitmask", NULL};
static const char *const dtype_names[] = {"source", "bf16", "f16", "f32", NULL};
static const int dtype_values[] = {-1, TB_BF16, TB_F16, TB_F32};

static int parse_size(const char *opt, const char *arg, void *value) { return tb_parse_size(opt, arg, value); }

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
    const char *out = NULL, *model = NULL, *base = NULL;
    int no_verify = 0, format = 0, dtype = 0, json = 0;
    const tb_option options[] = {
        TB_OPT_MODEL_OPTIONAL(&model, "the pruned model (.tbm); or give it as the argument"),
        TB_OPT_OUTPUT(&out, "DIR", TB_OPTF_REQUIRED | TB_OPTF_NO_DASH, "the checkpoint directory to create"),
        TB_OPT_CHOICE(0, "format", &format, format_names,
                      "dense (default): every tensor dense, pruned weights\n"
                      "unpacked with their channel permutation undone, pruned\n"
                      "entries exact zeros; transformers loads it as is\n"
                      "compressed-tensors: the weights that are 2:4 in the\n"
                      "model's column order in the sparse-24-bitmask layout of\n"
                      "compressed-tensors 0.14 (<module>.compressed, .bitmask,\n"
                      ".shape; config.json gains quantization_config), every\n"
                      "other tensor dense\n"
                      "compressed-tensors-bitmask: every pruned weight (any\n"
                      "pattern, permuted or not) as sparse-bitmask\n"
                      "(+ .row_offsets); read by compressed-tensors <= 0.14's\n"
                      "decompressor, not by transformers or vLLM"),
        TB_OPT_CHOICE(0, "dtype", &dtype, dtype_names,
                      "bf16, f16, f32: float tensors converted to T (config's\n"
                      "dtype follows); source (default): each its own dtype, exact"),
        TB_OPT_CALLBACK(0, "max-shard-size", &o.max_shard_bytes, "SIZE", parse_size,
                        "largest safetensors file before sharding (default 5GB;\n"
                        "units B KB MB GB KiB MiB GiB)"),
        TB_OPT_FILE(0, "base", &base, "DIR", "the base checkpoint of a partial .tbm (tb-merge --partial),\n"
"when outside the .tbm's directory (a path inside a file\n"
"is not trusted)"),
        TB_OPT_FORCE(&o.force, "replace DIR if it exists and is not empty"),
        TB_OPT_FLAG(0, "no-verify", &no_verify, "skip the SHA-256 check of the shards against the index"),
        TB_OPT_JSON(&json, "print a summary as one JSON object on stdout: tensors,\n"
                           "pruned, compressed, zeros (the fraction of all parameters),\n"
                           "files, bytes"),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-export", .usage = "tb-export MODEL.tbm -o DIR [options]", .description = description,
                            .options = options, .args = "MODEL.tbm", .min_args = 0, .max_args = 1,
                            .notes = "DIR existing and not empty is a usage error (1) unless --force; a shard\n"
                                     "whose checksum does not match is bad data (2); a missing shard is I/O (3).\n"};
    char **args;
    int n_args;
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, &args, &n_args);
    if (n_args == 1 && model) return tb_usage_error("give the model once: -m MODEL.tbm or MODEL.tbm");
    if (n_args == 1) model = args[0];
    if (!model) return tb_usage_error("missing MODEL.tbm (-m/--model or the argument)");
    if (!strcmp(model, "-")) return tb_usage_error("MODEL.tbm '-': a .tbm names its shards by path, so it cannot be a stream: give its file");
    if (base && tb_tbm_allow_base(base)) return tb_report_error();
    if (tb_check_input(model, TB_WANT_TBM, "a pruned model's .tbm index", "merge the shards with tb-merge first"))
        return tb_report_error();
    o.format = format == 1 ? TB_EXPORT_CT24 : format == 2 ? TB_EXPORT_CTBITMASK : TB_EXPORT_DENSE;
    o.dtype = dtype_values[dtype];
    int verify = !no_verify;

    tb_tbm t;
    if (tb_tbm_open(&t, model, verify)) return tb_report_error();
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
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "output", out);
        cJSON_AddNumberToObject(j, "tensors", s.n_tensors);
        cJSON_AddNumberToObject(j, "pruned", s.n_pruned);
        cJSON_AddNumberToObject(j, "compressed", s.n_compressed);
        cJSON_AddNumberToObject(j, "permutations_folded", s.n_folded);
        cJSON_AddNumberToObject(j, "zeros", s.global_sparsity);
        cJSON_AddNumberToObject(j, "files", s.n_files);
        cJSON_AddNumberToObject(j, "bytes", (double)s.bytes);
        if (tb_json_print(j)) return tb_report_error();
    }
    {
        char comp[96] = "";
        if (s.n_compressed) snprintf(comp, sizeof comp, ", %d as %s", s.n_compressed, s.sparsity_format);
        if (s.n_folded)
            snprintf(comp + strlen(comp), sizeof comp - strlen(comp), ", %d permutations folded into the layer before",
                     s.n_folded);
        tb_info("%d tensors (%d pruned%s), %.1f%% zeros -> %s (%d file%s, %.1f MiB)", s.n_tensors, s.n_pruned, comp,
                100 * s.global_sparsity, out, s.n_files, s.n_files == 1 ? "" : "s", s.bytes / 1048576.0);
    }
    return 0;
}
