#include "tb_io.h"
#include "tb_error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

int tb_fsync(int fd)
{
    /* TB_FSYNC=0: outputs are still complete when renamed into place (the
     * rename follows the last write), but a power cut may leave a renamed
     * file whose data never reached the disk. For pipelines whose
     * intermediates live minutes (bench/gpu/run_7b.sh: 6.5 GB a layer at 7B,
     * deleted a layer later), where syncing them costs disk bandwidth and
     * time and durability buys nothing. */
    const char *env = getenv("TB_FSYNC");
    if (env && !strcmp(env, "0")) return 0;
    return fsync(fd);
}

size_t tb_stream_cap(void)
{
    /* half the machine's memory: what a file that size would cost mapped and
     * converted; TB_STREAM_MAX (bytes) lowers it, e.g. for tests */
    const char *env = getenv("TB_STREAM_MAX");
    if (env && *env) {
        char *end;
        unsigned long long v = strtoull(env, &end, 10);
        if (!*end && v > 0) return (size_t)v;
    }
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return (size_t)1 << 32;
    return (size_t)pages / 2 * (size_t)page;
}

int tb_read_exact(FILE *fp, const char *label, void *buf, size_t n)
{
    size_t got = n ? fread(buf, 1, n, fp) : 0;
    if (got == n) return TB_OK;
    if (ferror(fp)) return tb_fail(TB_EIO, "%s: read error: %s", label, strerror(errno));
    return tb_fail(TB_EDATA, "%s: truncated: ends after %zu of %zu bytes", label, got, n);
}

int tb_read_stream(FILE *fp, const char *label, tb_mapped *out)
{
    size_t cap = 1 << 16, len = 0, max = tb_stream_cap();
    uint8_t *buf = tb_malloc(cap);
    if (!buf) return TB_EIO;
    for (;;) {
        if (len > max) {
            free(buf);
            return tb_fail(TB_EDATA, "%s: more than %zu bytes (the limit for a stream; TB_STREAM_MAX)", label, max);
        }
        if (len == cap) {
            uint8_t *nb = tb_realloc(buf, cap * 2);
            if (!nb) { free(buf); return TB_EIO; }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0) break;
    }
    if (ferror(fp)) {
        free(buf);
        return tb_fail(TB_EIO, "%s: read error: %s", label, strerror(errno));
    }
    out->data = buf;
    out->size = len;
    out->is_mmap = 0;
    return TB_OK;
}

