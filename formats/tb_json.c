/* tb_json.c - JSON helpers that cJSON lacks (tb_json.h). */
#include "tb_json.h"

#include <stdlib.h>
#include <string.h>

static int hex4(const char *p, const char *end, unsigned *v)
{
    if (end - p < 4) return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
        if (d > 15) return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

static size_t utf8_put(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int tb_json_string(const char *text, size_t n, char **out, size_t *len)
{
    const char *p = text, *end = text + n;
    *out = NULL;
    *len = 0;
    while (p < end && is_ws(*p)) p++;
    if (p == end || *p != '"') return -1;
    p++;
    /* decoded text is never longer than its escaped form */
    char *buf = malloc((size_t)(end - p) + 1), *o = buf;
    if (!buf) return -2;
    for (;;) {
        if (p == end) goto bad; /* unterminated */
        unsigned char c = (unsigned char)*p++;
        if (c == '"') break;
        if (c < 0x20) goto bad;
        if (c != '\\') { *o++ = (char)c; continue; }
        if (p == end) goto bad;
        char e = *p++;
        unsigned cp, lo;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u':
            if (hex4(p, end, &cp)) goto bad;
            p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) goto bad; /* lone low surrogate */
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    goto bad;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            o += utf8_put(o, cp);
            break;
        default: goto bad;
        }
    }
    while (p < end && is_ws(*p)) p++;
    if (p != end) goto bad;
    *o = 0;
    *len = (size_t)(o - buf);
    *out = buf;
    return 0;
bad:
    free(buf);
    return -1;
}
