/* tb_opts.h - the one option layer of the tools, after git's parse-options.
 *
 * Each tool declares one table of tb_option entries. The table alone gives:
 *   - parsing (short and long names, "--name=value", "--name value", "-xVALUE",
 *     bundled short flags "-qv", "--" ending options, "-" as an argument);
 *   - the option list of --help (generated, so it cannot drift from the parser);
 *   - --list-options, read by the bash completion (scripts/tensorbit-completion.bash)
 *     and by the test that checks every option is in the tool's man page;
 *   - one message per kind of mistake, always naming the option:
 *       unknown option '--foo'
 *       option '-o/--output' needs a value (FILE)
 *       -j/--threads: 'x' is not an integer
 *       -j/--threads: 0 out of range [1, 1024]
 *       --format: 'x' is not one of dense, compressed-tensors
 *       missing -o/--output FILE
 *       -o/--output: '-' (stdout) cannot be a DIR: give a path
 *       unexpected argument 'x'
 *     each printed as "tool: <message> (see --help)", exit status 1.
 *
 * The same meaning has the same name in every tool; the shared entries below
 * (TB_OPT_MODEL, TB_OPT_OUTPUT, TB_OPT_TOKENS, TB_OPT_THREADS, TB_OPT_JSON,
 * TB_OPT_FORCE, TB_OPT_COMMON, TB_OPT_DEVICE) are the only way to declare them.
 *
 * The value parsers (tb_parse_int, ...) are also used directly where a value
 * needs checking outside a table.
 */
#ifndef TB_OPTS_H
#define TB_OPTS_H

#include <stdint.h>

#include "tb_kind.h"

/* ---- value parsers: TB_OK or TB_EUSAGE with a message naming the option ---- */
int tb_parse_long(const char *opt, const char *s, long min, long max, long *out);
int tb_parse_int(const char *opt, const char *s, int min, int max, int *out);
int tb_parse_double(const char *opt, const char *s, double min, double max, double *out);
/* "N:M" with 1 <= N < M <= max_m */
int tb_parse_nm(const char *opt, const char *s, int max_m, int *n, int *m);

/* Decoder layers, one grammar in every tool: "A" (one layer), "A-B" (A to B
 * inclusive) or "A:B" (A to B-1, Python's slice). set = 0: every layer. */
typedef struct {
    int lo, hi; /* inclusive */
    int set;
} tb_layer_range;
int tb_parse_layers(const char *opt, const char *s, tb_layer_range *out);
/* 1 if `layer` is in the range (always 1 when the range is not set) */
int tb_layers_has(const tb_layer_range *r, int layer);
/* decoder layer of a tensor name ("model.layers.12.mlp.up_proj.weight" -> 12), -1 if none */
int tb_layer_of(const char *tensor_name);

/* The command line as one string ("tb-nm -s x --pattern 2:4"), recorded in
 * output metadata so every file says how it was made. Caller frees. */
char *tb_join_args(int argc, char **argv);

/* ---- the option table ---- */
typedef enum {
    TB_OPTT_END = 0,
    TB_OPTT_GROUP,    /* a heading in --help ("generation:"); no option */
    TB_OPTT_FLAG,     /* int *value = flag_value */
    TB_OPTT_STRING,   /* const char **value = the argument */
    TB_OPTT_INT,      /* int *value, in [min, max] */
    TB_OPTT_LONG,     /* long *value, in [min, max] */
    TB_OPTT_DOUBLE,   /* double *value, in [min, max] */
    TB_OPTT_CHOICE,   /* int *value = index in choices, or parse_choice(arg) */
    TB_OPTT_LAYERS,   /* tb_layer_range *value */
    TB_OPTT_CALLBACK, /* callback(name, arg, value): TB_OK or tb_fail(TB_EUSAGE, "NAME: ...") */
    TB_OPTT_QUIET,    /* -q/--quiet (TB_OPT_COMMON) */
    TB_OPTT_VERBOSE,  /* -v/--verbose, repeatable */
    TB_OPTT_PROGRESS, /* --progress */
    TB_OPTT_HELP,     /* -h/--help */
    TB_OPTT_VERSION,  /* --version */
} tb_opt_type;

