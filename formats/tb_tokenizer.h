/* tb_tokenizer.h - HF tokenizer.json (BPE) encoding and decoding.
 *
 * Reproduces the ids of the HF `tokenizers` library for the two BPE families
 * of Llama/Mistral-style checkpoints:
 *
 *  - sentencepiece-style (Llama-2, Mistral-7B): normalizer Prepend("▁") +
 *    Replace(" ", "▁"), or a Metaspace pre-tokenizer (prepend_scheme
 *    first/always/never, split or not); byte_fallback to <0xNN> tokens,
 *    unk_token and fuse_unk; decoder Replace/ByteFallback/Fuse/Strip or
 *    Metaspace.
 *  - byte-level (GPT-2, Llama-3, Qwen2): ByteLevel pre-tokenizer with the GPT-2
 *    split regex, or a Split pre-tokenizer with the Llama-3 (or Qwen2) regex
 *    followed by ByteLevel(use_regex=false); ignore_merges; ByteLevel decoder;
 *    the NFC normalizer (Qwen2), with the reference's Unicode 9.0 data.
 *
 * Added tokens (special or not, with their lstrip/rstrip/single_word/
 * normalized flags) are matched in the text before normalization, exactly
 * like the reference: so "<s>" in the text becomes the BOS id. The
 * post_processor is not used: callers ask for BOS explicitly. Anything else
 * (WordPiece/Unigram/WordLevel models, other normalizers, pre-tokenizers,
 * regexes or decoders) is refused at load time with a TB_EDATA error naming it.
 *
 * Text is taken exactly as given (no CRLF translation, no Unicode
 * normalization unless the file asks for NFC); it must be valid UTF-8.
 *
 * Errors: every int-returning function returns TB_OK or a tb_status code and
 * records a message (tb_errmsg()). A loaded tokenizer is read-only: encode and
 * decode may be called from several threads at once.
 */
#ifndef TB_TOKENIZER_H
#define TB_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tb_tokenizer tb_tokenizer;

/* Load a tokenizer. `path` is a model directory (reads DIR/tokenizer.json and,
 * for the BOS/EOS ids, DIR/config.json or else DIR/tokenizer_config.json) or
 * the path of a tokenizer.json file (the config files are then looked for in
 * its directory). BOS/EOS: config.json's bos_token_id / eos_token_id (an int
 * or a list; null counts as absent), else tokenizer_config.json's bos_token /
 * eos_token (string or {"content": ...}) looked up in the vocabulary.
 * Errors: TB_EIO if `path` cannot be read, TB_EDATA for a directory without
 * tokenizer.json, malformed JSON or an unsupported tokenizer
 * ("DIR/tokenizer.json: unsupported tokenizer model 'WordPiece'").
 * On success *out owns everything; release it with tb_tok_free(). */
int tb_tok_load(tb_tokenizer **out, const char *path);

/* Same from tokenizer.json text already in memory (`label` names it in
 * errors); no config files are read, so BOS/EOS are unset (-1). */
int tb_tok_load_json(tb_tokenizer **out, const char *json, size_t len, const char *label);

void tb_tok_free(tb_tokenizer *t); /* NULL is fine */

/* Encode `len` bytes of UTF-8 text (need not be NUL-terminated). With add_bos
 * the BOS id is prepended (TB_EDATA if the model has none). On success *ids is
 * a new array of *n ids that the caller frees with free(); it is non-NULL even
 * when *n is 0. Invalid UTF-8: TB_EDATA "invalid UTF-8 at byte offset N". */
int tb_tok_encode(const tb_tokenizer *t, const char *text, size_t len, int add_bos, int32_t **ids, size_t *n);

/* As tb_tok_encode, calling progress(user, bytes_done, len) now and then
 * during long inputs (may be NULL). */
int tb_tok_encode_progress(const tb_tokenizer *t, const char *text, size_t len, int add_bos, int32_t **ids,
                           size_t *n, void (*progress)(void *user, size_t done, size_t total), void *user);

/* Decode ids to text through the tokenizer's decoder, keeping special tokens
 * (what transformers' tokenizer.decode(ids) gives). *text is a new
 * NUL-terminated string of *len bytes (caller frees). An id that is not in the
 * vocabulary: TB_EDATA naming it. Byte sequences that are not valid UTF-8 come
 * out as U+FFFD, as in the reference. */
