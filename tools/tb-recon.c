/* tb-recon - train a pruned layer's kept weights to reproduce the dense
 * layer's output on the pruned model's own hidden states (tb_recon.h). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_error.h"
#include "tb_fisher.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_model.h"
#include "tb_nm.h"
#include "tb_opts.h"
#include "tb_tbm.h"
#include "tb_pack.h"
#include "tb_block_recon.h"
#include "tb_recon.h"
#include "tb_threads.h"
#include "tb_tokens.h"

static const char description[] =
    "Layer-wise reconstruction: train the kept weights of decoder layer L (the\n"
    "pruned weights of LAYER.tb, a tb-pack --layers L shard) with Adam so that\n"
    "the layer, fed the pruned model's own hidden states (STREAM, the stream\n"
    "entering layer L from tb-fisher --acts-out; for layer 0 the token windows),\n"
    "reproduces what the dense layer of MODEL outputs for the same states (mean\n"
    "squared error). Masks stay fixed and pruned weights exact zeros. Writes\n"
    "LAYER.tb again with the trained values (same masks, permutations, other\n"
    "tensors copied). After arXiv 2510.14444, 'A Free Lunch in LLM Compression'.\n";

static const char notes[] =
    "memory: the model's mapping, inputs and targets of every window (2 x 4 x\n"
    "windows x seq_len x hidden bytes), one window's activations and gradients,\n"
    "the largest linear's gradient, and per weight of the layer 6 bytes (the\n"
    "f32 weight trained in place, two one-byte keep masks) + 8 per kept weight\n"
    "(2 Adam moments; CUDA: 8 per weight on the GPU); Mistral-7B's shape: 2.4 GiB.\n";

typedef struct {
    const char *model, *shard, *tokens, *acts_in, *output;
    int layer, threads, json;
    long max_windows;
    tb_recon_opts ro;
    tb_backend_opts dev;
    tb_backend *be;
    tb_block_opts bo; /* --unit, --learn-masks: tb_recon_block */
} options;

static void on_step(void *ctx, int64_t done, int64_t total)
{
    (void)total;
    tb_progress_set(ctx, (uint64_t)done);
}

/* the windows of layer L: inputs (the saved stream, uploaded from its mapping
 * when the windows fit the device; for layer 0 the token embeddings) */
static int load_inputs(const options *o, tb_model *m, int want_attn, tb_recon_windows *ws)
{
    const int D = m->cfg.hidden_size;
    int rc;
    if (o->acts_in) {
        st_file f;
        const st_tensor *h;
        if ((rc = tb_stream_open(&f, o->acts_in, D, o->layer, &h))) return rc;
        int64_t windows = h->shape[0];
        if (o->max_windows > 0 && o->max_windows < windows) windows = o->max_windows;
        rc = tb_recon_windows_inputs(ws, o->be, o->threads, h->data, windows, (int)h->shape[1], D, want_attn);
        st_close(&f);
        return rc;
    }
    if (o->layer != 0) return tb_fail(TB_EUSAGE, "layer %d needs --acts-in (the stream entering it)", o->layer);
    tb_tokens tk;
    if ((rc = tb_tokens_load(&tk, o->tokens, m->cfg.vocab_size, m->cfg.max_position_embeddings))) return rc;
    int64_t windows = o->max_windows > 0 && o->max_windows < tk.windows ? o->max_windows : tk.windows;
    size_t nd = (size_t)tk.seq_len * D;
    float *emb = tb_malloc((size_t)windows * nd * sizeof(float));
    if (!emb) rc = TB_EIO;
    for (int64_t w = 0; !rc && w < windows; w++)
        for (int t = 0; t < tk.seq_len; t++)
            tb_linear_row(&m->embed, tk.ids[w * tk.seq_len + t], emb + (size_t)w * nd + (size_t)t * D);
    if (!rc) rc = tb_recon_windows_inputs(ws, o->be, o->threads, emb, windows, tk.seq_len, D, want_attn);
    free(emb);
    tb_tokens_free(&tk);
    return rc;
}