enum {
    TB_OPTF_REQUIRED = 1 << 0, /* "missing -o/--output FILE" when absent */
    TB_OPTF_FILE = 1 << 1,     /* the value is a path: the completion offers files */
    TB_OPTF_NO_DASH = 1 << 2,  /* "-" (stdin/stdout) is refused by name */
    TB_OPTF_HIDDEN = 1 << 3,   /* not in --help */
    TB_OPTF_BINARY = 1 << 4,   /* a binary output: "-" (also as the default) refused on a terminal */
};

typedef struct tb_option {
    tb_opt_type type;
    int short_name;        /* 0: none */
    const char *long_name; /* NULL: none */
    void *value;
    const char *argh; /* the value's name in help: FILE, N, ... */
    const char *help; /* may hold '\n': continuation lines are indented */
    int flags;
    double min, max;             /* INT, LONG, DOUBLE */
    const char *const *choices;  /* CHOICE: NULL-terminated names */
    int (*parse_choice)(const char *s); /* CHOICE: name -> value, -1 if none (else the index) */
    int (*callback)(const char *opt, const char *arg, void *value); /* message names opt */
    long flag_value; /* FLAG: the value set (0 means 1) */
    /* STRING inputs: what the file must be (tb_want), checked from its first
     * bytes after parsing; what: "token windows (safetensors)"; fix: what to do */
    int want;
    const char *what, *fix;
} tb_option;

#define TB_OPT_END() {.type = TB_OPTT_END}
#define TB_OPT_GROUP(title) {.type = TB_OPTT_GROUP, .help = (title)}
#define TB_OPT_FLAG(s, l, v, h) {.type = TB_OPTT_FLAG, .short_name = (s), .long_name = (l), .value = (v), .help = (h)}
#define TB_OPT_SET(s, l, v, val, h) \
    {.type = TB_OPTT_FLAG, .short_name = (s), .long_name = (l), .value = (v), .help = (h), .flag_value = (val)}
#define TB_OPT_STRING(s, l, v, a, h) \
    {.type = TB_OPTT_STRING, .short_name = (s), .long_name = (l), .value = (v), .argh = (a), .help = (h)}
#define TB_OPT_FILE(s, l, v, a, h) \
    {.type = TB_OPTT_STRING, .short_name = (s), .long_name = (l), .value = (v), .argh = (a), .help = (h), .flags = TB_OPTF_FILE}
/* an input file checked to be what it should (tb_kind.h) */
#define TB_OPT_INPUT(s, l, v, a, w, wh, fx, h)                                                                  \
    {.type = TB_OPTT_STRING, .short_name = (s), .long_name = (l), .value = (v), .argh = (a), .help = (h),   \
     .flags = TB_OPTF_FILE, .want = (w), .what = (wh), .fix = (fx)}
#define TB_OPT_INT(s, l, v, a, lo, hi, h)                                                                       \
    {.type = TB_OPTT_INT, .short_name = (s), .long_name = (l), .value = (v), .argh = (a), .help = (h), .min = (lo), \
     .max = (hi)}
#define TB_OPT_LONG(s, l, v, a, lo, hi, h)                                                                       \
    {.type = TB_OPTT_LONG, .short_name = (s), .long_name = (l), .value = (v), .argh = (a), .help = (h), .min = (lo), \
     .max = (hi)}
#define TB_OPT_DOUBLE(s, l, v, a, lo, hi, h)                                                                       \
    {.type = TB_OPTT_DOUBLE, .short_name = (s), .long_name = (l), .value = (v), .argh = (a), .help = (h), .min = (lo), \
     .max = (hi)}
/* names: a static NULL-terminated list; the value stored is the index */
#define TB_OPT_CHOICE(s, l, v, names, h)                                                                          \
    {.type = TB_OPTT_CHOICE, .short_name = (s), .long_name = (l), .value = (v), .argh = "NAME", .help = (h), \
     .choices = (names)}
