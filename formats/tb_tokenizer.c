/* tb_tokenizer.c - HF tokenizer.json BPE tokenizers (see tb_tokenizer.h).
 *
 * The pipeline mirrors the reference library's stages so that the ids are
 * identical, including its quirks:
 *   1. added tokens are cut out of the raw text (leftmost-longest);
 *   2. each remaining piece is normalized, then normalized added tokens are
 *      cut out of it;
 *   3. pre-tokenizer steps split pieces further (recursively, one level per
 *      step, so each step sees the pieces of the previous one);
 *   4. each final piece ("word") is BPE-merged on its own.
 * The regexes of the byte-level pre-tokenizers are hand-written state
 * machines over code points (no regex engine), with Unicode classes from
 * tb_unicode_tables.h.
 */
#include "tb_tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tb_error.h"
#include "tb_io.h"
#include "tb_unicode_tables.h"

/* ------------------------------------------------------------------ */
/* small growable buffers                                               */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

/* After any reserve or put, even of 0 bytes, p points at storage: pieces are
 * addressed as p + offset, and NULL + 0 is undefined behaviour (a decode in
 * which every piece is empty did exactly that). */
static int sb_reserve(sbuf *b, size_t extra)
{
    if (b->p && b->n + extra <= b->cap) return TB_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra) cap *= 2;
    char *np = tb_realloc(b->p, cap);
    if (!np) return TB_EIO;
    b->p = np;
    b->cap = cap;
    return TB_OK;
}

static int sb_put(sbuf *b, const void *d, size_t n)
{
    if (sb_reserve(b, n)) return TB_EIO;
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
    return TB_OK;
}

static void sb_free(sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

typedef struct {
    int32_t *v;
    size_t n, cap;
} ivec;

static int iv_push(ivec *a, int32_t x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        int32_t *nv = tb_realloc(a->v, cap * sizeof *nv);
        if (!nv) return TB_EIO;
        a->v = nv;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return TB_OK;
}

/* ------------------------------------------------------------------ */
/* UTF-8 and Unicode classes                                            */

/* Decode the code point at s[i] of a string already known to be valid. */
static inline uint32_t u8_dec(const uint8_t *s, size_t i, size_t *next)
{
    uint32_t c = s[i];
    if (c < 0x80) { *next = i + 1; return c; }
    if (c < 0xE0) { *next = i + 2; return ((c & 0x1F) << 6) | (s[i + 1] & 0x3F); }
    if (c < 0xF0) {
        *next = i + 3;
        return ((c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    }
    *next = i + 4;
    return ((c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) | ((uint32_t)(s[i + 2] & 0x3F) << 6) |
           (s[i + 3] & 0x3F);
}

static size_t u8_enc(uint32_t cp, char *o)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the well-formed UTF-8 sequence at s[i] (1-4), or 0 if it is not
 * well-formed; then *bad is the length of its maximal ill-formed prefix (at
 * least 1), the unit that gets one U+FFFD in a lossy conversion (the rule
 * Rust's String::from_utf8_lossy follows, so ByteLevel decoding matches). */
static size_t u8_seq(const uint8_t *s, size_t n, size_t i, size_t *bad)
{
    uint8_t b = s[i];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b == 0xE0) { need = 2; lo = 0xA0; }
    else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) need = 2;
    else if (b == 0xED) { need = 2; hi = 0x9F; }
    else if (b == 0xF0) { need = 3; lo = 0x90; }
    else if (b >= 0xF1 && b <= 0xF3) need = 3;
    else if (b == 0xF4) { need = 3; hi = 0x8F; }
    else { *bad = 1; return 0; }
    for (size_t k = 1; k <= need; k++) {
        if (i + k >= n) { *bad = k; return 0; }
        uint8_t c = s[i + k];
        uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (c < l || c > h) { *bad = k; return 0; }
    }
    return need + 1;
}

/* Offset of the first byte that does not start a well-formed sequence, or n. */
static size_t u8_check(const uint8_t *s, size_t n)
{
    size_t i = 0, bad;
    while (i < n) {
        if (s[i] < 0x80) { i++; continue; }
        size_t k = u8_seq(s, n, i, &bad);
        if (!k) return i;
        i += k;
    }
    return n;
}

size_t tb_tok_utf8_check(const char *s, size_t n) { return u8_check((const uint8_t *)s, n); }

/* Append s as UTF-8, replacing each maximal ill-formed subpart by U+FFFD. */
static int u8_lossy(sbuf *o, const uint8_t *s, size_t n)
{
    size_t i = 0, bad;
    while (i < n) {
        size_t k = u8_seq(s, n, i, &bad);
        if (k) {
            if (sb_put(o, s + i, k)) return TB_EIO;
            i += k;
        } else {
            if (sb_put(o, "\xEF\xBF\xBD", 3)) return TB_EIO;
            i += bad;
        }
    }
    return TB_OK;
}

unsigned tb_tok_uclass(uint32_t cp)
{
    if (cp < 128) return tb_uc_ascii[cp];
    size_t lo = 0, hi = TB_UC_NRANGES;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tb_uc_ranges[mid].lo) hi = mid;
        else if (cp > tb_uc_ranges[mid].hi) lo = mid + 1;
        else return tb_uc_ranges[mid].flags;
    }
    return 0;
}

#define UC_L TB_UC_L
#define UC_N TB_UC_N
#define UC_S TB_UC_S
#define UC_LNS (TB_UC_L | TB_UC_N | TB_UC_S)

/* ------------------------------------------------------------------ */
/* the split regexes, as state machines                                 */
/* Both regexes have an alternative for every kind of character, so the
 * match at any position starts there: a string is cut into consecutive
 * matches and the splitter only has to find where the current one ends,
 * following the regex's ordered alternation (first alternative that matches
 * wins, each quantifier greedy with backtracking where it matters). */

/* End of the run of characters whose class intersects `mask` (want != 0) or
 * avoids it (want == 0), starting at i. */
static size_t run_cls(const uint8_t *s, size_t n, size_t i, unsigned mask, int want)
{
    while (i < n) {
        size_t j;
        uint32_t c = u8_dec(s, i, &j);
        int in = (tb_tok_uclass(c) & mask) != 0;
        if (in != want) break;
        i = j;
    }
    return i;
}

/* After an apostrophe ending at j: end of 's 't 're 've 'm 'll 'd, or 0.
 * With `fold`, letters compare case-insensitively with Unicode simple case
 * folding; the only non-ASCII character folding onto one of these letters
 * is U+017F LATIN SMALL LETTER LONG S (onto 's'). */
static size_t contraction(const uint8_t *s, size_t n, size_t j, int fold)
{
    if (j >= n) return 0;
    size_t j1, j2;
    uint32_t c1 = u8_dec(s, j, &j1);
    if (fold) {
        if (c1 >= 'A' && c1 <= 'Z') c1 += 32;
        else if (c1 == 0x17F) c1 = 's';
    }
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return j1;
    if ((c1 != 'r' && c1 != 'v' && c1 != 'l') || j1 >= n) return 0;
    uint32_t c2 = u8_dec(s, j1, &j2);
    if (fold) {
        if (c2 >= 'A' && c2 <= 'Z') c2 += 32;
        else if (c2 == 0x17F) c2 = 's';
    }
    if ((c1 == 'r' || c1 == 'v') && c2 == 'e') return j2;
    if (c1 == 'l' && c2 == 'l') return j2;
    return 0;
}

/* \s+(?!\S)|\s+ at i (s[i] is whitespace): the greedy run, given back one
 * character when a non-space follows and the run has more than one, so that
 * the last space can join the next word. */
static size_t ws_tail(const uint8_t *s, size_t n, size_t i)
{
    size_t e = i, last = i, count = 0;
    while (e < n) {
        size_t j;
        uint32_t c = u8_dec(s, e, &j);
        if (!(tb_tok_uclass(c) & UC_S)) break;
        last = e;
        e = j;
        count++;
    }
    if (e == n || count < 2) return e;
    return last;
}

static size_t split_gpt2(const uint8_t *s, size_t n, size_t i)
{
    size_t j;
    uint32_t c = u8_dec(s, i, &j);
    unsigned f = tb_tok_uclass(c);
    if (c == '\'') {
        size_t k = contraction(s, n, j, 0);
        if (k) return k;
    }
    /* " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional leading space */
    size_t st = i;
    unsigned fs = f;
    if (c == ' ' && j < n) {
        size_t j2;
        unsigned f2 = tb_tok_uclass(u8_dec(s, j, &j2));
        if (!(f2 & UC_S)) { st = j; fs = f2; }
    }
    if (fs & UC_L) return run_cls(s, n, st, UC_L, 1);
    if (fs & UC_N) return run_cls(s, n, st, UC_N, 1);
    if (!(fs & UC_LNS)) return run_cls(s, n, st, UC_LNS, 0);
    return ws_tail(s, n, i);
}

static size_t split_llama3(const uint8_t *s, size_t n, size_t i, int max_digits)
{
    size_t j;
    uint32_t c = u8_dec(s, i, &j);
    unsigned f = tb_tok_uclass(c);
    if (c == '\'') { /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
        size_t k = contraction(s, n, j, 1);
        if (k) return k;
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (f & UC_L) return run_cls(s, n, i, UC_L, 1);
    if (c != '\r' && c != '\n' && !(f & UC_N) && j < n) {
        size_t j2;
        if (tb_tok_uclass(u8_dec(s, j, &j2)) & UC_L) return run_cls(s, n, j, UC_L, 1);
    }
    /* \p{N}{1,3} (Qwen2: \p{N}) */
    if (f & UC_N) {
        size_t k = i;
        for (int d = 0; d < max_digits && k < n; d++) {
            size_t k2;
            if (!(tb_tok_uclass(u8_dec(s, k, &k2)) & UC_N)) break;
            k = k2;
        }
        return k;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t st = i;
    unsigned fs = f;
    if (c == ' ' && j < n) {
        size_t j2;
        unsigned f2 = tb_tok_uclass(u8_dec(s, j, &j2));
        if (!(f2 & UC_LNS)) { st = j; fs = f2; }
    }
    if (!(fs & UC_LNS)) {
        size_t k = run_cls(s, n, st, UC_LNS, 0);
        while (k < n && (s[k] == '\r' || s[k] == '\n')) k++;
        return k;
    }
    /* c is whitespace. \s*[\r\n]+ : the run up to and including its last
     * line break, if it has one */
    size_t e = i, after_nl = 0;
    while (e < n) {
        size_t k;
        uint32_t d = u8_dec(s, e, &k);
        if (!(tb_tok_uclass(d) & UC_S)) break;
        if (d == '\r' || d == '\n') after_nl = k;
        e = k;
    }
    if (after_nl) return after_nl;
    return ws_tail(s, n, i); /* \s+(?!\S)|\s+ */
}

size_t tb_tok_split_next(enum tb_tok_split kind, const char *s, size_t len, size_t pos)
{
    const uint8_t *u = (const uint8_t *)s;
    switch (kind) {
    case TB_SPLIT_GPT2: return split_gpt2(u, len, pos);
    case TB_SPLIT_LLAMA3: return split_llama3(u, len, pos, 3);
    case TB_SPLIT_QWEN2: return split_llama3(u, len, pos, 1);
    }
    return len;
}

/* The three regexes as they appear (JSON-decoded) in tokenizer.json files. */
static const char RE_GPT2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char RE_LLAMA3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                               "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ------------------------------------------------------------------ */
/* GPT-2 byte <-> unicode map                                           */
/* Printable bytes (! to ~, ¡ to ¬, ® to ÿ) stand for themselves; the other
 * 68 bytes, in order, become U+0100..U+0143. */

static uint32_t byte_to_cp(uint8_t b)
{
    if (b <= 0x20) return 0x100 + b;
    if (b <= 0x7E) return b;
    if (b <= 0xA0) return b + 162; /* 0x7F..0xA0 -> 0x121..0x142 */
    if (b == 0xAD) return 0x143;
    return b;
}

static int cp_to_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF)) return (int)cp;
    if (cp >= 0x100 && cp <= 0x120) return (int)(cp - 0x100);
    if (cp >= 0x121 && cp <= 0x142) return (int)(cp - 162);
    if (cp == 0x143) return 0xAD;
    return -1;
}

