/* Unit tests of formats/tb_tokenizer: every case of both models'
 * tokenizer-cases.json (ids, ids with BOS, decoded text, as produced by HF
 * transformers), the split regexes on tricky strings (expected pieces taken
 * from the HF tokenizers library), byte fallback, invalid UTF-8, streaming
 * decode, BOS/EOS lookup, the NFC normalizer and the refusal of unsupported
 * tokenizers.
 *
 * Data comes from $TB_TEST_DATA (default tests/data; tests run from the repo
 * root), so CI without ../shared runs all of it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tb_error.h"
#include "tb_io.h"
#include "tb_tokenizer.h"
#include "tb_unicode_tables.h"

static const char *data_dir(void)
{
    const char *v = getenv("TB_TEST_DATA");
    return v && *v ? v : "tests/data";
}

static tb_tokenizer *load_model(const char *model)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", data_dir(), model);
    tb_tokenizer *t = NULL;
    int rc = tb_tok_load(&t, path);
    if (rc) fail_msg("loading %s: %s", path, tb_errmsg());
    return t;
}

static int ids_equal(const int32_t *got, size_t n, const cJSON *want)
{
    if ((int)n != cJSON_GetArraySize(want)) return 0;
    for (size_t i = 0; i < n; i++)
        if (got[i] != cJSON_GetArrayItem(want, (int)i)->valueint) return 0;
    return 1;
}

/* all golden cases of one model: encode with and without BOS, decode, and
 * streaming decode one id at a time gives the same text */
static void golden(const char *model)
{
    tb_tokenizer *t = load_model(model);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/tokenizer-cases.json", data_dir(), model);
    char *js;
    assert_int_equal(tb_read_text(path, &js, NULL), TB_OK);
    cJSON *root = cJSON_Parse(js), *c;
    free(js);
    assert_non_null(root);
    int n_cases = 0;
    cJSON_ArrayForEach(c, root) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const char *decoded = cJSON_GetObjectItem(c, "decoded")->valuestring;
        int32_t *ids;
        size_t n;
        assert_int_equal(tb_tok_encode(t, text, strlen(text), 0, &ids, &n), TB_OK);
        assert_non_null(ids);
        if (!ids_equal(ids, n, cJSON_GetObjectItem(c, "ids"))) fail_msg("%s: ids differ for %.60s", model, text);
        char *out;
        size_t len;
        assert_int_equal(tb_tok_decode(t, ids, n, &out, &len), TB_OK);
        assert_string_equal(out, decoded);
        assert_int_equal(len, strlen(decoded));
        free(out);

        tb_tok_stream s;
        tb_tok_stream_init(&s);
        char acc[65536];
        size_t an = 0;
        const char *p;
        size_t pl;
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(tb_tok_stream_push(t, &s, ids[i], &p, &pl), TB_OK);
            assert_true(an + pl < sizeof acc);
            memcpy(acc + an, p, pl);
            an += pl;
        }
        assert_int_equal(tb_tok_stream_flush(t, &s, &p, &pl), TB_OK);
        memcpy(acc + an, p, pl);
        an += pl;
        acc[an] = 0;
        assert_string_equal(acc, decoded);
        tb_tok_stream_free(&s);
        free(ids);

        assert_int_equal(tb_tok_encode(t, text, strlen(text), 1, &ids, &n), TB_OK);
        if (!ids_equal(ids, n, cJSON_GetObjectItem(c, "ids_with_bos")))
            fail_msg("%s: ids with BOS differ for %.60s", model, text);
        free(ids);
        n_cases++;
    }
    assert_true(n_cases >= 30);
    cJSON_Delete(root);
    tb_tok_free(t);
}

static void test_golden_llama(void **state) { (void)state; golden("tiny-llama-6m"); }
static void test_golden_mistral(void **state) { (void)state; golden("tiny-mistral-10m"); }

/* ---- splitters: expected pieces from tokenizers' Split(Regex(...), "isolated") ---- */

typedef struct {
    enum tb_tok_split kind;
    const char *text;
    const char *pieces[16];
} split_case;

