/* Unit tests of formats/: dtype conversion against known bit patterns,
 * safetensors validation (each malformed case), writer/reader round trip,
 * and HF config parsing variants. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tb_config.h"
#include "tb_error.h"
#include "tb_fisher.h"
#include "tb_safetensors.h"

/* ---- dtype conversions: exact known values ---- */

static void test_bf16(void **state)
{
    (void)state;
    assert_true(tb_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(tb_bf16_to_f32(0xc000) == -2.0f);
    assert_true(tb_bf16_to_f32(0x4049) == 3.140625f);
    assert_int_equal(tb_f32_to_bf16(1.0f), 0x3f80);
    /* 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0) */
    assert_int_equal(tb_f32_to_bf16(1.00390625f), 0x3f80);
    /* 1 + 3*2^-8 is halfway between 0x3f81 and 0x3f82: ties to even (0x3f82) */
    assert_int_equal(tb_f32_to_bf16(1.01171875f), 0x3f82);
    assert_true(isnan(tb_bf16_to_f32(tb_f32_to_bf16(NAN))));
}

static void test_f16(void **state)
{
    (void)state;
    assert_true(tb_f16_to_f32(0x3c00) == 1.0f);
    assert_true(tb_f16_to_f32(0xc000) == -2.0f);
    assert_true(tb_f16_to_f32(0x7bff) == 65504.0f);          /* max normal */
    assert_true(tb_f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* min subnormal */
    assert_true(isinf(tb_f16_to_f32(0x7c00)));
    assert_true(isnan(tb_f16_to_f32(0x7e00)));
    assert_int_equal(tb_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(tb_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(tb_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(tb_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
    /* every f16 value round-trips through f32 */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue; /* NaN payloads */
        assert_int_equal(tb_f32_to_f16(tb_f16_to_f32((uint16_t)h)), h);
    }
}

static void test_f8(void **state)
{
    (void)state;
    assert_true(tb_f8e4m3_to_f32(0x38) == 1.0f);   /* exp 7 = bias */
    assert_true(tb_f8e4m3_to_f32(0x7e) == 448.0f); /* max finite */
    assert_true(isnan(tb_f8e4m3_to_f32(0x7f)));
    assert_true(tb_f8e4m3_to_f32(0x01) == ldexpf(1.0f, -9));
    assert_true(tb_f8e5m2_to_f32(0x3c) == 1.0f);
    assert_true(tb_f8e5m2_to_f32(0x7b) == 57344.0f);
    assert_true(isinf(tb_f8e5m2_to_f32(0x7c)));
}

static void test_to_f32_all_dtypes(void **state)
{
    (void)state;
    float out[3];
    int64_t i64[3] = {-5, 0, 7};
    tb_to_f32(TB_I64, i64, 0, 3, out);
    assert_true(out[0] == -5 && out[2] == 7);
    uint8_t b[3] = {0, 1, 2};
    tb_to_f32(TB_BOOL, b, 1, 2, out);
    assert_true(out[0] == 1 && out[1] == 1);
    int8_t i8[2] = {-128, 127};
    tb_to_f32(TB_I8, i8, 0, 2, out);
    assert_true(out[0] == -128 && out[1] == 127);
    double f64[2] = {0.5, -1.25};
    tb_to_f32(TB_F64, f64, 1, 1, out);
    assert_true(out[0] == -1.25f);
}

/* the threaded conversion: every element, chunk edges and the tail included,
 * is the bf16 pattern shifted into an f32's high half */
static void test_to_f32_threads(void **state)
{
    (void)state;
    const size_t n = ((size_t)5 << 19) + 7, off = 3; /* 2.5 chunks of 2^20, and a tail */
    uint16_t *src = malloc((n + off) * sizeof *src);
    float *out = malloc(n * sizeof *out);
    assert_non_null(src);
    assert_non_null(out);
    for (size_t i = 0; i < n + off; i++) src[i] = (uint16_t)((i * 2654435761u) & 0x7f7f); /* finite patterns */
    tb_to_f32_threads(TB_BF16, src, off, n, out, 3);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &out[i], 4);
        bad += bits != (uint32_t)src[off + i] << 16;
    }
    assert_int_equal(bad, 0);
    free(src);
    free(out);
}

/* ---- safetensors validation ---- */

/* Build a file image: 8-byte length + header + data. */
static tb_mapped image(const char *header, size_t data_bytes, int64_t len_override)
{
    size_t hl = strlen(header);
    uint8_t *buf = calloc(1, 8 + hl + data_bytes);
    uint64_t n = len_override >= 0 ? (uint64_t)len_override : hl;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_bytes; i++) buf[8 + hl + i] = (uint8_t)i;
    return (tb_mapped){buf, 8 + hl + data_bytes, 0};
}

static int open_image(const char *header, size_t data_bytes, int64_t len_override, st_file *f)
{
    tb_err_clear();
    return st_open_mapped(f, "x.safetensors", image(header, data_bytes, len_override));
}

#define EXPECT_BAD(hdr, nbytes, override, needle)                                                     \
    do {                                                                                              \
        st_file f_;                                                                                   \
        assert_int_equal(open_image((hdr), (nbytes), (override), &f_), TB_EDATA);                    \
        if (!strstr(tb_errmsg(), (needle))) fail_msg("message '%s' lacks '%s'", tb_errmsg(), (needle)); \
        assert_non_null(strstr(tb_errmsg(), "x.safetensors: "));                                      \
    } while (0)

static void test_st_valid(void **state)
{
    (void)state;
    st_file f;
    const char *h = "{\"__metadata__\":{\"k\":\"v\"},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                    "\"a\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]}}";
    assert_int_equal(open_image(h, 16, -1, &f), TB_OK);
    assert_int_equal(f.n_tensors, 2);
    assert_string_equal(f.tensors[0].name, "a"); /* offset order */
    const st_tensor *b = st_find(&f, "b");
    assert_non_null(b);
    assert_int_equal(b->numel, 2);
    assert_int_equal(b->nbytes, 8);
    assert_null(st_find(&f, "c"));
    assert_string_equal(st_meta(&f, "k"), "v");
    st_close(&f);
}

static void test_st_malformed(void **state)
{
    (void)state;
    st_file f;
    /* 0 bytes */
    tb_err_clear();
    assert_int_equal(st_open_mapped(&f, "x.safetensors", (tb_mapped){NULL, 0, 0}), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "too short"));
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    EXPECT_BAD(ok, 12, -1, "truncated");                      /* truncated data */
    EXPECT_BAD(ok, 16, 1 << 20, "past end of file");          /* header length past EOF */
    EXPECT_BAD(ok, 16, (int64_t)200 << 20, "exceeds");        /* header length above limit */
    EXPECT_BAD("{\"a\":{\"dtype\":\"F32\",", 0, -1, "not valid JSON");
    EXPECT_BAD("{\"a\":{\"dtype\":\"Q4\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, -1, "unknown dtype 'Q4'");
    EXPECT_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,16]}}", 16, -1, "needs 20 bytes");
    EXPECT_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, -1, "overlap 'a'");
    EXPECT_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 16, -1, "out of bounds");
    EXPECT_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
               16, -1, "duplicate tensor name 'a'");
    EXPECT_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, -1, "gap");
    EXPECT_BAD("{\"__metadata__\":{\"k\":1}}", 0, -1, "not a string");
    EXPECT_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, -1, "shape[0]");
    EXPECT_BAD("[1,2]", 0, -1, "not a JSON object");
    EXPECT_BAD("{\"\xff\":1}", 0, -1, "UTF-8");
}