int tb_tok_decode(const tb_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len);
/* Same; skip_special drops special added tokens (BOS, EOS, ...) first. */
int tb_tok_decode_ex(const tb_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
                     size_t *len);

int32_t tb_tok_bos(const tb_tokenizer *t);           /* -1 if none */
int32_t tb_tok_eos(const tb_tokenizer *t);           /* the first EOS id, -1 if none */
int tb_tok_is_eos(const tb_tokenizer *t, int32_t id); /* any of the EOS ids */
/* One more than the largest id (model vocabulary and added tokens). Ids below
 * it may still be unassigned in unusual files; decode rejects those. */
size_t tb_tok_vocab_size(const tb_tokenizer *t);
/* The vocabulary string of an id (byte-level or ▁ form, as in the file), NULL
 * if unassigned. Points into the tokenizer; valid until tb_tok_free. */
const char *tb_tok_id_to_piece(const tb_tokenizer *t, int32_t id);
int32_t tb_tok_piece_to_id(const tb_tokenizer *t, const char *piece); /* -1 if absent */
/* Short description, e.g. "BPE byte-level, 4096 ids, 2 added tokens". */
const char *tb_tok_describe(const tb_tokenizer *t);

/* Streaming decode for generation: feed ids one at a time and get the text
 * each one adds. Text is held back while it ends in an incomplete UTF-8
 * sequence (a byte-level token or <0xNN> byte token that is the start of a
 * multi-byte character), and the leading-space rules of the decoder are
 * applied as for the whole sequence, so the concatenated pieces equal
 * tb_tok_decode() of all ids, with two exceptions: bytes that never complete
 * come out as U+FFFD (at most 8 ids are held back), and a character already
 * emitted stays as it was when the next byte tokens cannot complete (a full
 * decode turns that whole run of byte tokens into U+FFFD).
 * Usage:
 *     tb_tok_stream s; tb_tok_stream_init(&s);
 *     for each id: tb_tok_stream_push(t, &s, id, &p, &n); fwrite(p, 1, n, out);
 *     tb_tok_stream_flush(t, &s, &p, &n); fwrite(p, 1, n, out);
 *     tb_tok_stream_free(&s);
 * *piece points into the state (valid until the next call) and may be empty. */
typedef struct {
    int32_t *ids;   /* the window: context ids then ids not yet emitted */
    size_t n, cap;
    size_t n_ctx;   /* leading ids of the window already emitted (context) */
    size_t ctx_len; /* byte length of the decoded context */
    char *out;      /* last piece returned */
    size_t out_cap;
} tb_tok_stream;

void tb_tok_stream_init(tb_tok_stream *s);
int tb_tok_stream_push(const tb_tokenizer *t, tb_tok_stream *s, int32_t id, const char **piece, size_t *len);
/* Emit whatever is held back (incomplete bytes become U+FFFD) and reset. */
int tb_tok_stream_flush(const tb_tokenizer *t, tb_tok_stream *s, const char **piece, size_t *len);
void tb_tok_stream_free(tb_tok_stream *s);

/* Offset of the first byte of s[0..n) that does not start a well-formed UTF-8
 * sequence, or n if all of it is valid (what encode checks first). */
size_t tb_tok_utf8_check(const char *s, size_t n);

/* ---- exposed for tests: the pre-tokenizer splitters ---- */
enum tb_tok_split {
    TB_SPLIT_GPT2,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    TB_SPLIT_LLAMA3, /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    TB_SPLIT_QWEN2,  /* the same with \p{N} instead of \p{N}{1,3} */
};
/* Byte length of the regex match that starts at byte `pos` of valid UTF-8
 * `s` (these regexes match at every position, so the pieces of a string are
 * consecutive matches). pos < len. */
size_t tb_tok_split_next(enum tb_tok_split kind, const char *s, size_t len, size_t pos);
/* Class flags of a code point: 1 \p{L}, 2 \p{N}, 4 \s, 8 \w (TB_UC_* in
 * tb_unicode_tables.h). */
unsigned tb_tok_uclass(uint32_t cp);

#endif