static const split_case split_cases[] = {
    {TB_SPLIT_GPT2, "Hello world", {"Hello", " world", NULL}},
    {TB_SPLIT_GPT2, "Hello  world", {"Hello", " ", " world", NULL}},
    {TB_SPLIT_GPT2, "   indented\x0a""\x0a""\x0a""three", {"  ", " indented", "\x0a""\x0a""", "\x0a""", "three", NULL}},
    {TB_SPLIT_GPT2, "don't won't it's I'll we've", {"don", "'t", " won", "'t", " it", "'s", " I", "'ll", " we", "'ve", NULL}},
    {TB_SPLIT_GPT2, "DON'T IT'S WE'VE I'LL", {"DON", "'", "T", " IT", "'", "S", " WE", "'", "VE", " I", "'", "LL", NULL}},
    {TB_SPLIT_GPT2, "it'\xc5""\xbf""a", {"it", "'", "\xc5""\xbf""a", NULL}},
    {TB_SPLIT_GPT2, "x'\xef""\xac""\x86""a", {"x", "'", "\xef""\xac""\x86""a", NULL}},
    {TB_SPLIT_GPT2, "'Re's", {"'", "Re", "'s", NULL}},
    {TB_SPLIT_GPT2, "1234567 89", {"1234567", " 89", NULL}},
    {TB_SPLIT_GPT2, "x1234y", {"x", "1234", "y", NULL}},
    {TB_SPLIT_GPT2, "a\x09""b", {"a", "\x09""", "b", NULL}},
    {TB_SPLIT_GPT2, "\x09""\x09""word", {"\x09""", "\x09""", "word", NULL}},
    {TB_SPLIT_GPT2, "(word)", {"(", "word", ")", NULL}},
    {TB_SPLIT_GPT2, "a  \x0a""\x0a"" b", {"a", "  \x0a""\x0a""", " b", NULL}},
    {TB_SPLIT_GPT2, "x \x0d""\x0a""\x0d""\x0a"" y", {"x", " \x0d""\x0a""\x0d""\x0a""", " y", NULL}},
    {TB_SPLIT_GPT2, "!!!\x0a""\x0a""next", {"!!!", "\x0a""", "\x0a""", "next", NULL}},
    {TB_SPLIT_GPT2, " \x3f""\x0d""\x0a""", {" \x3f""", "\x0d""\x0a""", NULL}},
    {TB_SPLIT_GPT2, "  ", {"  ", NULL}},
    {TB_SPLIT_GPT2, "x  ", {"x", "  ", NULL}},
    {TB_SPLIT_GPT2, "\xe3""\x80""\x80""\xe3""\x80""\x80""x", {"\xe3""\x80""\x80""", "\xe3""\x80""\x80""", "x", NULL}},
    {TB_SPLIT_GPT2, "a\xc2""\xa0""b", {"a", "\xc2""\xa0""", "b", NULL}},
    {TB_SPLIT_GPT2, "\xc2""\x85""x", {"\xc2""\x85""", "x", NULL}},
    {TB_SPLIT_GPT2, "x\xe2""\x80""\x8b""y", {"x", "\xe2""\x80""\x8b""", "y", NULL}},
    {TB_SPLIT_GPT2, "\xc2""\xb2""\xc2""\xb3""\xc2""\xbd"" \xe2""\x85""\xab"" \xd9""\xa1""\xd9""\xa2""\xd9""\xa3""\xd9""\xa4""", {"\xc2""\xb2""\xc2""\xb3""\xc2""\xbd""", " \xe2""\x85""\xab""", " \xd9""\xa1""\xd9""\xa2""\xd9""\xa3""\xd9""\xa4""", NULL}},
    {TB_SPLIT_GPT2, "caf\xc3""\xa9"" na\xc3""\xaf""ve", {"caf\xc3""\xa9""", " na\xc3""\xaf""ve", NULL}},
    {TB_SPLIT_GPT2, "\xe4""\xb8""\xad""\xe6""\x96""\x87""\xe5""\xad""\x97"" \xf0""\x9f""\x98""\x80""\xf0""\x9f""\x9a""\x80""", {"\xe4""\xb8""\xad""\xe6""\x96""\x87""\xe5""\xad""\x97""", " \xf0""\x9f""\x98""\x80""\xf0""\x9f""\x9a""\x80""", NULL}},
    {TB_SPLIT_GPT2, "a\xcc""\x80""\xcc""\x81""b", {"a", "\xcc""\x80""\xcc""\x81""", "b", NULL}},
    {TB_SPLIT_GPT2, "\xe1""\xb2""\x89""\xe1""\xb2""\x8a"" x", {"\xe1""\xb2""\x89""\xe1""\xb2""\x8a""", " x", NULL}},
    {TB_SPLIT_GPT2, "'", {"'", NULL}},
    {TB_SPLIT_GPT2, "''s", {"''", "s", NULL}},
    {TB_SPLIT_GPT2, " 's", {" '", "s", NULL}},
    {TB_SPLIT_GPT2, "x's'", {"x", "'s", "'", NULL}},
    {TB_SPLIT_GPT2, "e.g. U.S.A.", {"e", ".", "g", ".", " U", ".", "S", ".", "A", ".", NULL}},
    {TB_SPLIT_GPT2, "$100,000.00", {"$", "100", ",", "000", ".", "00", NULL}},
    {TB_SPLIT_GPT2, "@-@", {"@-@", NULL}},
    {TB_SPLIT_GPT2, " \x09""\x0a"" x", {" \x09""\x0a""", " x", NULL}},
    {TB_SPLIT_LLAMA3, "Hello world", {"Hello", " world", NULL}},
    {TB_SPLIT_LLAMA3, "Hello  world", {"Hello", " ", " world", NULL}},
    {TB_SPLIT_LLAMA3, "   indented\x0a""\x0a""\x0a""three", {"  ", " indented", "\x0a""\x0a""\x0a""", "three", NULL}},
    {TB_SPLIT_LLAMA3, "don't won't it's I'll we've", {"don", "'t", " won", "'t", " it", "'s", " I", "'ll", " we", "'ve", NULL}},
    {TB_SPLIT_LLAMA3, "DON'T IT'S WE'VE I'LL", {"DON", "'T", " IT", "'S", " WE", "'VE", " I", "'LL", NULL}},
    {TB_SPLIT_LLAMA3, "it'\xc5""\xbf""a", {"it", "'\xc5""\xbf""", "a", NULL}},
    {TB_SPLIT_LLAMA3, "x'\xef""\xac""\x86""a", {"x", "'\xef""\xac""\x86""a", NULL}},
    {TB_SPLIT_LLAMA3, "'Re's", {"'Re", "'s", NULL}},
    {TB_SPLIT_LLAMA3, "1234567 89", {"123", "456", "7", " ", "89", NULL}},
    {TB_SPLIT_LLAMA3, "x1234y", {"x", "123", "4", "y", NULL}},
    {TB_SPLIT_LLAMA3, "a\x09""b", {"a", "\x09""b", NULL}},
    {TB_SPLIT_LLAMA3, "\x09""\x09""word", {"\x09""", "\x09""word", NULL}},
    {TB_SPLIT_LLAMA3, "(word)", {"(word", ")", NULL}},
    {TB_SPLIT_LLAMA3, "a  \x0a""\x0a"" b", {"a", "  \x0a""\x0a""", " b", NULL}},
    {TB_SPLIT_LLAMA3, "x \x0d""\x0a""\x0d""\x0a"" y", {"x", " \x0d""\x0a""\x0d""\x0a""", " y", NULL}},
    {TB_SPLIT_LLAMA3, "!!!\x0a""\x0a""next", {"!!!\x0a""\x0a""", "next", NULL}},
    {TB_SPLIT_LLAMA3, " \x3f""\x0d""\x0a""", {" \x3f""\x0d""\x0a""", NULL}},
    {TB_SPLIT_LLAMA3, "  ", {"  ", NULL}},
    {TB_SPLIT_LLAMA3, "x  ", {"x", "  ", NULL}},
    {TB_SPLIT_LLAMA3, "\xe3""\x80""\x80""\xe3""\x80""\x80""x", {"\xe3""\x80""\x80""", "\xe3""\x80""\x80""x", NULL}},
    {TB_SPLIT_LLAMA3, "a\xc2""\xa0""b", {"a", "\xc2""\xa0""b", NULL}},
    {TB_SPLIT_LLAMA3, "\xc2""\x85""x", {"\xc2""\x85""x", NULL}},
    {TB_SPLIT_LLAMA3, "x\xe2""\x80""\x8b""y", {"x", "\xe2""\x80""\x8b""y", NULL}},
    {TB_SPLIT_LLAMA3, "\xc2""\xb2""\xc2""\xb3""\xc2""\xbd"" \xe2""\x85""\xab"" \xd9""\xa1""\xd9""\xa2""\xd9""\xa3""\xd9""\xa4""", {"\xc2""\xb2""\xc2""\xb3""\xc2""\xbd""", " ", "\xe2""\x85""\xab""", " ", "\xd9""\xa1""\xd9""\xa2""\xd9""\xa3""", "\xd9""\xa4""", NULL}},
    {TB_SPLIT_LLAMA3, "caf\xc3""\xa9"" na\xc3""\xaf""ve", {"caf\xc3""\xa9""", " na\xc3""\xaf""ve", NULL}},
    {TB_SPLIT_LLAMA3, "\xe4""\xb8""\xad""\xe6""\x96""\x87""\xe5""\xad""\x97"" \xf0""\x9f""\x98""\x80""\xf0""\x9f""\x9a""\x80""", {"\xe4""\xb8""\xad""\xe6""\x96""\x87""\xe5""\xad""\x97""", " \xf0""\x9f""\x98""\x80""\xf0""\x9f""\x9a""\x80""", NULL}},
    {TB_SPLIT_LLAMA3, "a\xcc""\x80""\xcc""\x81""b", {"a", "\xcc""\x80""\xcc""\x81""", "b", NULL}},
    {TB_SPLIT_LLAMA3, "\xe1""\xb2""\x89""\xe1""\xb2""\x8a"" x", {"\xe1""\xb2""\x89""\xe1""\xb2""\x8a""", " x", NULL}},
    {TB_SPLIT_LLAMA3, "'", {"'", NULL}},
    {TB_SPLIT_LLAMA3, "''s", {"''", "s", NULL}},
    {TB_SPLIT_LLAMA3, " 's", {" '", "s", NULL}},
    {TB_SPLIT_LLAMA3, "x's'", {"x", "'s", "'", NULL}},
    {TB_SPLIT_LLAMA3, "e.g. U.S.A.", {"e", ".g", ".", " U", ".S", ".A", ".", NULL}},
    {TB_SPLIT_LLAMA3, "$100,000.00", {"$", "100", ",", "000", ".", "00", NULL}},
    {TB_SPLIT_LLAMA3, "@-@", {"@-@", NULL}},
    {TB_SPLIT_LLAMA3, " \x09""\x0a"" x", {" \x09""\x0a""", " x", NULL}},
    {TB_SPLIT_QWEN2, "Hello world", {"Hello", " world", NULL}},
    {TB_SPLIT_QWEN2, "Hello  world", {"Hello", " ", " world", NULL}},
    {TB_SPLIT_QWEN2, "   indented\x0a""\x0a""\x0a""three", {"  ", " indented", "\x0a""\x0a""\x0a""", "three", NULL}},
    {TB_SPLIT_QWEN2, "don't won't it's I'll we've", {"don", "'t", " won", "'t", " it", "'s", " I", "'ll", " we", "'ve", NULL}},
    {TB_SPLIT_QWEN2, "DON'T IT'S WE'VE I'LL", {"DON", "'T", " IT", "'S", " WE", "'VE", " I", "'LL", NULL}},
    {TB_SPLIT_QWEN2, "it'\xc5""\xbf""a", {"it", "'\xc5""\xbf""", "a", NULL}},
    {TB_SPLIT_QWEN2, "x'\xef""\xac""\x86""a", {"x", "'\xef""\xac""\x86""a", NULL}},
    {TB_SPLIT_QWEN2, "'Re's", {"'Re", "'s", NULL}},
    {TB_SPLIT_QWEN2, "1234567 89", {"1", "2", "3", "4", "5", "6", "7", " ", "8", "9", NULL}},
    {TB_SPLIT_QWEN2, "x1234y", {"x", "1", "2", "3", "4", "y", NULL}},
    {TB_SPLIT_QWEN2, "a\x09""b", {"a", "\x09""b", NULL}},
    {TB_SPLIT_QWEN2, "\x09""\x09""word", {"\x09""", "\x09""word", NULL}},
    {TB_SPLIT_QWEN2, "(word)", {"(word", ")", NULL}},
    {TB_SPLIT_QWEN2, "a  \x0a""\x0a"" b", {"a", "  \x0a""\x0a""", " b", NULL}},
    {TB_SPLIT_QWEN2, "x \x0d""\x0a""\x0d""\x0a"" y", {"x", " \x0d""\x0a""\x0d""\x0a""", " y", NULL}},
    {TB_SPLIT_QWEN2, "!!!\x0a""\x0a""next", {"!!!\x0a""\x0a""", "next", NULL}},
    {TB_SPLIT_QWEN2, " \x3f""\x0d""\x0a""", {" \x3f""\x0d""\x0a""", NULL}},
    {TB_SPLIT_QWEN2, "  ", {"  ", NULL}},
    {TB_SPLIT_QWEN2, "x  ", {"x", "  ", NULL}},
    {TB_SPLIT_QWEN2, "\xe3""\x80""\x80""\xe3""\x80""\x80""x", {"\xe3""\x80""\x80""", "\xe3""\x80""\x80""x", NULL}},
    {TB_SPLIT_QWEN2, "a\xc2""\xa0""b", {"a", "\xc2""\xa0""b", NULL}},
    {TB_SPLIT_QWEN2, "\xc2""\x85""x", {"\xc2""\x85""x", NULL}},
    {TB_SPLIT_QWEN2, "x\xe2""\x80""\x8b""y", {"x", "\xe2""\x80""\x8b""y", NULL}},
    {TB_SPLIT_QWEN2, "\xc2""\xb2""\xc2""\xb3""\xc2""\xbd"" \xe2""\x85""\xab"" \xd9""\xa1""\xd9""\xa2""\xd9""\xa3""\xd9""\xa4""", {"\xc2""\xb2""", "\xc2""\xb3""", "\xc2""\xbd""", " ", "\xe2""\x85""\xab""", " ", "\xd9""\xa1""", "\xd9""\xa2""", "\xd9""\xa3""", "\xd9""\xa4""", NULL}},
    {TB_SPLIT_QWEN2, "caf\xc3""\xa9"" na\xc3""\xaf""ve", {"caf\xc3""\xa9""", " na\xc3""\xaf""ve", NULL}},
    {TB_SPLIT_QWEN2, "\xe4""\xb8""\xad""\xe6""\x96""\x87""\xe5""\xad""\x97"" \xf0""\x9f""\x98""\x80""\xf0""\x9f""\x9a""\x80""", {"\xe4""\xb8""\xad""\xe6""\x96""\x87""\xe5""\xad""\x97""", " \xf0""\x9f""\x98""\x80""\xf0""\x9f""\x9a""\x80""", NULL}},
    {TB_SPLIT_QWEN2, "a\xcc""\x80""\xcc""\x81""b", {"a", "\xcc""\x80""\xcc""\x81""", "b", NULL}},
    {TB_SPLIT_QWEN2, "\xe1""\xb2""\x89""\xe1""\xb2""\x8a"" x", {"\xe1""\xb2""\x89""\xe1""\xb2""\x8a""", " x", NULL}},
    {TB_SPLIT_QWEN2, "'", {"'", NULL}},
    {TB_SPLIT_QWEN2, "''s", {"''", "s", NULL}},
    {TB_SPLIT_QWEN2, " 's", {" '", "s", NULL}},
    {TB_SPLIT_QWEN2, "x's'", {"x", "'s", "'", NULL}},
    {TB_SPLIT_QWEN2, "e.g. U.S.A.", {"e", ".g", ".", " U", ".S", ".A", ".", NULL}},
    {TB_SPLIT_QWEN2, "$100,000.00", {"$", "1", "0", "0", ",", "0", "0", "0", ".", "0", "0", NULL}},
    {TB_SPLIT_QWEN2, "@-@", {"@-@", NULL}},
    {TB_SPLIT_QWEN2, " \x09""\x0a"" x", {" \x09""\x0a""", " x", NULL}},
};

