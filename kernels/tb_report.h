/* tb_report.h - what a pruned model (.tb shards) holds, per pruned weight:
 * sparsity, pattern conformity and, when the recipe's source model and Gram
 * statistics are at hand, the relative output error; and an SVG plot of it per
 * layer. Used by tb-inspect; kept here so the tool stays a thin front. It
 * opens the recipe's files itself, so it lives beside the engine, not among
 * the CPU kernels (which take arrays). */
#ifndef TB_REPORT_H
#define TB_REPORT_H

#include <stdint.h>

#include "tb_model.h"
#include "tb_pack.h"

typedef struct {
    char name[160];
    int layer;              /* decoder layer, -1 outside the layers */
    const tb_packed *p;     /* points into the shard */
    int64_t numel, zeros;
    double sparsity;        /* zeros / numel */
    double conform;         /* fraction of groups within the pattern, -1: no groups */
    double rel_err;         /* ||(W - W_hat) X|| / ||W X||, -1: unknown */
} tb_pruned_row;

/* One row per pruned weight of the shards, in shard then name order
 * (*rows allocated, caller frees). nm_n:nm_m overrides each weight's own
 * pattern for the conformity check (0:0 keeps it). with_error: compute
 * rel_err from the shard's "model" and "stats" metadata when both files exist.
 * progress(ctx, done, total) is optional. */
int tb_report_pruned(const tb_pack_file *shards, int n_shards, int nm_n, int nm_m, int with_error,
                     tb_progress_fn progress, void *ctx, tb_pruned_row **rows, int *n_rows);

/* Bars of per-layer sparsity and a line of the mean relative output error
 * (its axis scaled to the data), with axis titles, a legend and a subtitle
 * naming the model and the pattern; written atomically to path. */
int tb_report_plot_svg(const char *path, const tb_pruned_row *rows, int n, const char *model);

#endif