/* the value stored is fn(name) (-1: not a name), for enums parsed elsewhere */
#define TB_OPT_CHOICE_FN(s, l, v, names, fn, h)                                                                   \
    {.type = TB_OPTT_CHOICE, .short_name = (s), .long_name = (l), .value = (v), .argh = "NAME", .help = (h), \
     .choices = (names), .parse_choice = (fn)}
#define TB_OPT_LAYERS(v, h) \
    {.type = TB_OPTT_LAYERS, .long_name = "layers", .value = (v), .argh = "A-B", .help = (h)}
#define TB_OPT_CALLBACK(s, l, v, a, fn, h)                                                                          \
    {.type = TB_OPTT_CALLBACK, .short_name = (s), .long_name = (l), .value = (v), .argh = (a), .help = (h), \
     .callback = (fn)}
/* add flags to an entry: TB_OPT_WITH(TB_OPT_OUTPUT(&o, "..."), TB_OPTF_REQUIRED) is not C; use the _REQ forms */

/* ---- the shared names: the same meaning has the same name in every tool ---- */
#define TB_OPT_WHAT_MODEL "a model (an HF directory with config.json, a .tbm or a safetensors file)"
#define TB_OPT_MODEL(v, h) \
    {.type = TB_OPTT_STRING, .short_name = 'm', .long_name = "model", .value = (v), .argh = "MODEL", .help = (h), \
     .flags = TB_OPTF_FILE | TB_OPTF_REQUIRED | TB_OPTF_NO_DASH, .want = TB_WANT_MODEL, .what = TB_OPT_WHAT_MODEL}
#define TB_OPT_MODEL_OPTIONAL(v, h) \
    {.type = TB_OPTT_STRING, .short_name = 'm', .long_name = "model", .value = (v), .argh = "MODEL", .help = (h), \
     .flags = TB_OPTF_FILE | TB_OPTF_NO_DASH, .want = TB_WANT_MODEL, .what = TB_OPT_WHAT_MODEL}
/* fl: extra flags (TB_OPTF_REQUIRED, TB_OPTF_NO_DASH) */
#define TB_OPT_OUTPUT(v, a, fl, h) \
    {.type = TB_OPTT_STRING, .short_name = 'o', .long_name = "output", .value = (v), .argh = (a), .help = (h), \
     .flags = TB_OPTF_FILE | (fl)}
/* fix: what to do with a file of another kind ("use --text FILE or tb-tokenize") */
#define TB_OPT_TOKENS(v, fx, h) \
    {.type = TB_OPTT_STRING, .short_name = 't', .long_name = "tokens", .value = (v), .argh = "FILE", .help = (h), \
     .flags = TB_OPTF_FILE, .want = TB_WANT_SAFETENSORS, .what = "token windows (safetensors)", .fix = (fx)}
#define TB_OPT_THREADS(v)                                                                                         \
    {.type = TB_OPTT_INT, .short_name = 'j', .long_name = "threads", .value = (v), .argh = "N",                 \
     .help = "worker threads (default $TB_THREADS, else every CPU)", .min = 1, .max = 1024}
#define TB_OPT_JSON(v, h) {.type = TB_OPTT_FLAG, .long_name = "json", .value = (v), .help = (h)}
#define TB_OPT_FORCE(v, h) {.type = TB_OPTT_FLAG, .long_name = "force", .value = (v), .help = (h)}
/* -q/--quiet, -v/--verbose, --progress, -h/--help, --version: in every tool,
 * last: it also ends the table */