static void test_splitters(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof split_cases / sizeof split_cases[0]; k++) {
        const split_case *sc = &split_cases[k];
        size_t n = strlen(sc->text), i = 0, p = 0;
        while (i < n) {
            size_t e = tb_tok_split_next(sc->kind, sc->text, n, i);
            assert_true(e > i && e <= n);
            const char *want = sc->pieces[p++];
            if (!want || strlen(want) != e - i || memcmp(want, sc->text + i, e - i) != 0)
                fail_msg("case %zu (kind %d, '%s'): piece %zu is '%.*s', want '%s'", k, (int)sc->kind, sc->text,
                         p - 1, (int)(e - i), sc->text + i, want ? want : "(end)");
            i = e;
        }
        assert_null(sc->pieces[p]);
    }
}

static void test_unicode_classes(void **state)
{
    (void)state;
    assert_string_equal(TB_UNICODE_VERSION, "16.0.0");
    assert_int_equal(tb_tok_uclass('a'), TB_UC_L | TB_UC_W);
    assert_int_equal(tb_tok_uclass('7'), TB_UC_N | TB_UC_W);
    assert_int_equal(tb_tok_uclass(' '), TB_UC_S);
    assert_int_equal(tb_tok_uclass('_'), TB_UC_W);
    assert_int_equal(tb_tok_uclass('!'), 0);
    assert_int_equal(tb_tok_uclass(0x1C), 0);          /* Python says space; \s does not */
    assert_int_equal(tb_tok_uclass(0x85), TB_UC_S);    /* NEL */
    assert_int_equal(tb_tok_uclass(0x3000), TB_UC_S);  /* ideographic space */
    assert_int_equal(tb_tok_uclass(0x200B), 0);        /* zero width space: Cf */
    assert_int_equal(tb_tok_uclass(0x180E), 0);        /* Cf since Unicode 6.3 */
    assert_true(tb_tok_uclass(0x0663) & TB_UC_N);      /* ARABIC-INDIC DIGIT THREE */
    assert_true(tb_tok_uclass(0x00BD) & TB_UC_N);      /* ½ is No */
    assert_true(tb_tok_uclass(0x216B) & TB_UC_N);      /* Ⅻ is Nl */
    assert_true(tb_tok_uclass(0x4E2D) & TB_UC_L);      /* 中 */
    assert_true(tb_tok_uclass(0x1C89) & TB_UC_L);      /* new in Unicode 16.0 */
    assert_int_equal(tb_tok_uclass(0x10940), 0);       /* new in Unicode 17.0: not yet */
    assert_int_equal(tb_tok_uclass(0x0301), TB_UC_W);  /* combining acute: a mark */
    assert_int_equal(tb_tok_uclass(0x24B6), TB_UC_W);  /* Ⓐ: So but Alphabetic */
    assert_int_equal(tb_tok_uclass(0x10FFFF), 0);
}