/* ------------------------------------------------------------------ */
/* hash tables                                                          */

static inline uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* string -> int32, keys stored elsewhere as (offset, length) into a base
 * buffer that may move (so no pointers are kept) */
typedef struct {
    uint64_t h;
    uint32_t off, len; /* off == UINT32_MAX: empty slot */
    int32_t val;
} sm_slot;

typedef struct {
    sm_slot *s;
    size_t mask, n;
} strmap;

static int sm_init(strmap *m, size_t expect)
{
    size_t cap = 16;
    while (cap < expect * 2) cap *= 2;
    m->s = tb_malloc(cap * sizeof *m->s);
    if (!m->s) return TB_EIO;
    for (size_t i = 0; i < cap; i++) m->s[i].off = UINT32_MAX;
    m->mask = cap - 1;
    m->n = 0;
    return TB_OK;
}

static sm_slot *sm_slot_for(const strmap *m, const char *base, const char *key, size_t len, uint64_t h)
{
    size_t i = (size_t)h & m->mask;
    for (;;) {
        sm_slot *e = &m->s[i];
        if (e->off == UINT32_MAX) return e;
        if (e->h == h && e->len == len && memcmp(base + e->off, key, len) == 0) return e;
        i = (i + 1) & m->mask;
    }
}

static int32_t sm_get(const strmap *m, const char *base, const char *key, size_t len)
{
    if (!m->s) return -1;
    const sm_slot *e = sm_slot_for(m, base, key, len, hash_bytes(key, len));
    return e->off == UINT32_MAX ? -1 : e->val;
}

static int sm_grow(strmap *m)
{
    strmap nm;
    if (sm_init(&nm, (m->mask + 1))) return TB_EIO;
    for (size_t i = 0; i <= m->mask; i++) {
        sm_slot *e = &m->s[i];
        if (e->off == UINT32_MAX) continue;
        size_t k = (size_t)e->h & nm.mask;
        while (nm.s[k].off != UINT32_MAX) k = (k + 1) & nm.mask;
        nm.s[k] = *e;
    }
    nm.n = m->n;
    free(m->s);
    *m = nm;
    return TB_OK;
}

/* Insert or overwrite; the key must already be at base + off. */
static int sm_put(strmap *m, const char *base, uint32_t off, uint32_t len, int32_t val)
{
    if ((m->n + 1) * 2 > m->mask + 1 && sm_grow(m)) return TB_EIO;
    uint64_t h = hash_bytes(base + off, len);
    sm_slot *e = sm_slot_for(m, base, base + off, len, h);
    if (e->off == UINT32_MAX) {
        e->h = h;
        e->off = off;
        e->len = len;
        m->n++;
    }
    e->val = val;
    return TB_OK;
}

/* (left id, right id) -> (rank, merged id) */
typedef struct {
    uint64_t key; /* UINT64_MAX: empty */
    uint32_t rank;
    int32_t new_id;
} pm_slot;

typedef struct {
    pm_slot *s;
    size_t mask;
} pairmap;

static inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }
static inline size_t pair_hash(uint64_t k) { return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20); }

static int pm_init(pairmap *m, size_t expect)
{
    size_t cap = 16;
    while (cap < expect * 2) cap *= 2;
    m->s = tb_malloc(cap * sizeof *m->s);
    if (!m->s) return TB_EIO;
    for (size_t i = 0; i < cap; i++) m->s[i].key = UINT64_MAX;
    m->mask = cap - 1;
    return TB_OK;
}

static inline const pm_slot *pm_get(const pairmap *m, int32_t a, int32_t b)
{
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k) & m->mask;
    for (;;) {
        const pm_slot *e = &m->s[i];
        if (e->key == k) return e;
        if (e->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

/* later merges of the same pair overwrite earlier ones, as in the reference */
static void pm_put(pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k) & m->mask;
    while (m->s[i].key != UINT64_MAX && m->s[i].key != k) i = (i + 1) & m->mask;
    m->s[i].key = k;
    m->s[i].rank = rank;
    m->s[i].new_id = new_id;
}

/* ------------------------------------------------------------------ */
/* the tokenizer                                                        */

enum { NORM_PREPEND, NORM_REPLACE, NORM_NFC };
typedef struct {
    int kind;
    char *a, *b; /* prepend text / pattern, replacement */
    size_t alen, blen;
} norm_step;

enum { PT_BYTELEVEL, PT_METASPACE, PT_SPLIT };
enum { SCHEME_ALWAYS, SCHEME_FIRST, SCHEME_NEVER };
typedef struct {
    int kind;
    int add_prefix_space, use_regex; /* ByteLevel */
    char repl[8];                    /* Metaspace replacement character (UTF-8) */
    size_t repl_len;
    int scheme, split;               /* Metaspace */
    enum tb_tok_split re;            /* Split */
} pre_step;

enum { DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_BYTELEVEL, DEC_METASPACE };
typedef struct {
    int kind;
    char *a, *b; /* Replace pattern and content */
    size_t alen, blen;
    uint32_t ch; /* Strip content / Metaspace replacement */
    size_t start, stop;
    int scheme;
} dec_step;

typedef struct {
    char *content;  /* as in the file */
    char *form;     /* normalized content if `normalized` and the normalizer changes it, else content */
    size_t len, form_len;
    int32_t id;
    unsigned char single_word, lstrip, rstrip, normalized, special;
} added_tok;

typedef struct {
    int32_t child, sibling, tok; /* tok: index into added, -1 */
    uint8_t byte;
} trie_node;

typedef struct {
    trie_node *nodes;
    size_t n, cap;
    uint8_t first[256]; /* bytes some pattern starts with */
} trie;

#define MAX_STEPS 8
#define SMALL_CP 2048

struct tb_tokenizer {
    char *label;
    sbuf arena;            /* model vocabulary strings, NUL-terminated */
    uint32_t *piece_off;   /* per id: offset in arena or UINT32_MAX */
    uint32_t *piece_len;
    int32_t *added_of;     /* per id: index into added, or -1 */
    size_t n_ids;
    strmap vocab;          /* model vocabulary only (what BPE looks up) */
    added_tok *added;
    size_t n_added;
    trie raw_trie, norm_trie;
    norm_step norm[MAX_STEPS];
    size_t n_norm;
    pre_step pre[MAX_STEPS];
    size_t n_pre;
    dec_step dec[MAX_STEPS];
    size_t n_dec;
    int has_decoder;
    pairmap merges;
    size_t n_merges;
    char *unk_token;       /* NULL: none */
    int32_t unk_id;        /* -1 if unk_token is not in the vocabulary */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_tok[256]; /* <0xNN> ids, -1 */
    int32_t small_cp[SMALL_CP]; /* ids of one-character pieces, -1 */
    int32_t bos;
    int32_t eos[8];
    size_t n_eos;
    char desc[160];
};

static int32_t vocab_find(const tb_tokenizer *t, const char *s, size_t n)
{
    return sm_get(&t->vocab, t->arena.p, s, n);
}

/* ---- trie of added tokens ---- */

static int trie_new_node(trie *tr, uint8_t byte)
{
    if (tr->n == tr->cap) {
        size_t cap = tr->cap ? tr->cap * 2 : 64;
        trie_node *nn = tb_realloc(tr->nodes, cap * sizeof *nn);
        if (!nn) return -1;
        tr->nodes = nn;
        tr->cap = cap;
    }
    trie_node *x = &tr->nodes[tr->n];
    x->child = x->sibling = x->tok = -1;
    x->byte = byte;
    return (int)tr->n++;
}

static int trie_add(trie *tr, const char *s, size_t n, int32_t tok)
{
    if (!tr->n && trie_new_node(tr, 0) < 0) return TB_EIO;
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != b) c = tr->nodes[c].sibling;
        if (c < 0) {
            int nc = trie_new_node(tr, b);
            if (nc < 0) return TB_EIO;
            tr->nodes[nc].sibling = tr->nodes[cur].child;
            tr->nodes[cur].child = nc;
            c = nc;
        }
        cur = c;
    }
    tr->nodes[cur].tok = tok; /* a later duplicate wins */
    tr->first[(uint8_t)s[0]] = 1;
    return TB_OK;
}

/* Longest pattern starting at s[i]: its end, and *tok; 0 if none. */
static size_t trie_longest(const trie *tr, const uint8_t *s, size_t n, size_t i, int32_t *tok)
{
    size_t best = 0;
    int32_t cur = 0;
    for (size_t k = i; k < n; k++) {
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != s[k]) c = tr->nodes[c].sibling;
        if (c < 0) break;
        cur = c;
        if (tr->nodes[c].tok >= 0) {
            best = k + 1;
            *tok = tr->nodes[c].tok;
        }
    }
    return best;
}

typedef struct {
    size_t a, b;
    int32_t tok; /* index into added, -1 for text */
} seg;

typedef struct {
    seg *v;
    size_t n, cap;
} segvec;

static int seg_push(segvec *sv, size_t a, size_t b, int32_t tok)
{
    if (sv->n == sv->cap) {
        size_t cap = sv->cap ? sv->cap * 2 : 16;
        seg *nv = tb_realloc(sv->v, cap * sizeof *nv);
        if (!nv) return TB_EIO;
        sv->v = nv;
        sv->cap = cap;
    }
    sv->v[sv->n++] = (seg){a, b, tok};
    return TB_OK;
}

