/* tb_train.h - the pieces every masked trainer shares (layer and block
 * reconstruction, learned masks, whole-model distillation).
 *
 *   masked Adam      Adam with bias correction on the trainable entries of a
 *                    weight only (keep[i] != 0); the others are never read or
 *                    written, so pruned weights stay exact zeros.
 *   cosine schedule  lr(t) = peak * (1 + cos(pi t / steps)) / 2 (t = 0 .. steps-1)
 *   window order     a fresh seeded Fisher-Yates shuffle of the windows each
 *                    epoch, a pure function of (seed, epoch), so a run resumed
 *                    from a checkpoint visits the same windows.
 *   KL loss          sum over rows of KL(softmax(teacher) || softmax(student))
 *                    and its gradient with respect to the student's logits,
 *                    softmax(student) - softmax(teacher) (Hinton et al. 2015,
 *                    temperature 1), in f64 per row.
 */
#ifndef TB_TRAIN_H
#define TB_TRAIN_H

#include <stdint.h>

typedef struct {
    double beta1, beta2, eps;
} tb_adam_hp;

/* One Adam step on w[i] for keep[i] != 0 (keep NULL: every entry): m1, m2 the
 * moments, t the 1-based step (bias correction), lr already scheduled. */
void tb_adam_masked(float *w, const float *g, float *m1, float *m2, const uint8_t *keep, int64_t n, double lr,
                    const tb_adam_hp *hp, int64_t t);

double tb_cosine_lr(double peak, int64_t step, int64_t steps);

/* order[0..n) = the permutation of 0..n-1 used in epoch `epoch` for `seed`. */
void tb_window_order(int64_t *order, int64_t n, uint64_t seed, int64_t epoch);

/* For each of rows rows of vocab logits: adds KL(softmax(teacher) ||
 * softmax(student)) to the returned sum (nats, f64) and, if grad_scale != 0,
 * overwrites student with grad_scale * (softmax(student) - softmax(teacher)),
 * the gradient of grad_scale * KL. top1_same (may be NULL) counts rows whose
 * argmaxes agree. Rows split over n_threads; the sum depends on the count
 * only through the order of the f64 additions. */
double tb_kl_rows(const float *teacher, float *student, int rows, int vocab, double grad_scale, int64_t *top1_same,
                  int n_threads);

#endif
