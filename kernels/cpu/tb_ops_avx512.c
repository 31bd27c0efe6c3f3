/* tb_ops_avx512.c - softmax, log-sum-exp and SwiGLU with a 16-lane f32 and an
 * 8-lane f64 exp (tb_ops_isa.h); built with -mavx512f -mavx512bw -mavx512vl
 * -mfma (Makefile) and entered only when tb_gemv_isa() is AVX-512. */
#include "tb_ops_isa.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__FMA__)

#include <immintrin.h>
#include <math.h>

const int tb_ops_avx512_compiled = 1;

#define INLINE static inline __attribute__((always_inline))

static inline __mmask16 first16(int k) { return k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << k) - 1); }

/* e^x: n = round(x log2 e), r = x - n ln2 (ln2 in two parts, so n * hi is
 * exact), e^r by Cephes' expf polynomial, times 2^n by vscalefps (which
 * gives the denormals, 0 and +inf at the ends). The clamp keeps r finite; max
 * with x second lets a NaN x through. */
INLINE __m512 exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* e^x in f64: the same reduction, e^r by its Taylor series to r^13 */
INLINE __m512d exp8d(__m512d x)
{
    x = _mm512_min_pd(_mm512_set1_pd(710.0), _mm512_max_pd(_mm512_set1_pd(-746.0), x));
    __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634074)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), x);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
    __m512d p = _mm512_set1_pd(tb_exp_inv_fact[13]);
    for (int i = 12; i >= 0; i--) p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(tb_exp_inv_fact[i]));
    return _mm512_scalef_pd(p, n);
}

INLINE double hsum_pd(__m512d v) { return _mm512_reduce_add_pd(v); }

void tb_softmax_avx512(float *x, int n)
{
    if (n <= 0) return;
    __m512 mv = _mm512_set1_ps(x[0]);
    for (int i = 0; i < n; i += 16) mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(mv, first16(n - i), x + i));
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    /* the sum in f64, as tb_softmax's */
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = first16(n - i);
        __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx)));
        _mm512_mask_storeu_ps(x + i, m, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    const __m512 inv = _mm512_set1_ps((float)(1.0 / hsum_pd(_mm512_add_pd(s0, s1))));
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = first16(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

double tb_logsumexp_avx512(const float *x, int n)
{
    __m512 mv = _mm512_set1_ps(x[0]);
    for (int i = 0; i < n; i += 16) mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(mv, first16(n - i), x + i));
    const float mxf = _mm512_reduce_max_ps(mv);
    const __m512d mx = _mm512_set1_pd(mxf);
    /* x - max in f64 and its exp in f64, as tb_logsumexp's; two chains of adds */
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = first16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512d lo = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), mx);
        __m512d hi = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))), mx);
        s0 = _mm512_mask_add_pd(s0, (__mmask8)m, s0, exp8d(lo));
        s1 = _mm512_mask_add_pd(s1, (__mmask8)(m >> 8), s1, exp8d(hi));
    }
    return (double)mxf + log(hsum_pd(_mm512_add_pd(s0, s1)));
}

void tb_swiglu_avx512(float *out, const float *gate, const float *up, size_t n)
{
    /* silu(g) * u = g / (1 + e^-g) * u, rounded in that order as tb_swiglu does */
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = first16(n - i > 16 ? 16 : (int)(n - i));
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
        __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u));
    }
}

#else /* not built for AVX-512: never called (tb_ops.c checks the flag) */

const int tb_ops_avx512_compiled = 0;

void tb_softmax_avx512(float *x, int n) {}
double tb_logsumexp_avx512(const float *x, int n) { return 0; }
void tb_swiglu_avx512(float *out, const float *gate, const float *up, size_t n) {}

#endif
