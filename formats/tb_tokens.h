/* tb_tokens.h - token-id files: safetensors with "input_ids" [windows, seq_len]
 * (I32 as tb-tokenize writes it, or I64 as Python often does). */
#ifndef TB_TOKENS_H
#define TB_TOKENS_H

#include <stdint.h>

typedef struct {
    int32_t *ids;     /* [windows * seq_len], owned */
    int64_t windows;
    int seq_len;
} tb_tokens;

/* Load and validate: tensor "input_ids", integer dtype I32/I64, rank 2, ids in
 * [0, vocab) (vocab <= 0: unchecked), seq_len <= max_seq (max_seq <= 0:
 * unchecked). TB_EDATA errors name file, window and position. */
int tb_tokens_load(tb_tokens *t, const char *path, int vocab, int max_seq);
void tb_tokens_free(tb_tokens *t);

#endif
