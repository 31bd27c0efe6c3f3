/* fuzz_tokenizer_codec.c - the shipped tokenizers (tests/data: tiny-llama-6m,
 * byte-level; tiny-mistral-10m, sentencepiece with byte fallback) encoding
 * arbitrary bytes and decoding arbitrary ids, whole and streamed.
 * Input: byte 0 picks the tokenizer (bit 0) and the mode (bits 1-2: encode
 * then decode; decode the rest as little-endian int32 ids; both). Invalid
 * UTF-8 and unknown ids must be clean errors; what encodes must decode back
 * to the same bytes for the byte-level tokenizer (it is lossless). */
#include "fuzz_util.h"
#include "tb_tokenizer.h"

static tb_tokenizer *toks[2];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* run from the repository root, or point TB_TEST_DATA at tests/data */
    const char *data = getenv("TB_TEST_DATA") ? getenv("TB_TEST_DATA") : "tests/data";
    const char *names[2] = {"tiny-llama-6m", "tiny-mistral-10m"};
    for (int i = 0; i < 2; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", data, names[i]);
        if (tb_tok_load(&toks[i], dir) != TB_OK) {
            fprintf(stderr, "fuzz_tokenizer_codec: %s\n", tb_errmsg());
            abort();
        }
    }
    return 0;
}

static void decode_ids(const tb_tokenizer *t, const int32_t *ids, size_t n)
{
    char *s = NULL;
    size_t len = 0;
    if (tb_tok_decode(t, ids, n, &s, &len) == TB_OK) {
        if (strlen(s) > len) abort();
        free(s);
    }
    tb_err_clear();
    /* streamed: the same ids one at a time */
    tb_tok_stream st;
    tb_tok_stream_init(&st);
    const char *p;
    size_t pl;
    for (size_t i = 0; i < n; i++)
        if (tb_tok_stream_push(t, &st, ids[i], &p, &pl) != TB_OK) break;
    tb_err_clear();
    tb_tok_stream_flush(t, &st, &p, &pl);
    tb_tok_stream_free(&st);
    tb_err_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const tb_tokenizer *t = toks[data[0] & 1];
    int mode = (data[0] >> 1) & 3, bos = (data[0] >> 3) & 1;
    const uint8_t *rest = data + 1;
    size_t n = size - 1;
    if (mode != 1) {
        int32_t *ids = NULL;
        size_t k = 0;
        if (tb_tok_encode(t, (const char *)rest, n, bos, &ids, &k) == TB_OK) {
            char *s = NULL;
            size_t len = 0;
            if (tb_tok_decode(t, ids, k, &s, &len) != TB_OK) abort(); /* encoder ids always decode */
            /* byte-level BPE is lossless on valid UTF-8 without added-token text */
            if (t == toks[0] && !bos && !memchr(rest, '<', n) && (len != n || memcmp(s, rest, n))) abort();
            free(s);
            free(ids);
        } else if (tb_tok_utf8_check((const char *)rest, n) == n) {
            abort(); /* valid UTF-8 must encode */
        }
        tb_err_clear();
    }
    if (mode != 0) {
        size_t k = n / 4;
        int32_t *ids = malloc(k * sizeof *ids + 1);
        memcpy(ids, rest, k * 4);
        /* keep most ids in range so decoding, not just refusing, is exercised */
        size_t v = tb_tok_vocab_size(t);
        if (mode == 2)
            for (size_t i = 0; i < k; i++) ids[i] = (int32_t)((uint32_t)ids[i] % (uint32_t)(v + 2));
        decode_ids(t, ids, k);
        free(ids);
    }
    fuzz_check_errmsg();
    return 0;
}
