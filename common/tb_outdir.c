#include "tb_outdir.h"
#include "tb_error.h"
#include "tb_io.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* recursive removal of the replaced output (lstat: never follows a link) */
static int rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    int r = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *sub = tb_path_join(path, e->d_name);
        if (!sub || rm_tree(sub) != 0) r = -1;
        free(sub);
    }
    closedir(d);
    return rmdir(path) != 0 ? -1 : r;
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int r = tb_fsync(fd);
    close(fd);
    return r;
}

/* parent directory and last component of a path ("a/b/" -> "a", "b") */
static int split_path(const char *path, char **parent, char **base)
{
    char *p = tb_strdup(path);
    if (!p) return TB_EIO;
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = 0;
    char *slash = strrchr(p, '/');
    if (!slash) {
        *base = p;
        p = NULL;
        *parent = tb_strdup(".");
    } else {
        *base = tb_strdup(slash + 1);
        if (slash == p) slash[1] = 0;
        else *slash = 0;
        *parent = p;
        p = NULL;
    }
    free(p);
    if (!*parent || !*base) { free(*parent); free(*base); return TB_EIO; }
    return TB_OK;
}

int tb_dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) { empty = 0; break; }
    closedir(d);
    return empty;
}

int tb_write_text_file(const char *path, const char *label, const char *text)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) return tb_fail(TB_EIO, "%s: cannot create: %s", label, strerror(errno));
    int rc = tb_write_all(fp, text, strlen(text), label);
    if (!rc && (fflush(fp) || tb_fsync(fileno(fp)))) rc = tb_fail(TB_EIO, "%s: write error: %s", label, strerror(errno));
    if (fclose(fp) && !rc) rc = tb_fail(TB_EIO, "%s: close: %s", label, strerror(errno));
    return rc;
}

static void free_outdir(tb_outdir *d)
{
    for (int i = 0; d->paths && i < d->n; i++) free(d->paths[i]);
    free(d->paths);
    free(d->dir);
    free(d->parent);
    free(d->tmp);
    free(d->old);
    memset(d, 0, sizeof *d);
}

static char *sibling(const char *parent, const char *base, const char *what)
{
    char name[4096];
    int len = snprintf(name, sizeof name, ".%s.%s.%ld", base, what, (long)getpid());
    if (len < 0 || (size_t)len >= sizeof name) { tb_fail(TB_EUSAGE, "%s: name too long", base); return NULL; }
    return tb_path_join(parent, name);
}

int tb_outdir_begin(tb_outdir *d, const char *out_dir, int force, const char *const *names, int n_names,
                    uint64_t need_bytes)
{
    memset(d, 0, sizeof *d);
    struct stat st;
    int exists = stat(out_dir, &st) == 0;
    if (exists && !S_ISDIR(st.st_mode)) return tb_fail(TB_EUSAGE, "%s: exists and is not a directory", out_dir);
    d->replace = exists && !tb_dir_is_empty(out_dir);
    if (d->replace && !force) return tb_fail(TB_EUSAGE, "%s: exists and is not empty (--force replaces it)", out_dir);
    for (int i = 0; i < n_names; i++)
        if (!names[i][0] || strchr(names[i], '/') || !strcmp(names[i], ".") || !strcmp(names[i], ".."))
            return tb_fail(TB_EDATA, "%s: file name '%s' not allowed", out_dir, names[i]);

    char *base = NULL;
    int rc = split_path(out_dir, &d->parent, &base);
    if (!rc && !(d->dir = tb_strdup(out_dir))) rc = TB_EIO;
    if (!rc && (!(d->tmp = sibling(d->parent, base, "tmp")) || !(d->old = sibling(d->parent, base, "old"))))
        rc = tb_errcode() ? tb_errcode() : TB_EIO;
    free(base);
    if (!rc) {
        int64_t free_b = tb_free_bytes(d->parent);
        uint64_t need = need_bytes + (16u << 20); /* headers and side files */
        if (free_b >= 0 && (uint64_t)free_b < need)
            rc = tb_fail(TB_EIO, "%s: needs %.1f MiB, %.1f MiB free", d->parent, need / 1048576.0,
                         free_b / 1048576.0);
    }
    if (!rc && !(d->paths = tb_calloc((size_t)n_names + 1, sizeof *d->paths))) rc = TB_EIO;
    for (int i = 0; !rc && i < n_names; i++, d->n++)
        if (!(d->paths[i] = tb_path_join(d->tmp, names[i]))) rc = TB_EIO;
    if (!rc && mkdir(d->tmp, 0755) != 0) rc = tb_fail(TB_EIO, "%s: cannot create: %s", out_dir, strerror(errno));
    if (rc) {
        free_outdir(d);
        return rc;
    }
    d->active = 1;
    tb_tmpdir_guard(d->tmp, d->paths, d->n); /* a fatal signal removes it: tb_io's one handler */
    return TB_OK;
}

const char *tb_outdir_path(const tb_outdir *d, int i) { return i >= 0 && i < d->n ? d->paths[i] : NULL; }

int tb_outdir_commit(tb_outdir *d)
{
    if (!d->active) return tb_fail(TB_EUSAGE, "output directory not begun");
    int rc = TB_OK;
    if (fsync_path(d->tmp) != 0) rc = tb_fail(TB_EIO, "%s: fsync: %s", d->dir, strerror(errno));
    if (!rc && d->replace && rename(d->dir, d->old) != 0)
        rc = tb_fail(TB_EIO, "%s: rename: %s", d->dir, strerror(errno));
    if (!rc && rename(d->tmp, d->dir) != 0) {
        rc = tb_fail(TB_EIO, "%s: rename: %s", d->dir, strerror(errno));
        if (d->replace) rename(d->old, d->dir);
    }
    if (rc) {
        tb_outdir_abort(d);
        return rc;
    }
    tb_tmpdir_release();
    fsync_path(d->parent);
    if (d->replace) rm_tree(d->old);
    free_outdir(d);
    return TB_OK;
}

void tb_outdir_abort(tb_outdir *d)
{
    if (d->active) {
        tb_tmpdir_release();
        for (int i = 0; i < d->n; i++) unlink(d->paths[i]);
        rmdir(d->tmp);
    }
    free_outdir(d);
}