/* The weight of the shard as trained: dense f32 in model column order, and
 * its trainable entries (keep != 0): for N:M every slot of the format,
 * padding included; else the nonzeros. */
static int load_trainable(const tb_pack_file *p, const tb_packed *pk, float **w, uint8_t **keep)
{
    int64_t n;
    if (!(*w = tb_pack_tensor_f32(p, pk->name, 1, &n)) || !(*keep = tb_malloc((size_t)n))) return TB_EIO;
    if (pk->kind == TB_PACKED_NM) {
        int32_t *perm = NULL; /* an aligned copy: the mapping's need not be */
        if (pk->perm && !(perm = tb_malloc((size_t)pk->cols * sizeof *perm))) return TB_EIO;
        if (perm) memcpy(perm, pk->perm->data, (size_t)pk->cols * sizeof *perm);
        tb_nm_keep(pk->indices->data, pk->rows, pk->cols, pk->n, pk->m, perm, *keep);
        free(perm);
    } else {
        for (int64_t i = 0; i < n; i++) (*keep)[i] = (*w)[i] != 0.0f;
    }
    return TB_OK;
}

/* Write the shard again: trained values under the original keep sets (the
 * nonzeros of the packed weight, in stored column order), the rest copied. */
static int write_shard(const options *o, const tb_pack_file *p, float *const w[TB_LIN_PER_LAYER],
                       const tb_packed *const pk[TB_LIN_PER_LAYER], const uint8_t *const keep[TB_LIN_PER_LAYER],
                       const tb_recon_report *rep, int kept_start, const char *cmdline)
{
    tb_pack_writer *pw = tb_pack_writer_new();
    if (!pw) return TB_EIO;
    int rc = TB_OK;
    static const char *const own[] = {"tensorbit.kind", "format_version", "tensorbit.tensors", "command",
                                      "tensorbit.recipe"};
    for (int i = 0; i < p->f.n_meta && !rc; i++) {
        int skip = 0;
        for (size_t k = 0; k < sizeof own / sizeof own[0]; k++) skip |= !strcmp(p->f.meta_keys[i], own[k]);
        if (!skip) rc = tb_pack_writer_meta(pw, p->f.meta_keys[i], p->f.meta_vals[i]);
    }
    char num[64];
    if (!rc) rc = tb_pack_writer_meta(pw, "command", cmdline);
    if (!rc) rc = tb_pack_writer_meta(pw, "packed_from", o->shard);
    char *recipe = tb_recipe_of_inputs((const st_file *const[1]){&p->f}, 1);
    if (!rc && recipe) rc = tb_pack_writer_meta(pw, "tensorbit.recipe", recipe);
    free(recipe);
    snprintf(num, sizeof num, "%d", o->ro.steps);
    if (!rc) rc = tb_pack_writer_meta(pw, "recon_steps", num);
    if (o->ro.lr_rel > 0) snprintf(num, sizeof num, "%g x RMS / fan-in", o->ro.lr_rel);
    else snprintf(num, sizeof num, "%g", o->ro.lr);
    if (!rc) rc = tb_pack_writer_meta(pw, "recon_lr", num);
    snprintf(num, sizeof num, "%.6g -> %.6g (target power %.6g)", rep->mse_before, rep->mse_after, rep->target_power);
    if (!rc) rc = tb_pack_writer_meta(pw, "recon_mse", num);
    if (!rc && o->bo.unit != TB_UNIT_LAYER) rc = tb_pack_writer_meta(pw, "recon_unit", "blocks");
    if (!rc && kept_start) rc = tb_pack_writer_meta(pw, "recon_kept_start", "training raised the error: weights as given");
    if (!rc && o->bo.mask.every > 0) {
        snprintf(num, sizeof num, "every %d, until %g, decay %g", o->bo.mask.every, o->bo.mask.until, o->bo.mask.decay);
        rc = tb_pack_writer_meta(pw, "recon_learned_masks", num);
    }

    /* declare: the layer's pruned weights, then every stored tensor that is not a part of them */
    char comp[7][96];
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
        snprintf(comp[k], sizeof comp[k], "%s+recon", pk[k]->compensation ? pk[k]->compensation : "none");
        rc = tb_pack_declare(pw, pk[k]->name, pk[k]->dtype, pk[k]->rows, pk[k]->cols, pk[k]->n, pk[k]->m,
                             pk[k]->perm != NULL, comp[k], o->bo.mask.every > 0 ? "learned" : "given");
    }
    for (int i = 0; i < p->f.n_tensors && !rc; i++)
        if (!tb_pack_is_part(p, &p->f.tensors[i])) rc = tb_pack_declare_copy(pw, p->f.tensors[i].name, p->f.tensors[i].dtype, p->f.tensors[i].ndim,
                                                p->f.tensors[i].shape);
    tb_outfile out;
    if (!rc) rc = tb_out_open(&out, o->output);
    if (rc) {
        tb_pack_writer_free(pw);
        return rc;
    }
    rc = tb_pack_writer_begin(pw, out.fp, o->output);
    /* pruned entries of w are exact zeros: the kept set is the keep bits */
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) rc = tb_pack_write_model_order(pw, pk[k], w[k], keep[k]);
    for (int i = 0; i < p->f.n_tensors && !rc; i++)
        if (!tb_pack_is_part(p, &p->f.tensors[i])) rc = tb_pack_write_copy(pw, p->f.tensors[i].data, p->f.tensors[i].nbytes);
    if (!rc) rc = tb_pack_writer_finish(pw);
    if (!rc) rc = tb_out_commit(&out);
    else tb_out_abort(&out);
    tb_pack_writer_free(pw);
    return rc;
}