static void test_st_roundtrip(void **state)
{
    (void)state;
    char path[] = "/tmp/tb_test_st_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    float a[6] = {1, -2, 3.5f, 0, 1e-30f, 7};
    uint16_t b[3] = {0x3f80, 0xc000, 0x0000};
    int32_t ids[2] = {-1, 2147483647};
    st_entry e[3] = {
        {"w.a", TB_F32, 2, {2, 3}, a},
        {"w.b", TB_BF16, 1, {3}, b},
        {"ids", TB_I32, 2, {1, 2}, ids},
    };
    const char *meta[] = {"tool", "test", "n", "3"};
    assert_int_equal(st_save(path, e, 3, meta, 2), TB_OK);
    st_file f;
    assert_int_equal(st_open(&f, path), TB_OK);
    assert_int_equal(f.n_tensors, 3);
    assert_int_equal(f.header_size % 8, 0);
    const st_tensor *t = st_find(&f, "w.a");
    assert_non_null(t);
    assert_int_equal(t->shape[1], 3);
    assert_memory_equal(t->data, a, sizeof a);
    t = st_find(&f, "w.b");
    float *fb = st_tensor_f32(t);
    assert_true(fb[0] == 1.0f && fb[1] == -2.0f && fb[2] == 0.0f);
    free(fb);
    assert_memory_equal(st_find(&f, "ids")->data, ids, sizeof ids);
    assert_string_equal(st_meta(&f, "n"), "3");
    st_close(&f);
    unlink(path);
}

