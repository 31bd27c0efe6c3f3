#include "tb_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TB_ERRMSG_MAX 1024

static _Thread_local char errmsg[TB_ERRMSG_MAX];
static _Thread_local int errcode;

/* Messages quote names and values taken from input files; a control character
 * there (a newline in a tensor name, an escape sequence) would break the
 * one-line error promise or drive the user's terminal. They become '?'. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}

int tb_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    one_line(errmsg);
    errcode = code;
    return code;
}

int tb_err_context(const char *fmt, ...)
{
    char prefix[TB_ERRMSG_MAX], joined[2 * TB_ERRMSG_MAX + 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    snprintf(joined, sizeof joined, "%s: %s", prefix, errmsg);
    memcpy(errmsg, joined, sizeof errmsg - 1); /* truncate, keep the NUL */
    errmsg[sizeof errmsg - 1] = 0;
    one_line(errmsg);
    return errcode;
}

const char *tb_errmsg(void) { return errmsg; }
int tb_errcode(void) { return errcode; }
void tb_err_clear(void) { errmsg[0] = 0; errcode = TB_OK; }

void *tb_malloc_at(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (!p) tb_fail(TB_EIO, "out of memory (%zu bytes) at %s:%d", n, file, line);
    return p;
}

void *tb_calloc_at(size_t count, size_t size, const char *file, int line)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) tb_fail(TB_EIO, "out of memory (%zu x %zu bytes) at %s:%d", count, size, file, line);
    return p;
}

void *tb_realloc_at(void *old, size_t n, const char *file, int line)
{
    void *p = realloc(old, n ? n : 1);
    if (!p) tb_fail(TB_EIO, "out of memory (%zu bytes) at %s:%d", n, file, line);
    return p;
}

char *tb_strdup_at(const char *s, const char *file, int line)
{
    size_t n = strlen(s) + 1;
    char *p = tb_malloc_at(n, file, line);
    if (p) memcpy(p, s, n);
    return p;
}
