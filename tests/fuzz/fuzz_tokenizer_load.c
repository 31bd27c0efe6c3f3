/* fuzz_tokenizer_load.c - tokenizer.json loading (tb_tok_load_json: model,
 * vocabulary, merges, added tokens, normalizer, pre-tokenizer, decoder); what
 * loads is then used: a short text encoded, its ids and every id below 64
 * decoded. Seeds: the shipped tokenizer.json files, and small variants. */
#include "fuzz_util.h"
#include "tb_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tb_tokenizer *t = NULL;
    if (tb_tok_load_json(&t, (const char *)data, size, "tokenizer.json") == TB_OK) {
        static const char text[] = "Hello wor\xc3\xa9ld <s> 123 \n\t  x\xe2\x96\x81y";
        int32_t *ids = NULL;
        size_t n = 0;
        if (tb_tok_encode(t, text, sizeof text - 1, 0, &ids, &n) == TB_OK) {
            char *s = NULL;
            size_t len = 0;
            if (tb_tok_decode(t, ids, n, &s, &len) == TB_OK && strlen(s) > len) abort();
            free(s);
            free(ids);
        }
        tb_err_clear();
        size_t v = tb_tok_vocab_size(t);
        int32_t probe[64];
        size_t np = 0;
        for (size_t i = 0; i < v && i < 64; i++)
            if (tb_tok_id_to_piece(t, (int32_t)i)) probe[np++] = (int32_t)i;
        char *s = NULL;
        size_t len = 0;
        if (tb_tok_decode_ex(t, probe, np, 1, &s, &len) == TB_OK) free(s);
        tb_err_clear();
        tb_tok_free(t);
    }
    fuzz_check_errmsg();
    return 0;
}
