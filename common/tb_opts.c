#include "tb_opts.h"
#include "tb_error.h"
#include "tb_log.h"
#include "tb_version.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* ---- layers ---- */

int tb_parse_layers(const char *opt, const char *s, tb_layer_range *out)
{
    char *end;
    const char *p = s;
    if (*p < '0' || *p > '9') goto bad;
    long a = strtol(p, &end, 10), b = a;
    if (*end == '-' || *end == ':') {
        char sep = *end;
        p = end + 1;
        if (*p < '0' || *p > '9') goto bad;
        b = strtol(p, &end, 10);
        if (sep == ':') b -= 1;
    }
    if (*end) goto bad;
    if (a > 1000000 || b > 1000000) return tb_fail(TB_EUSAGE, "%s: '%s': layer out of range", opt, s);
    if (b < a) return tb_fail(TB_EUSAGE, "%s: '%s' is an empty range", opt, s);
    out->lo = (int)a;
    out->hi = (int)b;
    out->set = 1;
    return TB_OK;
bad:
    return tb_fail(TB_EUSAGE, "%s: '%s' is not A, A-B (inclusive) or A:B (B excluded)", opt, s);
}

int tb_layers_has(const tb_layer_range *r, int layer) { return !r->set || (layer >= r->lo && layer <= r->hi); }

int tb_layer_of(const char *name)
{
    for (const char *p = name; (p = strstr(p, "layers.")) != NULL; p += strlen("layers.")) {
        if (p != name && p[-1] != '.') continue;
        const char *d = p + strlen("layers.");
        char *end;
        long v = strtol(d, &end, 10);
        if (end > d && *end == '.' && *d >= '0' && *d <= '9') return (int)v;
    }
    return -1;
}

/* ---- the option table ---- */

const char *const tb_opt_device_names[] = {"cpu", "cuda", "auto", NULL};
const char *const tb_opt_precision_names[] = {"f32", "bf16", NULL};

#define MAX_OPTIONS 256
static const tb_option *given[MAX_OPTIONS];
static int n_given;

static int takes_value(const tb_option *o)
{
    switch (o->type) {
    case TB_OPTT_STRING: case TB_OPTT_INT: case TB_OPTT_LONG: case TB_OPTT_DOUBLE: case TB_OPTT_CHOICE:
    case TB_OPTT_LAYERS: case TB_OPTT_CALLBACK: return 1;
    default: return 0;
    }
}

static int is_option(const tb_option *o) { return o->type != TB_OPTT_GROUP && o->type != TB_OPTT_END; }

const char *tb_opt_name(const tb_option *o, char *buf, int len)
{
    if (o->short_name && o->long_name) snprintf(buf, (size_t)len, "-%c/--%s", o->short_name, o->long_name);
    else if (o->long_name) snprintf(buf, (size_t)len, "--%s", o->long_name);
    else snprintf(buf, (size_t)len, "-%c", o->short_name);
    return buf;
}

int tb_opt_given(const void *value)
{
    for (int i = 0; i < n_given; i++)
        if (given[i]->value == value) return 1;
    return 0;
}

static void choices_list(const tb_option *o, char *buf, size_t len)
{
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; o->choices[i]; i++) {
        int last = !o->choices[i + 1];
        k += (size_t)snprintf(buf + k, len - k, "%s%s%s", i ? (last ? " or " : ", ") : "", o->choices[i], "");
        if (k >= len) break;
    }
}

/* Store one option's value. arg is NULL for options without one. */
static int apply(const tb_option *o, const char *arg)
{
    char name[96];
    tb_opt_name(o, name, sizeof name);
    if (arg && (o->flags & TB_OPTF_NO_DASH) && !strcmp(arg, "-"))
        return tb_fail(TB_EUSAGE, "%s: '-' (standard input or output) cannot be a %s here: give a path", name,
                       o->argh ? o->argh : "value");
    if (arg && !*arg && o->type == TB_OPTT_STRING && (o->flags & TB_OPTF_FILE))
        return tb_fail(TB_EUSAGE, "%s: an empty name is not a %s", name, o->argh ? o->argh : "path");
    switch (o->type) {
    case TB_OPTT_FLAG: *(int *)o->value = o->flag_value ? (int)o->flag_value : 1; return TB_OK;
    case TB_OPTT_STRING: *(const char **)o->value = arg; return TB_OK;
    case TB_OPTT_INT: return tb_parse_int(name, arg, (int)o->min, (int)o->max, o->value);
    case TB_OPTT_LONG: /* a double holds LONG_MAX only approximately */
        return tb_parse_long(name, arg, o->min <= (double)LONG_MIN ? LONG_MIN : (long)o->min,
                             o->max >= (double)LONG_MAX ? LONG_MAX : (long)o->max, o->value);
    case TB_OPTT_DOUBLE: return tb_parse_double(name, arg, o->min, o->max, o->value);
    case TB_OPTT_LAYERS: return tb_parse_layers(name, arg, o->value);
    case TB_OPTT_CHOICE:
        for (int i = 0; o->choices[i]; i++) {
            if (strcmp(arg, o->choices[i])) continue;
            int v = o->parse_choice ? o->parse_choice(arg) : i;
            if (v < 0) break;
            *(int *)o->value = v;
            return TB_OK;
        }
        {
            char list[512];
            choices_list(o, list, sizeof list);
            return tb_fail(TB_EUSAGE, "%s: '%s' is not one of %s", name, arg, list);
        }
    case TB_OPTT_CALLBACK: return o->callback(name, arg, o->value);
    case TB_OPTT_QUIET: tb_log_set_quiet(1); tb_log_set_progress(0); return TB_OK;
    case TB_OPTT_VERBOSE: tb_log_set_verbose(tb_log_verbose() + 1); return TB_OK;
    case TB_OPTT_PROGRESS: tb_log_set_progress(1); return TB_OK;
    default: return TB_OK;
    }
}

