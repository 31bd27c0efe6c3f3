/* Unit tests of the hardening (issue 15, RELIABILITY.md): bounds on what a
 * file declares, range-checked JSON numbers, regular files only, one-line
 * errors, the checked statistics readers, and JSON strings with NULs. Each
 * case is a known input with a known answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tb_config.h"
#include "tb_error.h"
#include "tb_fisher.h"
#include "tb_io.h"
#include "tb_json.h"
#include "tb_safetensors.h"

/* a safetensors image in memory: header JSON and `data` bytes of data */
static int open_st(st_file *f, const char *header, const void *data, size_t nd)
{
    size_t nh = strlen(header), n = 8 + nh + nd;
    uint8_t *buf = malloc(n);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)nh >> (8 * i));
    memcpy(buf + 8, header, nh);
    if (nd) memcpy(buf + 8 + nh, data, nd);
    return st_open_mapped(f, "t.st", (tb_mapped){buf, n, 0});
}

static void test_zero_element_bound(void **state)
{
    (void)state;
    st_file f;
    /* [2, 0] in a file of ~60 bytes: fine, an empty tensor */
    assert_int_equal(open_st(&f, "{\"e\":{\"dtype\":\"F32\",\"shape\":[2,0],\"data_offsets\":[0,0]}}", NULL, 0), TB_OK);
    assert_int_equal(f.tensors[0].numel, 0);
    st_close(&f);
    /* [2^53, 0]: no bytes, but a row count no loop may walk */
    assert_int_equal(open_st(&f, "{\"e\":{\"dtype\":\"F32\",\"shape\":[9007199254740992,0],\"data_offsets\":[0,0]}}", NULL, 0),
                     TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "zero-element shape"));
    /* the bound is the file's size: [1000, 0, 3] needs 3000 bytes of file */
    assert_int_equal(open_st(&f, "{\"e\":{\"dtype\":\"U8\",\"shape\":[1000,0,3],\"data_offsets\":[0,0]}}", NULL, 0), TB_EDATA);
    /* 2^53 + 1 is not exact in a double: refused as a shape */
    assert_int_equal(open_st(&f, "{\"e\":{\"dtype\":\"F32\",\"shape\":[9007199254740993,0],\"data_offsets\":[0,0]}}", NULL, 0),
                     TB_EDATA);
}

static void test_header_length_not_printed(void **state)
{
    (void)state;
    st_file f;
    uint8_t *buf = malloc(16);
    memcpy(buf, "SECRET!!12345678", 16);
    assert_int_equal(st_open_mapped(&f, "secret", (tb_mapped){buf, 16, 0}), TB_EDATA);
    char num[32];
    uint64_t v;
    memcpy(&v, "SECRET!!", 8);
    snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    assert_null(strstr(tb_errmsg(), num));
    assert_non_null(strstr(tb_errmsg(), "header length field"));
}

static void test_one_line_errors(void **state)
{
    (void)state;
    tb_fail(TB_EDATA, "tensor '%s': bad", "a\nb\x1b[31m");
    assert_string_equal(tb_errmsg(), "tensor 'a?b?[31m': bad");
    tb_err_context("file\r%d", 1);
    assert_string_equal(tb_errmsg(), "file?1: tensor 'a?b?[31m': bad");
    tb_err_clear();
}

static void test_regular_files_only(void **state)
{
    (void)state;
    tb_mapped m;
    assert_int_equal(tb_map_file("/dev/zero", &m), TB_EIO);
    assert_non_null(strstr(tb_errmsg(), "not a regular file"));
    char dir[] = "/tmp/tb-robust-XXXXXX", fifo[64];
    assert_non_null(mkdtemp(dir));
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    /* no writer: a blocking open would hang here */
    assert_int_equal(tb_map_file(fifo, &m), TB_EIO);
    assert_int_equal(tb_map_file(dir, &m), TB_EIO);
    assert_non_null(strstr(tb_errmsg(), "is a directory"));
    unlink(fifo);
    rmdir(dir);
}