static void test_writer_misuse(void **state)
{
    (void)state;
    st_writer *w = st_writer_new();
    int64_t shape[1] = {2};
    assert_int_equal(st_writer_add(w, "a", TB_F32, 1, shape), TB_OK);
    assert_int_equal(st_writer_add(w, "a", TB_F32, 1, shape), TB_EUSAGE);
    FILE *fp = tmpfile();
    assert_int_equal(st_writer_begin(w, fp, "tmp"), TB_OK);
    float v[3] = {0};
    assert_int_equal(st_writer_write(w, v, 4), TB_OK);
    assert_int_equal(st_writer_finish(w), TB_EUSAGE); /* 4 of 8 bytes */
    assert_int_equal(st_writer_write(w, v, 8), TB_EUSAGE); /* 12 > 8 */
    fclose(fp);
    st_writer_free(w);
}

/* ---- .fisher writer: a Gram given as its upper triangle comes out
 * symmetric however the rows are blocked, and only the upper triangle and
 * the data's own bytes are ever fetched ---- */

typedef struct {
    const char *lo[2], *hi[2]; /* the byte ranges fetches may touch */
    int64_t calls;
} fetch_log;

static void fetch_checked(void *ctx, void *dst, const void *src, size_t bytes)
{
    fetch_log *l = ctx;
    const char *a = src;
    assert_true((a >= l->lo[0] && a + bytes <= l->hi[0]) || (a >= l->lo[1] && a + bytes <= l->hi[1]));
    l->calls++;
    memcpy(dst, src, bytes);
}

static void test_fisher_write_blocks(void **state)
{
    (void)state;
    enum { K = 7, R = 3, C = 5 };
    double G[K * K], full[K * K];
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++) {
            /* upper triangle: distinct values; lower: NaN poison the file must not show */
            G[i * K + j] = j >= i ? 1.0 + i * 10 + j * 0.125 : NAN;
            full[i * K + j] = j >= i ? G[i * K + j] : 1.0 + j * 10 + i * 0.125;
        }
    float sums[R * C];
    for (int i = 0; i < R * C; i++) sums[i] = (float)(i + 1) * 3.0f;
    uint16_t grad[2 * R * C];
    for (int i = 0; i < 2 * R * C; i++) grad[i] = (uint16_t)(0x3f80 + i);
    const char *meta[] = {"tensorbit.kind", "fisher"};
    /* block sizes: one row, two rows (7 = 2 + 2 + 2 + 1), all rows */
    const size_t blocks[] = {1, K * sizeof(double), 2 * K * sizeof(double), 1 << 20};
    for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++) {
        tb_fisher_stat st[3] = {
            {.kind = TB_FISHER_STAT_DIAG, .weight = "model.layers.0.mlp.up_proj.weight", .rows = R, .cols = C,
             .data = sums, .scale = 1.0 / 3},
            {.kind = TB_FISHER_STAT_GRAM, .weight = "model.layers.0.self_attn.q_proj.weight", .rows = K, .cols = K,
             .data = G, .tokens = 42},
            {.kind = TB_FISHER_STAT_GRAD, .weight = "model.layers.0.mlp.up_proj.weight", .rows = R, .cols = C,
             .samples = 2, .data = grad},
        };
        char path[] = "/tmp/tb_test_fisher_XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        close(fd);
        /* fetches may touch G and sums, nothing else: checked by range here,
         * and that G's lower triangle is never used by its NaN poison below */
        fetch_log lg = {{(const char *)G, (const char *)sums}, {(const char *)(G + K * K), (const char *)(sums + R * C)}, 0};
        tb_fisher_source src = {.fetch = fetch_checked, .ctx = &lg, .block_bytes = blocks[b]};
        assert_int_equal(tb_fisher_write(path, st, 3, &src, meta, 1), TB_OK);
        assert_true(lg.calls > 0);
        st_file f;
        assert_int_equal(st_open(&f, path), TB_OK);
        assert_int_equal(tb_fisher_check(&f), TB_OK);
        const st_tensor *t = st_find(&f, "gram.model.layers.0.self_attn.q_proj.input");
        assert_non_null(t);
        assert_int_equal(t->dtype, TB_F64);
        assert_memory_equal(t->data, full, sizeof full);
        double n = 0;
        assert_int_equal(tb_fisher_gram_count(&f, "model.layers.0.self_attn.q_proj", &n), TB_OK);
        assert_true(n == 42);
        t = st_find(&f, "fisher.model.layers.0.mlp.up_proj.weight");
        assert_non_null(t);
        for (int i = 0; i < R * C; i++) assert_true(((const float *)t->data)[i] == (float)((i + 1) * 3.0f * (1.0 / 3)));
        t = st_find(&f, "grad.model.layers.0.mlp.up_proj.weight");
        assert_non_null(t);
        assert_int_equal(t->shape[0], 2);
        assert_memory_equal(t->data, grad, sizeof grad);
        /* file order: Fisher, Gram and its count, samples */
        assert_string_equal(f.tensors[0].name, "fisher.model.layers.0.mlp.up_proj.weight");
        st_close(&f);
        unlink(path);
    }
}