static void list_options(const tb_command *cmd)
{
    for (const tb_option *o = cmd->options; o->type != TB_OPTT_END; o++) {
        if (!is_option(o) || o->type == TB_OPTT_HELP || o->type == TB_OPTT_VERSION) {
            if (o->type == TB_OPTT_HELP) printf("-h --help\n");
            if (o->type == TB_OPTT_VERSION) printf("--version\n");
            continue;
        }
        if (o->short_name) printf("-%c ", o->short_name);
        printf("--%s", o->long_name ? o->long_name : "");
        if (takes_value(o)) {
            printf(" %s", o->type == TB_OPTT_CHOICE ? "=" : (o->flags & TB_OPTF_FILE) ? "FILE" : "VALUE");
            for (int i = 0; o->type == TB_OPTT_CHOICE && o->choices[i]; i++) printf(" %s", o->choices[i]);
        }
        printf("\n");
    }
}

void tb_opts_help(const tb_command *cmd)
{
    const char *u = cmd->usage;
    int first = 1;
    while (*u) {
        const char *nl = strchr(u, '\n');
        int n = nl ? (int)(nl - u) : (int)strlen(u);
        printf("%s%.*s\n", first ? "usage: " : "       ", n, u);
        first = 0;
        u += n + (nl ? 1 : 0);
    }
    if (cmd->description) printf("\n%s", cmd->description);
    printf("\noptions:\n");
    for (const tb_option *o = cmd->options; o->type != TB_OPTT_END; o++) {
        if (o->flags & TB_OPTF_HIDDEN) continue;
        if (o->type == TB_OPTT_GROUP) {
            printf("\n%s%s", o->help, *o->help ? "\n" : "");
            continue;
        }
        char head[128];
        int k;
        if (o->short_name && o->long_name) k = snprintf(head, sizeof head, "  -%c, --%s", o->short_name, o->long_name);
        else if (o->long_name) k = snprintf(head, sizeof head, "      --%s", o->long_name);
        else k = snprintf(head, sizeof head, "  -%c", o->short_name);
        if (takes_value(o) && o->argh) snprintf(head + k, sizeof head - (size_t)k, " %s", o->argh);
        const int col = 26;
        const char *h = o->help ? o->help : "";
        if ((int)strlen(head) > col - 2) printf("%s\n%*s", head, col, "");
        else printf("%-*s", col, head);
        for (const char *p = h; *p; p++) {
            putchar(*p);
            if (*p == '\n') printf("%*s", col, "");
        }
        if (o->type == TB_OPTT_CHOICE && !strstr(h, o->choices[0])) {
            char list[512];
            choices_list(o, list, sizeof list);
            printf(" (%s)", list);
        }
        if (o->flags & TB_OPTF_REQUIRED) printf(" (required)");
        putchar('\n');
    }
    if (cmd->notes) printf("\n%s", cmd->notes);
    printf("\n%s", TB_EXIT_STATUS_TEXT);
}

static const tb_option *find_long(const tb_command *cmd, const char *name, size_t len)
{
    for (const tb_option *o = cmd->options; o->type != TB_OPTT_END; o++)
        if (is_option(o) && o->long_name && strlen(o->long_name) == len && !strncmp(o->long_name, name, len)) return o;
    return NULL;
}

static const tb_option *find_short(const tb_command *cmd, int c)
{
    for (const tb_option *o = cmd->options; o->type != TB_OPTT_END; o++)
        if (is_option(o) && o->short_name == c) return o;
    return NULL;
}

static int usage_fail(void)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", tb_errmsg());
    return tb_usage_error("%s", msg);
}