int tb_map_file(const char *path, tb_mapped *out)
{
    memset(out, 0, sizeof *out);
    if (strcmp(path, "-") == 0) return tb_read_stream(stdin, "<stdin>", out);
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; only regular
     * files are read (a device such as /dev/zero, or a FIFO, has no size and
     * no end: a symlink to one in a model directory would fill memory) */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return tb_fail(TB_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return tb_fail(TB_EIO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return tb_fail(TB_EIO, "%s: %s", path,
                       S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file (only stdin, as '-', may be a stream)");
    }
    out->size = (size_t)st.st_size;
    if (out->size == 0) { /* mmap of 0 bytes fails; an empty mapping is valid */
        close(fd);
        out->data = NULL;
        out->is_mmap = 0;
        return TB_OK;
    }
    void *p = mmap(NULL, out->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return tb_fail(TB_EIO, "%s: mmap: %s", path, strerror(errno));
    out->data = p;
    out->is_mmap = 1;
    return TB_OK;
}

void tb_unmap(tb_mapped *m)
{
    if (!m->data) return;
    if (m->is_mmap) munmap((void *)m->data, m->size);
    else free((void *)m->data);
    m->data = NULL;
    m->size = 0;
}

int tb_read_text(const char *path, char **out, size_t *len)
{
    tb_mapped m;
    int rc = tb_map_file(path, &m);
    if (rc) return rc;
    char *s = tb_malloc(m.size + 1);
    if (!s) { tb_unmap(&m); return TB_EIO; }
    if (m.size) memcpy(s, m.data, m.size);
    s[m.size] = 0;
    if (len) *len = m.size;
    tb_unmap(&m);
    *out = s;
    return TB_OK;
}

int tb_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int tb_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

char *tb_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = tb_malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

/* ---- temporary-file registry, so a fatal signal leaves no partial output ---- */

#define TB_MAX_TMP 64
static char *tmp_registry[TB_MAX_TMP];
static pthread_mutex_t tmp_lock = PTHREAD_MUTEX_INITIALIZER;
static int handlers_installed;

/* a temporary directory being built: its planned files, then itself */
static const char *volatile guard_dir;
static char *const *volatile guard_files;
static volatile int guard_nfiles;

static void on_fatal_signal(int sig)
{
    /* unlink() and rmdir() are async-signal-safe; the registry is only read here. */
    for (int i = 0; i < TB_MAX_TMP; i++)
        if (tmp_registry[i]) unlink(tmp_registry[i]);
    char *const *files = guard_files;
    for (int i = 0; files && i < guard_nfiles; i++)
        if (files[i]) unlink(files[i]);
    if (guard_dir) rmdir(guard_dir);
    signal(sig, SIG_DFL);
    raise(sig); /* the exit status says which signal: 130 for SIGINT */
}

static void install_handlers(void) /* with tmp_lock held */
{
    if (handlers_installed) return;
    int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], on_fatal_signal);
    handlers_installed = 1;
}

void tb_tmpdir_guard(const char *dir, char *const *files, int n)
{
    pthread_mutex_lock(&tmp_lock);
    install_handlers();
    guard_files = files;
    guard_nfiles = n;
    guard_dir = dir;
    pthread_mutex_unlock(&tmp_lock);
}

void tb_tmpdir_release(void)
{
    pthread_mutex_lock(&tmp_lock);
    guard_dir = NULL;
    guard_nfiles = 0;
    guard_files = NULL;
    pthread_mutex_unlock(&tmp_lock);
}

static void register_tmp(char *path)
{
    pthread_mutex_lock(&tmp_lock);
    install_handlers();
    for (int i = 0; i < TB_MAX_TMP; i++)
        if (!tmp_registry[i]) { tmp_registry[i] = path; break; }
    pthread_mutex_unlock(&tmp_lock);
}

static void unregister_tmp(const char *path)
{
    pthread_mutex_lock(&tmp_lock);
    for (int i = 0; i < TB_MAX_TMP; i++)
        if (tmp_registry[i] == path) tmp_registry[i] = NULL;
    pthread_mutex_unlock(&tmp_lock);
}

int tb_out_open(tb_outfile *o, const char *path)
{
    memset(o, 0, sizeof *o);
    if (strcmp(path, "-") == 0) {
        o->fp = stdout;
        return TB_OK;
    }
    size_t n = strlen(path) + 32;
    o->path = tb_strdup(path);
    o->tmp_path = tb_malloc(n);
    if (!o->path || !o->tmp_path) { tb_out_abort(o); return TB_EIO; }
    snprintf(o->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(o->tmp_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int e = errno;
        free(o->tmp_path);
        o->tmp_path = NULL;
        tb_out_abort(o);
        return tb_fail(TB_EIO, "%s: cannot create: %s", path, strerror(e));
    }
    o->fp = fdopen(fd, "wb");
    if (!o->fp) {
        close(fd);
        unlink(o->tmp_path);
        tb_out_abort(o);
        return tb_fail(TB_EIO, "%s: %s", path, strerror(errno));
    }
    register_tmp(o->tmp_path);
    return TB_OK;
}

static int sync_dir_of(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return tb_fail(TB_EIO, "%s: cannot open its directory to sync it: %s", path, strerror(errno));
    /* EINVAL: a filesystem that cannot sync directories (some FUSE); nothing more to do */
    int rc = tb_fsync(fd) != 0 && errno != EINVAL ? tb_fail(TB_EIO, "%s: sync of its directory: %s", path, strerror(errno))
                                               : TB_OK;
    close(fd);
    return rc;
}

int tb_out_commit(tb_outfile *o)
{
    int rc = TB_OK;
    if (!o->fp) return tb_fail(TB_EIO, "output not open");
    if (!o->tmp_path) { /* stdout */
        if (fflush(o->fp) != 0) rc = tb_fail(TB_EIO, "<stdout>: write error: %s", strerror(errno));
        o->fp = NULL;
        return rc;
    }
    if (fflush(o->fp) != 0 || tb_fsync(fileno(o->fp)) != 0)
        rc = tb_fail(TB_EIO, "%s: write error: %s", o->path, strerror(errno));
    if (fclose(o->fp) != 0 && !rc) rc = tb_fail(TB_EIO, "%s: close: %s", o->path, strerror(errno));
    o->fp = NULL;
    if (!rc && rename(o->tmp_path, o->path) != 0)
        rc = tb_fail(TB_EIO, "%s: rename: %s", o->path, strerror(errno));
    /* the rename is durable only once the directory entry is on disk */
    if (!rc) rc = sync_dir_of(o->path);
    if (rc) unlink(o->tmp_path);
    unregister_tmp(o->tmp_path);
    free(o->tmp_path);
    free(o->path);
    o->tmp_path = o->path = NULL;
    return rc;
}

void tb_out_abort(tb_outfile *o)
{
    if (o->fp && o->tmp_path) fclose(o->fp);
    if (o->tmp_path) {
        unlink(o->tmp_path);
        unregister_tmp(o->tmp_path);
    }
    free(o->tmp_path);
    free(o->path);
    memset(o, 0, sizeof *o);
}

int tb_write_all(FILE *fp, const void *buf, size_t n, const char *label)
{
    if (n && fwrite(buf, 1, n, fp) != n)
        return tb_fail(TB_EIO, "%s: write error: %s", label, strerror(errno));
    return TB_OK;
}

int64_t tb_free_bytes(const char *path)
{
    struct statvfs vs;
    if (statvfs(path, &vs) == 0) return (int64_t)vs.f_bavail * (int64_t)vs.f_frsize;
    /* a path that does not exist yet: ask its directory */
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    char *slash = strrchr(buf, '/');
    if (slash == buf) slash[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(buf, sizeof buf, ".");
    if (statvfs(buf, &vs) == 0) return (int64_t)vs.f_bavail * (int64_t)vs.f_frsize;
    return -1;
}