static int is_word_before(const uint8_t *s, size_t i)
{
    if (i == 0) return 0;
    size_t k = i - 1;
    while (k > 0 && (s[k] & 0xC0) == 0x80) k--;
    size_t j;
    return (tb_tok_uclass(u8_dec(s, k, &j)) & TB_UC_W) != 0;
}

static int is_word_at(const uint8_t *s, size_t n, size_t i)
{
    if (i >= n) return 0;
    size_t j;
    return (tb_tok_uclass(u8_dec(s, i, &j)) & TB_UC_W) != 0;
}

/* Cut the added tokens of `tr` out of s[0..n): segments covering the string,
 * text (tok -1) or token. Leftmost match first, longest at that position;
 * single_word / lstrip / rstrip as in the reference. */
static int split_added(const tb_tokenizer *t, const trie *tr, const char *str, size_t n, segvec *out)
{
    const uint8_t *s = (const uint8_t *)str;
    out->n = 0;
    if (!tr->n) return n ? seg_push(out, 0, n, -1) : TB_OK;
    size_t start_offset = 0, pos = 0;
    while (pos < n) {
        if (!tr->first[s[pos]]) { pos++; continue; }
        int32_t ti = -1;
        size_t end = trie_longest(tr, s, n, pos, &ti);
        if (!end) { pos++; continue; }
        const added_tok *at = &t->added[ti];
        size_t start = pos, stop = end;
        if (at->single_word && (is_word_before(s, start) || is_word_at(s, n, stop))) {
            pos = end; /* the matcher resumes after the rejected match */
            continue;
        }
        if (at->lstrip) {
            size_t k = start;
            while (k > start_offset) {
                size_t b = k - 1, j;
                while (b > 0 && (s[b] & 0xC0) == 0x80) b--;
                if (!(tb_tok_uclass(u8_dec(s, b, &j)) & UC_S)) break;
                k = b;
            }
            start = k;
        }
        if (at->rstrip) {
            while (stop < n) {
                size_t j;
                if (!(tb_tok_uclass(u8_dec(s, stop, &j)) & UC_S)) break;
                stop = j;
            }
        }
        if (start_offset < start && seg_push(out, start_offset, start, -1)) return TB_EIO;
        if (seg_push(out, start, stop, ti)) return TB_EIO;
        start_offset = stop;
        pos = stop;
    }
    if (start_offset < n && seg_push(out, start_offset, n, -1)) return TB_EIO;
    return TB_OK;
}

/* ---- NFC (Unicode 9.0 data, like the reference's normalization crate) ---- */

static unsigned ccc_of(uint32_t cp)
{
    if (cp < tb_ccc_ranges[0].lo) return 0;
    size_t lo = 0, hi = TB_CCC_RANGES_N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tb_ccc_ranges[mid].lo) hi = mid;
        else if (cp > tb_ccc_ranges[mid].hi) lo = mid + 1;
        else return tb_ccc_ranges[mid].flags;
    }
    return 0;
}

static int nfc_unsafe(uint32_t cp)
{
    if (cp < tb_nfc_unsafe[0].lo) return 0;
    size_t lo = 0, hi = TB_NFC_UNSAFE_N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tb_nfc_unsafe[mid].lo) hi = mid;
        else if (cp > tb_nfc_unsafe[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

#define HANGUL_S 0xAC00u
#define HANGUL_L 0x1100u
#define HANGUL_V 0x1161u
#define HANGUL_T 0x11A7u
#define HANGUL_VN 21u
#define HANGUL_TN 28u
#define HANGUL_SN (19u * 21u * 28u)

static int nfc_decompose(ivec *d, uint32_t cp)
{
    if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_SN) { /* algorithmic, not in the table */
        uint32_t k = cp - HANGUL_S, t = k % HANGUL_TN;
        if (iv_push(d, (int32_t)(HANGUL_L + k / (HANGUL_VN * HANGUL_TN))) ||
            iv_push(d, (int32_t)(HANGUL_V + (k % (HANGUL_VN * HANGUL_TN)) / HANGUL_TN)))
            return TB_EIO;
        return t ? iv_push(d, (int32_t)(HANGUL_T + t)) : TB_OK;
    }
    size_t lo = 0, hi = TB_NFC_DECOMP_N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tb_nfc_decomp[mid].cp) hi = mid;
        else if (cp > tb_nfc_decomp[mid].cp) lo = mid + 1;
        else {
            if (nfc_decompose(d, tb_nfc_decomp[mid].a)) return TB_EIO;
            return tb_nfc_decomp[mid].b ? nfc_decompose(d, tb_nfc_decomp[mid].b) : TB_OK;
        }
    }
    return iv_push(d, (int32_t)cp);
}

static uint32_t nfc_compose(uint32_t a, uint32_t b)
{
    if (a >= HANGUL_L && a < HANGUL_L + 19 && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V)) * HANGUL_TN;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SN && (a - HANGUL_S) % HANGUL_TN == 0 && b > HANGUL_T &&
        b < HANGUL_T + HANGUL_TN)
        return a + (b - HANGUL_T);
    size_t lo = 0, hi = TB_NFC_COMP_N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const tb_nfc_map *m = &tb_nfc_comp[mid];
        if (a < m->cp || (a == m->cp && b < m->a)) hi = mid;
        else if (a > m->cp || b > m->a) lo = mid + 1;
        else return m->b;
    }
    return 0;
}

/* NFC of valid UTF-8 s[0..n) into o: canonical decomposition, canonical
 * ordering of combining marks, canonical composition. Text without any
 * character that NFC can change is copied as it is. */
static int nfc(const char *s, size_t n, sbuf *o)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, j;
    while (i < n && (u[i] < 0x80 || !nfc_unsafe(u8_dec(u, i, &j)))) i = u[i] < 0x80 ? i + 1 : j;
    if (i == n) return sb_put(o, s, n);
    ivec d = {0}, cc = {0};
    int rc = TB_OK;
    for (i = 0; i < n && !rc; i = j) rc = nfc_decompose(&d, u8_dec(u, i, &j));
    for (size_t k = 0; k < d.n && !rc; k++) rc = iv_push(&cc, (int32_t)ccc_of((uint32_t)d.v[k]));
    if (rc) goto out;
    for (size_t k = 1; k < d.n; k++) /* stable insertion sort of each run of marks */
        for (size_t m = k; m > 0 && cc.v[m] && cc.v[m - 1] > cc.v[m]; m--) {
            int32_t t1 = d.v[m], t2 = cc.v[m];
            d.v[m] = d.v[m - 1];
            cc.v[m] = cc.v[m - 1];
            d.v[m - 1] = t1;
            cc.v[m - 1] = t2;
        }
    /* compose in place: w is the output length, st the last starter */
    size_t w = 0;
    long st = -1;
    for (size_t k = 0; k < d.n; k++) {
        uint32_t c = (uint32_t)d.v[k];
        int32_t cl = cc.v[k];
        if (st >= 0) {
            int32_t last = cc.v[w - 1];
            int adjacent = (size_t)st == w - 1;
            if (adjacent || (last != 0 && last < cl)) {
                uint32_t comp = nfc_compose((uint32_t)d.v[st], c);
                if (comp) {
                    d.v[st] = (int32_t)comp;
                    continue;
                }
            }
        }
        if (cl == 0) st = (long)w;
        d.v[w] = (int32_t)c;
        cc.v[w] = cl;
        w++;
    }
    if ((rc = sb_reserve(o, 4 * w))) goto out;
    for (size_t k = 0; k < w; k++) o->n += u8_enc((uint32_t)d.v[k], o->p + o->n);
out:
    free(d.v);
    free(cc.v);
    return rc;
}

/* ---- normalizer ---- */

/* Apply the normalizer steps to s[0..n); result in *res (pointing into one
 * of the two buffers, or to s itself when there are no steps). */
static int normalize(const tb_tokenizer *t, const char *s, size_t n, sbuf *b0, sbuf *b1, const char **res,
                     size_t *rn)
{
    const char *cur = s;
    size_t cn = n;
    sbuf *bufs[2] = {b0, b1};
    int w = 0;
    for (size_t k = 0; k < t->n_norm; k++) {
        const norm_step *st = &t->norm[k];
        sbuf *o = bufs[w];
        o->n = 0;
        if (st->kind == NORM_PREPEND) {
            if (cn == 0) continue;
            if (sb_put(o, st->a, st->alen) || sb_put(o, cur, cn)) return TB_EIO;
        } else if (st->kind == NORM_NFC) {
            if (nfc(cur, cn, o)) return TB_EIO;
        } else {
            size_t i = 0;
            while (i < cn) {
                const char *hit = NULL;
                if (st->alen <= cn - i) {
                    const char *p = cur + i, *lim = cur + cn - st->alen;
                    while (p <= lim) {
                        p = memchr(p, st->a[0], (size_t)(lim - p) + 1);
                        if (!p) break;
                        if (memcmp(p, st->a, st->alen) == 0) { hit = p; break; }
                        p++;
                    }
                }
                size_t upto = hit ? (size_t)(hit - cur) : cn;
                if (sb_put(o, cur + i, upto - i)) return TB_EIO;
                if (!hit) break;
                if (sb_put(o, st->b, st->blen)) return TB_EIO;
                i = upto + st->alen;
            }
        }
        cur = o->p;
        cn = o->n;
        w ^= 1;
    }
    *res = cur;
    *rn = cn;
    return TB_OK;
}

/* ------------------------------------------------------------------ */
/* encoding                                                             */

typedef struct {
    int32_t id, prev, next;
} sym;

typedef struct {
    uint64_t key; /* rank << 32 | position */
    int32_t new_id;
} hent;

typedef struct {
    uint64_t h;
    uint32_t koff, klen; /* klen == UINT32_MAX: empty */
    uint32_t voff, vlen;
} cslot;

#define CACHE_MAX_KEY 256
#define CACHE_MAX_SLOTS (1u << 20)

typedef struct {
    const tb_tokenizer *t;
    ivec ids;
    sbuf lvl_a[MAX_STEPS], lvl_b[MAX_STEPS];
    sym *sy;
    size_t sy_cap;
    hent *heap;
    size_t heap_n, heap_cap;
    /* word -> ids cache, for the length of one encode call */
    cslot *cache;
    size_t cache_mask, cache_n;
    sbuf ckeys;
    ivec cvals;
    /* progress */
    void (*progress)(void *, size_t, size_t);
    void *user;
    size_t total, seg_raw_a, seg_raw_len, last_report;
    const char *seg_norm;
    size_t seg_norm_len;
} enc_ctx;

static void heap_push(enc_ctx *c, uint64_t key, int32_t new_id)
{
    hent *h = c->heap;
    size_t i = c->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].key <= key) break;
        h[i] = h[p];
        i = p;
    }
    h[i].key = key;
    h[i].new_id = new_id;
}

