/* tb-distill - masked distillation of a whole pruned model from the dense
 * model (tb_distill.h). */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_distill.h"
#include "tb_error.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_tbm.h"
#include "tb_threads.h"

static const char description[] =
    "Masked distillation: train the kept weights of every decoder linear of the\n"
    "pruned model so that its next-token distributions match the dense model's\n"
    "on the calibration windows: Adam on the mean over positions of\n"
    "KL(softmax(dense logits) || softmax(pruned logits)) (Hinton et al. 2015,\n"
    "temperature 1). Masks stay fixed (or, with --learn-masks, re-select during\n"
    "the first --mask-until of the steps, then stay fixed) and pruned weights\n"
    "exact zeros;\n"
    "embeddings, norms and lm_head are not trained (bit-identical to the input).\n"
    "Writes OUT.tbm and one shard per input shard beside it (OUT.<shard>.tb).\n";

static const char notes[] =
    "Progress shows the step, the running KL of the last steps and the ETA;\n"
    "every checkpoint also logs a line. An interrupted run loses at most\n"
    "--checkpoint-every steps: rerun with --resume.\n"
    "--device cuda trains on the GPU (bf16 arithmetic with f32 master weights by\n"
    "default, --precision f32 for f32 throughout); the CPU computes in f32.\n"
    "memory: per decoder weight the trainable copy, a keep byte and 2 Adam\n"
    "moments (the CPU keeps moments of the kept entries only), with --batch > 1\n"
    "a gradient sum; the teacher's weights (on a GPU streamed layer by layer\n"
    "when they do not fit beside the student), one window's activations of\n"
    "both models, the student's activation gradients, and the teacher logits\n"
    "cache (on a GPU at most a quarter of its free memory).\n";

#define MAX_EXTRA 8
typedef struct {
    const char *model, *teacher, *tokens, *output, *checkpoint;
    const char *extra[MAX_EXTRA];
    int n_extra;
    int threads, every, resume, eval_windows, json;
    long max_windows;
    tb_distill_opts o;
    tb_backend_opts dev;
    tb_backend *be;
} options;

static int add_extra(const char *opt, const char *arg, void *value)
{
    options *o = value;
    if (o->n_extra == MAX_EXTRA) return tb_fail(TB_EUSAGE, "%s: at most %d files", opt, MAX_EXTRA);
    if (!tb_file_exists(arg)) return tb_fail(TB_EIO, "%s: no such file", arg);
    o->extra[o->n_extra++] = arg;
    return TB_OK;
}

