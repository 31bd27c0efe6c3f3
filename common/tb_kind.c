#include "tb_kind.h"
#include "tb_error.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define SNIFF_BYTES 4096

/* '{' then '"' or '}', or '[' then a JSON value's first character: "[Emma by
 * Jane Austen]" is text */
static int is_json_start(const uint8_t *p, size_t n)
{
    size_t i = (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) ? 3 : 0; /* UTF-8 BOM */
#define SKIP_WS() while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) i++
    SKIP_WS();
    if (i >= n || (p[i] != '{' && p[i] != '[')) return 0;
    uint8_t open = p[i++];
    SKIP_WS();
#undef SKIP_WS
    if (i >= n) return 1;
    if (open == '{') return p[i] == '"' || p[i] == '}';
    return strchr("[{\"-0123456789tfn]", p[i]) != NULL;
}

/* UTF-8 without NUL or most control characters; a sequence cut at the end of the sample is fine */
static int looks_like_text(const uint8_t *p, size_t n)
{
    size_t ctrl = 0;
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        if (c == 0) return 0;
        if (c < 0x80) {
            if (c < 0x20 && c != '\n' && c != '\r' && c != '\t' && c != '\f') ctrl++;
            i++;
            continue;
        }
        int len = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
        if (!len) return 0;
        for (int k = 1; k < len; k++)
            if (i + (size_t)k < n && (p[i + (size_t)k] & 0xC0) != 0x80) return 0;
        i += (size_t)len;
    }
    return ctrl * 100 <= n; /* a few form feeds or escapes are still text */
}

tb_kind tb_kind_of_bytes(const uint8_t *p, size_t n, uint64_t file_size)
{
    if (n == 0) return TB_KIND_EMPTY;
    if (n >= 9) {
        uint64_t h = 0;
        for (int i = 7; i >= 0; i--) h = (h << 8) | p[i];
        if (h >= 2 && h <= file_size - 8 && p[8] == '{') return TB_KIND_SAFETENSORS;
    }
    if (is_json_start(p, n)) {
        const char *needle = "\"tensorbit.tbm\"";
        size_t k = strlen(needle);
        for (size_t i = 0; i + k <= n; i++)
            if (!memcmp(p + i, needle, k)) return TB_KIND_TBM;
        return TB_KIND_JSON;
    }
    return looks_like_text(p, n) ? TB_KIND_TEXT : TB_KIND_BINARY;
}

/* "org/name" as the hub spells repository ids: one slash, [A-Za-z0-9._-] */
static int hub_shaped(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/') || s[0] == '.') return 0;
    for (const char *p = s; *p; p++)
        if (p != slash && !((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                            *p == '-' || *p == '_' || *p == '.'))
            return 0;
    return 1;
}

tb_kind tb_kind_of_path(const char *path)
{
    if (!strcmp(path, "-")) return TB_KIND_STREAM;
    struct stat st;
    if (stat(path, &st) != 0) return hub_shaped(path) ? TB_KIND_HUB_ID : TB_KIND_MISSING;
    if (S_ISDIR(st.st_mode)) {
        char cfg[4096];
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        return stat(cfg, &st) == 0 ? TB_KIND_HF_DIR : TB_KIND_DIR;
    }
    if (!S_ISREG(st.st_mode)) return TB_KIND_STREAM; /* a FIFO or device: read, not sniffed */
    FILE *fp = fopen(path, "rb");
    if (!fp) return TB_KIND_MISSING; /* the open reports why */
    uint8_t buf[SNIFF_BYTES];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    return tb_kind_of_bytes(buf, n, (uint64_t)st.st_size);
}

const char *tb_kind_name(tb_kind k)
{
    switch (k) {
    case TB_KIND_MISSING: return "no such file";
    case TB_KIND_HUB_ID: return "a Hugging Face hub id";
    case TB_KIND_HF_DIR: return "an HF model directory";
    case TB_KIND_DIR: return "a directory without config.json";
    case TB_KIND_SAFETENSORS: return "a safetensors file";
    case TB_KIND_TBM: return "a .tbm index (JSON)";
    case TB_KIND_JSON: return "a JSON file";
    case TB_KIND_TEXT: return "a text file";
    case TB_KIND_BINARY: return "a binary file, not safetensors";
    case TB_KIND_EMPTY: return "an empty file";
    case TB_KIND_STREAM: return "a stream";
    }
    return "?";
}

static int wanted(tb_kind k, tb_want want)
{
    switch (want) {
    case TB_WANT_ANY: return 1;
    case TB_WANT_SAFETENSORS: return k == TB_KIND_SAFETENSORS;
    case TB_WANT_MODEL: return k == TB_KIND_HF_DIR || k == TB_KIND_TBM || k == TB_KIND_SAFETENSORS;
    /* not UTF-8 is "binary" here: the text's reader names the byte, which says more */
    case TB_WANT_TEXT: return k == TB_KIND_TEXT || k == TB_KIND_EMPTY || k == TB_KIND_JSON || k == TB_KIND_BINARY;
    case TB_WANT_TBM: return k == TB_KIND_TBM;
    }
    return 1;
}

int tb_check_input(const char *path, tb_want want, const char *what, const char *fix)
{
    tb_kind k = tb_kind_of_path(path);
    if (k == TB_KIND_HUB_ID && want != TB_WANT_MODEL) k = TB_KIND_MISSING; /* only models live on the hub */
    if (k == TB_KIND_STREAM || k == TB_KIND_MISSING) return TB_OK;
    if (k == TB_KIND_HUB_ID)
        return tb_fail(TB_EIO,
                       "%s: no such file or directory; if it is a Hugging Face hub id, tensorbit reads local files "
                       "only: huggingface-cli download %s --local-dir DIR, then give DIR",
                       path, path);
    if (wanted(k, want)) return TB_OK;
    if (fix && *fix) return tb_fail(TB_EDATA, "%s: %s, expected %s: %s", path, tb_kind_name(k), what, fix);
    return tb_fail(TB_EDATA, "%s: %s, expected %s", path, tb_kind_name(k), what);
}
