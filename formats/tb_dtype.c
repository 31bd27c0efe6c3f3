#include "tb_dtype.h"
#include "tb_threads.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[TB_DTYPE_COUNT] = {
    [TB_F64] = {"F64", 8},   [TB_F32] = {"F32", 4},       [TB_F16] = {"F16", 2},
    [TB_BF16] = {"BF16", 2}, [TB_I64] = {"I64", 8},       [TB_I32] = {"I32", 4},
    [TB_I16] = {"I16", 2},   [TB_I8] = {"I8", 1},         [TB_U8] = {"U8", 1},
    [TB_BOOL] = {"BOOL", 1}, [TB_F8_E4M3] = {"F8_E4M3", 1}, [TB_F8_E5M2] = {"F8_E5M2", 1},
};

const char *tb_dtype_name(tb_dtype dt) { return dt < TB_DTYPE_COUNT ? dtype_info[dt].name : "?"; }
size_t tb_dtype_size(tb_dtype dt) { return dt < TB_DTYPE_COUNT ? dtype_info[dt].size : 0; }

int tb_dtype_parse(const char *name, tb_dtype *out)
{
    for (int i = 0; i < TB_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_info[i].name) == 0) { *out = (tb_dtype)i; return 0; }
    return -1;
}

int tb_dtype_is_float(tb_dtype dt)
{
    return dt == TB_F64 || dt == TB_F32 || dt == TB_F16 || dt == TB_BF16 || dt == TB_F8_E4M3 ||
           dt == TB_F8_E5M2;
}

static float bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

float tb_bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

uint16_t tb_f32_to_bf16(float f)
{
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float tb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: man * 2^-24 */
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (man << 13));
    return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t tb_f32_to_f16(float f)
{
    uint32_t u = f32_to_bits(f), sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (a < 0x38800000u) { /* result subnormal or zero: round(|f| * 2^24) */
        float v = bits_to_f32(a) * 16777216.0f;
        return (uint16_t)(sign | (uint32_t)lrintf(v));
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | (((r >> 23) - 112) << 10) | ((r >> 13) & 0x3ffu));
}

/* OCP FP8: E4M3 (bias 7, no inf, S.1111.111 is NaN), E5M2 (bias 15, IEEE-like). */
float tb_f8e4m3_to_f32(uint8_t v)
{
    int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float r;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0) r = ldexpf((float)man, -9);
    else r = ldexpf(1.0f + man / 8.0f, exp - 7);
    return sign ? -r : r;
}

float tb_f8e5m2_to_f32(uint8_t v) { return tb_f16_to_f32((uint16_t)(v << 8)); }


/* Sources may be unaligned (safetensors aligns nothing), so multi-byte elements
 * are read with memcpy, which compilers turn into plain loads. The switch sits
 * outside the loops because this is the hot path of every matmul tile. */
#define EACH(T, EXPR)                                                                             \
    for (size_t i = 0; i < n; i++) {                                                              \
        T v;                                                                                      \
        memcpy(&v, b + sizeof(T) * i, sizeof(T));                                                 \
        dst[i] = (EXPR);                                                                          \
    }                                                                                             \
    break

void tb_to_f32(tb_dtype dt, const void *src, size_t offset, size_t n, float *dst)
{
    const char *b = (const char *)src + offset * tb_dtype_size(dt);
    switch (dt) {
    case TB_F64: EACH(double, (float)v);
    case TB_F32: memcpy(dst, b, 4 * n); break;
    case TB_F16: EACH(uint16_t, tb_f16_to_f32(v));
    case TB_BF16: EACH(uint16_t, tb_bf16_to_f32(v));
    case TB_I64: EACH(int64_t, (float)v);
    case TB_I32: EACH(int32_t, (float)v);
    case TB_I16: EACH(int16_t, (float)v);
    case TB_I8: EACH(int8_t, (float)v);
    case TB_U8: EACH(uint8_t, (float)v);
    case TB_BOOL: EACH(uint8_t, v ? 1.0f : 0.0f);
    case TB_F8_E4M3: EACH(uint8_t, tb_f8e4m3_to_f32(v));
    case TB_F8_E5M2: EACH(uint8_t, tb_f8e5m2_to_f32(v));
    default:
        for (size_t i = 0; i < n; i++) dst[i] = NAN;
    }
}
#undef EACH

typedef struct {
    tb_dtype dt;
    const void *src;
    size_t offset;
    float *dst;
} to_f32_ctx;

#define TO_F32_CHUNK ((int64_t)1 << 20) /* elements a task */

static void to_f32_range(void *vctx, int64_t c0, int64_t c1, int tid)
{
    (void)tid;
    const to_f32_ctx *c = vctx;
    size_t a = (size_t)(c0 * TO_F32_CHUNK), b = (size_t)(c1 * TO_F32_CHUNK);
    tb_to_f32(c->dt, c->src, c->offset + a, b - a, c->dst + a);
}

void tb_to_f32_threads(tb_dtype dt, const void *src, size_t offset, size_t n, float *dst, int n_threads)
{
    size_t whole = n / (size_t)TO_F32_CHUNK, tail = n % (size_t)TO_F32_CHUNK;
    to_f32_ctx c = {dt, src, offset, dst};
    tb_parallel_for(n_threads, (int64_t)whole, to_f32_range, &c);
    if (tail) tb_to_f32(dt, src, offset + whole * TO_F32_CHUNK, tail, dst + whole * TO_F32_CHUNK);
}

void tb_to_f64(tb_dtype dt, const void *src, size_t offset, size_t n, double *dst)
{
    if (dt == TB_F64) {
        memcpy(dst, (const char *)src + 8 * offset, 8 * n);
        return;
    }
    if (dt == TB_I64) {
        const char *b = (const char *)src + 8 * offset;
        for (size_t i = 0; i < n; i++) { int64_t v; memcpy(&v, b + 8 * i, 8); dst[i] = (double)v; }
        return;
    }
    /* every other dtype is exactly representable in f32 */
    float buf[256];
    for (size_t i = 0; i < n; i += 256) {
        size_t k = n - i < 256 ? n - i : 256;
        tb_to_f32(dt, src, offset + i, k, buf);
        for (size_t j = 0; j < k; j++) dst[i + j] = buf[j];
    }
}
