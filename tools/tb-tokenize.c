/* tb-tokenize - text to token ids (and back) with a model's HF tokenizer.
 *
 * Thin front end over formats/tb_tokenizer: option parsing, reading the
 * inputs, window sampling and the output formats. See man/tb-tokenize.1.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tb_error.h"
#include "tb_io.h"
#include "tb_log.h"
#include "tb_opts.h"
#include "tb_safetensors.h"
#include "tb_json.h"
#include "tb_tokenizer.h"
#include "tb_tokens.h"

static const char description[] =
    "Encode UTF-8 text to token ids with the model's HF tokenizer.json, the same\n"
    "ids as the HF tokenizers library. The text is the concatenation of the FILEs\n"
    "(- or none: standard input), taken byte for byte (no line-ending changes).\n";

static const char notes[] =
    "Plain encoding of empty text gives zero ids (just BOS with --bos). Bad data (2)\n"
    "includes a missing tokenizer.json, an unsupported tokenizer, invalid UTF-8, an\n"
    "id out of vocabulary and too little text for the windows.\n";

static const char *const format_names[] = {"safetensors", "text", NULL};

static int parse_u64(const char *opt, const char *arg, void *value)
{
    char *e;
    errno = 0;
    unsigned long long v = strtoull(arg, &e, 10);
    if (!*arg || *e || *arg == '-' || errno) return tb_fail(TB_EUSAGE, "%s: '%s' is not a non-negative integer", opt, arg);
    *(unsigned long long *)value = v;
    return TB_OK;
}

typedef struct {
    const char *model, *output;
    int text_format, bos, decode, jsonl;
    long windows, seq_len;
    unsigned long long seed;
} options;

/* ---- input ---- */

typedef struct {
    char *data;
    size_t len;
    const char *label; /* file name, "<stdin>", or "<input>" for several */
} input;

static int read_inputs(char **files, int n, input *in)
{
    static char *stdin_only[] = {"-"};
    if (n == 0) {
        files = stdin_only;
        n = 1;
    }
    memset(in, 0, sizeof *in);
    in->label = n > 1 ? "<input>" : strcmp(files[0], "-") ? files[0] : "<stdin>";
    size_t cap = 0;
    for (int i = 0; i < n; i++) {
        tb_mapped m;
        if (tb_map_file(files[i], &m)) return tb_errcode();
        if (in->len + m.size + 1 > cap) {
            cap = (in->len + m.size + 1) * 2;
            char *nd = tb_realloc(in->data, cap);
            if (!nd) {
                tb_unmap(&m);
                return TB_EIO;
            }
            in->data = nd;
        }
        if (m.size) memcpy(in->data + in->len, m.data, m.size);
        in->len += m.size;
        tb_unmap(&m);
    }
    if (!in->data && !(in->data = tb_malloc(1))) return TB_EIO;
    in->data[in->len] = 0;
    return TB_OK;
}

/* Each file must be valid UTF-8 on its own, so errors can name the file and
 * the offset in it. */
static int check_utf8(char **files, int n)
{
    if (n == 0) return TB_OK; /* stdin: checked by the encoder */
    for (int i = 0; i < n; i++) {
        if (!strcmp(files[i], "-")) continue;
        tb_mapped m;
        if (tb_map_file(files[i], &m)) return tb_errcode();
        size_t bad = tb_tok_utf8_check((const char *)m.data, m.size);
        size_t size = m.size;
        tb_unmap(&m);
        if (bad < size) return tb_fail(TB_EDATA, "%s: invalid UTF-8 at byte offset %zu", files[i], bad);
    }
    return TB_OK;
}

/* ---- output helpers ---- */

static int check_binary_ok(const options *o)
{
    if (!o->output && isatty(STDOUT_FILENO))
        return tb_fail(TB_EUSAGE, "refusing to write binary safetensors to a terminal: use -o FILE or --format text");
    return TB_OK;
}

