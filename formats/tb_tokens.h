/* tb_tokens.h - token-id files: safetensors with "input_ids" [windows, seq_len]
 * (I32 as tb-tokenize writes it, or I64 as Python often does). */
#ifndef TB_TOKENS_H
#define TB_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "tb_safetensors.h"

typedef struct {
    int32_t *ids;     /* [windows * seq_len], owned */
    int64_t windows;
    int seq_len;
} tb_tokens;

/* Load and validate: tensor "input_ids", integer dtype I32/I64, rank 2, ids in
 * [0, vocab) (vocab <= 0: unchecked), seq_len <= max_seq (max_seq <= 0:
 * unchecked). TB_EDATA errors name file, window and position. */
int tb_tokens_load(tb_tokens *t, const char *path, int vocab, int max_seq);

/* Draw `windows` windows of seq_len consecutive ids from ids[0..n): window i
 * starts at floor(r_i * (n - seq_len + 1) / 2^64), r_i the i-th output of
 * splitmix64 seeded with `seed` (state += 0x9E3779B97F4A7C15, then the
 * splitmix64 mix) - documented so other tools can reproduce the windows.
 * Windows may overlap. TB_EDATA "label: N tokens, fewer than one window of T". */
int tb_tokens_draw(tb_tokens *t, const int32_t *ids, size_t n, int64_t windows, int seq_len, uint64_t seed,
                   const char *label);
void tb_tokens_free(tb_tokens *t);

/* Append more's windows after t's (tb-distill --extra-tokens): TB_EDATA
 * "label: windows of N tokens, the others have M" when the lengths differ;
 * t unchanged on error. */
int tb_tokens_append(tb_tokens *t, const tb_tokens *more, const char *label);

/* Convert an id tensor (I32 or I64, any shape, rows along its last dim) into
 * out[numel], checking each id against [0, vocab) (vocab <= 0: against the
 * int32 range). TB_EDATA names label, row and position of a bad id. The one
 * reader of token ids: tb_tokens_load and tb-tokenize --decode use it. */
int tb_tokens_convert(const st_tensor *x, const char *label, int vocab, int32_t *out);

#endif