/* ---- byte fallback, NUL, invalid UTF-8 ---- */

static void expect_ids(const tb_tokenizer *t, const char *text, size_t len, const int32_t *want, size_t nw)
{
    int32_t *ids;
    size_t n;
    assert_int_equal(tb_tok_encode(t, text, len, 0, &ids, &n), TB_OK);
    assert_int_equal(n, nw);
    for (size_t i = 0; i < n; i++) assert_int_equal(ids[i], want[i]);
    free(ids);
}

static void test_byte_fallback(void **state)
{
    (void)state;
    tb_tokenizer *t = load_model("tiny-mistral-10m");
    /* 中 and 😀 are not in the vocabulary: their UTF-8 bytes as <0xNN> tokens */
    int32_t e4 = tb_tok_piece_to_id(t, "<0xE4>"), b8 = tb_tok_piece_to_id(t, "<0xB8>"),
            ad = tb_tok_piece_to_id(t, "<0xAD>"), sp = tb_tok_piece_to_id(t, "\xE2\x96\x81");
    assert_true(e4 > 0 && b8 > 0 && ad > 0 && sp > 0);
    expect_ids(t, "中", 3, (const int32_t[]){sp, e4, b8, ad}, 4);
    expect_ids(t, "\xF0\x9F\x98\x80", 4, (const int32_t[]){381, 243, 162, 155, 131}, 5); /* from tokenizers */
    expect_ids(t, "a\0b", 3, (const int32_t[]){387, 3, 321}, 3);                        /* NUL -> <0x00> */
    /* decoding: complete bytes form the character; an incomplete run gives
     * one U+FFFD per byte (ByteFallback), not one per sequence */
    char *out;
    size_t len;
    assert_int_equal(tb_tok_decode(t, (const int32_t[]){e4, b8, ad}, 3, &out, &len), TB_OK);
    assert_string_equal(out, "中");
    free(out);
    assert_int_equal(tb_tok_decode(t, (const int32_t[]){e4, b8}, 2, &out, &len), TB_OK);
    assert_string_equal(out, "\xEF\xBF\xBD\xEF\xBF\xBD");
    free(out);
    /* streaming holds the bytes back until the character is complete */
    tb_tok_stream s;
    tb_tok_stream_init(&s);
    const char *p;
    size_t pl;
    assert_int_equal(tb_tok_stream_push(t, &s, tb_tok_piece_to_id(t, "\xE2\x96\x81" "a"), &p, &pl), TB_OK);
    assert_string_equal(p, "a");
    assert_int_equal(tb_tok_stream_push(t, &s, sp, &p, &pl), TB_OK);
    assert_string_equal(p, " ");
    assert_int_equal(tb_tok_stream_push(t, &s, e4, &p, &pl), TB_OK);
    assert_int_equal(pl, 0);
    assert_int_equal(tb_tok_stream_push(t, &s, b8, &p, &pl), TB_OK);
    assert_int_equal(pl, 0);
    assert_int_equal(tb_tok_stream_push(t, &s, ad, &p, &pl), TB_OK);
    assert_string_equal(p, "中");
    assert_int_equal(tb_tok_stream_push(t, &s, e4, &p, &pl), TB_OK);
    assert_int_equal(tb_tok_stream_flush(t, &s, &p, &pl), TB_OK);
    assert_string_equal(p, "\xEF\xBF\xBD");
    tb_tok_stream_free(&s);
    tb_tok_free(t);

    /* byte-level: the same bytes decode through the GPT-2 byte map, with one
     * U+FFFD per maximal invalid subpart (from_utf8_lossy) */
    t = load_model("tiny-llama-6m");
    expect_ids(t, "a\0b", 3, (const int32_t[]){66, 190, 67}, 3);
    expect_ids(t, "中", 3, (const int32_t[]){162, 118, 257}, 3);
    assert_int_equal(tb_tok_decode(t, (const int32_t[]){129, 300, 129}, 3, &out, &len), TB_OK);
    assert_string_equal(out, "\xEF\xBF\xBD he\xEF\xBF\xBD");
    free(out);
    tb_tok_free(t);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    tb_tokenizer *t = load_model("tiny-llama-6m");
    static const struct {
        const char *s;
        size_t len, off;
    } bad[] = {
        {"ab\xff" "cd", 5, 2},       /* never valid */
        {"x\xC0\xAF", 3, 1},         /* overlong */
        {"xy\xED\xA0\x80", 5, 2},    /* UTF-16 surrogate */
        {"abc\xE4\xB8", 5, 3},       /* truncated at the end */
        {"\x80", 1, 0},              /* lone continuation */
        {"a\xF4\x90\x80\x80", 5, 1}, /* above U+10FFFF */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *ids = (int32_t *)1;
        size_t n = 99;
        assert_int_equal(tb_tok_encode(t, bad[i].s, bad[i].len, 0, &ids, &n), TB_EDATA);
        assert_null(ids);
        char want[64];
        snprintf(want, sizeof want, "invalid UTF-8 at byte offset %zu", bad[i].off);
        assert_string_equal(tb_errmsg(), want);
        assert_int_equal(tb_tok_utf8_check(bad[i].s, bad[i].len), bad[i].off);
    }
    tb_tok_free(t);
}