/* ---- config ---- */

static void test_config_variants(void **state)
{
    (void)state;
    tb_config c;
    const char *llama3 = "{\"model_type\":\"llama\",\"hidden_size\":4096,\"intermediate_size\":14336,"
                         "\"num_hidden_layers\":32,\"num_attention_heads\":32,\"num_key_value_heads\":8,"
                         "\"vocab_size\":128256,\"rope_theta\":500000.0,\"rms_norm_eps\":1e-5,"
                         "\"bos_token_id\":128000,\"eos_token_id\":[128001,128008,128009]}";
    assert_int_equal(tb_config_parse(&c, "c.json", llama3), TB_OK);
    assert_int_equal(c.head_dim, 128); /* default hidden / heads */
    assert_int_equal(c.n_kv_heads, 8);
    assert_true(c.rope_theta == 500000.0);
    assert_int_equal(c.n_eos, 3);
    assert_int_equal(c.eos_token_ids[2], 128009);
    assert_int_equal(c.tie_word_embeddings, 0);
    /* Llama-3-8B's published parameter count */
    assert_true(tb_config_param_count(&c) == 8030261248LL);

    const char *nested = "{\"model_type\":\"mistral\",\"hidden_size\":256,\"intermediate_size\":768,"
                         "\"num_hidden_layers\":8,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":64,"
                         "\"vocab_size\":8192,\"rope_parameters\":{\"rope_theta\":10000.0,\"rope_type\":\"default\"},"
                         "\"sliding_window\":null,\"bos_token_id\":1,\"eos_token_id\":2}";
    assert_int_equal(tb_config_parse(&c, "c.json", nested), TB_OK);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.n_eos, 1);
    assert_true(tb_config_param_count(&c) == 10490112LL);

    const char *qwen2 = "{\"model_type\":\"qwen2\",\"hidden_size\":896,\"intermediate_size\":4864,"
                        "\"num_hidden_layers\":24,\"num_attention_heads\":14,\"num_key_value_heads\":2,"
                        "\"vocab_size\":151936,\"sliding_window\":32768,\"use_sliding_window\":false,"
                        "\"tie_word_embeddings\":true,\"rope_theta\":1000000.0}";
    assert_int_equal(tb_config_parse(&c, "c.json", qwen2), TB_OK);
    assert_int_equal(c.sliding_window, 0); /* present but not in use */
    assert_int_equal(c.attention_bias, 1);
    assert_true(tb_config_param_count(&c) == 494032768LL); /* Qwen2-0.5B */

    tb_err_clear();
    assert_int_equal(tb_config_parse(&c, "c.json", "{\"model_type\":\"gpt2\",\"architectures\":[\"GPT2LMHeadModel\"]}"),
                     TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "unsupported architecture 'gpt2'"));
    assert_int_equal(tb_config_parse(&c, "c.json", "{\"model_type\":\"llama\"}"), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "missing 'hidden_size'"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16),         cmocka_unit_test(test_f16),
        cmocka_unit_test(test_f8),           cmocka_unit_test(test_to_f32_all_dtypes),
        cmocka_unit_test(test_to_f32_threads),
        cmocka_unit_test(test_st_valid),     cmocka_unit_test(test_st_malformed),
        cmocka_unit_test(test_st_roundtrip), cmocka_unit_test(test_writer_misuse),
        cmocka_unit_test(test_config_variants), cmocka_unit_test(test_fisher_write_blocks),
    };
    return cmocka_run_group_tests_name("formats", tests, NULL, NULL);
}
