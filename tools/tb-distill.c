/* tb-distill - masked distillation of a whole pruned model from the dense
 * model (tb_distill.h). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tb_distill.h"
#include "tb_error.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_threads.h"

static const char usage[] =
    "usage: tb-distill -m PRUNED.tbm --teacher DENSE_DIR -t TOKENS -o OUT.tbm [options]\n"
    "\n"
    "Masked distillation: train the kept weights of every decoder linear of the\n"
    "pruned model so that its next-token distributions match the dense model's\n"
    "on the calibration windows: Adam on the mean over positions of\n"
    "KL(softmax(dense logits) || softmax(pruned logits)) (Hinton et al. 2015,\n"
    "temperature 1). Masks stay fixed and pruned weights exact zeros;\n"
    "embeddings, norms and lm_head are not trained (bit-identical to the input).\n"
    "Writes OUT.tbm and one shard per input shard beside it (OUT.<shard>.tb).\n"
    "\n"
    "options:\n"
    "  -m, --model FILE        the pruned model (.tbm from tb-merge), the student\n"
    "      --teacher DIR       the dense HF checkpoint it was pruned from\n"
    "  -t, --tokens FILE       calibration windows (safetensors input_ids)\n"
    "  -o, --output FILE       the distilled model's .tbm (written atomically)\n"
    "      --steps N           optimizer steps (default 300)\n"
    "      --batch B           windows per step, gradients summed (default 1)\n"
    "      --lr X              peak learning rate, cosine decay to 0 (default 3e-4)\n"
    "      --seed S            window order (default 0)\n"
    "      --max-windows N     use the first N windows\n"
    "      --checkpoint FILE   checkpoint path (default OUT.tbm.ckpt)\n"
    "      --checkpoint-every N  write it every N steps (default 50; 0: never)\n"
    "      --resume            continue from the checkpoint if it exists (same\n"
    "                          steps, batch, lr, seed and windows)\n"
    "      --eval-windows N    report KL and top-1 on the first N windows before\n"
    "                          and after (default 8; 0: none)\n"
    "      --device D          cpu (the only backend of the training engine today)\n"
    "      --threads N         threads (default $TB_THREADS or all cores)\n"
    "      --quiet, --progress\n"
    "  -h, --help, --version\n"
    "\n"
    "Progress shows the step, the running KL of the last steps and the ETA;\n"
    "every checkpoint also logs a line. An interrupted run loses at most\n"
    "--checkpoint-every steps: rerun with --resume.\n"
    "memory: 16 bytes per decoder weight (copy, gradient, 2 Adam moments), the\n"
    "teacher's mapping, one window's activations of both models and the\n"
    "student's activation gradients.\n"
    "exit status: 0 ok, 1 usage, 2 bad input data, 3 I/O error\n";

typedef struct {
    const char *model, *teacher, *tokens, *output, *checkpoint;
    int threads, every, resume, eval_windows;
    long max_windows;
    tb_distill_opts o;
} options;

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
    tb_outfile probe; /* refuse an unwritable output before the work */
    if (!rc && !(rc = tb_out_open(&probe, o->output))) tb_out_abort(&probe);
    tb_trainable tr = {0};
    tb_distill d = {0};
    if (!rc) rc = tb_trainable_init(&tr, &s);
    o->o.n_threads = o->threads;
    if (!rc) rc = tb_distill_init(&d, &tr, &t, &tk, &o->o);
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
    if (!rc) {
        char steps[32], lr[32], batch[32], evalkl[96];
        snprintf(steps, sizeof steps, "%d", o->o.steps);
        snprintf(lr, sizeof lr, "%g", o->o.lr);
        snprintf(batch, sizeof batch, "%d", o->o.batch);
        snprintf(evalkl, sizeof evalkl, "%.6g -> %.6g on %d windows", kl0, kl1, o->eval_windows);
        const char *meta[] = {"distill_teacher", o->teacher, "distill_tokens", o->tokens, "distill_steps", steps,
                              "distill_lr", lr, "distill_batch", batch, "distill_kl", evalkl};
        rc = tb_trainable_write(&tr, o->output, o->teacher, "distill", cmdline, meta,
                                (int)(sizeof meta / sizeof meta[0] / 2));
    }
    if (!rc) {
        if (o->eval_windows > 0)
            tb_info("KL %.4f -> %.4f, top-1 %.4f -> %.4f (first %d windows), %d steps in %.1f s -> %s", kl0, kl1, top0,
                    top1, o->eval_windows, o->o.steps, tb_now() - t0, o->output);
        else
            tb_info("%d steps in %.1f s -> %s", o->o.steps, tb_now() - t0, o->output);
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
    options o = {.threads = tb_default_threads(), .every = 50, .eval_windows = 8};
    tb_distill_defaults(&o.o);
    enum { OPT_TEACHER = 256, OPT_STEPS, OPT_BATCH, OPT_LR, OPT_SEED, OPT_MAXWIN, OPT_CKPT, OPT_EVERY, OPT_RESUME,
           OPT_EVAL, OPT_DEVICE, OPT_THREADS, OPT_QUIET, OPT_PROGRESS, OPT_VERSION };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},          {"teacher", required_argument, 0, OPT_TEACHER},
        {"tokens", required_argument, 0, 't'},         {"output", required_argument, 0, 'o'},
        {"steps", required_argument, 0, OPT_STEPS},    {"batch", required_argument, 0, OPT_BATCH},
        {"lr", required_argument, 0, OPT_LR},          {"seed", required_argument, 0, OPT_SEED},
        {"max-windows", required_argument, 0, OPT_MAXWIN}, {"checkpoint", required_argument, 0, OPT_CKPT},
        {"checkpoint-every", required_argument, 0, OPT_EVERY}, {"resume", no_argument, 0, OPT_RESUME},
        {"eval-windows", required_argument, 0, OPT_EVAL}, {"device", required_argument, 0, OPT_DEVICE},
        {"threads", required_argument, 0, OPT_THREADS}, {"quiet", no_argument, 0, OPT_QUIET},
        {"progress", no_argument, 0, OPT_PROGRESS},    {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, OPT_VERSION},      {0, 0, 0, 0},
    };
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "m:t:o:h", longopts, NULL)) != -1) {
        int rc = TB_OK;
        long v;
        switch (ch) {
        case 'm': o.model = optarg; break;
        case 't': o.tokens = optarg; break;
        case 'o': o.output = optarg; break;
        case OPT_TEACHER: o.teacher = optarg; break;
        case OPT_CKPT: o.checkpoint = optarg; break;
        case OPT_STEPS: rc = tb_parse_int("--steps", optarg, 0, 100000000, &o.o.steps); break;
        case OPT_BATCH: rc = tb_parse_int("--batch", optarg, 1, 100000, &o.o.batch); break;
        case OPT_LR: rc = tb_parse_double("--lr", optarg, 0, 1, &o.o.lr); break;
        case OPT_SEED: rc = tb_parse_long("--seed", optarg, 0, 0x7fffffffffffffffL, &v); o.o.seed = (uint64_t)v; break;
        case OPT_MAXWIN: rc = tb_parse_long("--max-windows", optarg, 1, 1L << 40, &o.max_windows); break;
        case OPT_EVERY: rc = tb_parse_int("--checkpoint-every", optarg, 0, 100000000, &o.every); break;
        case OPT_RESUME: o.resume = 1; break;
        case OPT_EVAL: rc = tb_parse_int("--eval-windows", optarg, 0, 1000000, &o.eval_windows); break;
        case OPT_DEVICE:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "auto"))
                return tb_usage_error("--device '%s': the distillation engine runs on the cpu only in this build", optarg);
            break;
        case OPT_THREADS: rc = tb_parse_int("--threads", optarg, 1, 256, &o.threads); break;
        case OPT_QUIET: tb_log_set_quiet(1); tb_log_set_progress(0); break;
        case OPT_PROGRESS: tb_log_set_progress(1); break;
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: printf("tb-distill %s\n", TB_VERSION); return 0;
        default: return tb_usage_error("unknown option '%s'", argv[optind - 1]);
        }
        if (rc) return tb_usage_error("%s", tb_errmsg());
    }
    if (optind != argc) return tb_usage_error("unexpected argument '%s'", argv[optind]);
    if (!o.model || !o.teacher || !o.tokens || !o.output)
        return tb_usage_error("-m PRUNED.tbm, --teacher DIR, -t TOKENS and -o OUT.tbm are required");
    char *ckpt = NULL;
    if (!o.checkpoint) {
        size_t n = strlen(o.output) + 6;
        if (!(ckpt = malloc(n))) return tb_report_error();
        snprintf(ckpt, n, "%s.ckpt", o.output);
        o.checkpoint = ckpt;
    }
    char *cmdline = tb_join_args(argc, argv);
    int rc = cmdline ? run(&o, cmdline) : TB_EIO;
    free(cmdline);
    free(ckpt);
    return rc ? tb_report_error() : 0;
}