static void test_empty_and_bos(void **state)
{
    (void)state;
    tb_tokenizer *t = load_model("tiny-llama-6m");
    assert_int_equal(tb_tok_bos(t), 0);
    assert_int_equal(tb_tok_eos(t), 1);
    assert_true(tb_tok_is_eos(t, 1));
    assert_false(tb_tok_is_eos(t, 0));
    assert_int_equal(tb_tok_vocab_size(t), 4096);
    assert_string_equal(tb_tok_id_to_piece(t, 0), "<|begin_of_text|>");
    assert_null(tb_tok_id_to_piece(t, 4096));
    assert_non_null(strstr(tb_tok_describe(t), "byte-level"));
    int32_t *ids;
    size_t n;
    assert_int_equal(tb_tok_encode(t, "", 0, 0, &ids, &n), TB_OK);
    assert_non_null(ids);
    assert_int_equal(n, 0);
    free(ids);
    assert_int_equal(tb_tok_encode(t, "", 0, 1, &ids, &n), TB_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 0);
    free(ids);
    char *out;
    assert_int_equal(tb_tok_decode(t, (const int32_t[]){4096}, 1, &out, NULL), TB_EDATA);
    assert_non_null(strstr(tb_errmsg(), "token id 4096 is not in the vocabulary"));
    assert_int_equal(tb_tok_decode(t, (const int32_t[]){-1}, 1, &out, NULL), TB_EDATA);
    /* skip_special drops BOS/EOS */
    assert_int_equal(tb_tok_decode_ex(t, (const int32_t[]){0, 66, 1}, 3, 1, &out, NULL), TB_OK);
    assert_string_equal(out, "a");
    free(out);
    tb_tok_free(t);

    t = load_model("tiny-mistral-10m");
    assert_int_equal(tb_tok_bos(t), 1);
    assert_int_equal(tb_tok_eos(t), 2);
    assert_non_null(strstr(tb_tok_describe(t), "sentencepiece"));
    tb_tok_free(t);
}

