/* tb_kind.h - what an input is, told from its first bytes or its shape, so
 * that a wrong kind of file gets a message that names it and says the fix
 * ("calib.txt: a text file, expected token windows (safetensors): use --text
 * or tb-tokenize") instead of a parser's complaint about a header length.
 */
#ifndef TB_KIND_H
#define TB_KIND_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TB_KIND_MISSING,     /* no such path */
    TB_KIND_HUB_ID,      /* no such path, but shaped like "org/name" on the Hugging Face hub */
    TB_KIND_HF_DIR,      /* a directory with config.json */
    TB_KIND_DIR,         /* any other directory */
    TB_KIND_SAFETENSORS, /* 8-byte header length, then a JSON object */
    TB_KIND_TBM,         /* a tensorbit .tbm index (JSON) */
    TB_KIND_JSON,        /* other JSON */
    TB_KIND_TEXT,        /* UTF-8 text */
    TB_KIND_BINARY,      /* anything else */
    TB_KIND_EMPTY,       /* a file of no bytes */
    TB_KIND_STREAM,      /* "-": standard input, not looked at before it is read */
} tb_kind;

/* the kind of a file's first bytes; file_size: the whole file's (for the header check) */
tb_kind tb_kind_of_bytes(const uint8_t *p, size_t n, uint64_t file_size);
tb_kind tb_kind_of_path(const char *path);
/* "a text file", "a .tbm index (JSON)", ... */
const char *tb_kind_name(tb_kind k);

/* What an option wants. */
typedef enum {
    TB_WANT_ANY = 0,
    TB_WANT_SAFETENSORS, /* a safetensors file (token windows, scores, masks, .fisher, .tb) */
    TB_WANT_MODEL,       /* an HF directory, a .tbm, or a safetensors file */
    TB_WANT_TEXT,        /* text */
    TB_WANT_TBM,         /* a .tbm index */
} tb_want;

/* TB_OK when `path` is what `want` asks for (or cannot be told before it is
 * read: "-", a missing file, which the open then reports). Otherwise records
 * "PATH: <what it is>, expected WHAT: FIX" (TB_EDATA; a hub id: TB_EIO with
 * the download command) and returns the code. */
int tb_check_input(const char *path, tb_want want, const char *what, const char *fix);

#endif
