/* tb_io.h - file input by mmap, and atomic file output.
 *
 * Inputs are mapped read-only so that multi-GB checkpoints cost address space,
 * not RAM. Streams that cannot be mapped (stdin, pipes) are read into a heap
 * buffer instead; callers see the same tb_mapped either way.
 *
 * Outputs go to "<path>.tmp.<pid>" in the same directory and are renamed over
 * <path> only by tb_out_commit(), after an fsync of the file, and the
 * directory is fsynced after the rename: a failed, killed or power-cut run
 * leaves either the old complete file or the new complete one. Temporary
 * files still open at a catchable fatal signal are unlinked (after SIGKILL a
 * "<path>.tmp.<pid>" may remain; it is never mistaken for <path>).
 * TB_FSYNC=0 in the environment skips the syncs (tb_fsync), not the rename.
 */
#ifndef TB_IO_H
#define TB_IO_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
    const uint8_t *data;
    size_t size;
    int is_mmap; /* 1: munmap on release, 0: free() */
} tb_mapped;

/* Map `path` read-only ("-" reads all of stdin, up to tb_stream_cap()).
 * Only regular files (symlinks to them included) are read: a directory,
 * device or FIFO is TB_EIO "path: not a regular file", since it has no size
 * to bound the read. Errors: TB_EIO. */
int tb_map_file(const char *path, tb_mapped *out);
/* Read all of an open stream into memory (for pipes), at most tb_stream_cap()
 * bytes (TB_EDATA beyond). */
int tb_read_stream(FILE *fp, const char *label, tb_mapped *out);
/* The most a stream is read into memory: half the physical memory, or
 * TB_STREAM_MAX bytes from the environment. */
size_t tb_stream_cap(void);
/* Exactly n bytes: TB_EDATA "label: truncated ..." at an early end. */
int tb_read_exact(FILE *fp, const char *label, void *buf, size_t n);
void tb_unmap(tb_mapped *m);

/* fsync(fd), or nothing when the environment has TB_FSYNC=0 (every output's
 * sync goes through it; for short-lived intermediates, tb_io.c says why). */
int tb_fsync(int fd);

/* Read a whole (small) text file into a NUL-terminated heap string. */
int tb_read_text(const char *path, char **out, size_t *len);

int tb_is_dir(const char *path);
int tb_file_exists(const char *path);
/* join directory and file name into a heap string (caller frees) */
char *tb_path_join(const char *dir, const char *name);

typedef struct {
    FILE *fp;
    char *path;     /* final path, NULL for stdout */
    char *tmp_path; /* temporary path being written, NULL for stdout */
} tb_outfile;

/* Open an output: "-" is stdout, anything else a temporary file beside it.
 * Fails with TB_EIO naming the path if its directory does not exist. */
int tb_out_open(tb_outfile *o, const char *path);
/* Flush, fsync and rename into place. Closes the stream. */
int tb_out_commit(tb_outfile *o);
/* Close and unlink the temporary file (safe to call after commit: no-op). */
void tb_out_abort(tb_outfile *o);

/* A temporary directory being built and renamed at the end (tb-export): a
 * fatal signal also unlinks the listed files in it and removes it. One at a
 * time; files must stay valid until tb_tmpdir_release(). */
void tb_tmpdir_guard(const char *dir, char *const *files, int n);
void tb_tmpdir_release(void);

/* Checked fwrite: TB_EIO with the path on short write. */
int tb_write_all(FILE *fp, const void *buf, size_t n, const char *label);

/* Free bytes on the filesystem holding `path` (or its directory); -1 on error. */
int64_t tb_free_bytes(const char *path);

#endif