static hent heap_pop(enc_ctx *c)
{
    hent *h = c->heap;
    hent top = h[0], last = h[--c->heap_n];
    size_t n = c->heap_n, i = 0;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        size_t m = (l + 1 < n && h[l + 1].key < h[l].key) ? l + 1 : l;
        if (h[m].key >= last.key) break;
        h[i] = h[m];
        i = m;
    }
    if (n) h[i] = last;
    return top;
}

static int cache_init(enc_ctx *c, size_t slots)
{
    c->cache = tb_malloc(slots * sizeof *c->cache);
    if (!c->cache) return TB_EIO;
    for (size_t i = 0; i < slots; i++) c->cache[i].klen = UINT32_MAX;
    c->cache_mask = slots - 1;
    c->cache_n = 0;
    return TB_OK;
}

static cslot *cache_slot(const enc_ctx *c, const char *w, size_t n, uint64_t h)
{
    size_t i = (size_t)h & c->cache_mask;
    for (;;) {
        cslot *e = &c->cache[i];
        if (e->klen == UINT32_MAX) return e;
        if (e->h == h && e->klen == n && memcmp(c->ckeys.p + e->koff, w, n) == 0) return e;
        i = (i + 1) & c->cache_mask;
    }
}

static int cache_grow(enc_ctx *c)
{
    cslot *old = c->cache;
    size_t oldn = c->cache_mask + 1;
    if (cache_init(c, oldn * 2)) { c->cache = old; return TB_EIO; }
    for (size_t i = 0; i < oldn; i++) {
        if (old[i].klen == UINT32_MAX) continue;
        size_t k = (size_t)old[i].h & c->cache_mask;
        while (c->cache[k].klen != UINT32_MAX) k = (k + 1) & c->cache_mask;
        c->cache[k] = old[i];
        c->cache_n++;
    }
    free(old);
    return TB_OK;
}

static int cache_put(enc_ctx *c, const char *w, size_t n, uint64_t h, const int32_t *ids, size_t k)
{
    if ((c->cache_n + 1) * 2 > c->cache_mask + 1) {
        if (c->cache_mask + 1 >= CACHE_MAX_SLOTS) return TB_OK; /* full: stop caching */
        if (cache_grow(c)) return TB_EIO;
    }
    if (c->ckeys.n + n > UINT32_MAX || c->cvals.n + k > UINT32_MAX) return TB_OK;
    cslot *e = cache_slot(c, w, n, h);
    e->h = h;
    e->koff = (uint32_t)c->ckeys.n;
    e->klen = (uint32_t)n;
    e->voff = (uint32_t)c->cvals.n;
    e->vlen = (uint32_t)k;
    if (sb_put(&c->ckeys, w, n)) return TB_EIO;
    for (size_t i = 0; i < k; i++)
        if (iv_push(&c->cvals, ids[i])) return TB_EIO;
    c->cache_n++;
    return TB_OK;
}

static void report_progress(enc_ctx *c, const char *word)
{
    if (!c->progress || !c->seg_norm_len) return;
    /* map the position in the normalized segment back to raw bytes, roughly */
    size_t in_seg = (size_t)(word - c->seg_norm);
    if (in_seg > c->seg_norm_len) return;
    size_t done = c->seg_raw_a + (size_t)((double)in_seg / (double)c->seg_norm_len * (double)c->seg_raw_len);
    if (done >= c->last_report + (1u << 18)) {
        c->last_report = done;
        c->progress(c->user, done, c->total);
    }
}

/* BPE-merge one word and append its ids. Symbols form a linked list over an
 * array; candidate merges of adjacent pairs sit in a min-heap keyed by (merge
 * rank, position of the left symbol), and stale entries are dropped when
 * popped, which gives exactly the reference's merge order. */
static int bpe_word(enc_ctx *c, const char *s, size_t n)
{
    const tb_tokenizer *t = c->t;
    if (n == 0) return TB_OK;
    if (c->progress) report_progress(c, s);
    if (t->ignore_merges) {
        int32_t id = vocab_find(t, s, n);
        if (id >= 0) return iv_push(&c->ids, id);
    }
    uint64_t h = 0;
    int cacheable = c->cache && n <= CACHE_MAX_KEY;
    if (cacheable) {
        h = hash_bytes(s, n);
        const cslot *e = cache_slot(c, s, n, h);
        if (e->klen != UINT32_MAX) {
            for (uint32_t i = 0; i < e->vlen; i++)
                if (iv_push(&c->ids, c->cvals.v[e->voff + i])) return TB_EIO;
            return TB_OK;
        }
    }
    if (n >= UINT32_MAX) return tb_fail(TB_EDATA, "text segment of %zu bytes is too long to encode", n);
    if (c->sy_cap < n) {
        size_t cap = n < 64 ? 64 : n;
        sym *ns = tb_realloc(c->sy, cap * sizeof *ns);
        hent *nh = ns ? tb_realloc(c->heap, 2 * cap * sizeof *nh) : NULL;
        if (!ns || !nh) {
            if (ns) c->sy = ns;
            return TB_EIO;
        }
        c->sy = ns;
        c->heap = nh;
        c->sy_cap = cap;
        c->heap_cap = 2 * cap;
    }
    sym *sy = c->sy;
    size_t ns = 0;
    int32_t unk_pend = -1;
    const uint8_t *u = (const uint8_t *)s;
#define ADD_SYM(idv)                                                                  \
    do {                                                                              \
        sy[ns].id = (idv);                                                            \
        sy[ns].prev = (int32_t)ns - 1;                                                \
        sy[ns].next = -1;                                                             \
        if (ns) sy[ns - 1].next = (int32_t)ns;                                        \
        ns++;                                                                         \
    } while (0)
    for (size_t i = 0; i < n;) {
        size_t j;
        uint32_t cp = u8_dec(u, i, &j);
        int32_t id = cp < SMALL_CP ? t->small_cp[cp] : vocab_find(t, s + i, j - i);
        if (id >= 0) {
            if (unk_pend >= 0) { ADD_SYM(unk_pend); unk_pend = -1; }
            ADD_SYM(id);
        } else {
            int done = 0;
            if (t->byte_fallback) {
                done = 1;
                for (size_t k = i; k < j; k++)
                    if (t->byte_tok[u[k]] < 0) done = 0;
                /* (a pending unk is not flushed here: the reference emits it
                 * after these bytes, and so do we) */
                if (done)
                    for (size_t k = i; k < j; k++) ADD_SYM(t->byte_tok[u[k]]);
            }
            if (!done && t->unk_token) {
                if (t->unk_id < 0)
                    return tb_fail(TB_EDATA, "unk_token '%s' is not in the vocabulary", t->unk_token);
                if (unk_pend < 0 || !t->fuse_unk) {
                    if (unk_pend >= 0) ADD_SYM(unk_pend);
                    unk_pend = t->unk_id;
                }
            }
            /* no unk_token: the character is dropped, as in the reference */
        }
        i = j;
    }
    if (unk_pend >= 0) ADD_SYM(unk_pend);
#undef ADD_SYM
    if (ns == 0) return TB_OK;

    c->heap_n = 0;
    for (size_t k = 0; k + 1 < ns; k++) {
        const pm_slot *m = pm_get(&t->merges, sy[k].id, sy[k + 1].id);
        if (m) heap_push(c, (uint64_t)m->rank << 32 | k, m->new_id);
    }
    while (c->heap_n) {
        hent top = heap_pop(c);
        int32_t p = (int32_t)(top.key & 0xFFFFFFFFu);
        if (sy[p].id < 0) continue;
        int32_t nx = sy[p].next;
        if (nx < 0) continue;
        const pm_slot *m = pm_get(&t->merges, sy[p].id, sy[nx].id);
        if (!m || m->new_id != top.new_id) continue;
        sy[p].id = top.new_id;
        sy[p].next = sy[nx].next;
        sy[nx].id = -1;
        if (sy[nx].next >= 0) sy[sy[nx].next].prev = p;
        /* at most two new pairs per merge, and each merge removes a symbol:
         * the heap never outgrows 2 * symbols */
        if (sy[p].prev >= 0) {
            int32_t pv = sy[p].prev;
            m = pm_get(&t->merges, sy[pv].id, sy[p].id);
            if (m) heap_push(c, (uint64_t)m->rank << 32 | (uint32_t)pv, m->new_id);
        }
        if (sy[p].next >= 0) {
            m = pm_get(&t->merges, sy[p].id, sy[sy[p].next].id);
            if (m) heap_push(c, (uint64_t)m->rank << 32 | (uint32_t)p, m->new_id);
        }
    }
    size_t first = c->ids.n;
    for (int32_t k = 0; k >= 0; k = sy[k].next)
        if (iv_push(&c->ids, sy[k].id)) return TB_EIO;
    if (cacheable && cache_put(c, s, n, h, c->ids.v + first, c->ids.n - first)) return TB_EIO;
    return TB_OK;
}

/* Run pre-tokenizer step `k` on one piece and recurse into the next step
 * for each of its pieces. `at_origin`: the piece starts at offset 0 of the
 * original text (Metaspace's prepend_scheme "first" needs it). */
static int pretok(enc_ctx *c, size_t k, const char *s, size_t n, int at_origin)
{
    const tb_tokenizer *t = c->t;
    if (n == 0) return TB_OK; /* empty pieces are dropped at every stage */
    if (k == t->n_pre) return bpe_word(c, s, n);
    const pre_step *st = &t->pre[k];
    int rc;
    if (st->kind == PT_SPLIT) {
        for (size_t i = 0; i < n;) {
            size_t e = tb_tok_split_next(st->re, s, n, i);
            if ((rc = pretok(c, k + 1, s + i, e - i, at_origin && i == 0))) return rc;
            i = e;
        }
        return TB_OK;
    }
    sbuf *a = &c->lvl_a[k], *b = &c->lvl_b[k];
    if (st->kind == PT_BYTELEVEL) {
        const char *src = s;
        size_t sn = n;
        if (st->add_prefix_space && s[0] != ' ') {
            a->n = 0;
            if (sb_put(a, " ", 1) || sb_put(a, s, n)) return TB_EIO;
            src = a->p;
            sn = a->n;
        }
        for (size_t i = 0; i < sn;) {
            size_t e = st->use_regex ? tb_tok_split_next(TB_SPLIT_GPT2, src, sn, i) : sn;
            b->n = 0;
            if (sb_reserve(b, 2 * (e - i))) return TB_EIO;
            for (size_t q = i; q < e; q++) b->n += u8_enc(byte_to_cp((uint8_t)src[q]), b->p + b->n);
            if ((rc = pretok(c, k + 1, b->p, b->n, at_origin && i == 0))) return rc;
            i = e;
        }
        return TB_OK;
    }
    /* Metaspace: spaces become the replacement character; then it is
     * prepended (per prepend_scheme) unless the piece already starts with it;
     * with split, each replacement character starts a new piece. */
    a->n = 0;
    if (sb_put(a, st->repl, st->repl_len)) return TB_EIO;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') rc = sb_put(a, st->repl, st->repl_len);
        else rc = sb_put(a, s + i, 1);
        if (rc) return rc;
    }
    const char *p = a->p + st->repl_len;
    size_t pn = a->n - st->repl_len;
    int starts = pn >= st->repl_len && memcmp(p, st->repl, st->repl_len) == 0;
    if (!starts && (st->scheme == SCHEME_ALWAYS || (st->scheme == SCHEME_FIRST && at_origin))) {
        p = a->p;
        pn = a->n;
    }
    if (!st->split) return pretok(c, k + 1, p, pn, at_origin);
    size_t piece = 0;
    for (size_t i = 1; i + st->repl_len <= pn;) {
        if (memcmp(p + i, st->repl, st->repl_len) == 0) {
            if ((rc = pretok(c, k + 1, p + piece, i - piece, at_origin && piece == 0))) return rc;
            piece = i;
            i += st->repl_len;
        } else {
            i++;
        }
    }
    return pretok(c, k + 1, p + piece, pn - piece, at_origin && piece == 0);
}

