/* fuzz_util.h - helpers shared by the libFuzzer harnesses (tests/fuzz/README.md).
 *
 * Harnesses are plain C: LLVMFuzzerTestOneInput is called by libFuzzer
 * (make fuzz, clang -fsanitize=fuzzer) or by replay.c (make test, any
 * compiler), which runs the seed corpora and the kept crashing inputs. */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tb_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A private scratch directory (tmpfs when there is one), made once per process
 * and removed at exit; files written in it by a harness are replaced each run. */
static char fuzz_dir_buf[256];
static void fuzz_dir_cleanup(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_dir_buf);
    if (system(cmd) != 0) { /* best effort */ }
}
static inline const char *fuzz_dir(void)
{
    if (!fuzz_dir_buf[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir_buf, sizeof fuzz_dir_buf, "%s/tb-fuzz.XXXXXX", base);
        if (!mkdtemp(fuzz_dir_buf)) { perror("mkdtemp"); abort(); }
        atexit(fuzz_dir_cleanup);
    }
    return fuzz_dir_buf;
}

/* Write bytes to DIR/name (whole file, replaced); returns the path (static buffer). */
static inline const char *fuzz_write(const char *name, const void *data, size_t size)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    FILE *fp = fopen(path, "wb");
    if (!fp || (size && fwrite(data, 1, size, fp) != size) || fclose(fp) != 0) { perror(path); abort(); }
    return path;
}

/* The library records one-line messages; each must be one line. A message
 * with a newline would break the tools' one-line error promise. */
static inline void fuzz_check_errmsg(void)
{
    const char *m = tb_errmsg();
    if (strchr(m, '\n')) { fprintf(stderr, "error message has a newline: %s\n", m); abort(); }
    tb_err_clear();
}

/* Copy of the input, so the library may keep a pointer past the call. */
static inline uint8_t *fuzz_dup(const uint8_t *data, size_t size)
{
    uint8_t *p = malloc(size + 1);
    if (!p) abort();
    if (size) memcpy(p, data, size);
    p[size] = 0;
    return p;
}

#endif
