/* tb_json.h - checked reading of JSON numbers (cJSON keeps them as doubles).
 *
 * Converting an out-of-range double to an integer type is undefined
 * behaviour, and 1e300 or -1 in a downloaded file is not a size. Every count,
 * size, offset or id read from JSON goes through here: an integer in
 * [0, max] (max <= 2^53, where doubles stop being exact), or an error. */
#ifndef TB_JSON_H
#define TB_JSON_H

#include <math.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define TB_JSON_MAX_EXACT 9007199254740992.0 /* 2^53 */

/* 0 and *out set when j is a number holding an integer in [0, max]; -1 otherwise. */
static inline int tb_json_u64(const cJSON *j, uint64_t max, uint64_t *out)
{
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble, lim = (double)max < TB_JSON_MAX_EXACT ? (double)max : TB_JSON_MAX_EXACT;
    if (!(d >= 0 && d <= lim) || floor(d) != d) return -1;
    *out = (uint64_t)d;
    return 0;
}

#endif

/* Decode one JSON string value (optionally surrounded by whitespace) from
 * text[0..n) into a new buffer *out of *len bytes (NUL-terminated, but it may
 * itself hold NULs: "a\u0000b" is 3 bytes, where cJSON's valuestring would stop
 * at the first). \uD83D\uDE00 pairs become one UTF-8 character; a lone
 * surrogate, a control character, a bad escape or trailing text is refused.
 * Returns 0, or -1 (nothing allocated; *out NULL) or -2 (out of memory). */
int tb_json_string(const char *text, size_t n, char **out, size_t *len);
