/* tb_ops_isa.h - private to tb_ops*.c: the element-wise kernels whose cost is
 * exp, one entry per instruction set, chosen at run time with tb_gemv's ISA
 * (tb_gemv.h). As with tb_gemv_isa.h, tb_ops_avx2.c and tb_ops_avx512.c are
 * compiled with their ISA's flags, empty of kernels where the compiler does
 * not target x86 (their *_compiled flag is then 0 and nothing calls them).
 *
 * exp is a polynomial on the reduced argument r = x - n ln 2, |r| <= ln2/2,
 * scaled by 2^n: f32 to about 1 ulp (Cephes' degree-6 expf polynomial), f64
 * to about 1 ulp (Taylor to degree 13, the next term below 2^-57). Below the
 * smallest normal result they return 0 (AVX2) or the denormal (AVX-512),
 * above the largest +inf; NaN stays NaN. */
#ifndef TB_OPS_ISA_H
#define TB_OPS_ISA_H

#include <stddef.h>

#define TB_OPS_DECL(isa)                                                                                               \
    void tb_softmax_##isa(float *x, int n);                                                                            \
    double tb_logsumexp_##isa(const float *x, int n);                                                                  \
    void tb_swiglu_##isa(float *out, const float *gate, const float *up, size_t n);
TB_OPS_DECL(avx2)
TB_OPS_DECL(avx512)
extern const int tb_ops_avx2_compiled, tb_ops_avx512_compiled;

/* 1/k! for k = 0..13: the f64 exp's Taylor coefficients, shared by both ISAs */
static const double tb_exp_inv_fact[14] = {1.0,         1.0,          1.0 / 2,        1.0 / 6,         1.0 / 24,
                                           1.0 / 120,   1.0 / 720,    1.0 / 5040,     1.0 / 40320,     1.0 / 362880,
                                           1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};

#endif
