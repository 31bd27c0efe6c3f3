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
#include "tb_kind.h"
#include "tb_log.h"
#include "tb_sha256.h"
#include "tb_threads.h"

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

static void sha256_vectors(void)
{
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

static void digest_of(const uint8_t *p, size_t n, size_t chunk, char hex[65])
{
    tb_sha256 h;
    uint8_t d[32];
    tb_sha256_init(&h);
    for (size_t i = 0; i < n; i += chunk) tb_sha256_update(&h, p + i, n - i < chunk ? n - i : chunk);
    tb_sha256_final(&h, d);
    tb_sha256_hex(d, hex);
}

/* the FIPS 180-4 vectors through both the portable code and the CPU's SHA
 * instructions (where this machine has them), and the two against each other
 * on random messages of every length around the block and padding edges */
static void test_sha256_vectors(void **state)
{
    (void)state;
    tb_sha256_accelerated(0);
    sha256_vectors();
    int accel = tb_sha256_accelerated(1);
    sha256_vectors();
    print_message("sha256: CPU SHA instructions %s\n", accel ? "used (compared with the portable code)" : "absent");
    uint64_t x = 88172645463325252ull;
    uint8_t buf[1000];
    for (size_t i = 0; i < sizeof buf; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (uint8_t)(x >> 32);
    }
    for (size_t n = 0; n <= sizeof buf; n += n < 200 ? 1 : 37) {
        char a[65], b[65];
        tb_sha256_accelerated(0);
        digest_of(buf, n, 7, a);
        tb_sha256_accelerated(1);
        digest_of(buf, n, n ? n : 1, b);
        assert_string_equal(a, b);
    }
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

static void test_layers(void **state)
{
    (void)state;
    tb_layer_range r = {0};
    assert_true(tb_layers_has(&r, 7)); /* unset: every layer */
    assert_int_equal(tb_parse_layers("--layers", "3", &r), TB_OK);
    assert_true(r.set && r.lo == 3 && r.hi == 3);
    assert_int_equal(tb_parse_layers("--layers", "0-1", &r), TB_OK);
    assert_true(r.lo == 0 && r.hi == 1 && tb_layers_has(&r, 1) && !tb_layers_has(&r, 2));
    assert_int_equal(tb_parse_layers("--layers", "2:4", &r), TB_OK); /* B excluded */
    assert_true(r.lo == 2 && r.hi == 3);
    assert_int_equal(tb_parse_layers("--layers", "4:4", &r), TB_EUSAGE);
    assert_non_null(strstr(tb_errmsg(), "'4:4' is an empty range"));
    const char *bad[] = {"", "a", "-1", "1-", "1-x", "1:2:3", "1 - 2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) assert_int_equal(tb_parse_layers("--layers", bad[i], &r), TB_EUSAGE);
    assert_int_equal(tb_layer_of("model.layers.12.mlp.up_proj.weight"), 12);
    assert_int_equal(tb_layer_of("model.embed_tokens.weight"), -1);
    assert_int_equal(tb_layer_of("model.sublayers.3.x"), -1);
}

/* the option table: every form of a value, bundling, "--", and one message per mistake */
static void test_option_table(void **state)
{
    (void)state;
    const char *model = NULL, *out = "-";
    int json = 0, threads = 4, choice = 0;
    double temp = 0;
    tb_layer_range layers = {0};
    static const char *const names[] = {"dense", "sparse", NULL};
    const tb_option table[] = {
        TB_OPT_MODEL_OPTIONAL(&model, "m"),
        TB_OPT_OUTPUT(&out, "FILE", 0, "o"),
        TB_OPT_JSON(&json, "j"),
        TB_OPT_THREADS(&threads),
        TB_OPT_DOUBLE(0, "temp", &temp, "T", 0, 10, "t"),
        TB_OPT_CHOICE(0, "format", &choice, names, "f"),
        TB_OPT_LAYERS(&layers, "l"),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "t", .usage = "t", .options = table, .args = "FILE", .max_args = -1};
    char *argv1[] = {"t", "-j3", "--temp=0.5", "-o", "x", "--format", "sparse", "a", "--layers", "1-2", "--", "--json", "-", NULL};
    char **args;
    int n;
    tb_log_init("t");
    assert_int_equal(tb_opts_parse(&cmd, 13, argv1, &args, &n), TB_OPTS_CONTINUE);
    assert_int_equal(threads, 3);
    assert_true(temp == 0.5);
    assert_string_equal(out, "x");
    assert_int_equal(choice, 1);
    assert_true(layers.set && layers.lo == 1 && layers.hi == 2);
    assert_int_equal(json, 0); /* after "--" it is an argument */
    assert_int_equal(n, 3);
    assert_string_equal(args[0], "a");
    assert_string_equal(args[1], "--json");
    assert_string_equal(args[2], "-");
    assert_true(tb_opt_given(&threads) && !tb_opt_given(&json));
    /* mistakes: exit status 1 */
    char *bad1[] = {"t", "--bogus", NULL}, *bad2[] = {"t", "-j", NULL}, *bad3[] = {"t", "--format", "x", NULL},
         *bad4[] = {"t", "-m", "-", NULL}, *bad5[] = {"t", "--json=1", NULL}, *bad6[] = {"t", "-j", "0", NULL};
    assert_int_equal(tb_opts_parse(&cmd, 2, bad1, &args, &n), 1);
    assert_int_equal(tb_opts_parse(&cmd, 2, bad2, &args, &n), 1);
    assert_int_equal(tb_opts_parse(&cmd, 3, bad3, &args, &n), 1);
    assert_int_equal(tb_opts_parse(&cmd, 3, bad4, &args, &n), 1);
    assert_int_equal(tb_opts_parse(&cmd, 2, bad5, &args, &n), 1);
    assert_int_equal(tb_opts_parse(&cmd, 3, bad6, &args, &n), 1);
    /* bundled short flags: -qv */
    char *ok2[] = {"t", "-qv", NULL};
    assert_int_equal(tb_opts_parse(&cmd, 2, ok2, &args, &n), TB_OPTS_CONTINUE);
    assert_int_equal(tb_log_verbose(), 1);
    tb_log_set_verbose(0);
}

static void test_kinds(void **state)
{
    (void)state;
    const uint8_t st[] = {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    assert_int_equal(tb_kind_of_bytes(st, sizeof st, sizeof st), TB_KIND_SAFETENSORS);
    assert_int_equal(tb_kind_of_bytes(st, sizeof st, 9), TB_KIND_BINARY); /* header past the end */
    const char *tbm = "{\n  \"format\": \"tensorbit.tbm\"}";
    assert_int_equal(tb_kind_of_bytes((const uint8_t *)tbm, strlen(tbm), strlen(tbm)), TB_KIND_TBM);
    const char *json = "[1, 2]", *text = "[Emma by Jane Austen 1816]\nVOLUME I\n", *utf8 = "caf\xc3\xa9 \xe2\x80\x94";
    assert_int_equal(tb_kind_of_bytes((const uint8_t *)json, strlen(json), strlen(json)), TB_KIND_JSON);
    assert_int_equal(tb_kind_of_bytes((const uint8_t *)text, strlen(text), strlen(text)), TB_KIND_TEXT);
    assert_int_equal(tb_kind_of_bytes((const uint8_t *)utf8, strlen(utf8), strlen(utf8)), TB_KIND_TEXT);
    const uint8_t bin[] = {0xff, 0xfe, 0x00, 0x41};
    assert_int_equal(tb_kind_of_bytes(bin, sizeof bin, sizeof bin), TB_KIND_BINARY);
    assert_int_equal(tb_kind_of_bytes(bin, 0, 0), TB_KIND_EMPTY);
    assert_int_equal(tb_kind_of_path("-"), TB_KIND_STREAM);
    assert_int_equal(tb_kind_of_path("meta-llama/Llama-2-7b-hf"), TB_KIND_HUB_ID);
    assert_int_equal(tb_kind_of_path("/nonexistent/x/y"), TB_KIND_MISSING);
    assert_int_equal(tb_check_input("meta-llama/Llama-2-7b-hf", TB_WANT_MODEL, "a model", NULL), TB_EIO);
    assert_non_null(strstr(tb_errmsg(), "huggingface-cli download meta-llama/Llama-2-7b-hf"));
}

/* Fails at index 700 and 300: whatever the thread count, the error reported is the lowest index's. */
static int fail_at(void *ctx, int64_t begin, int64_t end, int tid)
{
    (void)ctx;
    (void)tid;
    for (int64_t i = begin; i < end; i++)
        if (i == 300 || i == 700) return tb_fail(TB_EDATA, "bad item %lld", (long long)i);
    return TB_OK;
}

static void test_parallel_try(void **state)
{
    (void)state;
    for (int t = 1; t <= 8; t++) {
        tb_err_clear();
        assert_int_equal(tb_parallel_try(t, 1000, fail_at, NULL), TB_EDATA);
        assert_string_equal(tb_errmsg(), "bad item 300");
    }
    assert_int_equal(tb_parallel_try(4, 250, fail_at, NULL), TB_OK);
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
        cmocka_unit_test(test_layers),
        cmocka_unit_test(test_option_table),
        cmocka_unit_test(test_kinds),
        cmocka_unit_test(test_parallel_try),
        cmocka_unit_test(test_error_context),
        cmocka_unit_test(test_atomic_output),
    };
    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}
