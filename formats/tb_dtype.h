/* tb_dtype.h - the safetensors element types and conversion to f32/f64. */
#ifndef TB_DTYPE_H
#define TB_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TB_F64, TB_F32, TB_F16, TB_BF16,
    TB_I64, TB_I32, TB_I16, TB_I8, TB_U8, TB_BOOL,
    TB_F8_E4M3, TB_F8_E5M2,
    TB_DTYPE_COUNT
} tb_dtype;

const char *tb_dtype_name(tb_dtype dt);        /* "BF16" */
int tb_dtype_parse(const char *name, tb_dtype *out); /* 0 ok, -1 unknown */
size_t tb_dtype_size(tb_dtype dt);             /* bytes per element */
int tb_dtype_is_float(tb_dtype dt);

/* A typed array in memory, usually a view into a mapped file: what the CPU
 * kernels that read any dtype take (tb_stats, tb_nm's pools), so they never
 * see a file's structures. st_array() views a safetensors tensor as one. */
#define TB_MAX_DIMS 8
typedef struct {
    const char *name; /* for error messages */
    tb_dtype dtype;
    int ndim;
    int64_t shape[TB_MAX_DIMS];
    int64_t numel;
    const void *data;
} tb_array;

/* Convert n elements starting at element `offset` of `src` (any dtype) to f32.
 * Integers convert by value; BOOL to 0/1. */
void tb_to_f32(tb_dtype dt, const void *src, size_t offset, size_t n, float *dst);
void tb_to_f64(tb_dtype dt, const void *src, size_t offset, size_t n, double *dst);
/* tb_to_f32 split over n_threads (the same values): for GB-sized copies out
 * of a mapping, e.g. tb-recon's 4.3 GB of 7B stream, where one core's page
 * faults and copy took seconds. */
void tb_to_f32_threads(tb_dtype dt, const void *src, size_t offset, size_t n, float *dst, int n_threads);

/* Scalar conversions (exact where the format allows). */
float tb_bf16_to_f32(uint16_t h);
uint16_t tb_f32_to_bf16(float f); /* round to nearest even, NaN preserved */
float tb_f16_to_f32(uint16_t h);
uint16_t tb_f32_to_f16(float f);  /* round to nearest even */
float tb_f8e4m3_to_f32(uint8_t v);
float tb_f8e5m2_to_f32(uint8_t v);

#endif