static int open_output(const options *o, tb_outfile *out) { return tb_out_open(out, o->output ? o->output : "-"); }

static const char *out_label(const options *o)
{
    return o->output && strcmp(o->output, "-") ? o->output : "<stdout>";
}

static int write_ids_line(FILE *fp, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fprintf(fp, i ? " %ld" : "%ld", (long)ids[i]) < 0) return -1;
    return fputc('\n', fp) == EOF ? -1 : 0;
}

static int write_json_string(FILE *fp, const char *s, size_t n)
{
    fputc('"', fp);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
        else if (c == '\n') fputs("\\n", fp);
        else if (c == '\r') fputs("\\r", fp);
        else if (c == '\t') fputs("\\t", fp);
        else if (c < 0x20 || c == 0x7F) fprintf(fp, "\\u%04x", c);
        else fputc(c, fp);
    }
    fputc('"', fp);
    return fputc('\n', fp) == EOF ? -1 : 0;
}

/* ---- progress ---- */

static void on_progress(void *user, size_t done, size_t total)
{
    (void)total;
    tb_progress_set(user, done);
}

/* ---- modes ---- */

static int encode_mode(const options *o, const tb_tokenizer *t, char **files, int nfiles)
{
    input in = {0};
    int32_t *ids = NULL, *win = NULL;
    size_t n = 0;
    int rc = o->text_format ? TB_OK : check_binary_ok(o);
    if (!rc) rc = check_utf8(files, nfiles);
    if (!rc) rc = read_inputs(files, nfiles, &in);
    if (rc) {
        free(in.data);
        return rc;
    }
    double t0 = tb_now();
    tb_progress pr;
    tb_progress_begin(&pr, "encoding", in.len);
    rc = tb_tok_encode_progress(t, in.data, in.len, o->bos, &ids, &n, on_progress, &pr);
    tb_progress_end(&pr);
    if (rc) {
        tb_err_context("%s", in.label);
        goto done;
    }
    if (tb_progress_enabled())
        tb_info("%s: %zu bytes -> %zu tokens in %.2f s", in.label, in.len, n, tb_now() - t0);

    const int32_t *data = ids;
    int64_t rows = 1, cols = (int64_t)n;
    if (o->windows) {
        if (in.len == 0) {
            rc = tb_fail(TB_EDATA, "%s: empty input", in.label);
            goto done;
        }
        tb_tokens drawn;
        if ((rc = tb_tokens_draw(&drawn, ids, n, o->windows, (int)o->seq_len, o->seed, in.label))) goto done;
        win = drawn.ids; /* owned here from now on */
        data = win;
        rows = o->windows;
        cols = o->seq_len;
    }

    if (!o->text_format) {
        char ntok[32], nwin[32], tlen[32], seed[32];
        snprintf(ntok, sizeof ntok, "%zu", n);
        snprintf(nwin, sizeof nwin, "%ld", o->windows);
        snprintf(tlen, sizeof tlen, "%ld", o->seq_len);
        snprintf(seed, sizeof seed, "%llu", o->seed);
        const char *meta[] = {"tokenizer", o->model,  "bos", o->bos ? "true" : "false", "n_tokens", ntok,
                              "windows",   nwin,      "seq_len", tlen, "seed", seed, "sampler", "splitmix64"};
        int nmeta = o->windows ? 7 : 3;
        st_entry e = {.name = "input_ids", .dtype = TB_I32, .ndim = 2, .shape = {rows, cols}, .data = data};
        rc = st_save(o->output ? o->output : "-", &e, 1, meta, nmeta);
        goto done;
    }
    tb_outfile out;
    if ((rc = open_output(o, &out))) goto done;
    for (int64_t r = 0; r < rows && !rc; r++)
        if (write_ids_line(out.fp, data + r * cols, (size_t)cols))
            rc = tb_fail(TB_EIO, "%s: write error", out_label(o));
    if (!rc) rc = tb_out_commit(&out);
    else tb_out_abort(&out);
done:
    free(ids);
    free(win);
    free(in.data);
    return rc;
}