static void enc_free(enc_ctx *c)
{
    for (int i = 0; i < MAX_STEPS; i++) {
        sb_free(&c->lvl_a[i]);
        sb_free(&c->lvl_b[i]);
    }
    free(c->sy);
    free(c->heap);
    free(c->cache);
    sb_free(&c->ckeys);
    free(c->cvals.v);
}

int tb_tok_encode_progress(const tb_tokenizer *t, const char *text, size_t len, int add_bos, int32_t **ids,
                           size_t *n, void (*progress)(void *, size_t, size_t), void *user)
{
    *ids = NULL;
    *n = 0;
    size_t bad = u8_check((const uint8_t *)text, len);
    if (bad < len) return tb_fail(TB_EDATA, "invalid UTF-8 at byte offset %zu", bad);
    if (add_bos && t->bos < 0) return tb_fail(TB_EDATA, "%s: the model has no BOS token", t->label);
    enc_ctx c;
    memset(&c, 0, sizeof c);
    c.t = t;
    c.progress = progress;
    c.user = user;
    c.total = len;
    int rc = TB_OK;
    segvec outer = {0}, inner = {0};
    sbuf nb0 = {0}, nb1 = {0};
    /* the cache pays off only when words repeat, i.e. on longer texts */
    if (len > 4096 && (rc = cache_init(&c, 4096))) goto done;
    if (add_bos && (rc = iv_push(&c.ids, t->bos))) goto done;
    if ((rc = split_added(t, &t->raw_trie, text, len, &outer))) goto done;
    for (size_t si = 0; si < outer.n; si++) {
        seg sg = outer.v[si];
        if (sg.tok >= 0) {
            if ((rc = iv_push(&c.ids, t->added[sg.tok].id))) goto done;
            continue;
        }
        const char *ns;
        size_t nn;
        if ((rc = normalize(t, text + sg.a, sg.b - sg.a, &nb0, &nb1, &ns, &nn))) goto done;
        c.seg_raw_a = sg.a;
        c.seg_raw_len = sg.b - sg.a;
        c.seg_norm = ns;
        c.seg_norm_len = nn;
        if ((rc = split_added(t, &t->norm_trie, ns, nn, &inner))) goto done;
        for (size_t k = 0; k < inner.n; k++) {
            seg s2 = inner.v[k];
            if (s2.tok >= 0) rc = iv_push(&c.ids, t->added[s2.tok].id);
            else rc = pretok(&c, 0, ns + s2.a, s2.b - s2.a, sg.a == 0 && s2.a == 0);
            if (rc) goto done;
        }
    }
    if (!c.ids.v && !(c.ids.v = tb_malloc(sizeof *c.ids.v))) { /* non-NULL even when empty */
        rc = TB_EIO;
        goto done;
    }
    if (progress) progress(user, len, len);
    *ids = c.ids.v;
    *n = c.ids.n;
    c.ids.v = NULL;
done:
    free(c.ids.v);
    free(outer.v);
    free(inner.v);
    sb_free(&nb0);
    sb_free(&nb1);
    enc_free(&c);
    return rc;
}

int tb_tok_encode(const tb_tokenizer *t, const char *text, size_t len, int add_bos, int32_t **ids, size_t *n)
{
    return tb_tok_encode_progress(t, text, len, add_bos, ids, n, NULL, NULL);
}

/* ------------------------------------------------------------------ */
/* decoding                                                             */

/* A list of token strings, as the reference's decoders pass along. */
typedef struct {
    sbuf b;
    size_t *off, *len;
    size_t n, cap;
} tlist;

static int tl_add(tlist *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        size_t *no = tb_realloc(l->off, cap * sizeof *no);
        if (!no) return TB_EIO;
        l->off = no;
        size_t *nl = tb_realloc(l->len, cap * sizeof *nl);
        if (!nl) return TB_EIO;
        l->len = nl;
        l->cap = cap;
    }
    l->off[l->n] = l->b.n;
    l->len[l->n] = n;
    l->n++;
    return sb_put(&l->b, s, n);
}

/* start a token that the caller builds with sb_put on l->b, then tl_end */
static int tl_begin(tlist *l) { return tl_add(l, "", 0); }
static void tl_end(tlist *l) { l->len[l->n - 1] = l->b.n - l->off[l->n - 1]; }

static void tl_free(tlist *l)
{
    sb_free(&l->b);
    free(l->off);
    free(l->len);
    memset(l, 0, sizeof *l);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* "<0xNN>" -> byte value, else -1 (the reference parses the two characters
 * with from_str_radix, which also takes a leading '+') */
static int byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    if (s[3] == '+' && lo >= 0) return lo;
    if (hi < 0 || lo < 0) return -1;
    return hi * 16 + lo;
}

static int flush_bytes(tlist *out, sbuf *bytes)
{
    if (!bytes->n) return TB_OK;
    int rc;
    if (u8_check((const uint8_t *)bytes->p, bytes->n) == bytes->n) {
        rc = tl_add(out, bytes->p, bytes->n);
    } else { /* one U+FFFD per byte, unlike a lossy conversion */
        rc = TB_OK;
        for (size_t i = 0; i < bytes->n && !rc; i++) rc = tl_add(out, "\xEF\xBF\xBD", 3);
    }
    bytes->n = 0;
    return rc;
}

static int dec_apply(const dec_step *st, const tlist *in, tlist *out)
{
    int rc = TB_OK;
    switch (st->kind) {
    case DEC_REPLACE:
        for (size_t i = 0; i < in->n && !rc; i++) {
            const char *s = in->b.p + in->off[i];
            size_t n = in->len[i];
            if ((rc = tl_begin(out))) break;
            for (size_t k = 0; k < n && !rc;) {
                if (n - k >= st->alen && memcmp(s + k, st->a, st->alen) == 0) {
                    rc = sb_put(&out->b, st->b, st->blen);
                    k += st->alen;
                } else {
                    rc = sb_put(&out->b, s + k, 1);
                    k++;
                }
            }
            tl_end(out);
        }
        return rc;
    case DEC_BYTEFALLBACK: {
        sbuf bytes = {0};
        for (size_t i = 0; i < in->n && !rc; i++) {
            const char *s = in->b.p + in->off[i];
            int bv = byte_token(s, in->len[i]);
            if (bv >= 0) {
                uint8_t by = (uint8_t)bv;
                rc = sb_put(&bytes, &by, 1);
            } else {
                rc = flush_bytes(out, &bytes);
                if (!rc) rc = tl_add(out, s, in->len[i]);
            }
        }
        if (!rc) rc = flush_bytes(out, &bytes);
        sb_free(&bytes);
        return rc;
    }
    case DEC_FUSE:
        if ((rc = tl_begin(out))) return rc;
        for (size_t i = 0; i < in->n && !rc; i++) rc = sb_put(&out->b, in->b.p + in->off[i], in->len[i]);
        tl_end(out);
        return rc;
    case DEC_STRIP:
        for (size_t i = 0; i < in->n && !rc; i++) {
            const uint8_t *s = (const uint8_t *)in->b.p + in->off[i];
            size_t n = in->len[i], a = 0, e = n, j;
            for (size_t k = 0; k < st->start && a < n; k++) {
                if (u8_dec(s, a, &j) != st->ch) break;
                a = j;
            }
            for (size_t k = 0; k < st->stop && e > a; k++) {
                size_t b = e - 1;
                while (b > a && (s[b] & 0xC0) == 0x80) b--;
                if (u8_dec(s, b, &j) != st->ch) break;
                e = b;
            }
            rc = tl_add(out, (const char *)s + a, e - a);
        }
        return rc;
    case DEC_BYTELEVEL: {
        /* each token whose characters all map back to bytes becomes those
         * bytes, any other token stays as it is; then one lossy UTF-8 string */
        sbuf raw = {0};
        for (size_t i = 0; i < in->n && !rc; i++) {
            const uint8_t *s = (const uint8_t *)in->b.p + in->off[i];
            size_t n = in->len[i], start = raw.n, j;
            int all = 1;
            for (size_t k = 0; k < n && !rc; k = j) {
                int by = cp_to_byte(u8_dec(s, k, &j));
                if (by < 0) { all = 0; break; }
                uint8_t b8 = (uint8_t)by;
                rc = sb_put(&raw, &b8, 1);
            }
            if (!all) {
                raw.n = start;
                rc = sb_put(&raw, s, n);
            }
        }
        if (!rc && !(rc = tl_begin(out))) {
            rc = u8_lossy(&out->b, (const uint8_t *)raw.p, raw.n);
            tl_end(out);
        }
        sb_free(&raw);
        return rc;
    }
    case DEC_METASPACE:
        for (size_t i = 0; i < in->n && !rc; i++) {
            const uint8_t *s = (const uint8_t *)in->b.p + in->off[i];
            size_t n = in->len[i], j;
            if ((rc = tl_begin(out))) break;
            for (size_t k = 0; k < n && !rc; k = j) {
                uint32_t cp = u8_dec(s, k, &j);
                if (cp != st->ch) rc = sb_put(&out->b, s + k, j - k);
                else if (i != 0 || st->scheme == SCHEME_NEVER) rc = sb_put(&out->b, " ", 1);
                /* in the first token the reference drops every replacement */
            }
            tl_end(out);
        }
        return rc;
    }
    return tb_fail(TB_EDATA, "internal: unknown decoder step");
}

static int id_ok(const tb_tokenizer *t, int32_t id)
{
    return id >= 0 && (size_t)id < t->n_ids && (t->added_of[id] >= 0 || t->piece_off[id] != UINT32_MAX);
}

