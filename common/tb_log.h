/* tb_log.h - messages and progress on stderr.
 *
 * Progress bars are drawn only when stderr is a terminal, unless a tool's
 * --progress / --quiet forces it on or off (tb_log_set_progress).
 */
#ifndef TB_LOG_H
#define TB_LOG_H

#include <stdint.h>

#include "tb_version.h" /* TB_VERSION, for every tool */

void tb_log_init(const char *tool_name);      /* name used in messages */
const char *tb_tool_name(void);
void tb_log_set_progress(int mode);           /* -1 auto (isatty), 0 off, 1 on */
void tb_log_set_quiet(int quiet);             /* 1: no progress bars */
void tb_log_set_verbose(int level);           /* -v: 1 and more: tb_info() prints */
int tb_log_verbose(void);
int tb_progress_enabled(void);

/* "tool: message" on stderr under -v only: every tool is quiet on success by
 * default (summaries and per-weight lines are for -v) */
void tb_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "tool: warning: message" on stderr, always */
void tb_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

double tb_now(void); /* monotonic seconds */

typedef struct {
    const char *label;
    uint64_t total, done;
    double t_start, t_last_draw;
    int active;
} tb_progress;

void tb_progress_begin(tb_progress *p, const char *label, uint64_t total);
void tb_progress_set(tb_progress *p, uint64_t done); /* redraws at most ~10x/s */
void tb_progress_end(tb_progress *p);

/* For tools' main(): print "tool: <last library error>" on stderr and return
 * its exit code (TB_EIO if none was recorded). */
int tb_report_error(void);
/* Usage error: "tool: <message> (see --help)" on one line; returns TB_EUSAGE (1). */
int tb_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
