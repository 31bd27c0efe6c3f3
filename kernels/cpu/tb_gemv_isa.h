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
/* the many-token kernel (tb_gemm): y[t * ldy + r] (+)= sum_c x[t * ldx + c]
 * P[c * ldp + r] for t < n, r < nr, c < k: P is a panel whose row c holds
 * column c of W's rows (a packed one: ldp = the width; V of attention as it
 * lies: ldp = its row stride). accumulate: start from y (a later block of
 * c) instead of 0; the sum is multiplied by scale as it is stored. The kernel reads the panel's whole width (the
 * ISA's TB_PANEL_*), nr .. width-1 included, and stores rows < nr only. */
#define TB_PANEL_SCALAR 8
#define TB_PANEL_AVX2 16
#define TB_PANEL_AVX512 32
#define TB_PANEL_MAX 32
#define TB_PANEL_DECL(isa)                                                                                             \
    void tb_panel_##isa(const float *P, size_t ldp, int k, const float *x, size_t ldx, int n, float *y, size_t ldy, int nr,       \
                        int accumulate, float scale);
TB_PANEL_DECL(scalar)
/* The panel of rows 0 .. nr-1 of src (dense F32, F16 or BF16, ld elements
 * from one row to the next, cols columns): P[c * width + r] = src[r, c], rows
 * nr .. width-1 zero. */
#define TB_PACK_DECL(isa) void tb_pack_panel_##isa(const void *src, tb_dtype dt, size_t ld, int nr, int cols, float *P);
TB_PACK_DECL(scalar)
TB_PACK_DECL(avx2)
TB_PACK_DECL(avx512)
/* the scalar packing for any width: the vector entries' stand-in where
 * their ISA is not compiled (never called then, but it must link) */
void tb_pack_panel_scalar_width(const void *src, tb_dtype dt, size_t ld, int nr, int cols, float *P, int width);
TB_PANEL_DECL(avx2)
TB_PANEL_DECL(avx512)

TB_ATT_DECL(scalar)
TB_ATT_DECL(avx2)
TB_ATT_DECL(avx512)

#endif