static int decode_impl(const tb_tokenizer *t, const int32_t *ids, size_t n, int skip, sbuf *out)
{
    tlist l[2];
    memset(l, 0, sizeof l);
    int rc = TB_OK, cur = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        int32_t id = ids[i];
        if (!id_ok(t, id)) {
            rc = tb_fail(TB_EDATA, "token id %ld is not in the vocabulary (size %zu)", (long)id, t->n_ids);
            break;
        }
        if (t->added_of[id] >= 0) {
            const added_tok *a = &t->added[t->added_of[id]];
            if (!(skip && a->special)) rc = tl_add(&l[0], a->form, a->form_len);
        } else {
            rc = tl_add(&l[0], t->arena.p + t->piece_off[id], t->piece_len[id]);
        }
    }
    for (size_t k = 0; k < t->n_dec && !rc; k++) {
        tlist *o = &l[cur ^ 1];
        o->n = 0;
        o->b.n = 0;
        rc = dec_apply(&t->dec[k], &l[cur], o);
        cur ^= 1;
    }
    out->n = 0;
    for (size_t i = 0; i < l[cur].n && !rc; i++) {
        if (!t->has_decoder && i && (rc = sb_put(out, " ", 1))) break; /* no decoder: joined by spaces */
        rc = sb_put(out, l[cur].b.p + l[cur].off[i], l[cur].len[i]);
    }
    if (!rc) rc = sb_reserve(out, 1);
    if (!rc) out->p[out->n] = 0;
    tl_free(&l[0]);
    tl_free(&l[1]);
    return rc;
}

int tb_tok_decode_ex(const tb_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
                     size_t *len)
{
    sbuf o = {0};
    *text = NULL;
    if (len) *len = 0;
    int rc = decode_impl(t, ids, n, skip_special, &o);
    if (rc) {
        sb_free(&o);
        return rc;
    }
    *text = o.p;
    if (len) *len = o.n;
    return TB_OK;
}

int tb_tok_decode(const tb_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len)
{
    return tb_tok_decode_ex(t, ids, n, 0, text, len);
}

/* ---- streaming ---- */

/* Hold back at most this many ids waiting for a character to complete: a
 * genuine U+FFFD in the vocabulary must not stall the output for good. */
#define STREAM_MAX_PENDING 8

void tb_tok_stream_init(tb_tok_stream *s) { memset(s, 0, sizeof *s); }

void tb_tok_stream_free(tb_tok_stream *s)
{
    free(s->ids);
    free(s->out);
    memset(s, 0, sizeof *s);
}

static int stream_emit(tb_tok_stream *s, const char *p, size_t n, const char **piece, size_t *len)
{
    if (n + 1 > s->out_cap) {
        char *no = tb_realloc(s->out, n + 1);
        if (!no) return TB_EIO;
        s->out = no;
        s->out_cap = n + 1;
    }
    if (n) memcpy(s->out, p, n);
    s->out[n] = 0;
    *piece = s->out;
    *len = n;
    return TB_OK;
}

/* The window's text normally starts with its context's text. It does not
 * when byte tokens of the context (a complete character) and new byte tokens
 * form one run that is not valid UTF-8 as a whole: then ByteFallback turns
 * every byte of the run into U+FFFD. Decode the new ids alone instead, so a
 * character already shown stays shown. */
static int stream_fix_prefix(const tb_tokenizer *t, tb_tok_stream *s, sbuf *full)
{
    sbuf ctx = {0};
    int rc = decode_impl(t, s->ids, s->n_ctx, 0, &ctx);
    if (!rc && (full->n < ctx.n || memcmp(full->p, ctx.p, ctx.n) != 0)) {
        rc = decode_impl(t, s->ids + s->n_ctx, s->n - s->n_ctx, 0, full);
        if (!rc && !(rc = sb_reserve(full, ctx.n + 1))) { /* shift in the context text */
            memmove(full->p + ctx.n, full->p, full->n);
            memcpy(full->p, ctx.p, ctx.n);
            full->n += ctx.n;
        }
    }
    sb_free(&ctx);
    return rc;
}

int tb_tok_stream_push(const tb_tokenizer *t, tb_tok_stream *s, int32_t id, const char **piece, size_t *len)
{
    *piece = "";
    *len = 0;
    if (!id_ok(t, id))
        return tb_fail(TB_EDATA, "token id %ld is not in the vocabulary (size %zu)", (long)id, t->n_ids);
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        int32_t *ni = tb_realloc(s->ids, cap * sizeof *ni);
        if (!ni) return TB_EIO;
        s->ids = ni;
        s->cap = cap;
    }
    s->ids[s->n++] = id;
    sbuf full = {0};
    int rc = decode_impl(t, s->ids, s->n, 0, &full);
    if (rc) goto out;
    size_t pending = s->n - s->n_ctx;
    if ((rc = stream_fix_prefix(t, s, &full))) goto out;
    int incomplete = full.n >= 3 && memcmp(full.p + full.n - 3, "\xEF\xBF\xBD", 3) == 0;
    if ((full.n > s->ctx_len && !incomplete) || pending > STREAM_MAX_PENDING) {
        /* the text of the window minus that of its context is what the new
         * ids add, with the decoder's context-dependent rules (leading-space
         * strip) applied as in a full decode */
        size_t from = full.n > s->ctx_len ? s->ctx_len : full.n;
        if ((rc = stream_emit(s, full.p + from, full.n - from, piece, len))) goto out;
        memmove(s->ids, s->ids + s->n_ctx, pending * sizeof *s->ids);
        s->n = s->n_ctx = pending;
        if ((rc = decode_impl(t, s->ids, s->n, 0, &full))) goto out;
        s->ctx_len = full.n;
    }
out:
    sb_free(&full);
    return rc;
}

int tb_tok_stream_flush(const tb_tokenizer *t, tb_tok_stream *s, const char **piece, size_t *len)
{
    *piece = "";
    *len = 0;
    int rc = TB_OK;
    if (s->n > s->n_ctx) {
        sbuf full = {0};
        rc = decode_impl(t, s->ids, s->n, 0, &full);
        if (!rc) rc = stream_fix_prefix(t, s, &full);
        if (!rc) {
            size_t from = full.n > s->ctx_len ? s->ctx_len : full.n;
            rc = stream_emit(s, full.p + from, full.n - from, piece, len);
        }
        sb_free(&full);
    }
    s->n = s->n_ctx = s->ctx_len = 0;
    return rc;
}

/* ------------------------------------------------------------------ */
/* loading                                                              */

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *k, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}

static int jid(const cJSON *v, int32_t *out)
{
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d < (double)INT32_MAX) || d != (double)(int32_t)d) return -1;
    *out = (int32_t)d;
    return 0;
}

/* one character in UTF-8 -> its code point, or -1 */
static long one_char(const char *s)
{
    size_t n = strlen(s), bad;
    if (!n || u8_seq((const uint8_t *)s, n, 0, &bad) != n) return -1;
    size_t j;
    return (long)u8_dec((const uint8_t *)s, 0, &j);
}

static int pattern_string(const cJSON *o, const char *what, const char **out)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s = p ? jstr(p, "String") : NULL;
    if (p && jstr(p, "Regex")) return tb_fail(TB_EDATA, "unsupported %s with a regex pattern", what);
    if (!s || !*s) return tb_fail(TB_EDATA, "%s without a string pattern", what);
    *out = s;
    return TB_OK;
}

static int parse_normalizer(tb_tokenizer *t, const cJSON *o)
{
    if (!o || cJSON_IsNull(o)) return TB_OK;
    const char *type = jstr(o, "type");
    if (!type) return tb_fail(TB_EDATA, "normalizer without a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *x, *arr = cJSON_GetObjectItemCaseSensitive(o, "normalizers");
        if (!cJSON_IsArray(arr)) return tb_fail(TB_EDATA, "normalizer Sequence without a list");
        cJSON_ArrayForEach(x, arr) {
            int rc = parse_normalizer(t, x);
            if (rc) return rc;
        }
        return TB_OK;
    }
    if (t->n_norm == MAX_STEPS) return tb_fail(TB_EDATA, "more than %d normalizer steps", MAX_STEPS);
    norm_step *st = &t->norm[t->n_norm];
    if (!strcmp(type, "Prepend")) {
        const char *p = jstr(o, "prepend");
        if (!p) return tb_fail(TB_EDATA, "Prepend normalizer without 'prepend'");
        st->kind = NORM_PREPEND;
        if (!(st->a = tb_strdup(p))) return TB_EIO;
        st->alen = strlen(p);
    } else if (!strcmp(type, "Replace")) {
        const char *pat, *content = jstr(o, "content");
        int rc = pattern_string(o, "Replace normalizer", &pat);
        if (rc) return rc;
        if (!content) return tb_fail(TB_EDATA, "Replace normalizer without 'content'");
        st->kind = NORM_REPLACE;
        if (!(st->a = tb_strdup(pat)) || !(st->b = tb_strdup(content))) return TB_EIO;
        st->alen = strlen(pat);
        st->blen = strlen(content);
    } else if (!strcmp(type, "NFC")) {
        st->kind = NORM_NFC;
    } else {
        return tb_fail(TB_EDATA, "unsupported normalizer '%s'", type);
    }
    t->n_norm++;
    return TB_OK;
}

static int parse_scheme(const cJSON *o, int *scheme, const char *what)
{
    const char *ps = jstr(o, "prepend_scheme");
    *scheme = SCHEME_ALWAYS;
    if (ps) {
        if (!strcmp(ps, "first")) *scheme = SCHEME_FIRST;
        else if (!strcmp(ps, "never")) *scheme = SCHEME_NEVER;
        else if (strcmp(ps, "always")) return tb_fail(TB_EDATA, "%s: unknown prepend_scheme '%s'", what, ps);
    }
    const cJSON *aps = cJSON_GetObjectItemCaseSensitive(o, "add_prefix_space");
    if (cJSON_IsFalse(aps)) { /* the older spelling of prepend_scheme "never" */
        if (ps && *scheme != SCHEME_NEVER)
            return tb_fail(TB_EDATA, "%s: add_prefix_space does not match prepend_scheme", what);
        *scheme = SCHEME_NEVER;
    }
    return TB_OK;
}

