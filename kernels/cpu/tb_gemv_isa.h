/* tb_gemv_isa.h - private to tb_gemv*.c: one entry per instruction set.
 *
 * rows r0 .. r1-1 of y[t * L->rows + r] = x[t] . W[r] for t < n, bias not
 * added, x [n, L->cols] already in W's stored column order. Each ISA file is
 * compiled with its own -m flags (Makefile) and is empty where the compiler
 * does not target x86 (its entry then calls the scalar one and its
 * *_compiled flag is 0); tb_gemv.c calls an entry only after checking the CPU. */
#ifndef TB_GEMV_ISA_H
#define TB_GEMV_ISA_H

#include "tb_linear.h"

void tb_gemv_rows_scalar(const tb_linear *L, const float *x, int n, float *y, int r0, int r1);
void tb_gemv_rows_avx2(const tb_linear *L, const float *x, int n, float *y, int r0, int r1);
void tb_gemv_rows_avx512(const tb_linear *L, const float *x, int n, float *y, int r0, int r1);
extern const int tb_gemv_avx2_compiled, tb_gemv_avx512_compiled;

/* decode attention, one query row of one head (tb_attend_row): row[c] =
 * scale * q . k_c for lo <= c <= p, k_c = k + c * ldk; and out[hd] = sum_c
 * row[c] v_c */
#define TB_ATT_DECL(isa)                                                                                               \
    void tb_att_scores_##isa(const float *q, const float *k, int ldk, int hd, int lo, int p, float scale, float *row); \
    void tb_att_pv_##isa(const float *row, const float *v, int ldk, int hd, int lo, int p, float *out);
TB_ATT_DECL(scalar)
TB_ATT_DECL(avx2)
TB_ATT_DECL(avx512)

#endif
