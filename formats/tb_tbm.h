/* tb_tbm.h - the .tbm model index (tb-merge output): one JSON file that turns
 * a directory of .tb shards into a runnable, exportable pruned model.
 *
 * Layout (built and validated with cJSON; all paths relative to the .tbm):
 *   {
 *     "format": "tensorbit.tbm", "format_version": 1,
 *     "tensorbit_version": "...",
 *     "config": { ...the source model's config.json, verbatim... },
 *     "files": {"tokenizer.json": {"sha256": "..."}, ...}   HF side files
 *                          copied beside the .tbm (tokenizer, its config,
 *                          generation config), so the directory also reads
 *                          as a model directory for the tokenizer
 *     "shards": [{"file": "layers-0-2.tb", "bytes": N, "sha256": "..."}, ...],
 *     "tensors": {
 *       "<name>": {"shard": i, "kind": "dense"|"nm"|"masked",
 *                  "dtype": "BF16", "shape": [rows, cols],
 *                  "pattern": "2:4" (nm, masked: "unstructured"),
 *                  "permuted": bool,
 *                  "parts": {"<part>": {"tensor": "<stored name>",
 *                                        "offsets": [begin, end]}}}
 *                  parts: dense {"data"}; nm {"values","indices"[,"perm"]};
 *                  masked {"data","mask"[,"perm"]}; offsets are absolute
 *                  byte offsets in the shard file
 *     },
 *     "base": "/abs/model/dir"   (partial indexes only: tensors in no shard
 *                          are read from this HF checkpoint)
 *     "recipe": {"stages": [{"kind": "...", "file": "...",
 *                            "metadata": {...every option it recorded...}}]}
 *   }
 * Every model tensor appears exactly once across shards; tb_tbm_open checks
 * that, each shard's size and SHA-256 (unless told not to), and that the
 * tensors the config implies are all present (or, for a partial index, that
 * its base exists).
 */
#ifndef TB_TBM_H
#define TB_TBM_H

#include "tb_config.h"
#include "tb_pack.h"

typedef struct {
    char *path;   /* the .tbm */
    char *dir;    /* its directory: shards and side files live here */
    tb_config cfg;
    tb_pack_file *shards;
    int n_shards;
    void *json;   /* cJSON root, owned */
    char *base;   /* partial index: the HF checkpoint for tensors in no shard */
} tb_tbm;

/* Open and validate a .tbm and every shard it names. verify: recompute each
 * shard's SHA-256 (TB_EDATA "shard 'x.tb': checksum mismatch ..."). */
int tb_tbm_open(tb_tbm *t, const char *path, int verify);
void tb_tbm_close(tb_tbm *t);

/* A partial index's "base" is a path written in a file that may come from
 * anywhere, so it is read only where the user allows: a directory inside the
 * index's own directory, or one named on the command line (tools pass their
 * --base DIR here; it may be called several times). */
int tb_tbm_allow_base(const char *dir);
/* Open t's base checkpoint into *c (t->base must be set): TB_EDATA "x.tbm:
 * base '/p' lies outside the index's directory ..." unless allowed as above. */
int tb_tbm_open_base(const tb_tbm *t, tb_ckpt *c);

/* A tensor stored as is (kind "dense"), or NULL. */
const st_tensor *tb_tbm_find_dense(const tb_tbm *t, const char *name);
/* A pruned weight (kind "nm" or "masked"), or NULL. */
const tb_packed *tb_tbm_find_packed(const tb_tbm *t, const char *name);

/* tb-merge: build the index of `n` shards for the model in model_dir (its
 * config.json and side files are copied beside out_path) and write it
 * atomically. A shard beside out_path is recorded by its name; one elsewhere
 * by its path relative to out_path's directory, or, with copy, copied beside
 * out_path first (so that the directory moves as one piece). Shards may be given in any order; a tensor in two shards or a
 * missing one is TB_EDATA naming it - unless partial, when the index records
 * model_dir as its base and tensors in no shard are read from there (a
 * partially pruned model, for sequential layer-wise pruning). */
int tb_tbm_merge(const char *out_path, const char *model_dir, const char *const *shard_paths, int n,
                 const char *command, int partial, int copy);

/* The recipe an output carries: the stage of each input (its kind, name and
 * metadata) and the stages the input carries itself, flattened, as the JSON
 * text of the metadata key "tensorbit.recipe" (caller frees; NULL when no
 * input is a tensorbit file or out of memory). So a stage fed through a pipe
 * ("-", no file to follow later) stays in the .tbm's recipe. */
char *tb_recipe_of_inputs(const st_file *const *inputs, int n);

/* Is `path` a .tbm (by content: a JSON object with "format": "tensorbit.tbm")? */
int tb_is_tbm(const char *path);

#endif
