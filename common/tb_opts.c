#include "tb_opts.h"
#include "tb_error.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int tb_parse_long(const char *opt, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end)
        return tb_fail(TB_EUSAGE, "%s: '%s' is not an integer", opt, s);
    if (v < min || v > max)
        return tb_fail(TB_EUSAGE, "%s: %ld out of range [%ld, %ld]", opt, v, min, max);
    *out = v;
    return TB_OK;
}

int tb_parse_int(const char *opt, const char *s, int min, int max, int *out)
{
    long v;
    int rc = tb_parse_long(opt, s, min, max, &v);
    if (!rc) *out = (int)v;
    return rc;
}

int tb_parse_double(const char *opt, const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return tb_fail(TB_EUSAGE, "%s: '%s' is not a number", opt, s);
    if (v < min || v > max)
        return tb_fail(TB_EUSAGE, "%s: %g out of range [%g, %g]", opt, v, min, max);
    *out = v;
    return TB_OK;
}

int tb_parse_nm(const char *opt, const char *s, int max_m, int *n, int *m)
{
    char *end;
    long a = strtol(s, &end, 10);
    if (end == s || *end != ':') return tb_fail(TB_EUSAGE, "%s: '%s' is not N:M", opt, s);
    const char *s2 = end + 1;
    long b = strtol(s2, &end, 10);
    if (end == s2 || *end) return tb_fail(TB_EUSAGE, "%s: '%s' is not N:M", opt, s);
    if (b < 2 || b > max_m) return tb_fail(TB_EUSAGE, "%s: M=%ld out of range [2, %d]", opt, b, max_m);
    if (a < 1 || a >= b) return tb_fail(TB_EUSAGE, "%s: N=%ld must satisfy 1 <= N < M=%ld", opt, a, b);
    *n = (int)a;
    *m = (int)b;
    return TB_OK;
}

char *tb_join_args(int argc, char **argv)
{
    size_t len = 1;
    for (int i = 0; i < argc; i++) len += strlen(argv[i]) + 1;
    char *s = tb_malloc(len), *p = s;
    if (!s) return NULL;
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]);
        if (i) *p++ = ' ';
        memcpy(p, argv[i], n);
        p += n;
    }
    *p = 0;
    return s;
}