/* ---- NFC normalizer (Qwen2's): decomposed text encodes like precomposed ---- */

static void test_nfc(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-mistral-10m/tokenizer.json", data_dir());
    char *js;
    assert_int_equal(tb_read_text(path, &js, NULL), TB_OK);
    cJSON *root = cJSON_Parse(js);
    free(js);
    cJSON *seq = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "normalizer"), "normalizers");
    cJSON *nfc = cJSON_CreateObject();
    cJSON_AddStringToObject(nfc, "type", "NFC");
    cJSON_InsertItemInArray(seq, 0, nfc);
    char *njs = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    tb_tokenizer *tn, *tp = load_model("tiny-mistral-10m");
    assert_int_equal(tb_tok_load_json(&tn, njs, strlen(njs), "nfc"), TB_OK);
    free(njs);
    static const char *pairs[][2] = {
        {"cafe\xCC\x81", "caf\xC3\xA9"},                   /* e + U+0301 -> é */
        {"a\xCC\x82\xCC\xA3", "\xE1\xBA\xAD"},             /* marks reordered (ccc 220 < 230), then ậ */
        {"\xE2\x84\xAB", "\xC3\x85"},                      /* U+212B ANGSTROM SIGN -> Å (singleton) */
        {"\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", "\xEA\xB0\x81"}, /* Hangul L V T -> 각 */
        {"a\xE1\xB7\xB6\xCC\xA3", "a\xE1\xB7\xB6\xCC\xA3"}, /* U+1DF6 is Unicode 10: no class in 9.0 data */
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        int32_t *a, *b;
        size_t na, nb;
        assert_int_equal(tb_tok_encode(tn, pairs[i][0], strlen(pairs[i][0]), 0, &a, &na), TB_OK);
        assert_int_equal(tb_tok_encode(tp, pairs[i][1], strlen(pairs[i][1]), 0, &b, &nb), TB_OK);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof *a);
        free(a);
        free(b);
    }
    tb_tok_free(tn);
    tb_tok_free(tp);
}

