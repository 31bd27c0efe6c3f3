#include "tb_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static const char *tool_name = "tensorbit";
static int progress_mode = -1;
static int quiet, verbose;

void tb_log_init(const char *name) { tool_name = name; }
const char *tb_tool_name(void) { return tool_name; }
void tb_log_set_progress(int mode) { progress_mode = mode; }
void tb_log_set_quiet(int q) { quiet = q; }
void tb_log_set_verbose(int level) { verbose = level; }
int tb_log_verbose(void) { return verbose; }

int tb_progress_enabled(void)
{
    if (progress_mode >= 0) return progress_mode;
    return !quiet && isatty(STDERR_FILENO);
}

void tb_info(const char *fmt, ...)
{
    if (!verbose) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", tool_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void tb_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: warning: ", tool_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

double tb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void draw(tb_progress *p, int final)
{
    double el = tb_now() - p->t_start;
    double frac = p->total ? (double)p->done / (double)p->total : 0.0;
    int width = 30, fill = (int)(frac * width + 0.5);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    double eta = (frac > 0 && !final) ? el * (1.0 / frac - 1.0) : 0.0;
    fprintf(stderr, "\r%s: %s [%s] %llu/%llu %5.1f%% %6.1fs", tool_name, p->label, bar,
            (unsigned long long)p->done, (unsigned long long)p->total, 100.0 * frac, el);
    if (!final) fprintf(stderr, " eta %6.1fs", eta);
    else fprintf(stderr, "            \n");
    fflush(stderr);
}

void tb_progress_begin(tb_progress *p, const char *label, uint64_t total)
{
    p->label = label;
    p->total = total;
    p->done = 0;
    p->t_start = p->t_last_draw = tb_now();
    p->active = tb_progress_enabled();
    if (p->active) draw(p, 0);
}

void tb_progress_set(tb_progress *p, uint64_t done)
{
    p->done = done;
    if (!p->active) return;
    double t = tb_now();
    if (t - p->t_last_draw < 0.1 && done < p->total) return;
    p->t_last_draw = t;
    draw(p, 0);
}

void tb_progress_end(tb_progress *p)
{
    if (p->active) draw(p, 1);
    p->active = 0;
}

#include "tb_error.h"

int tb_report_error(void)
{
    int code = tb_errcode();
    fprintf(stderr, "%s: %s\n", tool_name, *tb_errmsg() ? tb_errmsg() : "unknown error");
    return code ? code : TB_EIO;
}

int tb_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", tool_name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see %s --help)\n", tool_name);
    va_end(ap);
    return TB_EUSAGE;
}
