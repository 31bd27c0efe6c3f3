/* tb_error.h - error reporting for the tensorbit library.
 *
 * Library code never prints and never exits: a failing function records a
 * one-line message (thread-local) and returns one of the tb_status codes.
 * Tools print "tool: <message>" and exit with that code. The codes are also
 * the tools' exit statuses, so they are part of the user interface.
 */
#ifndef TB_ERROR_H
#define TB_ERROR_H

#include <stddef.h>

enum tb_status {
    TB_OK = 0,
    TB_EUSAGE = 1, /* bad command line / bad API argument */
    TB_EDATA = 2,  /* malformed or inconsistent input data */
    TB_EIO = 3,    /* I/O failure or resource exhaustion */
};

/* Record an error message (printf-style) and return `code`, so that
 * `return tb_fail(TB_EDATA, "...")` reads naturally. */
int tb_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefix the current message with context, e.g. the file name:
 * tb_fail(...) -> "tensor 'x': bad shape"; tb_err_context("%s", path)
 * -> "model.safetensors: tensor 'x': bad shape". Returns the current code. */
int tb_err_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

const char *tb_errmsg(void); /* last message, "" if none */
int tb_errcode(void);        /* last code, TB_OK if none */
void tb_err_clear(void);

/* Checked allocation: on failure records "out of memory (N bytes) at file:line"
 * and returns NULL. Ownership: the caller frees with free(). */
void *tb_malloc_at(size_t n, const char *file, int line);
void *tb_calloc_at(size_t count, size_t size, const char *file, int line);
void *tb_realloc_at(void *p, size_t n, const char *file, int line);
char *tb_strdup_at(const char *s, const char *file, int line);
#define tb_malloc(n) tb_malloc_at((n), __FILE__, __LINE__)
#define tb_calloc(c, s) tb_calloc_at((c), (s), __FILE__, __LINE__)
#define tb_realloc(p, n) tb_realloc_at((p), (n), __FILE__, __LINE__)
#define tb_strdup(s) tb_strdup_at((s), __FILE__, __LINE__)

#endif