static int parse_pretok(tb_tokenizer *t, const cJSON *o)
{
    if (!o || cJSON_IsNull(o)) return TB_OK;
    const char *type = jstr(o, "type");
    if (!type) return tb_fail(TB_EDATA, "pre_tokenizer without a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *x, *arr = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers");
        if (!cJSON_IsArray(arr)) return tb_fail(TB_EDATA, "pre_tokenizer Sequence without a list");
        cJSON_ArrayForEach(x, arr) {
            int rc = parse_pretok(t, x);
            if (rc) return rc;
        }
        return TB_OK;
    }
    if (t->n_pre == MAX_STEPS) return tb_fail(TB_EDATA, "more than %d pre_tokenizer steps", MAX_STEPS);
    pre_step *st = &t->pre[t->n_pre];
    if (!strcmp(type, "ByteLevel")) {
        st->kind = PT_BYTELEVEL;
        st->add_prefix_space = jbool(o, "add_prefix_space", 1);
        st->use_regex = jbool(o, "use_regex", 1);
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(o, "replacement");
        if (!r || one_char(r) < 0) return tb_fail(TB_EDATA, "Metaspace pre_tokenizer: 'replacement' must be one character");
        st->kind = PT_METASPACE;
        st->repl_len = strlen(r);
        memcpy(st->repl, r, st->repl_len);
        int rc = parse_scheme(o, &st->scheme, "Metaspace pre_tokenizer");
        if (rc) return rc;
        st->split = jbool(o, "split", 1);
    } else if (!strcmp(type, "Split")) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
        const char *re = p ? jstr(p, "Regex") : NULL, *beh = jstr(o, "behavior");
        if (!re) return tb_fail(TB_EDATA, "unsupported Split pre_tokenizer: only the GPT-2, Llama-3 and Qwen2 regexes are supported");
        if (!strcmp(re, RE_GPT2)) st->re = TB_SPLIT_GPT2;
        else if (!strcmp(re, RE_LLAMA3)) st->re = TB_SPLIT_LLAMA3;
        else if (!strcmp(re, RE_QWEN2)) st->re = TB_SPLIT_QWEN2;
        else return tb_fail(TB_EDATA, "unsupported Split pre_tokenizer regex '%.80s' (supported: GPT-2, Llama-3, Qwen2)", re);
        if (!beh || strcmp(beh, "Isolated"))
            return tb_fail(TB_EDATA, "unsupported Split pre_tokenizer behavior '%s' (supported: Isolated)", beh ? beh : "");
        if (jbool(o, "invert", 0)) return tb_fail(TB_EDATA, "unsupported Split pre_tokenizer with invert");
        st->kind = PT_SPLIT;
    } else {
        return tb_fail(TB_EDATA, "unsupported pre_tokenizer '%s'", type);
    }
    t->n_pre++;
    return TB_OK;
}

static int parse_decoder(tb_tokenizer *t, const cJSON *o)
{
    if (!o || cJSON_IsNull(o)) return TB_OK;
    t->has_decoder = 1;
    const char *type = jstr(o, "type");
    if (!type) return tb_fail(TB_EDATA, "decoder without a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *x, *arr = cJSON_GetObjectItemCaseSensitive(o, "decoders");
        if (!cJSON_IsArray(arr)) return tb_fail(TB_EDATA, "decoder Sequence without a list");
        cJSON_ArrayForEach(x, arr) {
            int rc = parse_decoder(t, x);
            if (rc) return rc;
        }
        return TB_OK;
    }
    if (t->n_dec == MAX_STEPS) return tb_fail(TB_EDATA, "more than %d decoder steps", MAX_STEPS);
    dec_step *st = &t->dec[t->n_dec];
    if (!strcmp(type, "Replace")) {
        const char *pat, *content = jstr(o, "content");
        int rc = pattern_string(o, "Replace decoder", &pat);
        if (rc) return rc;
        if (!content) return tb_fail(TB_EDATA, "Replace decoder without 'content'");
        st->kind = DEC_REPLACE;
        if (!(st->a = tb_strdup(pat)) || !(st->b = tb_strdup(content))) return TB_EIO;
        st->alen = strlen(pat);
        st->blen = strlen(content);
    } else if (!strcmp(type, "ByteFallback")) {
        st->kind = DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        st->kind = DEC_FUSE;
    } else if (!strcmp(type, "Strip")) {
        const char *ct = jstr(o, "content");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "start"), *b = cJSON_GetObjectItemCaseSensitive(o, "stop");
        int32_t va, vb;
        if (!ct || one_char(ct) < 0 || jid(a, &va) || jid(b, &vb))
            return tb_fail(TB_EDATA, "Strip decoder needs one 'content' character and 'start'/'stop' counts");
        st->kind = DEC_STRIP;
        st->ch = (uint32_t)one_char(ct);
        st->start = (size_t)va;
        st->stop = (size_t)vb;
    } else if (!strcmp(type, "ByteLevel")) {
        st->kind = DEC_BYTELEVEL;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(o, "replacement");
        if (!r || one_char(r) < 0) return tb_fail(TB_EDATA, "Metaspace decoder: 'replacement' must be one character");
        st->kind = DEC_METASPACE;
        st->ch = (uint32_t)one_char(r);
        int rc = parse_scheme(o, &st->scheme, "Metaspace decoder");
        if (rc) return rc;
    } else {
        return tb_fail(TB_EDATA, "unsupported decoder '%s'", type);
    }
    t->n_dec++;
    return TB_OK;
}

static int arena_add(tb_tokenizer *t, const char *s, size_t n, uint32_t *off)
{
    if (t->arena.n + n + 1 > UINT32_MAX) return tb_fail(TB_EDATA, "vocabulary too large");
    *off = (uint32_t)t->arena.n;
    if (sb_put(&t->arena, s, n) || sb_put(&t->arena, "", 1)) return TB_EIO;
    return TB_OK;
}

static int parse_model(tb_tokenizer *t, const cJSON *m, size_t *max_id)
{
    if (!cJSON_IsObject(m)) return tb_fail(TB_EDATA, "no tokenizer model");
    const char *type = jstr(m, "type");
    if (!type && !cJSON_GetObjectItemCaseSensitive(m, "merges")) return tb_fail(TB_EDATA, "tokenizer model without a type");
    if (type && strcmp(type, "BPE")) return tb_fail(TB_EDATA, "unsupported tokenizer model '%s'", type);
    const char *cp = jstr(m, "continuing_subword_prefix"), *ew = jstr(m, "end_of_word_suffix");
    if ((cp && *cp) || (ew && *ew))
        return tb_fail(TB_EDATA, "unsupported BPE option %s", cp && *cp ? "continuing_subword_prefix" : "end_of_word_suffix");
    t->byte_fallback = jbool(m, "byte_fallback", 0);
    t->fuse_unk = jbool(m, "fuse_unk", 0);
    t->ignore_merges = jbool(m, "ignore_merges", 0);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab"), *x;
    if (!cJSON_IsObject(vocab)) return tb_fail(TB_EDATA, "BPE model without a 'vocab' object");
    size_t nv = (size_t)cJSON_GetArraySize(vocab);
    if (sm_init(&t->vocab, nv)) return TB_EIO;
    cJSON_ArrayForEach(x, vocab) {
        int32_t id;
        if (jid(x, &id)) return tb_fail(TB_EDATA, "vocab entry '%.60s': id is not a non-negative integer", x->string);
        uint32_t off = 0;
        size_t n = strlen(x->string);
        if (arena_add(t, x->string, n, &off)) return tb_errcode();
        if (sm_put(&t->vocab, t->arena.p, off, (uint32_t)n, id)) return TB_EIO;
        if ((size_t)id > *max_id) *max_id = (size_t)id;
    }
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (merges && !cJSON_IsArray(merges)) return tb_fail(TB_EDATA, "BPE 'merges' is not a list");
    t->n_merges = merges ? (size_t)cJSON_GetArraySize(merges) : 0;
    if (pm_init(&t->merges, t->n_merges)) return TB_EIO;
    sbuf cat = {0};
    uint32_t rank = 0;
    int rc = TB_OK;
    cJSON_ArrayForEach(x, merges) {
        const char *a, *b;
        size_t an, bn;
        if (cJSON_IsString(x)) { /* "a b" */
            const char *sp = strchr(x->valuestring, ' ');
            if (!sp) { rc = tb_fail(TB_EDATA, "merge %u '%.60s' is not two tokens", rank, x->valuestring); break; }
            a = x->valuestring;
            an = (size_t)(sp - a);
            b = sp + 1;
            bn = strlen(b);
        } else if (cJSON_IsArray(x) && cJSON_GetArraySize(x) == 2 && cJSON_IsString(x->child) &&
                   cJSON_IsString(x->child->next)) { /* ["a", "b"] */
            a = x->child->valuestring;
            an = strlen(a);
            b = x->child->next->valuestring;
            bn = strlen(b);
        } else {
            rc = tb_fail(TB_EDATA, "merge %u is neither \"a b\" nor [\"a\", \"b\"]", rank);
            break;
        }
        int32_t ia = vocab_find(t, a, an), ib = vocab_find(t, b, bn);
        cat.n = 0;
        if ((rc = sb_put(&cat, a, an)) || (rc = sb_put(&cat, b, bn))) break;
        int32_t im = vocab_find(t, cat.p, cat.n);
        if (ia < 0 || ib < 0 || im < 0) {
            rc = tb_fail(TB_EDATA, "merge %u ('%.*s' + '%.*s'): %s not in the vocabulary", rank, (int)an, a, (int)bn,
                         b, ia < 0 || ib < 0 ? "token" : "merged token");
            break;
        }
        pm_put(&t->merges, ia, ib, rank, im);
        rank++;
    }
    sb_free(&cat);
    if (rc) return rc;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(m, "unk_token");
    if (cJSON_IsString(unk)) {
        if (!(t->unk_token = tb_strdup(unk->valuestring))) return TB_EIO;
        t->unk_id = vocab_find(t, unk->valuestring, strlen(unk->valuestring));
    }
    return TB_OK;
}

static int parse_added(tb_tokenizer *t, const cJSON *arr, size_t *max_id)
{
    if (!arr || cJSON_IsNull(arr)) return TB_OK;
    if (!cJSON_IsArray(arr)) return tb_fail(TB_EDATA, "'added_tokens' is not a list");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    t->added = tb_calloc(n ? n : 1, sizeof *t->added);
    if (!t->added) return TB_EIO;
    const cJSON *x;
    sbuf b0 = {0}, b1 = {0};
    int rc = TB_OK;
    cJSON_ArrayForEach(x, arr) {
        const char *content = jstr(x, "content");
        int32_t id;
        if (!content || jid(cJSON_GetObjectItemCaseSensitive(x, "id"), &id)) {
            rc = tb_fail(TB_EDATA, "added token %zu: needs 'id' and 'content'", t->n_added);
            break;
        }
        if (!*content) continue; /* the reference ignores empty added tokens */
        added_tok *a = &t->added[t->n_added];
        a->id = id;
        a->len = strlen(content);
        if (!(a->content = tb_strdup(content))) { rc = TB_EIO; break; }
        a->single_word = (unsigned char)jbool(x, "single_word", 0);
        a->lstrip = (unsigned char)jbool(x, "lstrip", 0);
        a->rstrip = (unsigned char)jbool(x, "rstrip", 0);
        a->normalized = (unsigned char)jbool(x, "normalized", 1);
        a->special = (unsigned char)jbool(x, "special", 0);
        /* a normalized token is looked for in normalized text, so in its
         * normalized form; that form is also what decoding starts from */
        const char *f = content;
        size_t fn = a->len;
        if (a->normalized && t->n_norm && (rc = normalize(t, content, a->len, &b0, &b1, &f, &fn))) break;
        if (!(a->form = tb_malloc(fn + 1))) { rc = TB_EIO; break; }
        memcpy(a->form, f, fn);
        a->form[fn] = 0;
        a->form_len = fn;
        if (fn && (rc = trie_add(a->normalized ? &t->norm_trie : &t->raw_trie, a->form, fn, (int32_t)t->n_added)))
            break;
        if ((size_t)id > *max_id) *max_id = (size_t)id;
        t->n_added++;
    }
    sb_free(&b0);
    sb_free(&b1);
    return rc;
}

