/* tb_generate.h - token windows sampled from a model: data the dense model
 * writes for its own distillation (tb-run --sample-windows).
 *
 * Why: tb-distill on the 128 calibration windows alone overfits them (its
 * training KL keeps falling while the held-out KL stalls, BENCHMARKS.md
 * "Quality past local reconstruction"). The teacher can write as much
 * in-distribution text as wanted: each window starts with the first `prefix`
 * tokens of a calibration window (the only text used) and continues with
 * tokens sampled from the model itself - the data-free generation of LLM-QAT
 * (Liu et al. 2023) and the teacher-generated sequences of sequence-level KD
 * (Kim & Rush 2016) and GKD (Agarwal et al. 2024).
 *
 * Window i continues prompt window i mod (prompt windows) and samples with
 * its own generator, tb_rng_seed(seed + i * 0xD1B54A32D192ED03): a window
 * depends only on (model, prompts, i, seed, sampling), not on the thread
 * count or on the other windows. Sampling is tb_sample_with's (temperature,
 * top-k, top-p, min-p, repetition penalty over the last 64 tokens); EOS is
 * an ordinary token here (a window has a fixed length; the model's text
 * after its own EOS is what it writes there). Each window runs its prefix
 * as one prefill, then one token at a time against the KV cache.
 *
 * Parallel over windows: each of n_threads threads owns one single-threaded
 * CPU forward (a tiny model's decode step is too small to split across
 * threads; windows are independent). */
#ifndef TB_GENERATE_H
#define TB_GENERATE_H

#include <stdint.h>

#include "tb_model.h"
#include "tb_tokens.h"

typedef struct {
    int64_t windows;      /* windows to write */
    int seq_len;          /* tokens per window, the prefix included */
    int prefix;           /* tokens copied from the start of the prompt window (>= 1) */
    tb_sampling sampling; /* temp <= 0: greedy */
    uint64_t seed;
    int n_threads;        /* windows in parallel */
} tb_gen_opts;

/* Sample o->windows windows from m, continuing the prompts' windows as above,
 * into out (out->ids owned by the caller: tb_tokens_free). progress (may be
 * NULL) is called with (done, total) windows, from one thread at a time.
 * TB_EUSAGE: prefix outside [1, prompts->seq_len] or >= seq_len, seq_len past
 * max_position_embeddings, no prompt windows. */
int tb_generate_windows(const tb_model *m, const tb_tokens *prompts, const tb_gen_opts *o, tb_progress_fn progress,
                        void *progress_ctx, tb_tokens *out);

#endif
