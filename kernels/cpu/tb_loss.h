/* tb_loss.h - reference CPU kernels of the language-model losses, f64 sums. */
#ifndef TB_LOSS_H
#define TB_LOSS_H

#include <stdint.h>

/* Mean next-token NLL of one sequence from its logits [n, vocab]: the mean
 * over t < n-1 of logsumexp(logits[t]) - logits[t][tokens[t+1]], in f64. */
double tb_eval_window_nll(const float *logits, const int32_t *tokens, int n, int vocab);
/* The same with the rows split over n_threads (a log-sum-exp over the
 * vocabulary per token costs as much as a small matmul); the result depends
 * on the count only through the order of the f64 additions. */
double tb_eval_window_nll_mt(const float *logits, const int32_t *tokens, int n, int vocab, int n_threads);

/* KL(p || q) with p = softmax(ref_logits), q = softmax(logits), and whether
 * the argmaxes agree (lowest index on ties), for one row of n logits. */
double tb_eval_kl_row(const float *ref_logits, const float *logits, int n, int *same_top1);

/* Sum over n rows of tb_eval_kl_row, threaded (reproducible for a fixed
 * thread count); *same receives the rows whose argmaxes agree. */
double tb_eval_kl_rows(const float *ref, const float *cur, int n, int vocab, int n_threads, int64_t *same);

/* The gradient of the window's mean NLL in place: logits[t] = (softmax(logits[t])
 * - onehot(tokens[t+1])) / (n-1) for t < n-1, row n-1 zero; returns the mean NLL. */
double tb_xent_backward(float *logits, const int32_t *tokens, int n, int vocab);

#endif