static int run(options *o, const char *cmdline)
{
    /* where a call's time goes (--json, -v): at 7B the steps are a minority */
    double t_start = tb_now(), t_inputs = t_start, t_targets = t_start, t_weights = t_start, t_trained = t_start;
    tb_model m;
    /* asked first: a pruned model is the wrong kind of -m whatever it holds */
    if (tb_is_tbm(o->model)) return tb_fail(TB_EUSAGE, "%s: -m takes the dense checkpoint, not a pruned model", o->model);
    int rc = tb_model_open(&m, o->model);
    if (rc) return rc;
    if (m.is_tbm) {
        tb_model_close(&m);
        return tb_fail(TB_EUSAGE, "%s: -m takes the dense checkpoint, not a pruned model", o->model);
    }
    if (o->layer < 0 || o->layer >= m.cfg.n_layers) {
        tb_model_close(&m);
        return tb_fail(TB_EUSAGE, "--layer %d outside the model's %d layers", o->layer, m.cfg.n_layers);
    }
    tb_pack_file p;
    if ((rc = tb_pack_open(&p, o->shard))) {
        tb_model_close(&m);
        return rc;
    }
    tb_recon_windows ws = {0};
    float *w[TB_LIN_PER_LAYER] = {0}, *dense[TB_LIN_PER_LAYER] = {0};
    const int blockwise = o->bo.unit != TB_UNIT_LAYER || o->bo.mask.every > 0;
    uint8_t *keep[TB_LIN_PER_LAYER] = {0};
    const tb_packed *pk[TB_LIN_PER_LAYER] = {0};
    /* every pruned weight of the shard must be one of layer L's seven */
    for (int i = 0; i < p.n_packed && !rc; i++) {
        if (tb_layer_of(p.packed[i].name) != o->layer)
            rc = tb_fail(TB_EDATA, "%s: pruned tensor '%s' is not in layer %d", o->shard, p.packed[i].name, o->layer);
    }
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
        char name[160];
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", o->layer, tb_lin_name(k));
        if (!(pk[k] = tb_pack_find(&p, name))) rc = tb_fail(TB_EDATA, "%s: no pruned '%s'", o->shard, name);
    }
    tb_outfile probe; /* refuse an unwritable output before the work */
    if (!rc && !(rc = tb_out_open(&probe, o->output))) tb_out_abort(&probe);
    if (!rc) rc = load_inputs(o, &m, o->bo.unit == TB_UNIT_BLOCKS, &ws);
    t_inputs = tb_now();
    if (!rc) rc = tb_recon_windows_targets(&ws, &m, o->layer, o->be, o->threads);
    t_targets = tb_now();
    if (!rc && o->bo.mask.every > 0) { /* learned masks: pruned entries start at the dense weights */
        for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
            if (pk[k]->n < 1 || pk[k]->perm)
                rc = tb_fail(TB_EUSAGE, "%s: --learn-masks needs N:M weights without permutation ('%s' is %s)", o->shard,
                             pk[k]->name, pk[k]->perm ? "permuted" : "unstructured");
            else if (k > 0 && (pk[k]->n != pk[0]->n || pk[k]->m != pk[0]->m))
                rc = tb_fail(TB_EUSAGE, "%s: --learn-masks needs one N:M pattern for the layer", o->shard);
            const tb_linear *L = &m.layers[o->layer].lin[k];
            if (!rc && !(dense[k] = tb_malloc((size_t)L->rows * L->cols * sizeof(float)))) rc = TB_EIO;
            if (!rc) tb_linear_rows(L, 0, L->rows, dense[k], NULL);
        }
        o->bo.n = pk[0]->n;
        o->bo.m = pk[0]->m;
    }
    for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
        /* trained in place: the packed values are read again from the shard if needed */
        if ((rc = load_trainable(&p, pk[k], &w[k], &keep[k]))) break;
        tb_linear *L = &m.layers[o->layer].lin[k];
        L->format = TB_LINEAR_DENSE;
        L->dtype = TB_F32;
        L->data = w[k];
        L->perm = NULL;
        L->indices = NULL;
    }
    tb_recon_report rep = {0};
    tb_block_report brep = {0};
    t_weights = tb_now();
    if (!rc && blockwise) {
        tb_progress prog;
        char label[32];
        snprintf(label, sizeof label, "layer %d steps", o->layer);
        o->bo.r = o->ro;
        o->bo.r.n_threads = o->threads;
        o->bo.r.backend = o->be;
        tb_progress_begin(&prog, label, (uint64_t)o->ro.steps * (o->bo.unit == TB_UNIT_BLOCKS ? 2 : 1));
        rc = tb_recon_block_windows(&m, o->layer, w, keep, (const float *const *)dense, &ws, &o->bo, on_step, &prog,
                                    &brep);
        tb_progress_end(&prog);
        rep = brep.r;
        if (!rc && o->bo.unit == TB_UNIT_BLOCKS)
            tb_info("layer %d: attention block MSE %.4g -> %.4g", o->layer, brep.attn_mse_before, brep.attn_mse_after);
        if (!rc && o->bo.mask.every > 0)
            tb_info("layer %d: learned masks: %.2f%% of the keep bits changed", o->layer,
                    100.0 * (double)brep.mask_changed / (double)brep.mask_total);
    } else if (!rc) {
        tb_progress prog;
        char label[32];
        snprintf(label, sizeof label, "layer %d steps", o->layer);
        tb_progress_begin(&prog, label, (uint64_t)o->ro.steps);
        o->ro.n_threads = o->threads;
        o->ro.backend = o->be;
        rc = tb_recon_layer_windows(&m, o->layer, w, (const uint8_t *const *)keep, &ws, &o->ro, on_step, &prog, &rep);
        tb_progress_end(&prog);
    }
    t_trained = tb_now();
    /* Never worse than the start: training that raised the layer's output
     * error (a learning rate too large for the weights' scale: Adam moves
     * every weight by ~lr a step whatever its size) leaves the shard's own
     * weights and masks, and says so. */
    int kept_start = 0;
    if (!rc && !(rep.mse_after < rep.mse_before)) {
        tb_warn("layer %d: training raised the output error (MSE %.4g -> %.4g): the shard's own weights are kept "
                "(a smaller --lr-rel or --lr may train it)", o->layer, rep.mse_before, rep.mse_after);
        kept_start = 1;
        for (int k = 0; k < TB_LIN_PER_LAYER && !rc; k++) {
            free(w[k]);
            free(keep[k]);
            w[k] = NULL;
            keep[k] = NULL;
            rc = load_trainable(&p, pk[k], &w[k], &keep[k]);
        }
    }
    if (!rc) rc = write_shard(o, &p, w, pk, (const uint8_t *const *)keep, &rep, kept_start, cmdline);
    const double t_written = tb_now();
    if (!rc && o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "layer", o->layer);
        cJSON_AddNumberToObject(j, "mse_before", rep.mse_before);
        cJSON_AddNumberToObject(j, "mse_after", rep.mse_after);
        cJSON_AddNumberToObject(j, "error_kept", rep.mse_before > 0 ? rep.mse_after / rep.mse_before : 0.0);
        cJSON_AddBoolToObject(j, "kept_start", kept_start);
        cJSON_AddNumberToObject(j, "target_power", rep.target_power);
        cJSON_AddNumberToObject(j, "steps", o->ro.steps);
        cJSON_AddNumberToObject(j, "seconds", rep.seconds);
        cJSON_AddNumberToObject(j, "seconds_inputs", t_inputs - t_start);
        cJSON_AddNumberToObject(j, "seconds_targets", t_targets - t_inputs);
        cJSON_AddNumberToObject(j, "seconds_weights", t_weights - t_targets);
        cJSON_AddNumberToObject(j, "seconds_training", t_trained - t_weights);
        cJSON_AddNumberToObject(j, "seconds_write", t_written - t_trained);
        cJSON_AddNumberToObject(j, "seconds_total", t_written - t_start);
        rc = tb_json_print(j);
    }
    if (!rc)
        tb_info("layer %d: output MSE %.4g -> %.4g (%.1f%% of the error kept; layer's own signal %.4g), %d steps in %.1f s -> %s",
                o->layer, rep.mse_before, rep.mse_after, 100.0 * rep.mse_after / rep.mse_before, rep.target_power,
                o->ro.steps, rep.seconds, o->output);
    if (!rc) tb_info("layer %d trained on %s", o->layer, o->be->desc);
    if (!rc)
        tb_info("layer %d: %.1f s: inputs %.1f s, dense targets %.1f s, weights %.1f s, training %.1f s, write %.1f s",
                o->layer, t_written - t_start, t_inputs - t_start, t_targets - t_inputs, t_weights - t_targets,
                t_trained - t_weights, t_written - t_trained);
    for (int k = 0; k < TB_LIN_PER_LAYER; k++) {
        free(w[k]);
        free(keep[k]);
        free(dense[k]);
    }
    tb_recon_windows_free(&ws);
    tb_pack_close(&p);
    tb_model_close(&m);
    return rc;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-recon");
    options o = {.layer = -1, .threads = tb_default_threads(), .dev = {.device = TB_DEVICE_AUTO}};
    tb_recon_defaults(&o.ro);
    tb_block_defaults(&o.bo);
    static const char *const unit_names[] = {"layer", "blocks", NULL};
    int unit = TB_UNIT_LAYER;
    long seed = 0;
    const tb_option table[] = {
        TB_OPT_MODEL(&o.model, "the dense HF checkpoint the shard was pruned from"),
        {.type = TB_OPTT_STRING, .long_name = "shard", .value = &o.shard, .argh = "FILE",
         .help = "the layer's .tb shard (tb-pack)", .flags = TB_OPTF_FILE | TB_OPTF_REQUIRED | TB_OPTF_NO_DASH,
         .want = TB_WANT_SAFETENSORS, .what = "a .tb shard (safetensors)", .fix = "make it with tb-pack --layers L"},
        {.type = TB_OPTT_INT, .long_name = "layer", .value = &o.layer, .argh = "L", .help = "the decoder layer",
         .min = 0, .max = 100000, .flags = TB_OPTF_REQUIRED},
        TB_OPT_TOKENS(&o.tokens, "make them with tb-tokenize --windows", "token windows (layer 0)"),
        TB_OPT_INPUT(0, "acts-in", &o.acts_in, "FILE", TB_WANT_SAFETENSORS, "a layer stream (safetensors)",
                     "make it with tb-fisher --acts-out", "the stream entering layer L (layers > 0)"),
        TB_OPT_OUTPUT(&o.output, "FILE", TB_OPTF_REQUIRED, "the reconstructed .tb shard (written atomically)"),
        TB_OPT_INT(0, "steps", &o.ro.steps, "N", 0, 10000000, "Adam steps, one window each (default 300)"),
        TB_OPT_DOUBLE(0, "lr", &o.ro.lr, "X", 0, 1, "one peak learning rate for every weight, cosine decay\n"
                                                    "(default: --lr-rel's rule)"),
        TB_OPT_DOUBLE(0, "lr-rel", &o.ro.lr_rel, "C", 0, 1e6,
                      "each weight's peak rate is C x the RMS of its kept\n"
                      "entries / its fan-in (cols): a rate that follows the\n"
                      "weights' scale and width (default C 5: 5.8e-4 to\n"
                      "2.8e-3 for tiny-llama-6m's layer 0, ~3e-5 for a\n"
                      "4096-wide 2:4 layer of RMS 0.02; see tb-recon(1))"),
        TB_OPT_LONG(0, "seed", &seed, "S", 0, 9.3e18, "window order (default 0)"),
        TB_OPT_LONG(0, "max-windows", &o.max_windows, "N", 1, 1L << 40, "use the first N windows"),
        TB_OPT_CHOICE(0, "unit", &unit, unit_names,
                      "the region matched: layer (default; q..down against the\n"
                      "dense layer's output) or blocks (the attention block\n"
                      "against the dense block's output, then the MLP block\n"
                      "against the dense layer's output; --steps each)"),
        TB_OPT_INT(0, "learn-masks", &o.bo.mask.every, "K", 0, 1000000,
                   "learn the N:M masks with the weights (SR-STE): every K\n"
                   "steps re-select each group's N by |W~| * ||x_c|| from\n"
                   "the straight-through latent weights (pruned entries\n"
                   "start at the dense weights); 0: masks fixed (default)"),
        TB_OPT_DOUBLE(0, "mask-until", &o.bo.mask.until, "F", 0, 1, "fraction of each unit's steps during which masks may\n"
                                                                   "change (default 0.5); fixed for the rest"),
        TB_OPT_DOUBLE(0, "mask-decay", &o.bo.mask.decay, "D", 0, 1e6, "SR-STE decay of the pruned latents, W~ -= lr*D*W~ per\n"
                                                                     "step (default 20; 0 is plain straight-through)"),
        TB_OPT_JSON(&o.json, "print the result as one JSON object on stdout: layer,\n"
                             "mse_before, mse_after, error_kept, kept_start (training raised\n"
                             "the error: the shard's own weights were written), target_power,\n"
                             "steps, seconds\n"
                             "(training and evaluation), and seconds_inputs, _targets,\n"
                             "_weights, _training, _write, _total (where the call's time went)"),
        TB_OPT_THREADS(&o.threads),
        TB_OPT_DEVICE(&o.dev),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {
        .name = "tb-recon",
        .usage = "tb-recon -m MODEL --shard LAYER.tb --layer L (-t TOKENS | --acts-in STREAM) -o OUT.tb [options]",
        .description = description, .options = table, .notes = notes};
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, NULL, NULL);
    if (tb_opt_given(&seed)) o.ro.seed = (uint64_t)seed;
    if (tb_opt_given(&o.ro.lr) && tb_opt_given(&o.ro.lr_rel))
        return tb_usage_error("give at most one of --lr X (one rate) and --lr-rel C (a rate per weight)");
    if (!tb_opt_given(&o.ro.lr) && !tb_opt_given(&o.ro.lr_rel)) o.ro.lr_rel = TB_RECON_LR_REL_DEFAULT;
    o.bo.unit = (tb_recon_unit)unit;
    if (!o.tokens == !o.acts_in) return tb_usage_error("give exactly one of -t TOKENS (layer 0) and --acts-in STREAM");
    char *cmdline = tb_join_args(argc, argv);
    if (!cmdline) return tb_report_error();
    tb_backend be;
    o.dev.n_threads = o.threads;
    int rc = tb_backend_open(&be, &o.dev);
    if (!rc) {
        o.be = &be;
        rc = run(&o, cmdline);
        tb_backend_close(&be);
    }
    free(cmdline);
    return rc ? tb_report_error() : 0;
}