static void test_atomic_output(void **state)
{
    (void)state;
    char dir[] = "/tmp/tb-robust-XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/out", dir);
    tb_outfile o;
    assert_int_equal(tb_out_open(&o, path), TB_OK);
    fputs("new", o.fp);
    struct stat st;
    assert_int_not_equal(stat(path, &st), 0); /* nothing at the final path until commit */
    assert_int_equal(tb_out_commit(&o), TB_OK);
    char *text;
    assert_int_equal(tb_read_text(path, &text, NULL), TB_OK);
    assert_string_equal(text, "new");
    free(text);
    /* an aborted rewrite leaves the old file, and no temporary */
    assert_int_equal(tb_out_open(&o, path), TB_OK);
    fputs("torn", o.fp);
    tb_out_abort(&o);
    assert_int_equal(tb_read_text(path, &text, NULL), TB_OK);
    assert_string_equal(text, "new");
    free(text);
    unlink(path);
    assert_int_equal(rmdir(dir), 0); /* empty: no temporary left */
}

static void test_json_numbers(void **state)
{
    (void)state;
    const char *ok[] = {"0", "7", "9007199254740992"}, *bad[] = {"-1", "1.5", "1e300", "9007199254740994", "\"3\"", "null"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        cJSON *j = cJSON_Parse(ok[i]);
        uint64_t v;
        assert_int_equal(tb_json_u64(j, UINT64_MAX, &v), 0);
        assert_int_equal(v, strtoull(ok[i], NULL, 10));
        cJSON_Delete(j);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cJSON *j = cJSON_Parse(bad[i]);
        uint64_t v;
        assert_int_equal(tb_json_u64(j, UINT64_MAX, &v), -1);
        cJSON_Delete(j);
    }
    cJSON *j = cJSON_Parse("5");
    uint64_t v;
    assert_int_equal(tb_json_u64(j, 4, &v), -1); /* above max */
    cJSON_Delete(j);
}

static void test_json_string(void **state)
{
    (void)state;
    char *s;
    size_t n;
    assert_int_equal(tb_json_string(" \"hello\\u0000 world\" \n", 22, &s, &n), 0);
    assert_int_equal(n, 12);
    assert_memory_equal(s, "hello\0 world", 12);
    free(s);
    const char *pair = "\"\\ud83d\\ude00\\n\\\"\"";
    assert_int_equal(tb_json_string(pair, strlen(pair), &s, &n), 0);
    assert_int_equal(n, 6);
    assert_memory_equal(s, "\xf0\x9f\x98\x80\n\"", 6);
    free(s);
    const char *bad[] = {"\"abc", "\"\\ud83d\"", "\"\\ude00\"", "\"a\"b", "\"\\x\"", "\"tab\there\"", "abc", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(tb_json_string(bad[i], strlen(bad[i]), &s, &n), -1);
        assert_null(s);
    }
}

static const char *cfg_base =
    "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"vocab_size\":100%s}";

static int parse_cfg(tb_config *c, const char *extra)
{
    char buf[1024];
    snprintf(buf, sizeof buf, cfg_base, extra);
    return tb_config_parse(c, "config.json", buf);
}

