/* tb_outdir.h - an output directory written atomically.
 *
 * Tools that write a whole directory (tb-export, tb-synth) build it under a
 * temporary name beside the destination (".NAME.tmp.PID") and rename it into
 * place at the end, so a failed or interrupted run leaves no output. The
 * files that will be written are named up front: a fatal signal (INT, TERM,
 * HUP, PIPE) unlinks them and removes the temporary directory with
 * async-signal-safe calls only, then re-raises the signal (tb_io's handler,
 * tb_tmpdir_guard: one handler for every temporary output).
 *
 * An existing empty destination is replaced by rename(2) itself; a non-empty
 * one only with `force`, moved aside first so that until the last rename the
 * old output is intact.
 */
#ifndef TB_OUTDIR_H
#define TB_OUTDIR_H

#include <stdint.h>

typedef struct {
    char *dir;     /* the destination */
    char *parent;  /* its parent directory */
    char *tmp;     /* the directory being built */
    char *old;     /* where a replaced destination is moved aside */
    char **paths;  /* [n] paths inside tmp, one per name given to begin */
    int n;
    int replace;   /* the destination exists and is not empty */
    int active;    /* tmp exists and the signal guard is installed */
} tb_outdir;

/* Check the destination, make the temporary directory and guard it. `names`
 * are the file names that will be written in it (no '/'); need_bytes is the
 * space the output will take (checked against the parent's free space).
 * Errors: TB_EUSAGE for a destination that exists and is not a directory, or
 * is not empty without force; TB_EIO for I/O or space. */
int tb_outdir_begin(tb_outdir *d, const char *out_dir, int force, const char *const *names, int n_names,
                    uint64_t need_bytes);
/* The path inside the temporary directory of names[i]. */
const char *tb_outdir_path(const tb_outdir *d, int i);
/* fsync the directory and rename it into place; frees d. */
int tb_outdir_commit(tb_outdir *d);
/* Remove the temporary directory and what was written in it; frees d (a
 * no-op after commit). */
void tb_outdir_abort(tb_outdir *d);

/* Whether `path` is a directory with no entries. */
int tb_dir_is_empty(const char *path);

/* Write `text` to a new file at path, fsynced; `label` names it in errors. */
int tb_write_text_file(const char *path, const char *label, const char *text);

#endif