/* returns TB_OPTS_CONTINUE, or an exit status (0 help/version) */
static int seen(const tb_command *cmd, const tb_option *o, const char *arg)
{
    if (o->type == TB_OPTT_HELP) {
        tb_opts_help(cmd);
        return 0;
    }
    if (o->type == TB_OPTT_VERSION) {
        printf("%s %s\n", cmd->name, TB_VERSION);
        return 0;
    }
    if (apply(o, arg)) return usage_fail();
    if (n_given < MAX_OPTIONS) given[n_given++] = o;
    return TB_OPTS_CONTINUE;
}

int tb_opts_parse(const tb_command *cmd, int argc, char **argv, char ***args, int *n_args)
{
    char **pos = argv + 1; /* positionals compacted in place (argv[1..]) */
    int np = 0, only_args = 0;
    n_given = 0;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (only_args || a[0] != '-' || !a[1]) {
            pos[np++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_args = 1;
            continue;
        }
        if (!strcmp(a, "--list-options")) {
            list_options(cmd);
            return 0;
        }
        char name[96];
        if (a[1] == '-') {
            const char *nm = a + 2, *eq = strchr(nm, '=');
            size_t len = eq ? (size_t)(eq - nm) : strlen(nm);
            const tb_option *o = find_long(cmd, nm, len);
            if (!o) return tb_usage_error("unknown option '--%.*s'", (int)len, nm);
            const char *arg = NULL;
            if (takes_value(o)) {
                if (eq) arg = eq + 1;
                else if (i + 1 < argc) arg = argv[++i];
                else return tb_usage_error("option '%s' needs a value (%s)", tb_opt_name(o, name, sizeof name),
                                           o->argh ? o->argh : "VALUE");
            } else if (eq) {
                return tb_usage_error("option '%s' takes no value", tb_opt_name(o, name, sizeof name));
            }
            int rc = seen(cmd, o, arg);
            if (rc != TB_OPTS_CONTINUE) return rc;
            continue;
        }
        for (const char *p = a + 1; *p; p++) {
            const tb_option *o = find_short(cmd, (unsigned char)*p);
            if (!o) {
                if (p == a + 1 && ((*p >= '0' && *p <= '9') || *p == '.')) {
                    pos[np++] = a; /* a negative number as an argument */
                    break;
                }
                return tb_usage_error("unknown option '-%c'", *p);
            }
            const char *arg = NULL;
            if (takes_value(o)) {
                if (p[1]) arg = p + 1;
                else if (i + 1 < argc) arg = argv[++i];
                else return tb_usage_error("option '%s' needs a value (%s)", tb_opt_name(o, name, sizeof name),
                                           o->argh ? o->argh : "VALUE");
            }
            int rc = seen(cmd, o, arg);
            if (rc != TB_OPTS_CONTINUE) return rc;
            if (arg) break;
        }
    }
    for (const tb_option *o = cmd->options; o->type != TB_OPTT_END; o++) {
        char name[96];
        if ((o->flags & TB_OPTF_REQUIRED) && !tb_opt_given(o->value))
            return tb_usage_error("missing %s %s", tb_opt_name(o, name, sizeof name), o->argh ? o->argh : "");
    }
    if (np < cmd->min_args) {
        if (np == 0) return tb_usage_error("missing %s", cmd->args ? cmd->args : "argument");
        return tb_usage_error("expected %s%d %s, got %d", cmd->max_args == cmd->min_args ? "" : "at least ",
                              cmd->min_args, cmd->args ? cmd->args : "arguments", np);
    }
    if (cmd->max_args >= 0 && np > cmd->max_args) return tb_usage_error("unexpected argument '%s'", pos[cmd->max_args]);
    for (const tb_option *o = cmd->options; o->type != TB_OPTT_END; o++) {
        const char *v = o->type == TB_OPTT_STRING ? *(const char *const *)o->value : NULL;
        if ((o->flags & TB_OPTF_BINARY) && v && !strcmp(v, "-") && isatty(STDOUT_FILENO))
            return tb_usage_error("refusing to write binary %s to a terminal (use -o FILE or a pipe)",
                                  o->what ? o->what : "output");
    }
    /* the inputs are what they should be: told from their first bytes */
    for (const tb_option *o = cmd->options; o->type != TB_OPTT_END; o++) {
        if (o->type != TB_OPTT_STRING || !o->want || !tb_opt_given(o->value)) continue;
        const char *path = *(const char *const *)o->value;
        if (tb_check_input(path, (tb_want)o->want, o->what, o->fix)) return tb_report_error();
    }
    if (args) *args = pos;
    if (n_args) *n_args = np;
    return TB_OPTS_CONTINUE;
}

int tb_json_print(cJSON *j)
{
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s) return tb_fail(TB_EIO, "out of memory printing JSON");
    int ok = printf("%s\n", s) > 0 && fflush(stdout) == 0;
    free(s);
    return ok ? TB_OK : tb_fail(TB_EIO, "<stdout>: write error");
}