/* ---- refusals ---- */

static void expect_load_error(const char *json, int code, const char *msg)
{
    tb_tokenizer *t = (tb_tokenizer *)1;
    assert_int_equal(tb_tok_load_json(&t, json, strlen(json), "x/tokenizer.json"), code);
    assert_null(t);
    if (!strstr(tb_errmsg(), msg)) fail_msg("error '%s' does not contain '%s'", tb_errmsg(), msg);
}

static void test_unsupported(void **state)
{
    (void)state;
    expect_load_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", TB_EDATA,
                      "x/tokenizer.json: unsupported tokenizer model 'WordPiece'");
    expect_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", TB_EDATA,
                      "unsupported tokenizer model 'Unigram'");
    expect_load_error("{\"model\": {\"type\": \"WordLevel\", \"vocab\": {}}}", TB_EDATA,
                      "unsupported tokenizer model 'WordLevel'");
    static const char bpe[] = "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
                              "\"merges\": [\"a b\"]}";
    char buf[1024];
    snprintf(buf, sizeof buf, "{%s, \"normalizer\": {\"type\": \"NFKC\"}}", bpe);
    expect_load_error(buf, TB_EDATA, "unsupported normalizer 'NFKC'");
    snprintf(buf, sizeof buf, "{%s, \"pre_tokenizer\": {\"type\": \"Whitespace\"}}", bpe);
    expect_load_error(buf, TB_EDATA, "unsupported pre_tokenizer 'Whitespace'");
    snprintf(buf, sizeof buf, "{%s, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\d+\"}, "
             "\"behavior\": \"Isolated\", \"invert\": false}}", bpe);
    expect_load_error(buf, TB_EDATA, "unsupported Split pre_tokenizer regex");
    snprintf(buf, sizeof buf, "{%s, \"decoder\": {\"type\": \"WordPiece\"}}", bpe);
    expect_load_error(buf, TB_EDATA, "unsupported decoder 'WordPiece'");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}", TB_EDATA,
                      "not in the vocabulary");
    expect_load_error("{\"model\": ", TB_EDATA, "invalid JSON");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 2000000000}, \"merges\": []}}", TB_EDATA,
                      "too large");

    /* the smallest working BPE, merges as ["a", "b"] pairs */
    static const char ok[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
                             "\"merges\": [[\"a\", \"b\"]]}}";
    tb_tokenizer *t;
    assert_int_equal(tb_tok_load_json(&t, ok, strlen(ok), "ok"), TB_OK);
    expect_ids(t, "abab", 4, (const int32_t[]){2, 2}, 2);
    expect_ids(t, "bxa", 3, (const int32_t[]){1, 0}, 2); /* no unk_token: 'x' is dropped, as in tokenizers */
    assert_int_equal(tb_tok_bos(t), -1);
    int32_t *ids;
    size_t n;
    assert_int_equal(tb_tok_encode(t, "a", 1, 1, &ids, &n), TB_EDATA); /* no BOS to add */
    char *out;
    assert_int_equal(tb_tok_decode(t, (const int32_t[]){2, 0}, 2, &out, NULL), TB_OK);
    assert_string_equal(out, "ab a"); /* no decoder: tokens joined by spaces */
    free(out);
    tb_tok_free(t);
}

static void test_load_paths(void **state)
{
    (void)state;
    tb_tokenizer *t;
    char dir[] = "/tmp/tb-tok-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(tb_tok_load(&t, dir), TB_EDATA); /* a directory without tokenizer.json */
    assert_non_null(strstr(tb_errmsg(), "tokenizer.json"));
    rmdir(dir);
    assert_int_equal(tb_tok_load(&t, "/nonexistent/model"), TB_EIO);
    /* a tokenizer.json path: config files from its directory */
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-mistral-10m/tokenizer.json", data_dir());
    assert_int_equal(tb_tok_load(&t, path), TB_OK);
    assert_int_equal(tb_tok_bos(t), 1);
    tb_tok_free(t);
    tb_tok_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_llama),  cmocka_unit_test(test_golden_mistral),
        cmocka_unit_test(test_splitters),     cmocka_unit_test(test_unicode_classes),
        cmocka_unit_test(test_byte_fallback), cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_empty_and_bos), cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_load_paths),    cmocka_unit_test(test_nfc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
