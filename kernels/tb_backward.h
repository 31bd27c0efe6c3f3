/* tb_backward.h - the decoder backward pass, on the forward's backend, for
 * calibration statistics (tb-fisher) and layer training (tb-recon): the
 * gradient of one window's loss with respect to every linear weight.
 *
 * It reads the activations the forward pass kept (tb_forward_opts.keep_acts)
 * and delivers each weight's gradient dW [rows, cols] to a callback as soon as
 * it is complete (lm_head first, then the layers last to first, in each layer
 * down, up, gate, o, v, k, q), so callers accumulate what they need (the
 * squared gradient, samples) while only one dW buffer exists at a time.
 * A weight's gradient comes after the pass's last use of the weight (its
 * input gradient), so the callback may update it in place: tb-recon's Adam
 * step, per weight, needs no gradient buffer of its own.
 * Memory: one window's activation gradients + one dW, in backend memory.
 */
#ifndef TB_BACKWARD_H
#define TB_BACKWARD_H

#include "tb_model.h"

/* dW is backend memory (host memory on the CPU backend), valid only during
 * the call. Return nonzero to stop the pass (the
 * callback records its error with tb_fail). layer = n_layers for lm_head. */
typedef int (*tb_grad_fn)(void *ctx, int layer, tb_lin_id which, const float *dW, int rows, int cols);

typedef struct {
    tb_forward *f;
    float *d_res;   /* [T, hidden] gradient of the residual stream */
    float *d_xn;    /* [T, hidden] gradient of a norm's output */
    float *d_norm;  /* [T, hidden] a norm's input gradient before it joins d_res */
    float *d_act;   /* [T, inter]  becomes d_gate in place */
    float *d_up;    /* [T, inter] */
    float *d_att;   /* [T, n_heads*head_dim] */
    float *d_q;     /* [T, n_heads*head_dim] */
    float *d_k;     /* [T, n_kv_heads*head_dim] */
    float *d_v;     /* [T, n_kv_heads*head_dim] */
    float *dW;      /* [largest linear rows*cols] */
    float *mem;     /* the one backend allocation behind the above */
    /* Optional (set after tb_backward_init): tb_backward_logits calls it
     * before each layer l's backward, last layer first, with d_res =
     * dloss/d(stream leaving layer l) (backend memory, synchronized), so the
     * caller can add the gradient of a loss on the hidden states
     * (tb-distill --hidden). Nonzero stops the pass. */
    int (*stream_grad)(void *ctx, int layer, float *d_res, int n);
    void *stream_ctx;
} tb_backward;

/* Size every buffer for f (which must keep activations). */
int tb_backward_init(tb_backward *b, tb_forward *f);
void tb_backward_free(tb_backward *b);

/* After tb_forward_run(f, tokens, n, 0): back-propagate loss = mean over
 * t < n-1 of -log softmax(logits[t])[tokens[t+1]] and call grad for every
 * linear weight (lm_head only when want_lm_head). Overwrites f->logits with
 * dloss/dlogits. *loss receives the window's loss. */
int tb_backward_run(tb_backward *b, const int32_t *tokens, int n, int want_lm_head, tb_grad_fn grad, void *ctx,
                    double *loss);

/* Back-propagate through decoder layers [l0, l1) only, after the forward ran
 * them (tb_forward_layers with keep_acts) on n tokens from position 0: on
 * entry b->d_res holds dloss/d(stream leaving layer l1-1), on return
 * dloss/d(stream entering layer l0); grad receives every linear weight's
 * gradient on the way. For layer-wise reconstruction. */
int tb_backward_layers(tb_backward *b, int n, int l0, int l1, tb_grad_fn grad, void *ctx);

/* The same pass from a loss the caller chose: after tb_forward_run(f, .., n,
 * 0), f->logits holds dloss/dlogits [n, vocab] (e.g. a distillation loss);
 * back-propagates through lm_head, the final norm and every layer, calling
 * grad as tb_backward_run does. Overwrites nothing the caller keeps. */
int tb_backward_logits(tb_backward *b, int n, int want_lm_head, tb_grad_fn grad, void *ctx);

/* One half of decoder layer l, for reconstruction of a block as a unit:
 * TB_HALF_MLP takes b->d_res = dloss/d(layer output) to dloss/dh (h: the
 * residual stream after attention, acts[l].h), TB_HALF_ATTN takes dloss/dh to
 * dloss/d(layer input); grad receives that half's weights' gradients
 * (down, up, gate / o, v, k, q). */
typedef enum { TB_HALF_ATTN = 0, TB_HALF_MLP = 1 } tb_layer_half;
int tb_backward_half(tb_backward *b, int n, int l, tb_layer_half half, tb_grad_fn grad, void *ctx);

#endif