static int load_json(tb_tokenizer *t, const char *json, size_t len)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *e = cJSON_GetErrorPtr();
        long off = e && e >= json && e <= json + len ? (long)(e - json) : -1;
        return tb_fail(TB_EDATA, "invalid JSON near byte %ld", off);
    }
    int rc = TB_OK;
    size_t max_id = 0;
    if (!cJSON_IsObject(root)) rc = tb_fail(TB_EDATA, "not a JSON object");
    if (!rc) rc = parse_model(t, cJSON_GetObjectItemCaseSensitive(root, "model"), &max_id);
    if (!rc) rc = parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"));
    if (!rc) rc = parse_pretok(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
    if (!rc) rc = parse_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    if (!rc) rc = parse_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &max_id);
    cJSON_Delete(root);
    if (rc) return rc;

    /* ids index dense per-id tables: refuse absurd ids rather than allocate
     * gigabytes for a malformed file (real vocabularies are < 1M) */
    if (max_id >= (1u << 24)) return tb_fail(TB_EDATA, "token id %zu is too large (at most 16M ids)", max_id);
    t->n_ids = max_id + 1;
    t->piece_off = tb_malloc(t->n_ids * sizeof *t->piece_off);
    t->piece_len = tb_malloc(t->n_ids * sizeof *t->piece_len);
    t->added_of = tb_malloc(t->n_ids * sizeof *t->added_of);
    if (!t->piece_off || !t->piece_len || !t->added_of) return TB_EIO;
    for (size_t i = 0; i < t->n_ids; i++) {
        t->piece_off[i] = UINT32_MAX;
        t->piece_len[i] = 0;
        t->added_of[i] = -1;
    }
    for (size_t i = 0; i <= t->vocab.mask; i++) {
        const sm_slot *e = &t->vocab.s[i];
        if (e->off == UINT32_MAX) continue;
        t->piece_off[e->val] = e->off;
        t->piece_len[e->val] = e->len;
    }
    for (size_t i = 0; i < t->n_added; i++) t->added_of[t->added[i].id] = (int32_t)i;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_tok[b] = vocab_find(t, name, 6);
    }
    for (uint32_t cp = 0; cp < SMALL_CP; cp++) {
        char u[4];
        size_t n = u8_enc(cp, u);
        t->small_cp[cp] = vocab_find(t, u, n);
    }
    int bytelevel = 0, meta = 0;
    for (size_t i = 0; i < t->n_pre; i++) {
        bytelevel |= t->pre[i].kind == PT_BYTELEVEL;
        meta |= t->pre[i].kind == PT_METASPACE;
    }
    snprintf(t->desc, sizeof t->desc, "BPE %s, %zu ids, %zu merges, %zu added tokens",
             bytelevel ? "byte-level" : (meta || t->n_norm || t->byte_fallback) ? "sentencepiece-style" : "plain",
             t->n_ids, t->n_merges, t->n_added);
    return TB_OK;
}

static tb_tokenizer *tok_new(const char *label)
{
    tb_tokenizer *t = tb_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->unk_id = -1;
    t->bos = -1;
    if (!(t->label = tb_strdup(label))) {
        free(t);
        return NULL;
    }
    return t;
}

int tb_tok_load_json(tb_tokenizer **out, const char *json, size_t len, const char *label)
{
    *out = NULL;
    tb_tokenizer *t = tok_new(label);
    if (!t) return TB_EIO;
    int rc = load_json(t, json, len);
    if (rc) {
        tb_err_context("%s", label);
        tb_tok_free(t);
        return rc;
    }
    *out = t;
    return TB_OK;
}

/* id of a token string: added tokens first, then the model vocabulary */
int32_t tb_tok_piece_to_id(const tb_tokenizer *t, const char *piece)
{
    for (size_t i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].content, piece)) return t->added[i].id;
    return vocab_find(t, piece, strlen(piece));
}

/* Read an optional JSON file of the model directory; *root NULL if absent. */
static int read_json_opt(const char *dir, const char *name, cJSON **root, char **path_out)
{
    *root = NULL;
    char *path = tb_path_join(dir, name);
    if (!path) return TB_EIO;
    *path_out = path;
    if (!tb_file_exists(path)) return TB_OK;
    char *text;
    size_t n;
    int rc = tb_read_text(path, &text, &n);
    if (rc) return rc;
    *root = cJSON_ParseWithLength(text, n);
    free(text);
    if (!*root) return tb_fail(TB_EDATA, "%s: invalid JSON", path);
    return TB_OK;
}

/* config.json's bos_token_id / eos_token_id: int, list of ints, or null */
static int ids_from_config(const cJSON *v, int32_t *ids, size_t max, size_t *n)
{
    *n = 0;
    if (!v || cJSON_IsNull(v)) return TB_OK;
    if (cJSON_IsNumber(v)) {
        if (jid(v, &ids[0])) return -1;
        *n = 1;
        return TB_OK;
    }
    if (!cJSON_IsArray(v)) return -1;
    const cJSON *x;
    cJSON_ArrayForEach(x, v) {
        if (*n == max) break;
        if (jid(x, &ids[*n])) return -1;
        (*n)++;
    }
    return TB_OK;
}

static int32_t token_from_tokcfg(const tb_tokenizer *t, const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : cJSON_IsObject(v) ? jstr(v, "content") : NULL;
    return s ? tb_tok_piece_to_id(t, s) : -1;
}

static int load_special_ids(tb_tokenizer *t, const char *dir)
{
    cJSON *cfg = NULL, *tcfg = NULL;
    char *p1 = NULL, *p2 = NULL;
    int rc = read_json_opt(dir, "config.json", &cfg, &p1);
    size_t nb = 0;
    int32_t bos[8];
    if (!rc && cfg) {
        if (ids_from_config(cJSON_GetObjectItemCaseSensitive(cfg, "bos_token_id"), bos, 8, &nb) ||
            ids_from_config(cJSON_GetObjectItemCaseSensitive(cfg, "eos_token_id"), t->eos, 8, &t->n_eos))
            rc = tb_fail(TB_EDATA, "%s: bos_token_id / eos_token_id must be ids or lists of ids", p1);
        if (nb) t->bos = bos[0];
    }
    if (!rc && (!nb || !t->n_eos)) rc = read_json_opt(dir, "tokenizer_config.json", &tcfg, &p2);
    if (!rc && tcfg) {
        if (!nb) t->bos = token_from_tokcfg(t, tcfg, "bos_token");
        if (!t->n_eos) {
            int32_t e = token_from_tokcfg(t, tcfg, "eos_token");
            if (e >= 0) t->eos[t->n_eos++] = e;
        }
    }
    if (!rc && t->bos >= 0 && !id_ok(t, t->bos))
        rc = tb_fail(TB_EDATA, "%s: bos_token_id %ld is not in the vocabulary", p1, (long)t->bos);
    cJSON_Delete(cfg);
    cJSON_Delete(tcfg);
    free(p1);
    free(p2);
    return rc;
}

int tb_tok_load(tb_tokenizer **out, const char *path)
{
    *out = NULL;
    char *file = NULL, *dir = NULL, *text = NULL;
    int rc;
    struct stat st;
    if (stat(path, &st) != 0) return tb_fail(TB_EIO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        if (!(file = tb_path_join(path, "tokenizer.json")) || !(dir = tb_strdup(path))) {
            rc = TB_EIO;
            goto done;
        }
        if (stat(file, &st) != 0 && errno == ENOENT) {
            rc = tb_fail(TB_EDATA, "%s: no such file (the model directory has no tokenizer)", file);
            goto done;
        }
    } else {
        if (!(file = tb_strdup(path)) || !(dir = tb_strdup(path))) {
            rc = TB_EIO;
            goto done;
        }
        char *slash = strrchr(dir, '/');
        if (!slash) strcpy(dir, ".");
        else if (slash == dir) dir[1] = 0;
        else *slash = 0;
    }
    size_t n;
    if ((rc = tb_read_text(file, &text, &n))) goto done;
    tb_tokenizer *t = tok_new(file);
    if (!t) { rc = TB_EIO; goto done; }
    if ((rc = load_json(t, text, n))) {
        tb_err_context("%s", file);
        tb_tok_free(t);
        goto done;
    }
    if ((rc = load_special_ids(t, dir))) {
        tb_tok_free(t);
        goto done;
    }
    *out = t;
done:
    free(text);
    free(file);
    free(dir);
    return rc;
}

void tb_tok_free(tb_tokenizer *t)
{
    if (!t) return;
    free(t->label);
    sb_free(&t->arena);
    free(t->piece_off);
    free(t->piece_len);
    free(t->added_of);
    free(t->vocab.s);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].form);
    }
    free(t->added);
    free(t->raw_trie.nodes);
    free(t->norm_trie.nodes);
    for (size_t i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    for (size_t i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a);
        free(t->dec[i].b);
    }
    free(t->merges.s);
    free(t->unk_token);
    free(t);
}

int32_t tb_tok_bos(const tb_tokenizer *t) { return t->bos; }
int32_t tb_tok_eos(const tb_tokenizer *t) { return t->n_eos ? t->eos[0] : -1; }

int tb_tok_is_eos(const tb_tokenizer *t, int32_t id)
{
    for (size_t i = 0; i < t->n_eos; i++)
        if (t->eos[i] == id) return 1;
    return 0;
}

size_t tb_tok_vocab_size(const tb_tokenizer *t) { return t->n_ids; }

const char *tb_tok_id_to_piece(const tb_tokenizer *t, int32_t id)
{
    if (!id_ok(t, id)) return NULL;
    if (t->added_of[id] >= 0) return t->added[t->added_of[id]].content;
    return t->arena.p + t->piece_off[id];
}

const char *tb_tok_describe(const tb_tokenizer *t) { return t->desc; }