static int run(options *o, const char *cmdline)
{
    tb_model s, t;
    int rc = tb_model_open(&s, o->model);
    if (rc) return rc;
    if (!s.is_tbm) {
        tb_model_close(&s);
        return tb_fail(TB_EUSAGE, "%s: -m takes the pruned model's .tbm", o->model);
    }
    if (s.tbm.base) {
        tb_model_close(&s);
        return tb_fail(TB_EUSAGE, "%s: the student must be a complete pruned model (.tbm without a base)", o->model);
    }
    if ((rc = tb_model_open(&t, o->teacher))) {
        tb_model_close(&s);
        return rc;
    }
    if (t.is_tbm) rc = tb_fail(TB_EUSAGE, "%s: --teacher takes the dense HF checkpoint", o->teacher);
    tb_tokens tk = {0};
    if (!rc) rc = tb_tokens_load(&tk, o->tokens, s.cfg.vocab_size, s.cfg.max_position_embeddings);
    if (!rc && o->max_windows > 0 && o->max_windows < tk.windows) tk.windows = o->max_windows;
    int64_t calib_windows = tk.windows;
    for (int i = 0; !rc && i < o->n_extra; i++) {
        tb_tokens more;
        if (!(rc = tb_tokens_load(&more, o->extra[i], s.cfg.vocab_size, s.cfg.max_position_embeddings))) {
            rc = tb_tokens_append(&tk, &more, o->extra[i]);
            tb_tokens_free(&more);
        }
    }
    if (!rc && o->n_extra)
        tb_info("%lld windows: %lld of -t, %lld of --extra-tokens", (long long)tk.windows, (long long)calib_windows,
                (long long)(tk.windows - calib_windows));
    tb_outfile probe; /* refuse an unwritable output before the work */
    if (!rc && !(rc = tb_out_open(&probe, o->output))) tb_out_abort(&probe);
    tb_trainable tr = {0};
    tb_distill d = {0};
    if (!rc) rc = tb_trainable_init(&tr, &s);
    o->o.n_threads = o->threads;
    o->o.backend = o->be;
    /* the cache pays only for windows read twice: every window once the
     * steps cycle past the last one, else only the evaluation's, read before
     * and after (the default recipe's 1000 steps over 1152 windows held 4 GiB
     * of logits for the 8 windows read again) */
    if (!rc) {
        const int64_t per_window = (int64_t)tk.seq_len * s.cfg.vocab_size * (int64_t)sizeof(float);
        const int64_t reread = (int64_t)o->o.steps * o->o.batch > tk.windows ? tk.windows : o->eval_windows;
        if (o->o.cache_bytes > reread * per_window) o->o.cache_bytes = reread * per_window;
    }
    if (!rc) rc = tb_distill_init(&d, &tr, &t, &tk, &o->o);
    uint8_t *keep0 = NULL; /* learned masks: the starting masks, to report how many bits moved */
    int64_t total = 0;
    for (int i = 0; i < tr.n; i++) total += tr.size[i];
    if (!rc && o->o.mask.every > 0 && (keep0 = tb_malloc((size_t)total))) {
        int64_t at = 0;
        for (int i = 0; i < tr.n; at += tr.size[i], i++) memcpy(keep0 + at, tr.keep[i], (size_t)tr.size[i]);
    }
    if (!rc && o->resume && tb_file_exists(o->checkpoint)) {
        if (!(rc = tb_distill_load(&d, o->checkpoint)))
            tb_info("resumed from %s at step %" PRId64 " of %d", o->checkpoint, d.step, o->o.steps);
    }
    double kl0 = 0, top0 = 0, kl1 = 0, top1 = 0;
    if (!rc && o->eval_windows > 0) rc = tb_distill_eval(&d, o->eval_windows, &kl0, &top0);
    double t0 = tb_now();
    int64_t first = d.step;
    if (!rc) {
        tb_progress prog;
        char label[64] = "steps";
        tb_progress_begin(&prog, label, (uint64_t)o->o.steps);
        tb_progress_set(&prog, (uint64_t)d.step);
        double run_kl = -1, win_kl = 0;
        int win_n = 0;
        while (!rc && d.step < o->o.steps) {
            double kl;
            if ((rc = tb_distill_step(&d, &kl, NULL))) break;
            run_kl = run_kl < 0 ? kl : 0.95 * run_kl + 0.05 * kl;
            win_kl += kl;
            win_n++;
            snprintf(label, sizeof label, "kl %.4f, steps", run_kl);
            tb_progress_set(&prog, (uint64_t)d.step);
            if (o->every > 0 && (d.step % o->every == 0 || d.step == o->o.steps)) {
                if ((rc = tb_distill_save(&d, o->checkpoint))) break;
                double el = tb_now() - t0, eta = el / (double)(d.step - first) * (double)(o->o.steps - d.step);
                if (!tb_progress_enabled())
                    tb_info("step %" PRId64 "/%d: kl %.4f (mean of the last %d steps), %.0f s, eta %.0f s -> %s",
                            d.step, o->o.steps, win_kl / win_n, win_n, el, eta, o->checkpoint);
                win_kl = 0;
                win_n = 0;
            }
        }
        tb_progress_end(&prog);
    }
    if (!rc && o->eval_windows > 0) rc = tb_distill_eval(&d, o->eval_windows, &kl1, &top1);
    if (!rc) rc = tb_distill_download(&d);
    if (!rc && keep0) {
        int64_t at = 0, changed = 0;
        for (int i = 0; i < tr.n; i++)
            for (int64_t k = 0; k < tr.size[i]; k++) changed += keep0[at++] != tr.keep[i][k];
        tb_info("learned masks: %.2f%% of the keep bits changed", 100.0 * (double)changed / (double)total);
    }
    free(keep0);
    if (!rc) {
        char steps[32], lr[32], batch[32], evalkl[96], masks[96], hidden[32], extra[2048] = "none";
        for (int i = 0, at = 0; i < o->n_extra && at < (int)sizeof extra; i++)
            at += snprintf(extra + at, sizeof extra - (size_t)at, "%s%s", i ? "," : "", o->extra[i]);
        snprintf(steps, sizeof steps, "%d", o->o.steps);
        snprintf(lr, sizeof lr, "%g", o->o.lr);
        snprintf(batch, sizeof batch, "%d", o->o.batch);
        snprintf(evalkl, sizeof evalkl, "%.6g -> %.6g on %d windows", kl0, kl1, o->eval_windows);
        snprintf(hidden, sizeof hidden, "%g", o->o.hidden);
        snprintf(masks, sizeof masks, "every %d, until %g, decay %g", o->o.mask.every, o->o.mask.until, o->o.mask.decay);
        const char *meta[] = {"distill_teacher", o->teacher, "distill_tokens", o->tokens, "distill_steps", steps,
                              "distill_lr", lr, "distill_batch", batch, "distill_kl", evalkl,
                              "distill_learned_masks", o->o.mask.every > 0 ? masks : "no", "distill_hidden", hidden,
                              "distill_extra_tokens", extra};
        rc = tb_trainable_write(&tr, o->output, o->teacher, "distill", cmdline, meta,
                                (int)(sizeof meta / sizeof meta[0] / 2));
    }
    if (!rc && o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "steps", o->o.steps);
        if (o->eval_windows > 0) {
            cJSON_AddNumberToObject(j, "eval_windows", o->eval_windows);
            cJSON_AddNumberToObject(j, "kl_before", kl0);
            cJSON_AddNumberToObject(j, "kl_after", kl1);
            cJSON_AddNumberToObject(j, "top1_before", top0);
            cJSON_AddNumberToObject(j, "top1_after", top1);
        }
        cJSON_AddNumberToObject(j, "seconds", tb_now() - t0);
        rc = tb_json_print(j);
    }
    if (!rc) {
        if (o->eval_windows > 0)
            tb_info("KL %.4f -> %.4f, top-1 %.4f -> %.4f (first %d windows), %d steps in %.1f s on %s -> %s", kl0,
                    kl1, top0, top1, o->eval_windows, o->o.steps, tb_now() - t0, o->be->desc, o->output);
        else
            tb_info("%d steps in %.1f s on %s -> %s", o->o.steps, tb_now() - t0, o->be->desc, o->output);
    }
    tb_distill_free(&d);
    tb_trainable_free(&tr);
    tb_tokens_free(&tk);
    tb_model_close(&t);
    tb_model_close(&s);
    return rc;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-distill");
    options o = {.threads = tb_default_threads(), .every = 50, .eval_windows = 8, .dev = {.device = TB_DEVICE_AUTO}};
    tb_distill_defaults(&o.o);
    long seed = 0, cache_mib = 4096;
    const char *base = NULL;
    const tb_option table[] = {
        TB_OPT_MODEL(&o.model, "the pruned model (.tbm from tb-merge), the student"),
        {.type = TB_OPTT_STRING, .long_name = "teacher", .value = &o.teacher, .argh = "DIR",
         .flags = TB_OPTF_FILE | TB_OPTF_REQUIRED | TB_OPTF_NO_DASH, .want = TB_WANT_MODEL, .what = TB_OPT_WHAT_MODEL,
         .help = "the dense HF checkpoint it was pruned from"},
        TB_OPT_TOKENS(&o.tokens, "make them with tb-tokenize --windows", "calibration windows (safetensors input_ids)"),
        TB_OPT_OUTPUT(&o.output, "FILE", TB_OPTF_REQUIRED | TB_OPTF_NO_DASH, "the distilled model's .tbm (written atomically)"),
        TB_OPT_CALLBACK(0, "extra-tokens", &o, "FILE",  add_extra,
                        "more training windows after -t's (same length; e.g. the\n"
                        "dense model's own text from tb-run --sample-windows);\n"
                        "repeat for several. --max-windows and --eval-windows\n"
                        "count -t's windows first"),
        TB_OPT_FILE(0, "base", &base, "DIR", "the base checkpoint of a partial .tbm (tb-merge --partial),\n"
                                             "when outside the .tbm's directory"),
        TB_OPT_INT(0, "steps", &o.o.steps, "N", 0, 100000000, "optimizer steps (default 300)"),
        TB_OPT_INT(0, "batch", &o.o.batch, "B", 1, 100000, "windows per step, gradients summed (default 1)"),
        TB_OPT_DOUBLE(0, "lr", &o.o.lr, "X", 0, 1, "peak learning rate, cosine decay to 0 (default 3e-4)"),
        TB_OPT_INT(0, "learn-masks", &o.o.mask.every, "K", 0, 1000000,
                   "learn the N:M masks with the weights from the whole\n"
                   "model's KL (SR-STE, as tb-recon --learn-masks): every K\n"
                   "steps each group keeps its N largest |W~| * ||x_c|| of\n"
                   "the straight-through latents (pruned entries start at\n"
                   "the teacher's weights); 0: masks fixed (default)"),
        TB_OPT_DOUBLE(0, "mask-until", &o.o.mask.until, "F", 0, 1, "fraction of the steps during which masks may change\n"
                                                                  "(default 0.5); fixed afterwards"),
        TB_OPT_DOUBLE(0, "mask-decay", &o.o.mask.decay, "D", 0, 1e6, "SR-STE decay of the pruned latents, W~ -= lr*D*W~ per\n"
                                                                    "step (default 20)"),
        TB_OPT_DOUBLE(0, "hidden", &o.o.hidden, "A", 0, 1e6,
                      "add A x the mean over layers of each layer output's\n"
                      "squared error relative to the teacher's (hidden-state\n"
                      "distillation; the teacher then runs every step: no\n"
                      "logits cache); default 0: logits only"),
        TB_OPT_LONG(0, "seed", &seed, "S", 0, 9.3e18, "window order (default 0)"),
        TB_OPT_LONG(0, "max-windows", &o.max_windows, "N", 1, 1L << 40, "use the first N windows"),
        TB_OPT_FILE(0, "checkpoint", &o.checkpoint, "FILE", "checkpoint path (default OUT.tbm.ckpt)"),
        TB_OPT_INT(0, "checkpoint-every", &o.every, "N", 0, 100000000, "write it every N steps (default 50; 0: never)"),
        TB_OPT_FLAG(0, "resume", &o.resume, "continue from the checkpoint if it exists (same\n"
                                           "steps, batch, lr, seed, windows, mask options and --hidden)"),
        TB_OPT_INT(0, "eval-windows", &o.eval_windows, "N", 0, 1000000, "report KL and top-1 on the first N windows before\n"
                                                                       "and after (default 8; 0: none)"),
        TB_OPT_JSON(&o.json, "print one JSON object on stdout: steps, eval_windows,\n"
                             "kl_before, kl_after, top1_before, top1_after, seconds"),
        TB_OPT_LONG(0, "teacher-cache", &cache_mib, "MIB", 0, 1L << 30,
                    "keep the teacher's logits of up to MIB MiB of windows\n"
                    "(seq_len x vocab x 4 bytes each) so later epochs skip\n"
                    "its forward pass (default 4096; 0: none); never more\n"
                    "than the windows read twice (all of them when the\n"
                    "steps cycle past the last, else --eval-windows)"),
        TB_OPT_THREADS(&o.threads),
        TB_OPT_DEVICE(&o.dev),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-distill",
                            .usage = "tb-distill -m PRUNED.tbm --teacher DENSE_DIR -t TOKENS -o OUT.tbm [options]",
                            .description = description, .options = table, .notes = notes};
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, NULL, NULL);
    if (tb_opt_given(&seed)) o.o.seed = (uint64_t)seed;
    o.o.cache_bytes = (int64_t)cache_mib << 20;
    if (base && tb_tbm_allow_base(base)) return tb_report_error();
    if (!o.tokens) return tb_usage_error("missing -t/--tokens FILE");
    char *ckpt = NULL;
    if (!o.checkpoint) {
        size_t n = strlen(o.output) + 6;
        if (!(ckpt = malloc(n))) return tb_report_error();
        snprintf(ckpt, n, "%s.ckpt", o.output);
        o.checkpoint = ckpt;
    }
    char *cmdline = tb_join_args(argc, argv);
    int rc = cmdline ? TB_OK : TB_EIO;
    tb_backend be;
    o.dev.n_threads = o.threads;
    if (!rc && !(rc = tb_backend_open(&be, &o.dev))) {
        o.be = &be;
        rc = run(&o, cmdline);
        tb_backend_close(&be);
    }
    free(cmdline);
    free(ckpt);
    return rc ? tb_report_error() : 0;
}
