/* Unit tests of common/: SHA-256 against FIPS 180-4 vectors, option parsing,
 * error context, atomic output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tb_error.h"
#include "tb_io.h"
#include "tb_opts.h"
#include "tb_sha256.h"

static void hash_str(const char *s, size_t chunk, char hex[65])
{
    tb_sha256 h;
    uint8_t d[32];
    tb_sha256_init(&h);
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i += chunk) tb_sha256_update(&h, s + i, n - i < chunk ? n - i : chunk);
    tb_sha256_final(&h, d);
    tb_sha256_hex(d, hex);
}

static void test_sha256_vectors(void **state)
{
    (void)state;
    char hex[65];
    hash_str("", 1, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hash_str("abc", 1, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    for (size_t chunk = 1; chunk <= 64; chunk *= 3) { /* split points must not matter */
        hash_str(two, chunk, hex);
        assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    }
    char *million = malloc(1000001);
    memset(million, 'a', 1000000);
    million[1000000] = 0;
    hash_str(million, 4096, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
}

static void test_opts(void **state)
{
    (void)state;
    int n, m, v;
    double d;
    assert_int_equal(tb_parse_nm("--nm", "2:4", 16, &n, &m), TB_OK);
    assert_true(n == 2 && m == 4);
    assert_int_equal(tb_parse_nm("--nm", "4:4", 16, &n, &m), TB_EUSAGE);
    assert_int_equal(tb_parse_nm("--nm", "2:32", 16, &n, &m), TB_EUSAGE);
    assert_int_equal(tb_parse_nm("--nm", "2-4", 16, &n, &m), TB_EUSAGE);
    assert_int_equal(tb_parse_int("-n", "12", 1, 100, &v), TB_OK);
    assert_int_equal(v, 12);
    assert_int_equal(tb_parse_int("-n", "12x", 1, 100, &v), TB_EUSAGE);
    assert_non_null(strstr(tb_errmsg(), "-n: '12x' is not an integer"));
    assert_int_equal(tb_parse_int("-n", "0", 1, 100, &v), TB_EUSAGE);
    assert_int_equal(tb_parse_double("--temp", "0.7", 0, 10, &d), TB_OK);
    assert_int_equal(tb_parse_double("--temp", "nan", 0, 10, &d), TB_EUSAGE);
}

static void test_error_context(void **state)
{
    (void)state;
    tb_fail(TB_EDATA, "tensor 'x': bad");
    assert_int_equal(tb_err_context("f.st"), TB_EDATA);
    assert_string_equal(tb_errmsg(), "f.st: tensor 'x': bad");
}

static void test_atomic_output(void **state)
{
    (void)state;
    char dir[] = "/tmp/tb_out_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = tb_path_join(dir, "out.bin");
    tb_outfile o;
    assert_int_equal(tb_out_open(&o, path), TB_OK);
    fputs("partial", o.fp);
    assert_false(tb_file_exists(path)); /* nothing at the final path until commit */
    tb_out_abort(&o);
    assert_false(tb_file_exists(path));
    assert_int_equal(tb_out_open(&o, path), TB_OK);
    fputs("whole", o.fp);
    assert_int_equal(tb_out_commit(&o), TB_OK);
    char *text;
    assert_int_equal(tb_read_text(path, &text, NULL), TB_OK);
    assert_string_equal(text, "whole");
    free(text);
    unlink(path);
    rmdir(dir);
    /* a missing directory is an I/O error naming the path */
    assert_int_equal(tb_out_open(&o, "/nonexistent-dir/x.st"), TB_EIO);
    assert_non_null(strstr(tb_errmsg(), "/nonexistent-dir/x.st"));
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_opts),
        cmocka_unit_test(test_error_context),
        cmocka_unit_test(test_atomic_output),
    };
    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}
