#include "tb_learnmask.h"

#include <math.h>

void tb_learnmask_defaults(tb_learnmask_opts *o)
{
    *o = (tb_learnmask_opts){.every = 0, .until = 0.5, .decay = 20.0};
}

int64_t tb_nm_reselect(const float *w, const float *col_scale, int64_t rows, int64_t cols, int n, int m,
                       uint8_t *keep)
{
    int64_t dropped = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g + m <= cols; g += m) {
            const float *wr = w + r * cols + g;
            uint8_t *kr = keep + r * cols + g, now[32] = {0};
            double s[32];
            for (int j = 0; j < m; j++) s[j] = fabs((double)wr[j]) * (col_scale ? (double)col_scale[g + j] : 1.0);
            for (int k = 0; k < n; k++) { /* n passes of argmax: m <= 16 */
                int best = -1;
                for (int j = 0; j < m; j++)
                    if (!now[j] && (best < 0 || s[j] > s[best])) best = j;
                now[best] = 1;
            }
            for (int j = 0; j < m; j++) {
                dropped += kr[j] && !now[j];
                kr[j] = now[j];
            }
        }
    return dropped;
}

int tb_nm_keep_valid(const uint8_t *keep, int64_t rows, int64_t cols, int n, int m)
{
    if (m <= 0 || cols % m) return 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < cols; g += m) {
            int k = 0;
            for (int j = 0; j < m; j++) {
                uint8_t b = keep[r * cols + g + j];
                if (b > 1) return 0;
                k += b;
            }
            if (k != n) return 0;
        }
    return 1;
}

void tb_learnmask_update(float *lat, const float *g, float *m1, float *m2, const uint8_t *keep, int64_t n, double lr,
                         const tb_adam_hp *hp, int64_t t, double decay)
{
    tb_adam_masked(lat, g, m1, m2, NULL, n, lr, hp, t);
    if (decay > 0) {
        float shrink = (float)(1.0 - lr * decay);
        for (int64_t i = 0; i < n; i++)
            if (!keep[i]) lat[i] *= shrink;
    }
}

void tb_learnmask_colsq(double *colsq, const float *x, int T, int cols)
{
    for (int tk = 0; tk < T; tk++)
        for (int c = 0; c < cols; c++) {
            double v = x[(size_t)tk * cols + c];
            colsq[c] += v * v;
        }
}

void tb_learnmask_apply(float *w, const float *lat, const uint8_t *keep, int64_t n)
{
    for (int64_t i = 0; i < n; i++) w[i] = keep[i] ? lat[i] : 0.0f;
}