static void test_config_ranges(void **state)
{
    (void)state;
    tb_config c;
    assert_int_equal(parse_cfg(&c, ",\"bos_token_id\":1,\"eos_token_id\":[2,3]"), TB_OK);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.n_eos, 2);
    assert_int_equal(tb_config_param_count(&c), 2 * 100 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64);
    assert_int_equal(parse_cfg(&c, ",\"bos_token_id\":1e300"), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "bos_token_id"));
    assert_int_equal(parse_cfg(&c, ",\"eos_token_id\":[2,-1]"), TB_EDATA);
    assert_int_equal(parse_cfg(&c, ",\"eos_token_id\":2.5"), TB_EDATA);
    assert_int_equal(parse_cfg(&c, ",\"rope_theta\":1e999"), TB_EDATA); /* cJSON reads inf */
    assert_int_equal(parse_cfg(&c, ",\"bos_token_id\":null"), TB_OK);
    assert_int_equal(c.bos_token_id, -1);
    /* every field below 1e9, the product past 2^63: refused, not wrapped */
    const char *huge = "{\"model_type\":\"llama\",\"hidden_size\":999999999,\"intermediate_size\":999999999,"
                       "\"num_hidden_layers\":999999999,\"num_attention_heads\":1,\"head_dim\":999999998,"
                       "\"vocab_size\":999999999}";
    assert_int_equal(tb_config_parse(&c, "config.json", huge), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "parameter count exceeds"));
}

static void test_fisher_readers(void **state)
{
    (void)state;
    st_file f;
    double g[4] = {2, 1, 1, NAN};
    char h[512];
    snprintf(h, sizeof h, "{\"gram.m.input\":{\"dtype\":\"F64\",\"shape\":[2,2],\"data_offsets\":[0,32]},"
                          "\"gram.m.count\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[32,40]}}");
    uint8_t data[40];
    int64_t cnt = 0;
    memcpy(data, g, 32);
    memcpy(data + 32, &cnt, 8);
    assert_int_equal(open_st(&f, h, data, 40), TB_OK);
    assert_int_equal(tb_fisher_check(&f), TB_OK);
    const st_tensor *t = st_find(&f, "gram.m.input");
    double *a, d[2];
    assert_int_equal(tb_fisher_gram_f64(t, &a), TB_EDATA);
    assert_string_equal(tb_errmsg(), "tensor 'gram.m.input': entry (1, 1) is NaN");
    assert_int_equal(tb_fisher_gram_diag(t, d), TB_EDATA);
    double n;
    assert_int_equal(tb_fisher_gram_count(&f, "m", &n), TB_EDATA); /* a count of 0 tokens */
    assert_non_null(strstr(tb_errmsg(), "not positive"));
    assert_int_equal(tb_fisher_gram_count(&f, "other", &n), TB_OK);
    assert_true(n == 0);
    st_close(&f);
    /* a negative diagonal is no Gram matrix; infinities are named */
    double g2[4] = {-1, 0, 0, 1};
    assert_int_equal(open_st(&f, "{\"gram.m.input\":{\"dtype\":\"F64\",\"shape\":[2,2],\"data_offsets\":[0,32]}}", g2, 32),
                     TB_OK);
    assert_int_equal(tb_fisher_gram_f64(st_find(&f, "gram.m.input"), &a), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "diagonal entry 0 is negative"));
    st_close(&f);
    float v[2] = {1, INFINITY};
    assert_int_equal(open_st(&f, "{\"fisher.w\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}}", v, 8), TB_OK);
    float *out;
    assert_int_equal(tb_fisher_values_f32(st_find(&f, "fisher.w"), 1, &out), TB_EDATA);
    assert_string_equal(tb_errmsg(), "tensor 'fisher.w': element 1 is infinite");
    st_close(&f);
    /* structure: a Gram that is not square is refused at open */
    assert_int_equal(open_st(&f, "{\"gram.m.input\":{\"dtype\":\"F32\",\"shape\":[2,1],\"data_offsets\":[0,8]}}", v, 8), TB_OK);
    assert_int_equal(tb_fisher_check(&f), TB_EDATA);
    st_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_element_bound), cmocka_unit_test(test_header_length_not_printed),
        cmocka_unit_test(test_one_line_errors),    cmocka_unit_test(test_regular_files_only),
        cmocka_unit_test(test_atomic_output),      cmocka_unit_test(test_json_numbers),
        cmocka_unit_test(test_json_string),        cmocka_unit_test(test_config_ranges),
        cmocka_unit_test(test_fisher_readers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