#define TB_OPT_COMMON()                                                                                          \
    {.type = TB_OPTT_QUIET, .short_name = 'q', .long_name = "quiet",                                          \
     .help = "no progress bars (warnings and errors still print)"},                                             \
        {.type = TB_OPTT_VERBOSE, .short_name = 'v', .long_name = "verbose",                                  \
         .help = "say what was done: a summary, and a line per weight or stage"},                             \
        {.type = TB_OPTT_PROGRESS, .long_name = "progress", .help = "progress bars even when stderr is not a terminal"}, \
        {.type = TB_OPTT_HELP, .short_name = 'h', .long_name = "help", .help = "this help"},                   \
        {.type = TB_OPTT_VERSION, .long_name = "version", .help = "print the version"}, {.type = TB_OPTT_END}

/* The compute backend (kernels/tb_backend.h), one group for every tool that
 * computes: pass a tb_backend_opts *. Expanded only where tb_backend.h is
 * included (tb_device_parse and tb_precision_parse map the names). */
extern const char *const tb_opt_device_names[];    /* cpu cuda auto */
extern const char *const tb_opt_precision_names[]; /* f32 bf16 */
#define TB_OPT_DEVICE(bo)                                                                                         \
    TB_OPT_CHOICE_FN(0, "device", &(bo)->device, tb_opt_device_names, tb_device_parse,                        \
                     "where to compute: cpu, cuda or auto (CUDA if built in and a GPU is present;\n"           \
                     "default auto)"),                                                                        \
        TB_OPT_INT(0, "gpu", &(bo)->gpu, "N", 0, 1023, "the CUDA device to use (default $TB_GPU, else 0)"),                  \
        TB_OPT_CHOICE_FN(0, "precision", &(bo)->precision, tb_opt_precision_names, tb_precision_parse,        \
                         "arithmetic: f32 or bf16 (default bf16 on CUDA, f32 on the CPU)")

typedef struct {
    const char *name;        /* "tb-merge" */
    const char *usage;       /* the usage lines, without "usage: ", '\n'-separated */
    const char *description; /* paragraphs between usage and the options */
    const tb_option *options;
    const char *notes;       /* after the options, before the exit status (may be NULL) */
    const char *args;        /* what the positional arguments are, e.g. "SHARD.tb..." (NULL: none) */
    int min_args, max_args;  /* max_args < 0: no limit */
} tb_command;

enum { TB_OPTS_CONTINUE = -1 };

/* Parse argv against cmd's table. Returns TB_OPTS_CONTINUE with the positional
 * arguments in args[0..*n_args) (pointers into argv; args may be argv), or the
 * exit status the tool returns at once: 0 after --help, --version or
 * --list-options, 1 after a usage error (printed). Also sets the log's quiet,
 * verbose and progress modes. */
int tb_opts_parse(const tb_command *cmd, int argc, char **argv, char ***args, int *n_args);
/* In main(): parse, or return the exit status (after --help, --version, a
 * usage error). args, n_args may be NULL for a command without arguments. */
#define TB_OPTS_PARSE_OR_RETURN(cmd, argc, argv, args, n_args)                  \
    do {                                                                        \
        int tb_done_ = tb_opts_parse((cmd), (argc), (argv), (args), (n_args)); \
        if (tb_done_ != TB_OPTS_CONTINUE) return tb_done_;                      \
    } while (0)

/* The option's names as messages give them: "-o/--output", "--json", "-n". */
const char *tb_opt_name(const tb_option *o, char *buf, int len);
/* Whether the option was on the command line (by its value pointer), for
 * "--x goes with --y" checks after parsing. */
int tb_opt_given(const void *value);

/* --help's text, generated from the table (stdout). */
void tb_opts_help(const tb_command *cmd);

/* --json: print j as one line on stdout and delete it (TB_EIO if that fails). */
struct cJSON;
int tb_json_print(struct cJSON *j);

/* The exit statuses every tool uses, documented once (README, --help, man). */
#define TB_EXIT_STATUS_TEXT                                                                       \
    "exit status: 0 ok, 1 usage (a bad option or argument), 2 bad input data, 3 I/O or\n"         \
    "resources (a missing file, no space, out of memory), 130 interrupted (Ctrl-C;\n"           \
    "143 on SIGTERM): no partial output file is left in any case\n"

#endif