/* ids from text: whitespace-separated decimal integers */
static int parse_text_ids(const input *in, int32_t **ids, size_t *n)
{
    size_t cap = 256;
    *n = 0;
    *ids = tb_malloc(cap * sizeof **ids);
    if (!*ids) return TB_EIO;
    const char *p = in->data, *end = in->data + in->len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' || *p == '\v')) p++;
        if (p == end) break;
        const char *q = p;
        while (q < end && !(*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r' || *q == '\f' || *q == '\v')) q++;
        char word[32];
        size_t wl = (size_t)(q - p);
        long v = -1;
        char *e = NULL;
        if (wl < sizeof word) {
            memcpy(word, p, wl);
            word[wl] = 0;
            v = strtol(word, &e, 10);
        }
        if (wl >= sizeof word || *e || wl == 0 || v < 0 || v > INT32_MAX)
            return tb_fail(TB_EDATA, "%s: '%.*s' is not a token id", in->label, (int)(wl < 40 ? wl : 40), p);
        if (*n == cap) {
            int32_t *ni = tb_realloc(*ids, 2 * cap * sizeof *ni);
            if (!ni) return TB_EIO;
            *ids = ni;
            cap *= 2;
        }
        (*ids)[(*n)++] = (int32_t)v;
        p = q;
    }
    return TB_OK;
}

static int decode_mode(const options *o, const tb_tokenizer *t, char **files, int nfiles)
{
    if (nfiles > 1) return tb_fail(TB_EUSAGE, "--decode takes at most one FILE");
    const char *path = nfiles ? files[0] : "-";
    const char *label = strcmp(path, "-") ? path : "<stdin>";
    int32_t *ids = NULL;
    size_t rows = 1, cols = 0;
    int rc;
    if (o->text_format) {
        input in;
        if ((rc = read_inputs(files, nfiles, &in))) return rc;
        rc = parse_text_ids(&in, &ids, &cols);
        free(in.data);
        if (rc) goto done;
    } else {
        st_file f;
        if ((rc = st_open(&f, path))) return rc;
        const st_tensor *x = st_find(&f, "input_ids");
        if (!x) rc = tb_fail(TB_EDATA, "%s: no tensor 'input_ids' (use --format text for text ids)", label);
        else if (x->ndim != 1 && x->ndim != 2)
            rc = tb_fail(TB_EDATA, "%s: input_ids has %d dimensions, not 1 or 2", label, x->ndim);
        if (!rc) {
            rows = x->ndim == 2 ? (size_t)x->shape[0] : 1;
            cols = x->ndim == 2 ? (size_t)x->shape[1] : (size_t)x->shape[0];
            ids = tb_malloc((size_t)x->numel * sizeof *ids + 1);
            /* ids beyond this tokenizer's vocabulary are refused by tb_tok_decode */
            rc = ids ? tb_tokens_convert(x, label, 0, ids) : TB_EIO;
        }
        st_close(&f);
        if (rc) goto done;
    }
    tb_outfile out;
    /* decode everything first so that a bad id leaves no output at all */
    char **texts = tb_calloc(rows ? rows : 1, sizeof *texts);
    size_t *lens = tb_calloc(rows ? rows : 1, sizeof *lens);
    if (!texts || !lens) rc = TB_EIO;
    for (size_t r = 0; r < rows && !rc; r++)
        if ((rc = tb_tok_decode(t, ids + r * cols, cols, &texts[r], &lens[r]))) tb_err_context("%s", label);
    if (!rc && !(rc = open_output(o, &out))) {
        for (size_t r = 0; r < rows && !rc; r++) {
            rc = tb_write_all(out.fp, texts[r], lens[r], out_label(o));
            if (!rc && rows > 1) rc = tb_write_all(out.fp, "\n", 1, out_label(o));
        }
        if (!rc) rc = tb_out_commit(&out);
        else tb_out_abort(&out);
    }
    for (size_t r = 0; texts && r < rows; r++) free(texts[r]);
    free(texts);
    free(lens);
done:
    free(ids);
    return rc;
}

/* one JSON value per line in, one per line out; all lines are processed
 * before anything is written, so an error leaves no partial output */
static int jsonl_mode(const options *o, const tb_tokenizer *t, char **files, int nfiles)
{
    input in;
    int rc = read_inputs(files, nfiles, &in);
    if (rc) return rc;
    tb_outfile out;
    FILE *mem;
    char *membuf = NULL;
    size_t memlen = 0;
    if (!(mem = open_memstream(&membuf, &memlen))) {
        free(in.data);
        return tb_fail(TB_EIO, "out of memory");
    }
    size_t line_no = 0;
    for (const char *p = in.data, *end = in.data + in.len; p < end && !rc;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line_no++;
        cJSON *v = cJSON_ParseWithLength(p, (size_t)(le - p));
        if (!o->decode) {
            /* decoded with its length: cJSON's valuestring stops at a \u0000 */
            char *s = NULL;
            size_t sl = 0;
            int jr = tb_json_string(p, (size_t)(le - p), &s, &sl);
            if (jr) {
                rc = jr == -2 ? tb_fail(TB_EIO, "out of memory") : tb_fail(TB_EDATA, "%s: line %zu: not a JSON string", in.label, line_no);
            } else {
                int32_t *ids;
                size_t n;
                if ((rc = tb_tok_encode(t, s, sl, o->bos, &ids, &n)))
                    tb_err_context("%s: line %zu", in.label, line_no);
                else {
                    fputc('[', mem);
                    for (size_t i = 0; i < n; i++) fprintf(mem, i ? ",%ld" : "%ld", (long)ids[i]);
                    fputs("]\n", mem);
                    free(ids);
                }
            }
            free(s);
        } else {
            if (!cJSON_IsArray(v)) {
                rc = tb_fail(TB_EDATA, "%s: line %zu: not a JSON array of ids", in.label, line_no);
            } else {
                size_t n = (size_t)cJSON_GetArraySize(v), k = 0;
                int32_t *ids = tb_malloc((n ? n : 1) * sizeof *ids);
                const cJSON *x;
                if (!ids) rc = TB_EIO;
                cJSON_ArrayForEach(x, v) {
                    if (rc) break;
                    double d = cJSON_IsNumber(x) ? x->valuedouble : -1;
                    if (d < 0 || d > INT32_MAX || d != (double)(int32_t)d)
                        rc = tb_fail(TB_EDATA, "%s: line %zu: not a JSON array of ids", in.label, line_no);
                    else ids[k++] = (int32_t)d;
                }
                char *txt;
                size_t tl;
                if (!rc) {
                    if ((rc = tb_tok_decode(t, ids, n, &txt, &tl))) tb_err_context("%s: line %zu", in.label, line_no);
                    else {
                        write_json_string(mem, txt, tl);
                        free(txt);
                    }
                }
                free(ids);
            }
        }
        cJSON_Delete(v);
        p = nl ? nl + 1 : end;
    }
    if (fclose(mem) != 0 && !rc) rc = tb_fail(TB_EIO, "out of memory");
    if (!rc && !(rc = open_output(o, &out))) {
        rc = tb_write_all(out.fp, membuf, memlen, out_label(o));
        if (!rc) rc = tb_out_commit(&out);
        else tb_out_abort(&out);
    }
    free(membuf);
    free(in.data);
    return rc;
}

int main(int argc, char **argv)
{
    tb_log_init("tb-tokenize");
    options o = {0};
    const tb_option table[] = {
        /* -m as everywhere, but a tokenizer.json alone will do: no model check */
        {.type = TB_OPTT_STRING, .short_name = 'm', .long_name = "model", .value = &o.model, .argh = "MODEL",
         .flags = TB_OPTF_FILE | TB_OPTF_REQUIRED | TB_OPTF_NO_DASH,
         .help = "model directory (tokenizer.json; BOS/EOS from config.json\n"
                 "or tokenizer_config.json) or a tokenizer.json file"},
        TB_OPT_OUTPUT(&o.output, "FILE", 0, "output file, - for standard output (the default; binary\n"
                                            "safetensors output to a terminal is refused)"),
        TB_OPT_CHOICE(0, "format", &o.text_format, format_names,
                      "safetensors (default): I32 tensor input_ids of shape [1, n]\n"
                      "([N, T] with --windows); text: the ids on one line\n"
                      "separated by spaces (one line per window)"),
        TB_OPT_FLAG(0, "bos", &o.bos, "prepend the BOS token once, at the start of the text"),
        TB_OPT_LONG(0, "windows", &o.windows, "N", 1, INT32_MAX,
                    "draw N windows of --seq-len T consecutive tokens from the\n"
                    "token stream (after --bos). Window i starts at\n"
                    "floor(r_i * (n - T + 1) / 2^64), where n is the number of\n"
                    "tokens and r_i the i-th output of splitmix64 seeded with S\n"
                    "(state += 0x9E3779B97F4A7C15, then the splitmix64 mix).\n"
                    "Windows may overlap. Empty text or n < T is an error."),
        TB_OPT_LONG(0, "seq-len", &o.seq_len, "T", 1, INT32_MAX, "tokens per window (with --windows)"),
        TB_OPT_CALLBACK(0, "seed", &o.seed, "S", parse_u64, "seed of the window sampler (default 0)"),
        TB_OPT_FLAG(0, "decode", &o.decode, "ids to text: input is safetensors with input_ids (I32 or\n"
                                            "I64, [n] or [N, T]: each of N > 1 rows is followed by a\n"
                                            "newline), or with --format text whitespace-separated ids.\n"
                                            "The text is written as decoded, special tokens included."),
        TB_OPT_FLAG(0, "jsonl", &o.jsonl, "batch mode, one record per line: each input line is a JSON\n"
                                          "string and its output line the JSON array of its ids (with\n"
                                          "--bos if given); with --decode each input line is a JSON\n"
                                          "array of ids and its output line the decoded JSON string"),
        TB_OPT_COMMON(),
    };
    const tb_command cmd = {.name = "tb-tokenize",
                            .usage = "tb-tokenize -m MODEL [options] [FILE...]\n"
                                     "tb-tokenize -m MODEL --decode [options] [FILE]",
                            .description = description, .options = table, .notes = notes, .args = "FILE...",
                            .max_args = -1};
    char **files;
    int nfiles;
    TB_OPTS_PARSE_OR_RETURN(&cmd, argc, argv, &files, &nfiles);
    int format = tb_opt_given(&o.text_format);
    if (!o.windows != !o.seq_len) return tb_usage_error("--windows and --seq-len go together");
    if (tb_opt_given(&o.seed) && !o.windows) return tb_usage_error("--seed needs --windows");
    if (o.decode && (o.bos || o.windows)) return tb_usage_error("--decode takes no --bos, --windows or --seed");
    if (o.jsonl && (format || o.windows)) return tb_usage_error("--jsonl takes no --format or --windows");

    tb_tokenizer *t;
    if (tb_tok_load(&t, o.model)) return tb_report_error();
    int rc = o.jsonl ? jsonl_mode(&o, t, files, nfiles)
             : o.decode ? decode_mode(&o, t, files, nfiles)
                        : encode_mode(&o, t, files, nfiles);
    tb_tok_free(t);
    if (rc == TB_EUSAGE) return tb_usage_error("%s", tb_errmsg());
    return rc ? tb_report_error() : 0;
}
